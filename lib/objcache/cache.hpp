// Private to lib/objcache: the cache structure, the depot, and the inline
// get/put fast paths. The theory statement is at the top of cache.cpp.
#pragma once
#include <atomic>

#include "../os/os.hpp"
#include "../percpu/percpu.hpp"
#include "magazine.hpp"
#include "objcache.hpp"

namespace sysref::objcache {

inline constexpr uint64_t cache_magic = 0x53595352454f4343ull;  // "SYSREOCC"
// Where a put leaves an object when neither a magazine nor the depot can be
// had without waiting (a signal handler that interrupted this cache's own
// slow path): constructed objects, taken back by get_slow and reclaim.
inline constexpr int spill_slots = 16;

struct depot {
  os::lock lock;
  magazine *full = nullptr, *empty = nullptr;
  size_t nfull = 0, nempty = 0;
  uint64_t full_rounds = 0;           // objects in full magazines
  size_t min_full = 0, min_empty = 0; // fewest seen this interval: the unneeded
  uint64_t interval_start = 0;        // ns
  uint64_t waits_this_interval = 0;   // lock acquisitions that had to wait
  uint64_t last_get_ns = 0;           // a get last came to the depot, or was seen (scavenge)
  uint64_t gets_seen = 0;             // the cache's gets at the last scavenge
  uint64_t last_take_ns = 0;          // a get last took a full magazine (the cap)
};

struct cache : cache_head {  // the head first: objcache.hpp reads it inline
  char name[32];
  size_t objsize;
  ctor_fn ctor;
  dtor_fn dtor;
  void *priv;
  size_t limit;
  // Gets sleeping at the limit; changed with put_word, under dep.lock.
  std::atomic<uint32_t> waiters;
  bool internal;
  size_t slot;                        // per-CPU: loaded magazine at +16, previous at +24
  std::atomic<uint32_t> limit_seq;    // futex word: bumped when an object is destroyed
  std::atomic<uint64_t> existing;     // constructed objects, live or cached (the limit)
  std::atomic<unsigned> mag_index;    // size of new magazines: mag_sizes[mag_index]
  depot dep;
  // Counts folded out of magazine words, and the slow paths' own events.
  std::atomic<uint64_t> gets, puts, ctor_calls, dtor_calls, slab_allocs, slab_frees, reaped;
  std::atomic<uint64_t> exchanges, contention, resizes, ctor_failures, limit_waits;
  // Most objects that existed at once (live + cached): raised in construct(),
  // the only place they grow, so it costs nothing on the magazine paths.
  std::atomic<uint64_t> peak_existing;
  // Folds of a loaded magazine's counters, begun and done: between the two
  // the counts are in neither the word nor the totals, and stats reads again.
  std::atomic<uint64_t> folds_begun, folds_done;
  std::atomic<void *> spill[spill_slots];
  // The registry (reclaim_all, the reap thread): serial orders the walk,
  // pins keep the cache alive while a walker works on it without the lock.
  cache *next_cache;
  uint64_t serial;
  std::atomic<uint32_t> pins;

  size_t prev_off() const { return loaded_off + 8; }
};

// Depot (depot.cpp): called with c->dep.lock held unless said otherwise.
// Takes the depot lock as w allows (false: not taken), counting contention.
bool depot_acquire(cache *c, os::wait w = os::wait::yes);
magazine *depot_take_full(cache *c);
magazine *depot_take_empty(cache *c);
void depot_give(cache *c, magazine *m);  // files it by fullness, counters folded
void fold(cache *c, uint64_t word);      // a magazine word's counts into the totals
// Destructs the rounds of a chain of magazines and frees them; bytes returned.
size_t drain_magazines(cache *c, magazine *chain);  // without the lock
// Ends the interval if it is due (the clock is read here, under the lock):
// returns magazines to drain (without lock).
magazine *reap_if_due(cache *c);
void destruct(cache *c, void *obj);  // dtor, back to the slab, limit accounting
void destruct_batch(cache *c, void *const *objs, uint32_t n);  // the same, one slab batch
// Moves every CPU's magazines into the depot (without the lock): objects
// cached on CPUs whose threads no longer call the cache come back within
// reach. True if any held rounds.
bool pull_cached_into_depot(cache *c, os::wait w);

// Spilled objects (lock-free): one back, or every one for destruction.
void *spill_take(cache *c);
size_t spill_drain(cache *c);  // destructs them; bytes given back

// How long a cache's depot goes untouched by gets before the cache counts
// as idle: SYSREF_DECAY_MS, or an eighth of it for a cache without a ctor.
// Such a cache's objects are only memory, and one cached in a size class
// the program has left pins a whole slab that every other class could use
// (a string grown through the classes leaves a few magazines in each).
inline constexpr uint64_t ctorless_idle_divisor = 8;
inline uint64_t idle_after_ns(const cache *c) {
  uint64_t delay = uint64_t{os::opts().decay_ms} * 1000000u;
  return c->ctor ? delay : delay / ctorless_idle_divisor;
}

// Empties the depots and CPU magazines of idle caches (their objects go
// back to the slabs, and the slabs to the pool that every zone draws on),
// then ticks the slab layer's decay and the layer above's hook.
// maybe_scavenge: twice per idle period of a cache without a ctor, only
// where no library lock is held, and only caches without a dtor (a
// program's dtor must not run inside an unrelated allocation); the reaper
// does them all.
void maybe_scavenge();
void scavenge(bool with_dtors);

void registry_add(cache *c);
// Starts the SYSREF_REAP_THREAD reaper if it is wanted, not yet running,
// and this thread holds no library lock (registry_add, get_slow).
void maybe_start_reaper();
// Out of the registry, once no walker works on it any more.
void registry_remove(cache *c);

}  // namespace sysref::objcache
