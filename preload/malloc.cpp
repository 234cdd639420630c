// The C library's allocation functions, exported under their own names (and
// the __libc_* aliases glibc also offers), straight onto the kmalloc layer:
// each is the kmalloc call itself (a tail call into the inline objcache
// path), preceded only by the statistics branch on a cached flag. Pointers
// the page map does not know go to the C library (foreign.cpp).
#include <cerrno>
#include <malloc.h>
#include <stdlib.h>

#include "../lib/os/os.hpp"
#include "shim.hpp"

namespace km = sysref::kmalloc;
using sysref::report::call;
using namespace sysref::preload;

#define SR_EXPORT extern "C" __attribute__((visibility("default")))

namespace {
size_t product_or_max(size_t n, size_t size) {
  size_t total;
  return __builtin_mul_overflow(n, size, &total) ? SIZE_MAX : total;
}
}  // namespace

// malloc and free test the statistics flag and jump: with counting off
// each is one load, one branch and a tail call, no frame of its own.
namespace {
[[gnu::noinline, gnu::cold]] void *counted_malloc(size_t size) {
  return counted(call::malloc, size, km::libc::malloc(size));
}
[[gnu::noinline, gnu::cold]] void counted_free(void *p) {
  count(call::free);
  release(p);
}
}  // namespace

SR_EXPORT void *malloc(size_t size) noexcept {
  if (__builtin_expect(g_counting, 0)) return counted_malloc(size);
  return km::libc::malloc(size);
}

SR_EXPORT void free(void *p) noexcept {
  if (__builtin_expect(g_counting, 0)) return counted_free(p);
  release(p);
}

SR_EXPORT void *calloc(size_t n, size_t size) noexcept {
  return counted(call::calloc, product_or_max(n, size), km::libc::calloc(n, size));
}

SR_EXPORT void *realloc(void *p, size_t size) noexcept {
  void *q = !p || mapped_by_us(p) ? km::libc::realloc(p, size) : foreign_realloc(p, size);
  counted(call::realloc, size, q != p ? q : nullptr);  // a block resized in place is no new request
  return q;
}

SR_EXPORT void *reallocarray(void *p, size_t n, size_t size) noexcept {
  void *q;
  size_t total;
  if (!p || mapped_by_us(p))
    q = km::libc::reallocarray(p, n, size);
  else if (__builtin_mul_overflow(n, size, &total))
    q = (errno = ENOMEM, nullptr);
  else
    q = foreign_realloc(p, total);
  counted(call::reallocarray, product_or_max(n, size), q != p ? q : nullptr);
  return q;
}

SR_EXPORT int posix_memalign(void **out, size_t align, size_t size) noexcept {
  int rc = km::libc::posix_memalign(out, align, size);
  counted(call::posix_memalign, size, rc == 0 ? *out : nullptr);
  return rc;
}

SR_EXPORT void *aligned_alloc(size_t align, size_t size) noexcept {
  return counted(call::aligned_alloc, size, km::libc::aligned_alloc(align, size));
}

SR_EXPORT void *memalign(size_t align, size_t size) noexcept {
  return counted(call::memalign, size, km::libc::memalign(align, size));
}

SR_EXPORT void *valloc(size_t size) noexcept {
  return counted(call::valloc, size, km::libc::valloc(size));
}

SR_EXPORT void *pvalloc(size_t size) noexcept {
  return counted(call::pvalloc, size, km::libc::pvalloc(size));
}

SR_EXPORT size_t malloc_usable_size(void *p) noexcept {
  count(call::malloc_usable_size);
  if (!p) return 0;
  if (__builtin_expect(mapped_by_us(p), 1)) return km::libc::malloc_usable_size(p);
  return foreign_usable_size(p);
}

// glibc's names for its own allocator: a program or library that calls them
// directly gets the same functions (the same addresses).
SR_EXPORT void *__libc_malloc(size_t) noexcept __attribute__((alias("malloc"), copy(malloc)));
SR_EXPORT void __libc_free(void *) noexcept __attribute__((alias("free"), copy(free)));
SR_EXPORT void *__libc_calloc(size_t, size_t) noexcept __attribute__((alias("calloc"), copy(calloc)));
SR_EXPORT void *__libc_realloc(void *, size_t) noexcept __attribute__((alias("realloc"), copy(realloc)));
SR_EXPORT void *__libc_memalign(size_t, size_t) noexcept __attribute__((alias("memalign"), copy(memalign)));
SR_EXPORT void *__libc_valloc(size_t) noexcept __attribute__((alias("valloc"), copy(valloc)));
SR_EXPORT void *__libc_pvalloc(size_t) noexcept __attribute__((alias("pvalloc"), copy(pvalloc)));
