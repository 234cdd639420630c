// Pointers the shim did not allocate: blocks from before it was loaded, from
// __libc_malloc called directly inside the C library, or from a library
// bound with RTLD_DEEPBIND. The page map does not know them, so they go back
// to the C library's own functions, looked up once by the library
// constructor (dlsym(RTLD_NEXT, ...) finds the next definition after the
// shim: glibc's). No lookup ever happens on an allocation path.
#include <cerrno>
#include <cstring>
#include <dlfcn.h>

#include "shim.hpp"

namespace sysref::preload {
namespace {

struct libc_fns {
  void (*free)(void *);
  size_t (*usable_size)(void *);
};
constinit libc_fns g_libc{nullptr, nullptr};

}  // namespace

void resolve_libc() {
  if (g_libc.free) return;
  g_libc.usable_size = reinterpret_cast<size_t (*)(void *)>(dlsym(RTLD_NEXT, "malloc_usable_size"));
  g_libc.free = reinterpret_cast<void (*)(void *)>(dlsym(RTLD_NEXT, "free"));
}

void foreign_free(void *p) {
  count(report::call::foreign_free);
  // Before the constructor there is no C library free to call: leave the
  // block alone (a leak), never give it to the wrong allocator.
  if (g_libc.free) g_libc.free(p);
}

size_t foreign_usable_size(void *p) { return g_libc.usable_size ? g_libc.usable_size(p) : 0; }

void *foreign_realloc(void *p, size_t size) {
  if (size == 0) {  // glibc: realloc(p, 0) frees p
    foreign_free(p);
    return nullptr;
  }
  void *q = kmalloc::libc::malloc(size);
  if (!q) return nullptr;  // p untouched
  size_t old = foreign_usable_size(p);
  // Without the C library's usable size nothing tells how much p holds:
  // refuse rather than read past its end.
  if (!g_libc.usable_size) {
    kmalloc::libc::free(q);
    errno = ENOMEM;
    return nullptr;
  }
  std::memcpy(q, p, old < size ? old : size);
  foreign_free(p);
  return q;
}

}  // namespace sysref::preload
