// C ABI of the kmalloc layer: one-line forwards into sysref::kmalloc.
#include <sysref/kmalloc.h>

#include "kmalloc.hpp"

namespace km = sysref::kmalloc;

extern "C" {

void *kmalloc(size_t size, int flags) { return km::alloc(size, 0, flags); }
void kfree(void *p) { km::free(p); }
void *krealloc(void *p, size_t size, int flags) { return km::realloc(p, size, flags); }
void *kmalloc_aligned(size_t size, size_t align, int flags) { return km::aligned(size, align, flags); }
size_t kmalloc_usable_size(const void *p) { return km::usable_size(p); }
size_t kmalloc_reclaim(void) { return km::reclaim(); }

void *sr_malloc(size_t size) { return km::libc::malloc(size); }
void sr_free(void *p) { km::libc::free(p); }
void *sr_calloc(size_t n, size_t size) { return km::libc::calloc(n, size); }
void *sr_realloc(void *p, size_t size) { return km::libc::realloc(p, size); }
void *sr_reallocarray(void *p, size_t n, size_t size) { return km::libc::reallocarray(p, n, size); }
int sr_posix_memalign(void **out, size_t align, size_t size) { return km::libc::posix_memalign(out, align, size); }
void *sr_aligned_alloc(size_t align, size_t size) { return km::libc::aligned_alloc(align, size); }
void *sr_memalign(size_t align, size_t size) { return km::libc::memalign(align, size); }
void *sr_valloc(size_t size) { return km::libc::valloc(size); }
void *sr_pvalloc(size_t size) { return km::libc::pvalloc(size); }
size_t sr_malloc_usable_size(void *p) { return km::libc::malloc_usable_size(p); }
}
