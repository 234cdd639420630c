// Scenarios on object caches: caches shared across CPUs (with and without a
// limit), and a reported defect: destructors run under a library lock (r9).
#include <sysref/kmalloc.h>

#include "stress.hpp"

namespace stress {

// ================================================================================
// The original scenarios
// ================================================================================

namespace {

std::atomic<long> g_built{0}, g_unbuilt{0};
int build_obj(void *obj, void *, int) {
  static_cast<uint64_t *>(obj)[0] = 0xc0ffee;
  g_built.fetch_add(1);
  return 0;
}
void unbuild_obj(void *obj, void *) {
  auto *w = static_cast<uint64_t *>(obj);
  CHECK(w[0] == 0xc0ffee, "dtor of an unconstructed object %p", obj);
  w[0] = 0;
  g_unbuilt.fetch_add(1);
}

}  // namespace

// Object caches under concurrency: producers get on one CPU and consumers put
// on another (magazines cross CPUs through the depot), a reader takes stats
// and reclaims meanwhile, and a small limit makes gets wait for puts.
void caches_across_cpus(size_t limit) {
  objcache_t *oc = objcache_create("stress.oc", 96, 0, build_obj, unbuild_obj, nullptr, limit, 0);
  constexpr size_t ring = 256;
  constexpr long per_producer = 100000;
  struct channel {
    std::atomic<uint64_t *> slot[ring];
  };
  std::vector<channel> ch(2);
  for (auto &c : ch)
    for (auto &s : c.slot) s.store(nullptr);
  std::atomic<bool> stop{false};
  std::thread reader([&] {
    while (!stop.load()) {
      struct objcache_stats s{};
      objcache_stats(oc, &s);
      CHECK(s.gets >= s.puts, "gets %llu < puts %llu", (unsigned long long)s.gets,
            (unsigned long long)s.puts);
      objcache_reclaim(oc);
      sched_yield();
    }
  });
  std::vector<std::thread> threads;
  for (int p = 0; p < 2; ++p) {
    threads.emplace_back([&, p] {
      move_to(static_cast<unsigned>(p));
      for (long i = 0; i < per_producer; ++i) {
        auto *o = static_cast<uint64_t *>(objcache_get(oc, 0));
        CHECK(o[0] == 0xc0ffee, "got an unconstructed object");
        o[1] = static_cast<uint64_t>(i);
        auto &slot = ch[p].slot[i % ring];
        while (slot.load(std::memory_order_acquire)) sched_yield();
        slot.store(o, std::memory_order_release);
      }
    });
    threads.emplace_back([&, p] {
      move_to(static_cast<unsigned>(p + 1));
      for (long i = 0; i < per_producer; ++i) {
        auto &slot = ch[p].slot[i % ring];
        uint64_t *o;
        while (!(o = slot.load(std::memory_order_acquire))) sched_yield();
        slot.store(nullptr, std::memory_order_release);
        CHECK(o[1] == static_cast<uint64_t>(i), "object %ld damaged", i);
        objcache_put(oc, o);
      }
    });
  }
  for (auto &t : threads) t.join();
  stop.store(true);
  reader.join();
  struct objcache_stats s{};
  objcache_stats(oc, &s);
  CHECK(s.gets == 2 * per_producer && s.live == 0, "gets %llu live %llu",
        (unsigned long long)s.gets, (unsigned long long)s.live);
  CHECK(!limit || s.limit_waits > 0 || s.ctor_calls <= limit, "limit %zu never bit", limit);
  objcache_destroy(oc);
  CHECK(g_built.load() == g_unbuilt.load(), "built %ld, destructed %ld", g_built.load(),
        g_unbuilt.load());
}

// ================================================================================
// Patterns of reported defects
// ================================================================================

namespace {

struct dtor_counts {
  std::atomic<long> built{0}, unbuilt{0}, bad{0}, scratch_failures{0};
};
constexpr uint64_t reentrant_magic = 0x5245454e54524e54ull;

int reentrant_ctor(void *obj, void *priv, int) {
  static_cast<uint64_t *>(obj)[0] = reentrant_magic;
  static_cast<dtor_counts *>(priv)->built.fetch_add(1);
  return 0;
}

void reentrant_dtor(void *obj, void *priv) {
  auto *counts = static_cast<dtor_counts *>(priv);
  auto *w = static_cast<uint64_t *>(obj);
  if (w[0] != reentrant_magic) counts->bad.fetch_add(1);
  w[0] = 0;
  // The malloc family, over several classes (a class is made on first use).
  static constexpr size_t sizes[] = {20000, 3000, 700, 96, 12000, 40000};
  static std::atomic<unsigned> next{0};
  size_t size = sizes[next.fetch_add(1, std::memory_order_relaxed) % std::size(sizes)];
  void *scratch = sr_malloc(size);
  if (scratch) {
    std::memset(scratch, 0x5a, size);
    sr_free(scratch);
  } else {
    counts->scratch_failures.fetch_add(1);
  }
  // A cache of its own, made, used and destroyed.
  objcache_t *oc = objcache_create("stress.scratch", 48, 0, nullptr, nullptr, nullptr, 0, 0);
  void *o = oc ? objcache_get(oc, 0) : nullptr;
  if (o) objcache_put(oc, o);
  else counts->scratch_failures.fetch_add(1);
  if (oc) objcache_destroy(oc);
  counts->unbuilt.fetch_add(1);
}

}  // namespace

// r9, destructors under a library lock: objcache_reclaim_all (and the reap
// thread) ran dtors holding the cache registry lock, so a dtor that makes or
// destroys a cache, or uses a kmalloc size class for the first time (which
// makes its cache), deadlocked. Here the dtor does all of that every time,
// while workers fill and empty the cache in bursts bigger than a magazine
// (full magazines go to the depot) and a third thread reclaims everything
// in a loop. A hang is the failure; the watchdog reports it.
void reentrant_dtors() {
  dtor_counts counts;
  objcache_t *oc =
      objcache_create("stress.r9", 64, 0, reentrant_ctor, reentrant_dtor, &counts, 0, 0);
  std::atomic<bool> stop{false};
  std::atomic<long> reclaims{0};
  auto end = deadline(1.0);
  std::thread reclaimer([&] {
    while (!stop.load(std::memory_order_relaxed)) {
      objcache_reclaim_all();
      reclaims.fetch_add(1, std::memory_order_relaxed);
      progress();
      std::this_thread::sleep_for(200us);
    }
  });
  std::vector<std::thread> workers;
  for (unsigned t = 0; t < 2; ++t)
    workers.emplace_back([&, t] {
      std::vector<uint64_t *> v(300);
      unsigned cpu = t;
      for (long round = 0; steady::now() < end; ++round) {
        for (auto &o : v) {
          o = static_cast<uint64_t *>(must(objcache_get(oc, 0), "objcache_get"));
          if (o[0] != reentrant_magic) counts.bad.fetch_add(1);
        }
        for (auto *o : v) objcache_put(oc, o);
        if (round % 8 == 7) objcache_reclaim(oc);  // dtors on this thread too
        move_to(++cpu);
        progress();
      }
    });
  for (auto &w : workers) w.join();
  stop.store(true);
  reclaimer.join();
  struct objcache_stats s = stats_of(oc);
  objcache_destroy(oc);
  std::printf("  %ld reclaim_all calls, %ld objects constructed, %ld destructed\n", reclaims.load(),
              counts.built.load(), counts.unbuilt.load());
  CHECK(s.gets == s.puts && s.live == 0, "gets %llu puts %llu live %llu", (ull)s.gets, (ull)s.puts,
        (ull)s.live);
  CHECK(counts.built.load() == counts.unbuilt.load(), "built %ld, destructed %ld",
        counts.built.load(), counts.unbuilt.load());
  CHECK(counts.bad.load() == 0, "%ld unconstructed objects seen", counts.bad.load());
  CHECK(counts.scratch_failures.load() == 0, "%ld allocations in a dtor failed",
        counts.scratch_failures.load());
}

}  // namespace stress
