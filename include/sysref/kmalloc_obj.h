/* kmalloc_obj: type-stable slab zones (one object size per zone). */
#ifndef SYSREF_KMALLOC_OBJ_H
#define SYSREF_KMALLOC_OBJ_H

#include <stddef.h>
#include <stdint.h>
#include <sysref/flags.h>

SYSREF_EXTERN_C_BEGIN

typedef struct kmalloc_zone kmalloc_zone_t;

struct kmalloc_zone_stats {
	uint64_t objsize;          /* bytes per object, after rounding */
	uint64_t slab_size;        /* bytes per slab (also its alignment) */
	uint64_t objs_per_slab;
	uint64_t allocs;           /* objects handed out */
	uint64_t frees;            /* objects given back */
	uint64_t live;             /* allocs - frees */
	uint64_t slabs;            /* slabs the zone holds, reserve ones included */
	uint64_t slabs_active;     /* slabs bound to a CPU */
	uint64_t slabs_partial;
	uint64_t slabs_full;
	uint64_t slabs_spare;      /* empty, mapped, kept for refill */
	uint64_t slabs_reserve;    /* registered from caller memory */
	uint64_t reserve_allocs;   /* objects taken from reserve slabs */
	uint64_t sync_maps;        /* slabs mapped because a caller found nothing */
	uint64_t proactive_maps;   /* slabs mapped ahead of demand */
	uint64_t proactive_failures;
	uint64_t slabs_released;   /* empty slabs given back to the OS */
	uint64_t bytes_mapped;     /* bytes of slabs this zone mapped and holds */
	uint64_t errors;           /* double frees and foreign pointers seen */
	uint64_t spare_low, spare_high;
};

/* objsize bytes aligned to align (0: natural, at least 16). NULL + errno on
 * failure: EINVAL for a bad size or alignment, ENOMEM. */
SYSREF_API kmalloc_zone_t *kmalloc_obj_zone_create(const char *name, size_t objsize,
                                        size_t align, unsigned flags);
SYSREF_API void *kmalloc_obj(kmalloc_zone_t *zone, int flags);
SYSREF_API void kfree_obj(void *obj, kmalloc_zone_t *zone);

/* Register caller memory as whole slabs of this zone. Returns the number of
 * slabs registered (>= 1), or -1 with errno (EINVAL: no whole aligned slab
 * fits; EEXIST: overlaps memory the library already knows). */
SYSREF_API int kmalloc_obj_reserve(kmalloc_zone_t *zone, void *mem, size_t len);
/* Keep between low and high empty slabs mapped ahead of demand. */
SYSREF_API int kmalloc_obj_set_spare(kmalloc_zone_t *zone, unsigned low, unsigned high);
/* Slab size of a zone: a reserve should span at least twice this. */
SYSREF_API size_t kmalloc_obj_slab_size(kmalloc_zone_t *zone);
SYSREF_API void kmalloc_obj_zone_destroy(kmalloc_zone_t *zone);
SYSREF_API int kmalloc_obj_zone_stats(kmalloc_zone_t *zone, struct kmalloc_zone_stats *out);

SYSREF_EXTERN_C_END
#endif
