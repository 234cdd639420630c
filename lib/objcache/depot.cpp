// The depot: full and empty magazines per cache, the working-set reaper,
// magazine growth on contention, reclaim, the cache registry and statistics.
#include <cerrno>
#include <pthread.h>

#include "cache.hpp"

namespace sysref::objcache {
namespace {

constinit os::lock g_registry_lock;
constinit cache *g_registry = nullptr;
constinit std::atomic<bool> g_reaper_started{false};

void push(magazine *&list, size_t &count, magazine *m) {
  m->next = list;
  list = m;
  ++count;
}

magazine *pop(magazine *&list, size_t &count) {
  magazine *m = list;
  if (m) {
    list = m->next;
    --count;
  }
  return m;
}

// Takes n magazines off a list into chain.
void take_n(magazine *&list, size_t &count, size_t n, magazine *&chain) {
  while (n-- && list) {
    magazine *m = pop(list, count);
    m->next = chain;
    chain = m;
  }
}

constinit uint64_t g_next_serial = 1;

// registry_remove sets this bit in pins before it waits for them to drain:
// the last unpin wakes it, and an unpin with no one waiting makes no call.
constexpr uint32_t pin_waiter = uint32_t{1} << 31;

void unpin(cache *c) {
  if (c->pins.fetch_sub(1, std::memory_order_release) == (pin_waiter | 1)) os::futex_wake(&c->pins, 1 << 30);
}

// Calls f on every registered cache, newest first, with the cache pinned
// and no registry lock held: f may run ctors and dtors, and those may make
// or destroy caches. The walk resumes by serial, so a cache that leaves the
// registry meanwhile (or one added) cannot derail it.
template <class F>
void for_each_cache(F f) {
  uint64_t below = UINT64_MAX;
  for (;;) {
    cache *c = nullptr;
    {
      os::guard g(g_registry_lock);
      for (cache *x = g_registry; x; x = x->next_cache)  // newest first: serials fall
        if (x->serial < below) {
          c = x;
          break;
        }
      if (!c) return;
      c->pins.fetch_add(1, std::memory_order_acquire);
    }
    below = c->serial;
    f(c);
    unpin(c);
  }
}

constinit std::atomic<uint64_t> g_next_scavenge{0};
constinit std::atomic<void (*)()> g_decay_hook{nullptr};

void *reaper_main(void *) {
  for (;;) {
    unsigned reap = os::opts().reap_interval_ms, decay = os::opts().decay_ms;
    os::sleep_ms(decay && decay / 2 < reap ? decay / 2 + 1 : reap);
    for_each_cache([](cache *c) {
      depot_acquire(c);
      magazine *chain = reap_if_due(c);
      c->dep.lock.release();
      if (chain) drain_magazines(c, chain);
    });
    scavenge(true);
  }
  return nullptr;
}

void start_reaper() {
  bool expected = false;
  if (!g_reaper_started.compare_exchange_strong(expected, true)) return;
  pthread_t t;
  pthread_attr_t attr;
  pthread_attr_init(&attr);
  pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
  if (pthread_create(&t, &attr, reaper_main, nullptr) != 0) g_reaper_started.store(false);
  pthread_attr_destroy(&attr);
}

}  // namespace

bool depot_acquire(cache *c, os::wait w) {
  if (c->dep.lock.try_acquire()) return true;
  if (!c->dep.lock.acquire(w)) return false;
  c->contention.fetch_add(1, std::memory_order_relaxed);
  ++c->dep.waits_this_interval;
  return true;
}

magazine *depot_take_full(cache *c) {
  magazine *m = pop(c->dep.full, c->dep.nfull);
  if (m) {
    c->dep.full_rounds -= rounds_of(m->word);
    if (c->dep.nfull < c->dep.min_full) c->dep.min_full = c->dep.nfull;
  }
  return m;
}

magazine *depot_take_empty(cache *c) {
  magazine *m = pop(c->dep.empty, c->dep.nempty);
  if (m && c->dep.nempty < c->dep.min_empty) c->dep.min_empty = c->dep.nempty;
  return m;
}

void fold(cache *c, uint64_t w) {
  c->gets.fetch_add(gets_of(w), std::memory_order_relaxed);
  c->puts.fetch_add(puts_of(w), std::memory_order_relaxed);
}

void depot_give(cache *c, magazine *m) {
  uint64_t w = m->word;
  fold(c, w);
  m->word = w & percpu::stack_count_mask;
  uint32_t rounds = rounds_of(w);
  if (rounds) {
    push(c->dep.full, c->dep.nfull, m);
    c->dep.full_rounds += rounds;
  } else if (m->size_index < c->mag_index.load(std::memory_order_relaxed)) {
    mag_free(m);  // outgrown: new magazines are bigger
  } else {
    push(c->dep.empty, c->dep.nempty, m);
  }
}

size_t drain_magazines(cache *c, magazine *chain) {
  size_t bytes = 0;
  while (chain) {
    magazine *next = chain->next;
    uint64_t w = chain->word;
    if (gets_of(w) || puts_of(w)) {  // straight from a slot (destroy, reclaim)
      os::guard g(c->dep.lock);
      fold(c, w);
    }
    uint32_t rounds = rounds_of(w);
    destruct_batch(c, items(chain), rounds);
    bytes += rounds * c->objsize + mag_bytes(chain);
    mag_free(chain);
    chain = next;
  }
  return bytes;
}

magazine *reap_if_due(cache *c) {
  depot &d = c->dep;
  // Read under the lock: a time read before it could be older than an
  // interval another thread just started, and the difference would wrap.
  uint64_t now = os::coarse_now_ns();
  if (now < d.interval_start || now - d.interval_start < uint64_t{os::opts().reap_interval_ms} * 1000000u)
    return nullptr;
  // What the depot never dipped below this interval, it did not need.
  magazine *chain = nullptr;
  size_t objects_before = d.full_rounds;
  take_n(d.full, d.nfull, d.min_full, chain);
  for (magazine *m = chain; m; m = m->next) d.full_rounds -= rounds_of(m->word);
  c->reaped.fetch_add(objects_before - d.full_rounds, std::memory_order_relaxed);
  take_n(d.empty, d.nempty, d.min_empty, chain);
  // Contended depot: bigger magazines mean fewer trips (libumem's rule).
  unsigned idx = c->mag_index.load(std::memory_order_relaxed);
  if (d.waits_this_interval > os::opts().mag_contention && idx + 1 < mag_size_count) {
    c->mag_index.store(idx + 1, std::memory_order_relaxed);
    c->resizes.fetch_add(1, std::memory_order_relaxed);
  }
  d.waits_this_interval = 0;
  d.min_full = d.nfull;
  d.min_empty = d.nempty;
  d.interval_start = now;
  return chain;
}

// Takes every CPU's two magazines (depot lock held: then only swaps within
// a slot can race with percpu::take_pair) and hands each to f.
template <class F>
void take_slot_magazines(cache *c, F f, os::wait w = os::wait::yes) {
  for (unsigned cpu = 0; cpu < percpu::ncpus(); ++cpu) {
    uintptr_t pair[2];
    if (!percpu::take_pair(cpu, c->loaded_off, pair, w)) continue;
    for (uintptr_t m : pair)
      if (m) f(reinterpret_cast<magazine *>(m));
  }
}

size_t reclaim(cache *c) {
  magazine *chain = nullptr;
  auto keep = [&](magazine *m) {
    m->next = chain;
    chain = m;
  };
  depot_acquire(c);
  take_n(c->dep.full, c->dep.nfull, c->dep.nfull, chain);
  take_n(c->dep.empty, c->dep.nempty, c->dep.nempty, chain);
  c->dep.full_rounds = 0;
  c->dep.min_full = c->dep.min_empty = 0;
  take_slot_magazines(c, keep);
  c->dep.lock.release();
  size_t bytes = drain_magazines(c, chain) + spill_drain(c);
  slab::flush_pool();  // a reclaim is memory pressure: the slabs it emptied go to the OS now
  return bytes;
}

bool pull_cached_into_depot(cache *c, os::wait w) {
  bool any = false;
  if (!depot_acquire(c, w)) return false;
  take_slot_magazines(
      c,
      [&](magazine *m) {
        any = any || rounds_of(m->word) != 0;
        depot_give(c, m);
      },
      w);
  c->dep.lock.release();
  return any;
}

int for_each_public(int (*fn)(cache *c, void *arg), void *arg) {
  int r = 0;
  for_each_cache([&](cache *c) {
    if (!r && !c->internal) r = fn(c, arg);
  });
  return r;
}

void prefork() {
  g_registry_lock.acquire();
  for (cache *c = g_registry; c; c = c->next_cache) c->dep.lock.acquire();
}

void postfork_parent() {
  for (cache *c = g_registry; c; c = c->next_cache) c->dep.lock.release();
  g_registry_lock.release();
}

void postfork_child() {
  postfork_parent();
  g_reaper_started.store(false, std::memory_order_relaxed);
}

size_t reclaim_all() {
  size_t bytes = 0;
  for_each_cache([&](cache *c) { bytes += reclaim(c); });
  return bytes;
}

namespace {

// A CPU's {loaded, previous} pair as of one moment: swaps rewrite both
// together, so read until two readings agree.
void slot_pair(cache *c, unsigned cpu, magazine *pair[2]) {
  uintptr_t a, b;
  do {
    a = percpu::peek(cpu, c->loaded_off);
    b = percpu::peek(cpu, c->prev_off());
  } while (a != percpu::peek(cpu, c->loaded_off) || b != percpu::peek(cpu, c->prev_off()));
  pair[0] = reinterpret_cast<magazine *>(a);
  pair[1] = reinterpret_cast<magazine *>(b);
}

struct snapshot {
  uint64_t gets = 0, puts = 0, cached = 0;
};

// Every slot magazine, the folded totals, the depot and the spill slots, as
// of one reading (depot lock held). Under the lock no magazine enters or
// leaves a slot (only loaded and previous swap) and none is freed, so
// reading them is safe. Each magazine word is read once, and its gets, puts
// and rounds all come from that one reading: a get/put pair that runs on one
// CPU while the reader looks elsewhere changes both sums or neither. So the
// snapshot is off only through threads that move between CPUs while it is
// read (at most one object per move), never by the number of operations (a
// reader preempted for a millisecond used to count every pair of that
// millisecond as live).
snapshot read_counts(cache *c) {
  snapshot s;
  for (unsigned cpu = 0; cpu < percpu::ncpus(); ++cpu) {
    magazine *pair[2];
    slot_pair(c, cpu, pair);
    for (magazine *m : pair) {
      if (!m) continue;
      // Acquire: the check of folds_begun after this reading stays after it.
      uint64_t w = __atomic_load_n(&m->word, __ATOMIC_ACQUIRE);
      s.gets += gets_of(w);
      s.puts += puts_of(w);
      s.cached += rounds_of(w);
    }
  }
  s.gets += c->gets.load(std::memory_order_acquire);
  s.puts += c->puts.load(std::memory_order_acquire);
  s.cached += c->dep.full_rounds;
  for (auto &slot : c->spill) s.cached += slot.load(std::memory_order_relaxed) != nullptr;
  return s;
}

}  // namespace

void scavenge(bool with_dtors) {
  for_each_cache([&](cache *c) {
    if ((c->dtor && !with_dtors) || !c->dep.lock.try_acquire()) return;  // busy: it is not idle
    magazine *chain = nullptr;
    depot &d = c->dep;
    uint64_t now = os::coarse_now_ns();  // under the lock: never before last_get_ns
    // Gets that the CPUs' magazines served never reach the depot: a class
    // whose working set fits in them looks idle from here. Its count of gets
    // still moves, and a cache in use keeps its magazines (taking them costs
    // each CPU a fence, and their objects would be made again at once). The
    // count is read only when the depot says idle: once per idle period.
    if (now - d.last_get_ns >= idle_after_ns(c)) {
      uint64_t gets = read_counts(c).gets;
      if (gets != d.gets_seen) {
        d.gets_seen = gets;
        d.last_get_ns = now;
      }
    }
    if (now - d.last_get_ns >= idle_after_ns(c)) {
      c->reaped.fetch_add(d.full_rounds, std::memory_order_relaxed);
      take_n(d.full, d.nfull, d.nfull, chain);
      take_n(d.empty, d.nempty, d.nempty, chain);
      d.full_rounds = 0;
      d.min_full = d.min_empty = 0;
      // The CPUs' magazines too: no get came this far for a whole period, so
      // they are what is left of a size the program has moved on from (or
      // all a busy CPU needs, and it refills them with one depot trip).
      take_slot_magazines(c, [&](magazine *m) {
        c->reaped.fetch_add(rounds_of(m->word), std::memory_order_relaxed);
        m->next = chain;
        chain = m;
      });
      d.last_get_ns = now;  // pulled once per idle period, not on every tick
    }
    d.lock.release();
    if (chain) drain_magazines(c, chain);
  });
  slab::decay_tick();
  if (auto hook = g_decay_hook.load(std::memory_order_acquire)) hook();
}

void maybe_scavenge() {
  if (os::reentered()) return;  // the walk takes the registry lock
  uint64_t now = os::coarse_now_ns(), due = g_next_scavenge.load(std::memory_order_relaxed);
  if (now < due) return;
  // Twice per idle period of a cache without a ctor.
  uint64_t step = uint64_t{os::opts().decay_ms} * 1000000u / (2 * ctorless_idle_divisor);
  if (!g_next_scavenge.compare_exchange_strong(due, now + (step > 1000000u ? step : 1000000u),
                                               std::memory_order_relaxed))
    return;  // another thread scavenges
  scavenge(false);
}

void set_decay_hook(void (*fn)()) { g_decay_hook.store(fn, std::memory_order_release); }

void registry_add(cache *c) {
  {
    os::guard g(g_registry_lock);
    c->serial = g_next_serial++;
    c->next_cache = g_registry;
    g_registry = c;
  }
  maybe_start_reaper();
}

// pthread_create allocates (the new thread's TLS): never with a library lock
// held, or under the preload shim that allocation would wait for the lock
// this thread holds (a cache made for a size class, under kmalloc's
// creation lock). Caches made under a lock leave it to the next get_slow.
void maybe_start_reaper() {
  if (g_reaper_started.load(std::memory_order_relaxed) || !os::opts().reap_thread || os::reentered())
    return;
  start_reaper();
}

void registry_remove(cache *c) {
  {
    os::guard g(g_registry_lock);
    for (cache **p = &g_registry; *p; p = &(*p)->next_cache)
      if (*p == c) {
        *p = c->next_cache;
        break;
      }
  }
  // No walker can pin it now; wait for those that did.
  uint32_t pins = c->pins.fetch_or(pin_waiter, std::memory_order_acquire) | pin_waiter;
  while (pins != pin_waiter) {
    os::futex_wait(&c->pins, pins);
    pins = c->pins.load(std::memory_order_acquire);
  }
}

int stats(cache *c, struct objcache_stats *out) {
  if (!c || c->magic != cache_magic || !out) return -EINVAL;
  *out = {};
  snapshot s;
  {
    os::guard g(c->dep.lock);
    // A fold moves a word's counts to the totals without this lock: read
    // again if one was under way (folds are rare: one per 2^24 gets of a
    // magazine, and a few instructions long).
    for (int tries = 0;; ++tries) {
      uint64_t begun = c->folds_begun.load(std::memory_order_acquire);
      bool idle = c->folds_done.load(std::memory_order_acquire) == begun;
      s = read_counts(c);
      if ((idle && c->folds_begun.load(std::memory_order_acquire) == begun) || tries == 1000) break;
      os::yield_cpu();  // a folder was preempted mid-way
    }
    out->depot_full = c->dep.nfull;
    out->depot_empty = c->dep.nempty;
  }
  uint64_t gets = s.gets, puts = s.puts, cached = s.cached;
  // Per magazine, rounds = rounds when it entered the slot + puts - gets, so
  // cached + live always equals the objects that exist; an object that moved
  // to a CPU read after the one it left shows once too many in cached and
  // once too few in live. Where that takes live below zero, both are
  // brought back to what exists.
  if (puts > gets) {
    uint64_t excess = puts - gets;
    cached -= excess < cached ? excess : cached;
    puts = gets;
  }
  out->gets = gets;
  out->puts = puts;
  out->live = gets - puts;
  out->cached = cached;
  out->ctor_calls = c->ctor_calls.load(std::memory_order_relaxed);
  out->dtor_calls = c->dtor_calls.load(std::memory_order_relaxed);
  out->mag_size = mag_sizes[c->mag_index.load(std::memory_order_relaxed)];
  out->mag_resizes = c->resizes.load(std::memory_order_relaxed);
  out->contention = c->contention.load(std::memory_order_relaxed);
  out->depot_exchanges = c->exchanges.load(std::memory_order_relaxed);
  out->slab_allocs = c->slab_allocs.load(std::memory_order_relaxed);
  out->slab_frees = c->slab_frees.load(std::memory_order_relaxed);
  out->reaped = c->reaped.load(std::memory_order_relaxed);
  out->ctor_failures = c->ctor_failures.load(std::memory_order_relaxed);
  out->limit = c->limit;
  out->limit_waits = c->limit_waits.load(std::memory_order_relaxed);
  return 0;
}

}  // namespace sysref::objcache
