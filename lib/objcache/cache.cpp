// Object caches: Bonwick & Adams magazines over kmalloc_obj slab zones.
//
// Theory
// ------
// Vocabulary.
//   object    memory of the cache's size, in its constructed state (the ctor
//             ran when the cache took it from the slab layer; the dtor runs
//             when the cache gives it back). Get and put never construct.
//   round     one constructed object held in a magazine.
//   magazine  a stack of up to M rounds. Each CPU has two in its per-CPU
//             slot: the loaded one, which get pops from and put pushes to in
//             a restartable sequence, and the previous one.
//   depot     per cache, under one lock: a list of full magazines, a list of
//             empty ones, and the working-set bookkeeping.
//   working   the depot magazines that an interval actually needed. The
//   set       fewest full (and empty) magazines the depot held during an
//             interval were not needed; reaping returns that many.
//
// Paths.
//   get: pop from the loaded magazine. If it is empty and the previous one
//        has rounds, swap them. Otherwise trade the empty previous magazine
//        for a full one from the depot (loaded becomes previous). With no
//        full magazine in the depot, take an object from the slab layer and
//        construct it. If that fails for want of memory, bring every CPU's
//        magazines into the depot and look again (objects put on a CPU that
//        a thread has left).
//   put: push onto the loaded magazine. If it is full and the previous one
//        has room, swap them. Otherwise trade the full previous magazine for
//        an empty one from the depot (or a new one). If no magazine can be
//        had, destruct the object and give it to the slab layer: a put never
//        depends on fresh memory.
//   So a CPU visits the depot at most once every M gets or M puts, and a
//   thrashing get/put pair at a magazine boundary stays on the CPU.
//
// Invariants.
//   - A magazine is in exactly one place: a CPU slot (loaded or previous),
//     a depot list, or in the hands of the slow path that just took it.
//   - Only the CPU whose slot holds a magazine as loaded changes its word
//     (rseq); a previous magazine is not written until it is loaded again.
//     Slow paths change slots with compare_store_pair, which fails if the
//     slot changed since they looked, so nothing is lost or duplicated.
//   - Get and put counts live in each magazine's word until it leaves a
//     slot (or the word nears overflow): then fold() moves them to the
//     cache's totals, under the depot lock. Depot magazines hold no counts.
//     gets == puts + live, where objcache_dtor counts as a put.
//   - With a limit, `existing` (live + cached) never exceeds it.
//   - Cached objects are in magazines or in the spill slots; nowhere else.
//
// Signals. A put, and a get with SR_NOWAIT, may run in a signal handler that
// interrupted this very thread inside the library, perhaps holding the depot
// lock or (lock mode) the slot lock they need. So they never wait for a lock
// while the thread holds one (os::wait::unless_reentered; SR_NOWAIT never
// waits at all), and every loop gives up after a few passes that found
// locks out of reach: a get then fails with ENOMEM, a put leaves its object
// in a spill slot (lock-free), or, with all slots taken, destructs it.
//
// Lock order: registry lock, then a cache's depot lock, then the slab layer's
// zone locks (taken by slab::alloc/free). Ctors and dtors run with no
// library lock held: reclaim_all and the reaper pin each cache and drop the
// registry lock before they drain it.
#include <cerrno>
#include <cstring>

#include "cache.hpp"

