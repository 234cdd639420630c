/* The statistics report on demand: allocate through the sr_ malloc family,
 * kmalloc, an object cache, a kmalloc_obj zone and a SYSREF class, print
 * the text report to stdout, then write the JSON report to a temporary
 * file and check that it carries its schema. Exits 0 only if every check
 * held. */
#include <errno.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sysref/kmalloc.h>
#include <sysref/kmalloc_obj.h>
#include <sysref/objcache.h>
#include <sysref/report.h>
#include <sysref/sysref.h>
#include <unistd.h>

struct node {
	struct sysref sr;
	int value;
};

static struct sysref_class node_class = {
	.name = "node",
	.objsize = sizeof(struct node),
	.offset = offsetof(struct node, sr),
};

static int failures;

static void check(int ok, const char *what)
{
	fprintf(stderr, "  %-4s %s\n", ok ? "ok" : "FAIL", what);
	if (!ok)
		failures++;
}

int main(void)
{
	static void *blocks[1000];
	char path[] = "/tmp/report_basics.XXXXXX";
	char json[1 << 16];
	objcache_t *oc;
	kmalloc_zone_t *zone;
	struct node *n;
	void *obj, *zobj, *big;
	ssize_t len;
	int fd;

	/* Some traffic: many sizes, half of it freed again. */
	for (int i = 0; i < 1000; i++)
		blocks[i] = sr_malloc((size_t)(i % 50) * 24 + 1);
	for (int i = 0; i < 1000; i += 2)
		sr_free(blocks[i]);
	big = kmalloc(1 << 20, SR_ZERO);
	check(big != NULL, "kmalloc of 1 MiB");

	oc = objcache_create("buffers", 200, 0, NULL, NULL, NULL, 0, 0);
	obj = oc ? objcache_get(oc, 0) : NULL;
	check(obj != NULL, "an object from our own cache");
	zone = kmalloc_obj_zone_create("records", 48, 0, 0);
	zobj = zone ? kmalloc_obj(zone, 0) : NULL;
	check(zobj != NULL, "an object from our own zone");
	n = sysref_alloc(&node_class);
	check(n != NULL, "a SYSREF object");
	if (n)
		sysref_activate(&n->sr);

	/* The text report, to stdout. */
	check(sysref_report(1, 0) == 0, "sysref_report(1, 0)");
	check(sysref_report(1, 0x80) == -1 && errno == EINVAL, "unknown flags: EINVAL");

	/* The JSON report, to a temporary file. */
	fd = mkstemp(path);
	check(fd >= 0, "a temporary file");
	if (fd >= 0) {
		check(sysref_report(fd, SYSREF_REPORT_JSON) == 0, "sysref_report(fd, SYSREF_REPORT_JSON)");
		len = pread(fd, json, sizeof json - 1, 0);
		json[len > 0 ? len : 0] = '\0';
		check(strstr(json, "\"schema\":\"sysref-report/1\"") != NULL, "the JSON names its schema");
		check(strstr(json, "\"name\":\"buffers\"") != NULL, "and lists our cache");
		close(fd);
		unlink(path);
	}

	if (n)
		sysref_put(&n->sr);
	kfree_obj(zobj, zone);
	kmalloc_obj_zone_destroy(zone);
	objcache_put(oc, obj);
	objcache_destroy(oc);
	kfree(big);
	for (int i = 1; i < 1000; i += 2)
		sr_free(blocks[i]);
	fprintf(stderr, "%s\n", failures ? "FAILED" : "all checks held");
	return failures ? 1 : 0;
}
