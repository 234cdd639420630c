// The signal-safety scenario: a handler that allocates and frees from an
// object cache, a zone and the malloc family, on threads it interrupts
// anywhere inside the library.
#include <memory>
#include <sysref/kmalloc.h>

#include "stress.hpp"

namespace stress {

// ---- signal safety -------------------------------------------------------------
// The promise (DESIGN.md, "Signals"): every free (objcache_put, kfree_obj,
// kfree / sr_free) and every SR_NOWAIT get is async-signal-safe in both
// per-CPU modes: from a handler that interrupted the same thread anywhere
// inside the library it never waits (a get may fail with ENOMEM; a free that
// cannot take a lock at once takes a lock-free path).

namespace {

// Objects a worker allocated outside the handler, for its handler to free.
// The worker only fills empty entries, the handler only empties full ones
// (with an exchange), so whichever interrupts the other, nothing is lost or
// freed twice.
struct handler_pool {
  static constexpr int size = 32;
  std::atomic<void *> slot[size] = {};
  unsigned cursor = 0;  // the handler's alone

  void *take() {
    for (int i = 0; i < size; ++i)
      if (void *p = slot[cursor++ % size].exchange(nullptr, std::memory_order_relaxed)) return p;
    return nullptr;
  }
  template <class Alloc>
  void refill(Alloc alloc) {
    for (auto &s : slot)
      if (!s.load(std::memory_order_relaxed)) s.store(alloc(), std::memory_order_relaxed);
  }
  template <class Free>
  void drain(Free free) {
    for (auto &s : slot)
      if (void *p = s.exchange(nullptr, std::memory_order_relaxed)) free(p);
  }
};

constexpr uint64_t sig_magic = 0x5349474e414c4f4bull;

struct sig_counts {
  std::atomic<long> built{0}, unbuilt{0}, bad{0};
};

int sig_ctor(void *obj, void *priv, int) {
  static_cast<uint64_t *>(obj)[0] = sig_magic;
  static_cast<sig_counts *>(priv)->built.fetch_add(1, std::memory_order_relaxed);
  return 0;
}

void sig_dtor(void *obj, void *priv) {
  auto *w = static_cast<uint64_t *>(obj);
  if (w[0] != sig_magic)
    static_cast<sig_counts *>(priv)->bad.fetch_add(1, std::memory_order_relaxed);
  w[0] = 0;
  static_cast<sig_counts *>(priv)->unbuilt.fetch_add(1, std::memory_order_relaxed);
}

struct sig_worker {
  handler_pool from_cache, from_zone, from_kmalloc;
  std::atomic<std::vector<void *> *> inbox{nullptr};  // zone objects a neighbour left to free
  // What the handler did on this thread.
  std::atomic<long> handled{0}, gets{0}, nomem{0}, pool_frees{0}, bad{0};
};

struct {
  objcache_t *cache;
  kmalloc_zone_t *zone;
} g_sig;
constexpr size_t sig_zone_objsize = 48;
constexpr size_t sig_kmalloc_size = 64;

thread_local sig_worker *t_sig_worker = nullptr;  // set while the handler may act

void signal_safety_handler(int) {
  sig_worker *w = t_sig_worker;
  if (!w) return;
  int saved = errno;
  w->handled.fetch_add(1, std::memory_order_relaxed);
  // A get with SR_NOWAIT from each family, and the free of what it got.
  if (auto *o = static_cast<uint64_t *>(objcache_get(g_sig.cache, SR_NOWAIT))) {
    if (o[0] != sig_magic) w->bad.fetch_add(1, std::memory_order_relaxed);
    objcache_put(g_sig.cache, o);
    w->gets.fetch_add(1, std::memory_order_relaxed);
  } else {
    w->nomem.fetch_add(1, std::memory_order_relaxed);
  }
  if (void *o = kmalloc_obj(g_sig.zone, SR_NOWAIT)) {
    kfree_obj(o, g_sig.zone);
    w->gets.fetch_add(1, std::memory_order_relaxed);
  } else {
    w->nomem.fetch_add(1, std::memory_order_relaxed);
  }
  if (void *o = kmalloc(sig_kmalloc_size, SR_NOWAIT)) {
    kfree(o);
    w->gets.fetch_add(1, std::memory_order_relaxed);
  } else {
    w->nomem.fetch_add(1, std::memory_order_relaxed);
  }
  // Frees of objects the thread allocated outside the handler.
  if (void *o = w->from_cache.take()) {
    if (static_cast<uint64_t *>(o)[0] != sig_magic) w->bad.fetch_add(1, std::memory_order_relaxed);
    objcache_put(g_sig.cache, o);
    w->pool_frees.fetch_add(1, std::memory_order_relaxed);
  }
  if (void *o = w->from_zone.take()) {
    kfree_obj(o, g_sig.zone);
    w->pool_frees.fetch_add(1, std::memory_order_relaxed);
  }
  if (void *o = w->from_kmalloc.take()) {
    kfree(o);
    w->pool_frees.fetch_add(1, std::memory_order_relaxed);
  }
  errno = saved;
}

// One worker: rounds of work that live in the slow paths (bursts bigger than
// a magazine, a zone filled with thousands of objects of which half are
// freed by a neighbour so their slabs get detached, the malloc family over
// many classes and large blocks), a CPU change per round, and the handler's
// pools refilled between rounds.
void signal_safety_worker(sig_worker *workers, unsigned n, unsigned id, signaller &sig,
                          steady::time_point end) {
  sig_worker &me = workers[id];
  sig_worker &neighbour = workers[(id + 1) % n];
  const uint64_t stamp = uint64_t{id + 1} << 40;
  constexpr int cache_burst = 300;  // more than the largest magazine (255)
  constexpr int zone_burst = under_tsan ? 1000 : 5000;
  static constexpr size_t sizes[] = {16,   40,   64,   112,  200,   384,   520,   1000,
                                     2100, 4096, 5000, 9000, 17000, 32768, 40000, 150000};
  static constexpr size_t pool_sizes[] = {64, 300, 2000, 40000};  // 40000: a large block
  std::vector<uint64_t *> held;
  held.reserve(zone_burst);
  unsigned pool_size_index = 0;
  auto refill_pools = [&] {
    me.from_cache.refill([] { return must(objcache_get(g_sig.cache, 0), "objcache_get"); });
    me.from_zone.refill([] { return must(kmalloc_obj(g_sig.zone, 0), "kmalloc_obj"); });
    me.from_kmalloc.refill([&] {
      return must(sr_malloc(pool_sizes[pool_size_index++ % std::size(pool_sizes)]), "sr_malloc");
    });
  };
  auto free_batch = [](std::vector<void *> *batch) {
    for (void *o : *batch) kfree_obj(o, g_sig.zone);
    delete batch;
  };
  refill_pools();
  t_sig_worker = &me;
  std::atomic_signal_fence(std::memory_order_seq_cst);
  sig.enroll();
  for (unsigned round = 0; steady::now() < end; ++round) {
    move_to(id + round);
    // The object cache: a burst of gets, then of puts.
    for (int i = 0; i < cache_burst; ++i) {
      auto *o = static_cast<uint64_t *>(must(objcache_get(g_sig.cache, 0), "objcache_get"));
      if (o[0] != sig_magic) me.bad.fetch_add(1);
      o[1] = stamp | static_cast<uint64_t>(i);
      held.push_back(o);
    }
    for (size_t i = 0; i < held.size(); ++i) {
      if (held[i][1] != (stamp | i)) me.bad.fetch_add(1);
      objcache_put(g_sig.cache, held[i]);
    }
    held.clear();
    // The zone: fill, free half here, hand the other half to the neighbour
    // (or free it here if its inbox is taken), and free what it left us.
    for (int i = 0; i < zone_burst; ++i) {
      auto *o = static_cast<uint64_t *>(must(kmalloc_obj(g_sig.zone, 0), "kmalloc_obj"));
      o[2] = stamp | static_cast<uint64_t>(i);
      held.push_back(o);
    }
    auto *batch = new std::vector<void *>;
    batch->reserve(held.size() / 2);
    for (size_t i = 0; i < held.size(); ++i) {
      if (held[i][2] != (stamp | i)) me.bad.fetch_add(1);
      if (i % 2)
        batch->push_back(held[i]);
      else
        kfree_obj(held[i], g_sig.zone);
    }
    held.clear();
    std::vector<void *> *empty = nullptr;
    if (!neighbour.inbox.compare_exchange_strong(empty, batch)) free_batch(batch);
    if (auto *left = me.inbox.exchange(nullptr)) free_batch(left);
    // The malloc family: many classes and large blocks.
    std::vector<void *> blocks;
    for (size_t size : sizes)
      for (int i = 0; i < (size > (32 << 10) ? 2 : 16); ++i) {
        void *b = must(sr_malloc(size), "sr_malloc");
        block_stamp::put(b, size, stamp | size);
        blocks.push_back(b);
      }
    size_t k = 0;
    for (size_t size : sizes)
      for (int i = 0; i < (size > (32 << 10) ? 2 : 16); ++i, ++k) {
        if (!block_stamp::holds(blocks[k], size, stamp | size)) me.bad.fetch_add(1);
        sr_free(blocks[k]);
      }
    refill_pools();
    progress();
  }
  sig.leave();
  t_sig_worker = nullptr;  // a signal still pending finds nothing to do
  std::atomic_signal_fence(std::memory_order_seq_cst);
  me.from_cache.drain([](void *o) { objcache_put(g_sig.cache, o); });
  me.from_zone.drain([](void *o) { kfree_obj(o, g_sig.zone); });
  me.from_kmalloc.drain([](void *o) { sr_free(o); });
}

}  // namespace

// Defect 4, signal safety: worker threads (more than CPUs) spend their time
// in the slow paths of an object cache, a zone and the malloc family, while
// a signaller thread interrupts them with SIGUSR1 every 25 us; the handler,
// on the interrupted thread, gets with SR_NOWAIT and frees from all three,
// including objects the thread allocated earlier. A lock the interrupted
// code holds and the handler waits for is a deadlock (the watchdog reports
// it); at the end every object must be accounted for.
void signal_safety() {
  sig_counts counts;
  g_sig.cache = objcache_create("stress.sig", 128, 0, sig_ctor, sig_dtor, &counts, 0, 0);
  g_sig.zone = kmalloc_obj_zone_create("stress.sig", sig_zone_objsize, 0, 0);
  kfree(kmalloc(sig_kmalloc_size, 0));  // the class exists before the handler uses it
  kmalloc_census before = take_census();
  const unsigned n = std::max(6u, 3 * ncpu());
  std::unique_ptr<sig_worker[]> workers(new sig_worker[n]);
  install_handler(signal_safety_handler);
  long sent;
  {
    signaller sig(25us);
    auto end = deadline(2.5);
    std::vector<std::thread> threads;
    for (unsigned id = 0; id < n; ++id)
      threads.emplace_back(signal_safety_worker, workers.get(), n, id, std::ref(sig), end);
    for (auto &t : threads) t.join();
    sent = sig.sent();
  }
  long handled = 0, gets = 0, nomem = 0, pool_frees = 0, bad = 0;
  for (unsigned id = 0; id < n; ++id) {
    sig_worker &w = workers[id];
    if (auto *left = w.inbox.exchange(nullptr)) {  // handed over after its owner's last look
      for (void *o : *left) kfree_obj(o, g_sig.zone);
      delete left;
    }
    handled += w.handled.load();
    gets += w.gets.load();
    nomem += w.nomem.load();
    pool_frees += w.pool_frees.load();
    bad += w.bad.load();
  }
  std::printf("  %u workers, %ld signals sent, %ld handled: %ld NOWAIT gets, %ld ENOMEM, "
              "%ld frees of objects allocated outside the handler\n",
              n, sent, handled, gets, nomem, pool_frees);
  CHECK(handled > 0, "no signal reached a worker (%ld sent)", sent);
  CHECK(bad == 0, "%ld damaged or unconstructed objects", bad);
  struct objcache_stats cs = stats_of(g_sig.cache);
  CHECK(cs.gets == cs.puts && cs.live == 0, "objcache: gets %llu puts %llu live %llu", (ull)cs.gets,
        (ull)cs.puts, (ull)cs.live);
  kmalloc_zone_stats zs = stats_of(g_sig.zone);
  CHECK(zs.live == 0 && zs.allocs == zs.frees && zs.errors == 0,
        "zone: allocs %llu frees %llu live %llu errors %llu", (ull)zs.allocs, (ull)zs.frees,
        (ull)zs.live, (ull)zs.errors);
  CHECK(zs.slabs_partial == 0 && zs.slabs_full == 0,
        "zone: nothing live, yet %llu partial and %llu full slabs", (ull)zs.slabs_partial,
        (ull)zs.slabs_full);
  objcache_destroy(g_sig.cache);
  kmalloc_obj_zone_destroy(g_sig.zone);
  check_census(before, "signal-safety");
  CHECK(counts.built.load() == counts.unbuilt.load(), "objcache: built %ld, destructed %ld",
        counts.built.load(), counts.unbuilt.load());
  CHECK(counts.bad.load() == 0, "objcache: %ld dtor calls on unconstructed objects",
        counts.bad.load());
}

}  // namespace stress
