/* A kmalloc_obj zone that starts life on a static reserve.
 *
 * The zone allocates its first objects from memory the program handed in
 * before the page provider was ever asked, keeps going on pages from the OS,
 * and, once running, keeps the reserve for SR_USE_RESERVE callers when the
 * OS says no (simulated here with sysref_os_fail_after). */
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sysref/kmalloc_obj.h>
#include <sysref/os.h>
#include <sysref/percpu.h>

struct session {
	unsigned long id;
	char user[48];
};

/* Two slabs' worth guarantees one whole slab aligned to the slab size. */
static char early_memory[2 * 65536];

static void show(kmalloc_zone_t *zone, const char *when)
{
	struct kmalloc_zone_stats st;

	if (kmalloc_obj_zone_stats(zone, &st) != 0) {
		perror("kmalloc_obj_zone_stats");
		return;
	}
	printf("%-26s live %4llu  slabs %2llu (reserve %llu, spare %llu)  "
	    "reserve allocs %llu  sync maps %llu  proactive maps %llu\n",
	    when, (unsigned long long)st.live, (unsigned long long)st.slabs,
	    (unsigned long long)st.slabs_reserve, (unsigned long long)st.slabs_spare,
	    (unsigned long long)st.reserve_allocs, (unsigned long long)st.sync_maps,
	    (unsigned long long)st.proactive_maps);
}

int main(void)
{
	struct sysref_os_stats os;
	struct session *s[1100], *emergency;
	kmalloc_zone_t *zone;
	unsigned i;
	int slabs;

	zone = kmalloc_obj_zone_create("session", sizeof(struct session), 0, 0);
	if (zone == NULL) {
		perror("kmalloc_obj_zone_create");
		return 1;
	}
	slabs = kmalloc_obj_reserve(zone, early_memory, sizeof(early_memory));
	if (slabs < 0) {
		perror("kmalloc_obj_reserve");
		return 1;
	}
	if (kmalloc_obj_set_spare(zone, 1, 2) != 0) {
		perror("kmalloc_obj_set_spare");
		return 1;
	}
	printf("per-CPU mode %s, slab size %zu, %d reserve slab(s)\n",
	    sysref_percpu_mode(), kmalloc_obj_slab_size(zone), slabs);

	/* Bootstrap: the first objects come from the static reserve. */
	for (i = 0; i < 100; i++) {
		s[i] = kmalloc_obj(zone, SR_ZERO);
		s[i]->id = i;
		snprintf(s[i]->user, sizeof(s[i]->user), "user%u", i);
	}
	show(zone, "after 100 (bootstrap)");

	/* Past the reserve: the zone maps slabs, and spares ahead of demand. */
	for (; i < 1100; i++) {
		s[i] = kmalloc_obj(zone, 0);
		if (s[i] == NULL) {
			perror("kmalloc_obj");
			return 1;
		}
		s[i]->id = i;
	}
	show(zone, "after 1100 (running)");

	/* The OS says no: only SR_USE_RESERVE callers still get memory. */
	for (i = 0; i < 1100; i++)
		kfree_obj(s[i], zone);
	(void)kmalloc_obj_set_spare(zone, 0, 0);
	for (i = 0; i < 60; i++)
		s[i] = kmalloc_obj(zone, 0);
	sysref_os_fail_after(0);
	emergency = kmalloc_obj(zone, SR_USE_RESERVE);
	printf("OS refusing: SR_USE_RESERVE got %s\n", emergency ? "an object" : "nothing");
	show(zone, "with the OS refusing");
	sysref_os_fail_after(-1);
	if (emergency != NULL)
		kfree_obj(emergency, zone);
	for (i = 0; i < 60; i++)
		if (s[i] != NULL)
			kfree_obj(s[i], zone);
	show(zone, "all freed");

	kmalloc_obj_zone_destroy(zone);
	sysref_os_stats(&os);
	printf("after destroy: %llu bytes mapped (the per-CPU region), %llu released\n",
	    (unsigned long long)os.mapped, (unsigned long long)os.released);
	return emergency != NULL ? 0 : 1;
}
