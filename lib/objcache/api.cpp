// C ABI of the objcache layer: argument checks, then forwards into
// sysref::objcache (the fast paths are inline here).
#include <cerrno>
#include <sysref/objcache.h>

#include "cache.hpp"

namespace {
using sysref::objcache::cache;

cache *C(objcache_t *oc) { return reinterpret_cast<cache *>(oc); }
bool ok(objcache_t *oc) { return oc && C(oc)->magic == sysref::objcache::cache_magic; }

// A put must hand back an object of this cache: anything else would be
// handed out again later. The page map answers without touching obj.
bool belongs(objcache_t *oc, void *obj) { return sysref::slab::holds(C(oc)->zone, obj); }
}  // namespace

extern "C" {

objcache_t *objcache_create(const char *name, size_t size, size_t align,
                            int (*ctor)(void *, void *, int), void (*dtor)(void *, void *),
                            void *priv, size_t limit, unsigned flags) {
  if (flags != 0) return errno = EINVAL, nullptr;
  return reinterpret_cast<objcache_t *>(
      sysref::objcache::create({name, size, align, ctor, dtor, priv, limit, false}));
}

void *objcache_get(objcache_t *oc, int flags) {
  if (!ok(oc)) return errno = EINVAL, nullptr;
  return sysref::objcache::get_inline(C(oc), flags);
}

void objcache_put(objcache_t *oc, void *obj) {
  if (!ok(oc) || !obj || !belongs(oc, obj))
    return sysref::os::report_error("objcache_put: object not from this cache", ok(oc) ? C(oc)->name : nullptr, obj);
  sysref::objcache::put_inline(C(oc), obj);
}

void objcache_dtor(objcache_t *oc, void *obj) {
  if (!ok(oc) || !obj || !belongs(oc, obj))
    return sysref::os::report_error("objcache_dtor: object not from this cache", ok(oc) ? C(oc)->name : nullptr, obj);
  sysref::objcache::put_unconstructed(C(oc), obj);
}

size_t objcache_reclaim(objcache_t *oc) { return ok(oc) ? sysref::objcache::reclaim(C(oc)) : 0; }
size_t objcache_reclaim_all(void) { return sysref::objcache::reclaim_all(); }

void objcache_destroy(objcache_t *oc) {
  if (!ok(oc)) return sysref::os::report_error("objcache_destroy: not a cache", nullptr, oc);
  sysref::objcache::destroy(C(oc));
}

int objcache_stats(objcache_t *oc, struct objcache_stats *out) {
  int r = sysref::objcache::stats(C(oc), out);
  return r < 0 ? (errno = -r, -1) : 0;
}
}
