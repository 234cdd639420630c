// The C, POSIX and glibc allocation functions on top of the core: the
// argument checks, overflow rules and errno conventions of each, exactly as
// glibc has them (sr_* in the C ABI; the preload shim's malloc family).
#include <bit>
#include <cerrno>
#include <cstdint>

#include "../os/os.hpp"
#include "kmalloc.hpp"

namespace sysref::kmalloc::libc {
namespace {

bool power_of_two(size_t n) { return n && (n & (n - 1)) == 0; }

// n * size, or false on overflow.
bool product(size_t n, size_t size, size_t *out) { return !__builtin_mul_overflow(n, size, out); }

void *no_memory() {
  errno = ENOMEM;
  return nullptr;
}

}  // namespace

void *calloc(size_t n, size_t size) {
  size_t total;
  if (!product(n, size, &total)) return no_memory();
  return kmalloc::alloc(total, 0, SR_ZERO);
}

// glibc: realloc(p, 0) frees p and returns NULL (and realloc(NULL, 0) is
// malloc(0)): the core already behaves so.
void *realloc(void *p, size_t size) { return kmalloc::realloc(p, size, 0); }

void *reallocarray(void *p, size_t n, size_t size) {
  size_t total;
  if (!product(n, size, &total)) return no_memory();  // p untouched
  return kmalloc::realloc(p, total, 0);
}

// Reports by its return value; errno stays as the caller had it.
int posix_memalign(void **out, size_t align, size_t size) {
  if (!power_of_two(align) || align % sizeof(void *) != 0) return EINVAL;
  int saved = errno;
  void *p = kmalloc::alloc(size, align, 0);
  int result = p ? 0 : ENOMEM;
  if (p) *out = p;
  errno = saved;
  return result;
}

// C17 and glibc 2.38: any power of two; size need not be a multiple.
void *aligned_alloc(size_t align, size_t size) {
  if (!power_of_two(align)) {
    errno = EINVAL;
    return nullptr;
  }
  return kmalloc::alloc(size, align, 0);
}

// glibc: small alignments are malloc's, others round up to a power of two,
// and one beyond the largest power of two is EINVAL.
void *memalign(size_t align, size_t size) {
  constexpr size_t largest = (SIZE_MAX >> 1) + 1;
  if (align > largest) {
    errno = EINVAL;
    return nullptr;
  }
  if (!power_of_two(align)) align = std::bit_ceil(align);  // 0 -> 1
  return kmalloc::alloc(size, align, 0);
}

void *valloc(size_t size) { return kmalloc::alloc(size, os::page_size(), 0); }

void *pvalloc(size_t size) {
  const size_t page = os::page_size();
  if (size > SIZE_MAX - (page - 1)) return no_memory();
  size_t rounded = (size + page - 1) & ~(page - 1);
  return kmalloc::alloc(rounded ? rounded : page, page, 0);
}

size_t malloc_usable_size(const void *p) { return kmalloc::usable_size(p); }

}  // namespace sysref::kmalloc::libc
