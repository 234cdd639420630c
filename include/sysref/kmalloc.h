/* kmalloc: malloc-compatible allocation on object caches, and the malloc
 * family under an sr_ prefix (usable without interposing malloc). */
#ifndef SYSREF_KMALLOC_H
#define SYSREF_KMALLOC_H

#include <stddef.h>
#include <sysref/flags.h>

SYSREF_EXTERN_C_BEGIN

/* flags: SR_WAITOK / SR_NOWAIT, SR_ZERO, SR_USE_RESERVE. */
SYSREF_API void *kmalloc(size_t size, int flags);
SYSREF_API void kfree(void *p);
SYSREF_API void *krealloc(void *p, size_t size, int flags);
SYSREF_API void *kmalloc_aligned(size_t size, size_t align, int flags);
SYSREF_API size_t kmalloc_usable_size(const void *p);
/* Gives every size class's cached objects back to its slabs (empty slabs
 * beyond each zone's spare target go back to the OS) and unmaps the large
 * mappings kept for reuse: bytes given back. For low memory; malloc_trim
 * under the preload shim calls it. */
SYSREF_API size_t kmalloc_reclaim(void);

/* Exact C/POSIX semantics of the unprefixed functions. */
SYSREF_API void *sr_malloc(size_t size);
SYSREF_API void sr_free(void *p);
SYSREF_API void *sr_calloc(size_t n, size_t size);
SYSREF_API void *sr_realloc(void *p, size_t size);
SYSREF_API void *sr_reallocarray(void *p, size_t n, size_t size);
SYSREF_API int sr_posix_memalign(void **out, size_t align, size_t size);
SYSREF_API void *sr_aligned_alloc(size_t align, size_t size);
SYSREF_API void *sr_memalign(size_t align, size_t size);
SYSREF_API void *sr_valloc(size_t size);
SYSREF_API void *sr_pvalloc(size_t size);
SYSREF_API size_t sr_malloc_usable_size(void *p);

SYSREF_EXTERN_C_END
#endif