namespace sysref::objcache {
namespace {

constinit slab::lazy_zone g_caches{{}, "sysref.caches", sizeof(cache), 64};
slab::zone *cache_zone() { return g_caches.get(); }

// Admits one more object under the limit; false when at it.
bool admit(cache *c) {
  if (!c->limit) return true;
  uint64_t n = c->existing.load(std::memory_order_relaxed);
  while (n < c->limit)
    if (c->existing.compare_exchange_weak(n, n + 1, std::memory_order_relaxed)) return true;
  return false;
}

void unadmit(cache *c, uint64_t n = 1) {
  if (!c->limit) return;
  c->existing.fetch_sub(n, std::memory_order_relaxed);
  c->limit_seq.fetch_add(1, std::memory_order_release);
  if (c->waiters.load(std::memory_order_relaxed)) os::futex_wake(&c->limit_seq, 1 << 30);
}

// n objects came from the slab layer: counted, and the peak raised.
void note_made(cache *c, uint64_t n) {
  uint64_t made = c->slab_allocs.fetch_add(n, std::memory_order_relaxed) + n;
  uint64_t exist = made - c->slab_frees.load(std::memory_order_relaxed);
  os::raise_peak(c->peak_existing, exist);
}

// An object from the slab layer, constructed; nullptr with errno.
void *construct(cache *c, int flags) {
  void *obj = slab::alloc(c->zone, flags & (SR_NOWAIT | SR_USE_RESERVE));
  if (!obj) {
    unadmit(c);
    return nullptr;
  }
  note_made(c, 1);
  if (c->ctor) {
    int err = c->ctor(obj, c->priv, flags);
    c->ctor_calls.fetch_add(1, std::memory_order_relaxed);
    if (err) {
      c->ctor_failures.fetch_add(1, std::memory_order_relaxed);
      slab::free(c->zone, obj);
      c->slab_frees.fetch_add(1, std::memory_order_relaxed);
      unadmit(c);
      errno = err;
      return nullptr;
    }
  }
  return obj;
}

// A get begins (+1) or ends (-1) a wait at the limit. Under the depot lock,
// so that put_word always matches the count: the last waiter to leave must
// not restore the fast word after a new one arrived and cleared it.
void add_waiter(cache *c, int delta) {
  c->dep.lock.acquire(os::wait::yes);
  uint32_t n = c->waiters.load(std::memory_order_relaxed) + delta;
  c->waiters.store(n, std::memory_order_relaxed);
  __atomic_store_n(&c->put_word, n ? percpu::refusing_word() : c->fast_word, __ATOMIC_RELAXED);
  c->dep.lock.release();
}

// Sleeps until an object is destroyed (or a little while passes: objects can
// also come back to the depot, which the caller checks again).
void wait_at_limit(cache *c) {
  uint32_t seq = c->limit_seq.load(std::memory_order_acquire);
  add_waiter(c, 1);
  c->limit_waits.fetch_add(1, std::memory_order_relaxed);
  if (c->existing.load(std::memory_order_relaxed) >= c->limit) os::futex_wait_for(&c->limit_seq, seq, 10);
  add_waiter(c, -1);
}

}  // namespace

void destruct(cache *c, void *obj) { destruct_batch(c, &obj, 1); }

void destruct_batch(cache *c, void *const *objs, uint32_t n) {
  if (!n) return;  // an empty magazine: no count to change, no waiter to wake
  if (c->dtor) {
    for (uint32_t i = 0; i < n; ++i) c->dtor(objs[i], c->priv);
    c->dtor_calls.fetch_add(n, std::memory_order_relaxed);
  }
  slab::free_batch(c->zone, objs, n);
  c->slab_frees.fetch_add(n, std::memory_order_relaxed);
  unadmit(c, n);
}

// The slow paths never read a magazine that the slot named a moment ago: by
// then this CPU may have given it away and it may be freed. Decisions about
// the slot's magazines happen inside restartable sequences (stack_swap_if,
// stack_take_counts); depot exchanges compare only the slot's pointers, and
// examine the magazine they take out only once the commit made it theirs.
namespace {

uintptr_t as_word(magazine *m) { return reinterpret_cast<uintptr_t>(m); }

// Full magazines the depot of a cache without a ctor keeps; more go back to
// the slab layer at once. Its objects cost nothing to make again, while
// objects parked in a size class the program has moved on from (a string
// that grew into the next class) would keep whole slabs from every other
// class. Two per CPU cover a producer/consumer hand-off.
size_t depot_cap() { return 2 * size_t{percpu::ncpus()} + 2; }

// No get took a full magazine from the depot for the cache's idle period
// (lock held): what comes in is not being recycled. A program that frees a
// batch and allocates it again keeps its depot warm, and so keeps the batch.
bool cold(const cache *c) {
  uint64_t now = os::coarse_now_ns();  // under the lock: never before last_take_ns
  return now - c->dep.last_take_ns >= idle_after_ns(c);
}

// Trades the slot's previous magazine for m: {loaded, prev} -> {m, loaded}.
// On success the old previous magazine goes to the depot (lock held).
// With excess (a put), when the depot of a cache without a ctor already
// holds depot_cap full magazines and no get took one for its idle period,
// the loaded magazine is traded instead, {loaded, prev} -> {m, prev}, and
// goes to *excess, for the caller to give back to the slab layer once the
// lock is dropped: its objects were freed last, so their lines are the ones
// still in cache when the slab layer writes them.
bool exchange(cache *c, magazine *m, os::wait w, magazine **excess = nullptr) {
  unsigned cpu = percpu::current_cpu();
  uintptr_t loaded = percpu::peek(cpu, c->loaded_off), prev = percpu::peek(cpu, c->prev_off());
  const bool overflow = excess && !c->ctor && c->dep.nfull >= depot_cap() && cold(c);
  if (!percpu::compare_store_pair(c->loaded_off, loaded, prev, as_word(m), overflow ? prev : loaded, w))
    return false;
  c->exchanges.fetch_add(1, std::memory_order_relaxed);
  uintptr_t out = overflow ? loaded : prev;
  if (!out) return true;
  auto *old = reinterpret_cast<magazine *>(out);
  uint64_t word = old->word;
  if (overflow && rounds_of(word)) {
    fold(c, word);
    old->word = word & percpu::stack_count_mask;
    old->next = *excess;
    *excess = old;
  } else {
    depot_give(c, old);
  }
  return true;
}

// A cache without a ctor whose depot is dry takes a batch of objects from
// the slab layer at once and loads them in a magazine (its depot lock once
// per batch, not once per object); nullptr: the caller makes one object.
void *fill_from_slab(cache *c, int flags, os::wait w) {
  magazine *m = nullptr;
  if (depot_acquire(c, w)) {
    m = depot_take_empty(c);
    c->dep.lock.release();
  }
  if (!m) m = mag_alloc(c->mag_index.load(std::memory_order_relaxed), flags & SR_NOWAIT);
  if (!m) return nullptr;
  // About a page of objects, at least 4: a class used for one block at a
  // time must not fault in a whole magazine of big objects (and a larger
  // batch measured no faster on the workloads).
  size_t want = (size_t{4} << 10) / c->objsize;
  uint32_t n = 0, fill = want < 4 ? 4 : want > m->capacity ? m->capacity : static_cast<uint32_t>(want);
  while (n < fill) {
    void *obj = slab::alloc(c->zone, flags & (SR_NOWAIT | SR_USE_RESERVE));
    if (!obj) break;
    items(m)[n++] = obj;
  }
  if (n) note_made(c, n);
  if (n < 2 || !depot_acquire(c, w)) {  // too little to load: hand out one, keep the rest
    void *obj = n ? items(m)[--n] : nullptr;
    slab::free_batch(c->zone, items(m), n);
    c->slab_frees.fetch_add(n, std::memory_order_relaxed);
    mag_free(m);
    if (obj) c->gets.fetch_add(1, std::memory_order_relaxed);
    return obj;
  }
  void *obj = items(m)[--n];
  m->word = n;  // rounds, no counts
  if (!exchange(c, m, w)) depot_give(c, m);  // the slot moved: the next get finds it there
  c->dep.lock.release();
  c->gets.fetch_add(1, std::memory_order_relaxed);
  return obj;
}

// Moves the loaded magazine's counts to the totals (they near overflow).
// No lock: the begun/done pair tells a statistics reader to read again.
void fold_loaded(cache *c, os::wait w) {
  c->folds_begun.fetch_add(1, std::memory_order_seq_cst);  // before the word changes
  uint64_t word;
  if (percpu::stack_take_counts(c->loaded_off, &word, w)) fold(c, word);
  c->folds_done.fetch_add(1, std::memory_order_release);
}

bool spill_put(cache *c, void *obj) {
  for (auto &slot : c->spill) {
    void *expected = nullptr;
    if (slot.load(std::memory_order_relaxed) == nullptr &&
        slot.compare_exchange_strong(expected, obj, std::memory_order_release, std::memory_order_relaxed))
      return true;
  }
  return false;
}

// Passes through a slow path that found its locks out of reach before it
// settles for the lock-free way out.
constexpr int max_blocked_passes = 2;

}  // namespace

void *spill_take(cache *c) {
  for (auto &slot : c->spill)
    if (slot.load(std::memory_order_relaxed))
      if (void *obj = slot.exchange(nullptr, std::memory_order_acquire)) return obj;
  return nullptr;
}

size_t spill_drain(cache *c) {
  size_t n = 0;
  while (void *obj = spill_take(c)) {
    destruct(c, obj);
    ++n;
  }
  return n * c->objsize;
}

void *get_slow(cache *c, int flags) {
  // SR_NOWAIT never waits for a lock; a plain get waits as long as it takes.
  const bool nowait = flags & SR_NOWAIT;
  const os::wait w = nowait ? os::wait::no : os::wait::yes;
  maybe_start_reaper();
  for (int blocked = 0, pulls = 0;;) {
    uintptr_t obj = percpu::stack_pop(c->loaded_off, w);
    if (obj > percpu::stack_fold_due) return reinterpret_cast<void *>(obj);
    if (obj == percpu::stack_fold_due) {
      fold_loaded(c, w);
      if (!nowait || ++blocked <= max_blocked_passes) continue;
    }
    if (percpu::stack_swap_if(c->loaded_off, true, w)) continue;  // previous has rounds
    if (blocked <= max_blocked_passes && depot_acquire(c, w)) {
      c->dep.last_get_ns = os::coarse_now_ns();  // under the lock: scavenge compares against it
      magazine *reap = nowait ? nullptr : reap_if_due(c);  // reaping runs dtors: not here
      magazine *full = depot_take_full(c);
      if (full) c->dep.last_take_ns = c->dep.last_get_ns;
      bool traded = full && exchange(c, full, w);
      if (full && !traded) depot_give(c, full);  // the slot moved (or is out of reach): look again
      c->dep.lock.release();
      if (reap) drain_magazines(c, reap);
      if (full) {
        if (!traded && nowait) ++blocked;
        continue;
      }
    }
    if (void *spilled = spill_take(c)) {
      c->gets.fetch_add(1, std::memory_order_relaxed);
      return spilled;
    }
    // The depot is dry: make an object.
    if (!admit(c)) {
      // At the limit, objects may sit cached on CPUs whose threads will not
      // call the cache again: bring them into the depot before giving up.
      if (pull_cached_into_depot(c, w) && ++pulls < 64) continue;
      if (nowait) {
        errno = ENOMEM;
        return nullptr;
      }
      wait_at_limit(c);
      continue;
    }
    if (!nowait) maybe_scavenge();  // about to grow: first let idle caches give back
    if (!c->ctor && !c->dtor && !c->limit)
      if (void *obj = fill_from_slab(c, flags, w)) return obj;
    int before = errno;
    void *made = construct(c, flags);
    if (made) {
      c->gets.fetch_add(1, std::memory_order_relaxed);
      return made;
    }
    // Out of memory, objects may still sit cached on other CPUs (a thread
    // that moved left them there): into the depot with them, and look again.
    // Not for SR_NOWAIT, which also fails when a lock is merely busy: that
    // must not take every CPU's magazines away.
    if (!nowait && errno == ENOMEM && pull_cached_into_depot(c, w) && ++pulls < 64) {
      errno = before;
      continue;
    }
    return nullptr;
  }
}

void put_slow(cache *c, void *obj) {
  // A put may end in munmap (slabs going back to the OS): callers such as
  // free() must see errno unchanged.
  int saved = errno;
  struct restore {
    int v;
    ~restore() { errno = v; }
  } keep{saved};
  // A put never waits for a lock its own thread may hold (a signal handler).
  const os::wait w = os::wait::unless_reentered;
  const bool reentered = os::reentered();
  for (int pass = 0;; ++pass) {
    if (c->waiters.load(std::memory_order_relaxed)) break;  // hand room to a waiting get
    if (percpu::stack_push(c->loaded_off, reinterpret_cast<uintptr_t>(obj), w)) return;
    if (percpu::stack_swap_if(c->loaded_off, false, w)) continue;  // previous has room
    if (reentered && pass > max_blocked_passes) break;
    if (pass == 0) maybe_scavenge();  // a depot trip: the scavenge's rate limit is one clock read
    if (!depot_acquire(c, w)) break;
    magazine *reap = reentered ? nullptr : reap_if_due(c);  // reaping runs dtors: not here
    magazine *empty = depot_take_empty(c);
    c->dep.lock.release();
    if (reap) drain_magazines(c, reap);
    // A put does not depend on fresh memory: if no magazine can be had, the
    // object goes straight back to the slab layer. (A new magazine's memory
    // may be mapped here; it is metadata, never the objects' memory.)
    if (!empty) empty = mag_alloc(c->mag_index.load(std::memory_order_relaxed), reentered ? SR_NOWAIT : 0);
    if (!empty) break;
    if (!depot_acquire(c, w)) {
      mag_free(empty);
      break;
    }
    magazine *excess = nullptr;
    if (!exchange(c, empty, w, &excess)) depot_give(c, empty);
    c->dep.lock.release();
    if (excess) drain_magazines(c, excess);  // past the depot's cap: back to the slabs
  }
  c->puts.fetch_add(1, std::memory_order_relaxed);
  // In a handler, keep the object constructed in a spill slot rather than
  // run its dtor there.
  if (reentered && spill_put(c, obj)) return;
  destruct(c, obj);
}

void put_unconstructed(cache *c, void *obj) {
  c->puts.fetch_add(1, std::memory_order_relaxed);
  destruct(c, obj);
}

cache *create(const params &p) {
  if (p.size == 0 || p.size > slab::max_object) {
    errno = EINVAL;
    return nullptr;
  }
  slab::zone *cz = cache_zone();
  if (!cz) return nullptr;
  auto *c = static_cast<cache *>(slab::alloc(cz, 0));
  if (!c) return nullptr;
  std::memset(static_cast<void *>(c), 0, sizeof *c);
  c->zone = slab::zone_create(p.name, p.size, p.align, 0);
  long slot = c->zone ? percpu::slot_alloc() : -1;
  if (slot < 0) {
    int err = errno;
    if (c->zone) slab::zone_destroy(c->zone);
    slab::free(cz, c);
    errno = err;
    return nullptr;
  }
  c->magic = cache_magic;
  std::strncpy(c->name, p.name ? p.name : "(unnamed)", sizeof c->name - 1);
  c->objsize = slab::object_size(c->zone);
  c->ctor = p.ctor;
  c->dtor = p.dtor;
  c->priv = p.priv;
  c->limit = p.limit;
  c->internal = p.internal;
  c->slot = static_cast<size_t>(slot);
  c->loaded_off = c->slot + 16;
  c->fast_word = c->put_word = percpu::fast_path_word(c->loaded_off);
  c->starts = slab::start_test_of(slab::geometry_of(c->zone));
  c->dep.interval_start = c->dep.last_get_ns = os::coarse_now_ns();
  c->mag_index.store(initial_mag_index(c->objsize), std::memory_order_relaxed);
  registry_add(c);
  return c;
}

void destroy(cache *c) {
  registry_remove(c);
  // No one uses the cache any more (the caller's promise): take every CPU's
  // magazines straight out of the slots.
  magazine *chain = nullptr;
  auto take = [&](magazine *m) {
    if (!m) return;
    m->next = chain;
    chain = m;
  };
  for (unsigned cpu = 0; cpu < percpu::ncpus(); ++cpu) {
    take(reinterpret_cast<magazine *>(percpu::peek(cpu, c->loaded_off)));
    take(reinterpret_cast<magazine *>(percpu::peek(cpu, c->prev_off())));
  }
  depot_acquire(c);
  while (magazine *m = depot_take_full(c)) take(m);
  while (magazine *m = depot_take_empty(c)) take(m);
  c->dep.lock.release();
  drain_magazines(c, chain);
  spill_drain(c);
  percpu::slot_free(c->slot);
  slab::zone_destroy(c->zone);  // also whatever was still live
  c->magic = 0;
  c->starts = {};  // admits nothing: objcache_put on a destroyed cache refuses (api.cpp)
  slab::free(cache_zone(), c);
}

slab::zone *zone_of(const cache *c) { return c->zone; }
size_t object_size(const cache *c) { return c->objsize; }
const char *name_of(const cache *c) { return c->name; }
uint64_t peak_objects(const cache *c) { return c->peak_existing.load(std::memory_order_relaxed); }
void *get(cache *c, int flags) { return get_inline(c, flags); }
void put(cache *c, void *obj) { put_inline(c, obj); }

}  // namespace sysref::objcache
