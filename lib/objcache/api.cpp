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
// handed out again later. The page map answers without touching obj: this
// is slab::holds, with owner_of's test of the foreign-owner bit left out,
// because a zone's address never has that bit: an entry that equals the
// zone is a slab of the zone, and a foreign entry never equals it. The
// object-start test is the cache's copy of the zone's (slab::start_test),
// in the cache line the put reads anyway. NULL needs no test of its own:
// slabs are aligned to their size (64 KiB at least), so one holding
// address 0 would start there, and nothing is ever mapped at 0: the page
// map has no owner for it.
//
// put reads no magic: for a pointer that is not a cache, the word where a
// cache keeps its zone would have to equal the page map's owner of obj, and
// a destroyed cache's start test admits nothing (destroy clears it); the
// refusal then says which it was. objcache_dtor, off the fast path, checks
// the magic first as well.
bool belongs(objcache_t *oc, void *obj) {
  const cache *c = C(oc);
  static_assert(sysref::slab::pagemap::foreign_owner_bit == 1, "zones are at least 2-aligned");
  auto p = reinterpret_cast<uintptr_t>(obj);
  return sysref::slab::pagemap::get(p) == c->zone && c->starts(p);
}

// The refusals, out of the way of the fast paths.
[[gnu::cold, gnu::noinline]] void *bad_get(void) { return errno = EINVAL, nullptr; }
[[gnu::cold, gnu::noinline]] void refuse(const char *not_ours, const char *not_cache, objcache_t *oc,
                                         void *obj) {
  if (ok(oc)) return sysref::os::report_error(not_ours, C(oc)->name, obj);
  sysref::os::report_error(not_cache, nullptr, oc);
}
}  // namespace

namespace sysref::objcache {
// In rseq mode the usual refusal is a loaded magazine that ran empty (full)
// while the previous one has rounds (room): once per magazine's worth of
// gets (puts) when a CPU juggles about a magazine of objects. That swap and
// the retried section are done here, short of the slow path's set-up.
void *get_refused(cache *c, int flags) {
  if (percpu::rseq_mode()) {
    if (void *obj; percpu::stack_swap_if(c->loaded_off, true) && get_at(c->fast_word, obj)) return obj;
    return get_slow(c, flags);
  }
  os::wait w = flags & SR_NOWAIT ? os::wait::no : os::wait::yes;
  if (uintptr_t obj = percpu::stack_pop(c->loaded_off, w); __builtin_expect(obj > percpu::stack_fold_due, 1))
    return reinterpret_cast<void *>(obj);
  return get_slow(c, flags);
}

void put_refused(cache *c, void *obj) {
  // A waiter at the limit sends the object to put_slow (which destroys it)
  // before any push, as put_inline does.
  if (c->waiters.load(std::memory_order_relaxed) == 0) {
    auto o = reinterpret_cast<uintptr_t>(obj);
    if (percpu::rseq_mode() ? percpu::stack_swap_if(c->loaded_off, false) && put_at(c->fast_word, obj)
                            : percpu::stack_push(c->loaded_off, o, os::wait::unless_reentered))
      return;
  }
  put_slow(c, obj);
}
}  // namespace sysref::objcache

extern "C" {

objcache_t *objcache_create(const char *name, size_t size, size_t align,
                            int (*ctor)(void *, void *, int), void (*dtor)(void *, void *),
                            void *priv, size_t limit, unsigned flags) {
  if (flags != 0) return errno = EINVAL, nullptr;
  return reinterpret_cast<objcache_t *>(
      sysref::objcache::create({name, size, align, ctor, dtor, priv, limit, false}));
}

SR_FAST_ENTRY void *objcache_get(objcache_t *oc, int flags) {
  if (__builtin_expect(!ok(oc), 0)) return bad_get();
  return sysref::objcache::get_inline(C(oc), flags);
}

SR_FAST_ENTRY void objcache_put(objcache_t *oc, void *obj) {
  if (__builtin_expect(!oc || !belongs(oc, obj), 0))
    return refuse("objcache_put: object not from this cache", "objcache_put: not a cache", oc, obj);
  sysref::objcache::put_inline(C(oc), obj);
}

void objcache_dtor(objcache_t *oc, void *obj) {
  if (__builtin_expect(!ok(oc) || !belongs(oc, obj), 0))
    return refuse("objcache_dtor: object not from this cache", "objcache_dtor: not a cache", oc, obj);
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
