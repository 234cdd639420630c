// lib/objcache: object caches with per-CPU magazines over slab zones. This
// header is the layer's interface (kmalloc and sysref build on it).
#pragma once
#include <cstddef>
#include <cstdint>

#include <sysref/objcache.h>

#include "../percpu/percpu.hpp"
#include "../slab/slab.hpp"

namespace sysref::objcache {

// The start of every cache: what the inline fast paths and the C ABI's
// checks read, in one cache line. They read nothing in its first word: a
// cache and its first magazines tend to lie at the same offset in their
// slabs (both zones start objects after the same header), and a load from
// the address of the magazine's word modulo 4 KiB waits behind the store
// that every get and put makes to that word (4K aliasing).
struct cache_head {
  size_t loaded_off;              // per-CPU slot word of the loaded magazine (previous: +8)
  uint64_t magic;                 // cache_magic while the cache exists
  // Where get and put run their restartable sequence: CPU 0's word of the
  // loaded magazine (CPU n's is n areas on), or, in lock mode, a word that
  // is always empty (percpu::fast_path_word), so that the sequence refuses
  // and the out-of-line path takes the slot lock: no mode test inline.
  uintptr_t fast_word;
  // put's: fast_word, or the always-empty word while a get sleeps at the
  // object limit, so that every put refuses and put_refused hands its
  // object to the waiter (destroys it): no test of waiters inline.
  uintptr_t put_word;
  slab::zone *zone;
  slab::start_test starts;        // of zone's objects: put's check, without touching the zone
};
static_assert(sizeof(cache_head) <= 64, "one cache line");
struct cache;

using ctor_fn = int (*)(void *obj, void *priv, int flags);
using dtor_fn = void (*)(void *obj, void *priv);

struct params {
  const char *name;
  size_t size, align;
  ctor_fn ctor;
  dtor_fn dtor;
  void *priv;
  size_t limit;    // 0: none
  bool internal;   // the library's own: not listed for objcache_reclaim_all's report
};

// Functions returning int give 0 on success, -errno on failure.
cache *create(const params &p);
void destroy(cache *c);
void *get(cache *c, int flags);       // NULL + errno (ENOMEM, or the ctor's error)
void put(cache *c, void *obj);
void put_unconstructed(cache *c, void *obj);  // objcache_dtor: destroy, never cache
size_t reclaim(cache *c);             // bytes given back
size_t reclaim_all();
int stats(cache *c, struct objcache_stats *out);

slab::zone *zone_of(const cache *c);  // where the cache's objects live
const char *name_of(const cache *c);
// Most objects the cache held at once, live and cached together (an upper
// bound of the live peak; tracked where objects are made, off the fast path).
uint64_t peak_objects(const cache *c);
// Calls fn on every cache not marked internal (the program's own, and the
// SYSREF classes' caches; not the size classes), pinned, with no lock
// held, newest first; stops when fn returns non-zero, and returns that.
int for_each_public(int (*fn)(cache *c, void *arg), void *arg);
size_t object_size(const cache *c);

// Called with the scavenge (from slow paths and the reaper, rate-limited):
// the layer above gives back what it keeps on its own timer (kmalloc's kept
// large mappings). One hook; set once.
void set_decay_hook(void (*fn)());

// fork (the preload shim's atfork handlers): the registry lock, then every
// registered cache's depot lock (the registry stays held: no cache comes or
// goes meanwhile). Released in the parent and in the child; the child has
// no reaper thread (SYSREF_REAP_THREAD): the next cache made starts one.
void prefork();
void postfork_parent();
void postfork_child();

void *get_slow(cache *c, int flags);
void put_slow(cache *c, void *obj);

// Where get_inline and put_inline go when their sequence refuses (api.cpp):
// out of line, so that the fast paths need no stack frame and end in a
// return or a tail call. In lock mode (every call comes here) the
// slot-locked pop or push; in rseq mode a swap with the previous magazine;
// then the slow path.
[[gnu::noinline]] void *get_refused(cache *c, int flags);
[[gnu::noinline]] void put_refused(cache *c, void *obj);

// A cache's fast-path word, fixed while the cache exists, for a layer that
// keeps it beside its own lookup of the cache (kmalloc's size tables): then
// get_at pops with it and the get reads no line of the cache. get_at gives
// obj, never NULL, or false: call get_refused.
inline uintptr_t fast_word_of(const cache *c) { return reinterpret_cast<const cache_head *>(c)->fast_word; }
SR_RSEQ_FN bool get_at(uintptr_t fast_word, void *&obj) {
  uintptr_t o;
  if (!percpu::stack_pop_rseq(fast_word, o)) return false;
  obj = reinterpret_cast<void *>(o);
  return true;
}

// get and put, inline for the layers above: one restartable sequence on the
// loaded magazine. obj must belong to the cache (callers check; see
// slab::holds). put, and get with SR_NOWAIT, are async-signal-safe: they
// never wait for a lock the interrupted frame may hold (cache.cpp, Signals).
SR_RSEQ_FN void *get_inline(cache *c, int flags) {
  if (void *obj; __builtin_expect(get_at(fast_word_of(c), obj), 1)) return obj;
  return get_refused(c, flags);
}

// The push on a word: put_inline's on the cache's put_word, or a layer
// above's on the fast word it keeps for a cache made with no limit (kmalloc's
// zone lines: nobody ever waits at such a cache, so its put_word is always
// its fast word). false: call put_refused.
SR_RSEQ_FN bool put_at(uintptr_t fast_word, void *obj) {
  return percpu::stack_push_rseq(fast_word, reinterpret_cast<uintptr_t>(obj));
}

SR_RSEQ_FN void put_inline(cache *c, void *obj) {
  uintptr_t word = __atomic_load_n(&reinterpret_cast<cache_head *>(c)->put_word, __ATOMIC_RELAXED);
  if (__builtin_expect(put_at(word, obj), 1)) return;
  put_refused(c, obj);
}

}  // namespace sysref::objcache
