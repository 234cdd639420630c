// lib/kmalloc: malloc-compatible allocation. Requests up to 32 KiB go to
// size classes (one objcache each, over a slab zone); larger ones are mapped
// directly. The page map tells, from an address alone, which class or large
// block owns it, so free and the usable size know every pointer and can tell
// a foreign one. This header is the layer's interface (the C ABI in api.cpp
// and the future preload shim build on it).
#pragma once
#include <cstddef>
#include <cstdint>

#include "../objcache/objcache.hpp"

namespace sysref::kmalloc {

// ---- the core: NULL + errno on failure ---------------------------------------
// align: 0 or a power of two (callers check); flags: SR_NOWAIT, SR_ZERO,
// SR_USE_RESERVE. size 0 gives a unique, freeable block. A class's objcache
// is made on its first request, even under SR_NOWAIT (one-time bookkeeping
// from the library's own zones, unless another thread is making a class);
// under SR_NOWAIT a large block comes from the span heap if its lock is free
// at once, else from a map of its own: never a wait.
void *alloc(size_t size, size_t align, int flags);
// alloc(size, 0, 0), with the checks of align and flags left out of the
// fast path (malloc, operator new).
void *alloc_plain(size_t size);
// NULL: nothing. A pointer this layer did not hand out (or not the start of
// a block) is reported through os::report_error and never touched. Keeps
// errno.
void free(void *p);
// free for the preload shim, which must tell its own pointers from the C
// library's with the same page-map lookup that free makes: a non-NULL p
// that the page map knows nothing of goes, untouched, to unmapped.
void free_or(void *p, void (*unmapped)(void *));
// NULL p: alloc. size 0: free p, return NULL. In place when size fits the
// usable size and is at least half of it; else moved. On failure NULL +
// errno and p untouched. With SR_ZERO, bytes beyond the old usable size
// read as zero (and a block shrunk in place is zeroed past size).
void *realloc(void *p, size_t size, int flags);
// Bytes the block really holds; 0 for NULL. A bad pointer is reported.
size_t usable_size(const void *p);
// Whether p lies in memory this layer handed out (a class slab or a large
// block, the start or inside). Reads only the page map and the library's
// own records, never *p: the preload shim asks this before deciding whether
// a pointer goes to the C library.
bool owns(const void *p);

// ---- the C and glibc functions, with their exact semantics -------------------
// (sr_* in the C ABI; the preload shim will export them unprefixed)
namespace libc {
inline void *malloc(size_t size) { return kmalloc::alloc_plain(size); }
inline void free(void *p) { kmalloc::free(p); }
void *calloc(size_t n, size_t size);
void *realloc(void *p, size_t size);
void *reallocarray(void *p, size_t n, size_t size);
int posix_memalign(void **out, size_t align, size_t size);
void *aligned_alloc(size_t align, size_t size);
void *memalign(size_t align, size_t size);
void *valloc(size_t size);
void *pvalloc(size_t size);
size_t malloc_usable_size(const void *p);
}  // namespace libc

// The kmalloc(3) functions that add checks of their own.
void *aligned(size_t size, size_t align, int flags);  // EINVAL unless align is a power of two

// ---- introspection (the report layer, tests) ---------------------------------
struct stats {
  uint64_t large_allocs, large_frees;
  uint64_t large_bytes_mapped, large_bytes_unmapped;  // lifetime totals
  uint64_t errors;                                    // bad pointers reported
  uint64_t large_peak_bytes;                          // most large-block bytes live at once
};
stats snapshot();

unsigned class_count();
size_t class_size(unsigned index);
// The class's objcache, or nullptr while nothing of that size was allocated.
objcache::cache *class_cache(unsigned index);
// Returns every class's cached objects to its slabs; bytes given back.
size_t reclaim();

// fork (the preload shim's atfork handlers): the class-creation lock
// (before the objcache layer's locks: a creation holds it while it makes a
// cache) and, separately, the large blocks' kept-mappings lock (a leaf).
// Released in the parent and in the child.
void prefork_classes();
void prefork_large();
void postfork_large();
void postfork_classes();

}  // namespace sysref::kmalloc
