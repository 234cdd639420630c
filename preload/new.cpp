// Every C++ operator new and delete (plain, array, nothrow, sized, aligned,
// aligned + sized, aligned nothrow), straight onto the kmalloc layer.
//
// A failing new calls the new-handler until it returns memory or there is
// none, then throws std::bad_alloc; the nothrow forms return NULL. The shim
// needs no C++ runtime: std::get_new_handler, __cxa_allocate_exception,
// __cxa_throw and std::bad_alloc's type info, vtable and destructor are weak
// references, which resolve in every program that uses operator new (it
// loads libstdc++ already). Should one be missing anyway, the failure
// aborts with a message.
#include <cstddef>
#include <cstdlib>
#include <new>

#include "../lib/os/os.hpp"
#include "shim.hpp"

namespace km = sysref::kmalloc;
using sysref::report::call;
using namespace sysref::preload;

using new_handler_fn = void (*)();
extern "C" {
new_handler_fn sr_weak_get_new_handler() __asm__("_ZSt15get_new_handlerv") __attribute__((weak));
void *__cxa_allocate_exception(size_t) __attribute__((weak));
[[noreturn]] void __cxa_throw(void *, void *, void (*)(void *)) __attribute__((weak));
extern char sr_weak_bad_alloc_typeinfo[] __asm__("_ZTISt9bad_alloc") __attribute__((weak));
extern void *sr_weak_bad_alloc_vtable[] __asm__("_ZTVSt9bad_alloc") __attribute__((weak));
void sr_weak_bad_alloc_dtor(void *) __asm__("_ZNSt9bad_allocD1Ev") __attribute__((weak));
}

namespace {

[[noreturn, gnu::cold]] void throw_bad_alloc() {
  if (!__cxa_allocate_exception || !__cxa_throw || !sr_weak_bad_alloc_typeinfo ||
      !sr_weak_bad_alloc_vtable || !sr_weak_bad_alloc_dtor)
    sysref::os::fatal("operator new", "out of memory, and no C++ runtime to throw std::bad_alloc", nullptr);
  // A std::bad_alloc is one vtable pointer (past offset-to-top and type info).
  void *e = __cxa_allocate_exception(sizeof(void *));
  *static_cast<void **>(e) = &sr_weak_bad_alloc_vtable[2];
  __cxa_throw(e, sr_weak_bad_alloc_typeinfo, sr_weak_bad_alloc_dtor);
}

// After a failed first try: the new-handler loop of [new.delete.single].
[[gnu::noinline, gnu::cold]] void *retry(size_t size, size_t align, bool nothrow) {
  for (;;) {
    void *p = km::alloc(size, align, 0);
    if (p) return p;
    new_handler_fn h = sr_weak_get_new_handler ? sr_weak_get_new_handler() : nullptr;
    if (!h) {
      if (nothrow) return nullptr;
      throw_bad_alloc();
    }
    h();  // may throw; nothrow forms never get here
  }
}

[[gnu::noinline, gnu::cold]] void *counted_get(call c, size_t size) {
  void *p = km::libc::malloc(size);
  return counted(c, size, p ? p : retry(size, 0, false));
}

// The plain forms: with counting off, a branch and a tail call.
inline void *get(call c, size_t size) {
  if (__builtin_expect(g_counting, 0)) return counted_get(c, size);
  void *p = km::libc::malloc(size);
  if (__builtin_expect(p != nullptr, 1)) return p;
  return retry(size, 0, false);
}

inline void *get_nothrow(call c, size_t size) {
  return counted(c, size, km::libc::malloc(size));  // NULL on failure, no handler (cannot catch its throw)
}

inline void *get_aligned(call c, size_t size, std::align_val_t al) {
  void *p = km::alloc(size, static_cast<size_t>(al), 0);
  if (__builtin_expect(p == nullptr, 0)) p = retry(size, static_cast<size_t>(al), false);
  return counted(c, size, p);
}

inline void *get_aligned_nothrow(call c, size_t size, std::align_val_t al) {
  return counted(c, size, km::alloc(size, static_cast<size_t>(al), 0));
}

[[gnu::noinline, gnu::cold]] void counted_put(call c, void *p) {
  count(c);
  release(p);
}

inline void put(call c, void *p) {
  if (__builtin_expect(g_counting, 0)) return counted_put(c, p);
  release(p);
}

}  // namespace

#define SR_EXPORT __attribute__((visibility("default")))

SR_EXPORT void *operator new(size_t n) { return get(call::new_, n); }
SR_EXPORT void *operator new[](size_t n) { return get(call::new_array, n); }
SR_EXPORT void *operator new(size_t n, const std::nothrow_t &) noexcept { return get_nothrow(call::new_, n); }
SR_EXPORT void *operator new[](size_t n, const std::nothrow_t &) noexcept { return get_nothrow(call::new_array, n); }
SR_EXPORT void *operator new(size_t n, std::align_val_t a) { return get_aligned(call::new_, n, a); }
SR_EXPORT void *operator new[](size_t n, std::align_val_t a) { return get_aligned(call::new_array, n, a); }
SR_EXPORT void *operator new(size_t n, std::align_val_t a, const std::nothrow_t &) noexcept {
  return get_aligned_nothrow(call::new_, n, a);
}
SR_EXPORT void *operator new[](size_t n, std::align_val_t a, const std::nothrow_t &) noexcept {
  return get_aligned_nothrow(call::new_array, n, a);
}

// The size and alignment a delete passes are not needed: the page map knows.
SR_EXPORT void operator delete(void *p) noexcept { put(call::delete_, p); }
SR_EXPORT void operator delete[](void *p) noexcept { put(call::delete_array, p); }
SR_EXPORT void operator delete(void *p, size_t) noexcept { put(call::delete_, p); }
SR_EXPORT void operator delete[](void *p, size_t) noexcept { put(call::delete_array, p); }
SR_EXPORT void operator delete(void *p, const std::nothrow_t &) noexcept { put(call::delete_, p); }
SR_EXPORT void operator delete[](void *p, const std::nothrow_t &) noexcept { put(call::delete_array, p); }
SR_EXPORT void operator delete(void *p, std::align_val_t) noexcept { put(call::delete_, p); }
SR_EXPORT void operator delete[](void *p, std::align_val_t) noexcept { put(call::delete_array, p); }
SR_EXPORT void operator delete(void *p, size_t, std::align_val_t) noexcept { put(call::delete_, p); }
SR_EXPORT void operator delete[](void *p, size_t, std::align_val_t) noexcept { put(call::delete_array, p); }
SR_EXPORT void operator delete(void *p, std::align_val_t, const std::nothrow_t &) noexcept {
  put(call::delete_, p);
}
SR_EXPORT void operator delete[](void *p, std::align_val_t, const std::nothrow_t &) noexcept {
  put(call::delete_array, p);
}
