/* objcache: object caches with per-CPU magazines (Bonwick & Adams) and
 * constructed-object caching. */
#ifndef SYSREF_OBJCACHE_H
#define SYSREF_OBJCACHE_H

#include <stddef.h>
#include <stdint.h>
#include <sysref/flags.h>

SYSREF_EXTERN_C_BEGIN

typedef struct objcache objcache_t;

struct objcache_stats {
	uint64_t gets;             /* objects handed out */
	uint64_t puts;             /* objects given back (objcache_put) */
	uint64_t ctor_calls;       /* objects constructed */
	uint64_t dtor_calls;       /* objects destructed */
	uint64_t live;             /* handed out and not yet given back */
	uint64_t cached;           /* constructed objects held by the cache */
	uint64_t depot_full;       /* full magazines in the depot */
	uint64_t depot_empty;      /* empty magazines in the depot */
	uint64_t mag_size;         /* rounds per magazine now */
	uint64_t mag_resizes;      /* times the magazine size grew */
	uint64_t contention;       /* depot lock acquisitions that had to wait */
	uint64_t depot_exchanges;  /* magazines swapped with the depot */
	uint64_t slab_allocs;      /* objects taken from the slab layer */
	uint64_t slab_frees;       /* objects given back to the slab layer */
	uint64_t reaped;           /* objects returned to slabs by working-set reaping */
	uint64_t ctor_failures;    /* constructor calls that returned an error */
	uint64_t limit;            /* object limit, 0 = none */
	uint64_t limit_waits;      /* gets that waited at the limit */
};

/* ctor returns 0 or an errno value; it runs when the cache makes an object,
 * dtor when the cache gives one back to the slab layer, never per get/put.
 * limit 0 = unlimited: otherwise at most limit objects exist (live + cached).
 * flags: 0. NULL + errno (EINVAL, ENOMEM) on failure. */
SYSREF_API objcache_t *objcache_create(const char *name, size_t size, size_t align,
                                       int (*ctor)(void *obj, void *priv, int flags),
                                       void (*dtor)(void *obj, void *priv), void *priv,
                                       size_t limit, unsigned flags);
SYSREF_API void *objcache_get(objcache_t *oc, int flags);
SYSREF_API void objcache_put(objcache_t *oc, void *obj);
/* obj is not in its constructed state: destroy it instead of caching it. */
SYSREF_API void objcache_dtor(objcache_t *oc, void *obj);
/* Return every cached object to the slabs; bytes given back. */
SYSREF_API size_t objcache_reclaim(objcache_t *oc);
SYSREF_API size_t objcache_reclaim_all(void);
SYSREF_API void objcache_destroy(objcache_t *oc);
SYSREF_API int objcache_stats(objcache_t *oc, struct objcache_stats *out);

SYSREF_EXTERN_C_END
#endif
