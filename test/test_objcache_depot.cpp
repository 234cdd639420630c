// lib/objcache: magazines and the depot: reclaim, reaping (on slow paths and
// by the reaper thread), magazine sizes and growth, the idle-cache scavenge.
// Run once per per-CPU mode (see meson.build).
#include <criterion/criterion.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <csignal>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <pthread.h>
#include <sched.h>
#include <sysref/kmalloc.h>
#include <sysref/objcache.h>
#include <sysref/os.h>
#include <thread>
#include <unistd.h>
#include <vector>

#include "crew.hpp"
#include "objcache/cache.hpp"
#include "objcache_helpers.hpp"

using namespace test_crew;
using namespace test_objcache;

namespace {

int stamp_ctor(void *obj, void *, int) {
  *static_cast<uint64_t *>(obj) = built;
  return 0;
}

void fast_reaping() {
  setenv("SYSREF_REAP_INTERVAL_MS", "20", 1);
  setenv("SYSREF_MAG_CONTENTION", "0", 1);
}

}  // namespace

Test(objcache, reclaim_gives_memory_back) {
  test_crew::pin_to(0);
  // A ctor: its depot keeps every magazine (a ctor-less one keeps a few).
  objcache_t *oc = objcache_create("t.reclaim", 256, 0, stamp_ctor, nullptr, nullptr, 0, 0);
  std::vector<void *> v;
  for (int i = 0; i < 20000; ++i) v.push_back(objcache_get(oc, 0));
  for (void *p : v) objcache_put(oc, p);
  uint64_t full = data_mapped();
  struct objcache_stats before = stats_of(oc);
  cr_expect_geq(before.cached, 19000u, "the puts are cached");
  size_t bytes = objcache_reclaim(oc);
  cr_expect_geq(bytes, 19000u * 256u);
  struct objcache_stats after = stats_of(oc);
  cr_expect_eq(after.cached, 0u);
  cr_expect_lt(data_mapped(), full - 4000000, "empty slabs went back to the OS");
  objcache_destroy(oc);
}

// What the working set did not use in an interval goes back to the slabs.
Test(objcache, reaping_returns_what_the_working_set_left_unused, .init = fast_reaping) {
  test_crew::pin_to(0);
  objcache_t *oc = widgets();
  std::vector<void *> v;
  // Magazines of widgets hold 255 (objcache(3)): a burst of 12000 fills
  // about 45 of them.
  for (int i = 0; i < 12000; ++i) v.push_back(objcache_get(oc, 0));
  for (void *p : v) objcache_put(oc, p);  // a burst: the depot fills
  v.clear();
  struct objcache_stats s0 = stats_of(oc);
  cr_assert_gt(s0.depot_full, 10u);
  // Then a small steady load for a few intervals: the burst is not needed.
  // It still outgrows this CPU's two magazines, so it visits the depot, where
  // reaping runs (without the reaper thread, slow paths are its only driver).
  for (int t = 0; t < 8; ++t) {
    usleep(25000);
    for (int i = 0; i < 1200; ++i) v.push_back(objcache_get(oc, 0));
    for (void *p : v) objcache_put(oc, p);
    v.clear();
  }
  struct objcache_stats s = stats_of(oc);
  cr_expect_gt(s.reaped, 8000u, "the burst's objects were reaped");
  cr_expect_eq(s.dtor_calls, s.reaped, "reaped objects were destructed");
  cr_expect_lt(s.depot_full, s0.depot_full);
  cr_expect_eq(s.gets, s.puts + s.live);
  objcache_destroy(oc);
}

// A producer and a consumer on two CPUs both trade with the depot all the
// time; with a low contention threshold the magazine size must grow.
Test(objcache, magazines_grow_under_a_contended_two_thread_load, .init = fast_reaping) {
  if (std::thread::hardware_concurrency() < 2) cr_skip_test("needs two CPUs");
  objcache_t *oc = objcache_create("t.grow", 512, 0, nullptr, nullptr, nullptr, 0, 0);  // starts at 31
  std::atomic<bool> stop{false};
  auto worker = [&](unsigned cpu) {
    test_crew::pin_to(cpu);
    std::vector<void *> v;
    while (!stop.load(std::memory_order_relaxed)) {
      for (int i = 0; i < 64; ++i) v.push_back(objcache_get(oc, 0));
      for (void *p : v) objcache_put(oc, p);
      v.clear();
      objcache_reclaim(oc);  // empties this CPU's magazines: every round visits the depot
    }
  };
  std::thread a(worker, 0), b(worker, 1);
  for (int i = 0; i < 100 && stats_of(oc).mag_resizes == 0; ++i) usleep(10000);
  stop.store(true);
  a.join();
  b.join();
  struct objcache_stats s = stats_of(oc);
  cr_expect_gt(s.contention, 0u);
  cr_expect_gt(s.mag_resizes, 0u);
  cr_expect_gt(s.mag_size, 31u);
  cr_expect_eq(s.live, 0u);
  objcache_destroy(oc);
}

void reaper_on() {
  setenv("SYSREF_REAP_INTERVAL_MS", "10", 1);
  setenv("SYSREF_REAP_THREAD", "1", 1);
}

// With the program idle after a burst, only the background reaper can give
// the unused working set back.
Test(objcache, background_reaper_returns_an_idle_burst, .init = reaper_on) {
  objcache_t *oc = widgets();
  std::vector<void *> v;
  for (int i = 0; i < 12000; ++i) v.push_back(objcache_get(oc, 0));  // about 45 magazines
  for (void *p : v) objcache_put(oc, p);
  cr_assert_gt(stats_of(oc).depot_full, 10u);
  struct objcache_stats s {};
  for (int i = 0; i < 200; ++i) {  // no calls into the cache meanwhile but stats
    usleep(10000);
    s = stats_of(oc);
    // reaped counts objects when the reaper takes them, dtor_calls as it
    // destructs them, after it dropped the lock: wait for both.
    if (s.depot_full == 0 && s.dtor_calls == s.reaped) break;
  }
  cr_expect_eq(s.depot_full, 0u, "two idle intervals reap every full depot magazine");
  cr_expect_gt(s.reaped, 11000u);
  cr_expect_eq(s.dtor_calls, s.reaped);
  objcache_destroy(oc);
}

// Objects a thread put back on CPU 1 before it exited are cached in CPU 1's
// magazines. Reclaim from CPU 0 must take them too.
Test(objcache, reclaim_takes_other_cpus_magazines) {
  if (std::thread::hardware_concurrency() < 2) cr_skip_test("needs two CPUs");
  objcache_t *oc = widgets();
  std::thread t([&] {
    test_crew::pin_to(1);
    std::vector<void *> v;
    for (int i = 0; i < 50; ++i) v.push_back(objcache_get(oc, 0));  // fits CPU 1's magazines
    for (void *p : v) objcache_put(oc, p);
  });
  t.join();
  test_crew::pin_to(0);
  cr_assert_eq(stats_of(oc).cached, 50u);
  objcache_reclaim(oc);
  struct objcache_stats s = stats_of(oc);
  cr_expect_eq(s.cached, 0u, "nothing stays cached on the other CPU");
  cr_expect_eq(s.dtor_calls, s.ctor_calls);
  objcache_destroy(oc);
}

// ---- regressions: destructors and locks, magazines, reaping ----

namespace {

std::atomic<long> g_busy_dtors{0}, g_busy_failures{0};

// A destructor that uses the library as real ones do: a size class nothing
// used before (its cache is made on the spot), and a cache of its own made
// and destroyed. Neither may wait for a lock held around the dtor call.
void busy_dtor(void *, void *) {
  void *scratch = sr_malloc(20000);
  objcache_t *own = objcache_create("t.scratch", 40, 0, nullptr, nullptr, nullptr, 0, 0);
  void *obj = own ? objcache_get(own, 0) : nullptr;
  if (!scratch || !obj) g_busy_failures.fetch_add(1);
  if (obj) objcache_put(own, obj);
  if (own) objcache_destroy(own);
  sr_free(scratch);
  g_busy_dtors.fetch_add(1);
}

objcache_t *busy_cache() {
  // A ctor: its depot keeps what it is given (a ctor-less cache's depot
  // passes the excess to the slab layer, running the dtor in the put).
  objcache_t *oc = objcache_create("t.busy", 64, 0, stamp_ctor, busy_dtor, nullptr, 0, 0);
  cr_assert_not_null(oc);
  return oc;
}

void reaper_every_50ms() {
  setenv("SYSREF_REAP_THREAD", "1", 1);
  setenv("SYSREF_REAP_INTERVAL_MS", "50", 1);
}

}  // namespace

// Issue 6, defect 3: objcache_reclaim_all ran destructors with the cache
// registry lock held, so a destructor that made or destroyed a cache (or
// used a size class for the first time) waited for itself.
Test(objcache, reclaim_all_runs_destructors_that_use_the_library, .timeout = 10) {
  objcache_t *oc = busy_cache();
  void *v[10];
  for (auto &p : v) cr_assert_not_null(p = objcache_get(oc, 0));
  for (void *p : v) objcache_put(oc, p);
  size_t bytes = objcache_reclaim_all();  // used to hang here
  cr_expect_geq(bytes, sizeof v / sizeof v[0] * 64);
  cr_expect_eq(g_busy_dtors.load(), 10, "every cached object was destructed");
  cr_expect_eq(g_busy_failures.load(), 0, "the destructor's own allocations failed");
  struct objcache_stats s = stats_of(oc);
  cr_expect_eq(s.dtor_calls, 10u);
  cr_expect_eq(s.cached, 0u);
  objcache_destroy(oc);
}

// The same through the reaper thread: it drained an idle depot under the
// registry lock, the destructor blocked on that lock, and from then on every
// first use of a size class in any thread hung.
Test(objcache, the_reaper_runs_destructors_that_use_the_library, .init = reaper_every_50ms, .timeout = 10) {
  objcache_t *oc = busy_cache();
  std::vector<void *> v;
  for (int i = 0; i < 1000; ++i) v.push_back(objcache_get(oc, 0));
  for (void *p : v) objcache_put(oc, p);  // full magazines go to the depot
  cr_assert_gt(stats_of(oc).depot_full, 0u);
  usleep(300 * 1000);  // six idle intervals: the reaper drains the depot
  void *p = sr_malloc(3000);  // the first use of another size class used to hang here
  cr_expect_not_null(p);
  sr_free(p);
  struct objcache_stats s = stats_of(oc);
  for (int i = 0; i < 200 && s.dtor_calls == 0; ++i) {
    usleep(10000);
    s = stats_of(oc);
  }
  cr_expect_gt(s.dtor_calls, 0u, "the reaper destructed the idle depot's objects");
  cr_expect_eq(g_busy_failures.load(), 0, "the destructor's own allocations failed");
  objcache_destroy(oc);
}

// objcache(3) states the starting magazine size by object size: about
// 16 KiB of objects per magazine (255 rounds up to 64 bytes, 127 up to 128,
// 63 up to 256, 31 up to 512, 15 up to 1024, 7 up to 2048), and 3 above.
Test(objcache, new_caches_start_with_magazines_of_about_16_kib) {
  struct {
    size_t size;
    uint64_t rounds;
  } expect[] = {{16, 255},  {64, 255},  {65, 127},  {128, 127}, {129, 63},  {256, 63},
                {257, 31},  {512, 31},  {513, 15},  {1024, 15}, {1025, 7},  {2048, 7},
                {2049, 3},  {4096, 3},  {65536, 3}};
  for (auto e : expect) {
    objcache_t *oc = objcache_create("t.magsize", e.size, 0, nullptr, nullptr, nullptr, 0, 0);
    cr_assert_not_null(oc);
    cr_expect_eq(stats_of(oc).mag_size, e.rounds, "objects of %zu bytes", e.size);
    objcache_destroy(oc);
  }
}

// Issue 6, defect 8. The reap interval is measured with a clock read under the depot lock. The
// reaper used to read the clock once, before any lock, for every cache: that
// reading could be older than an interval a get or put had just started, the
// difference wrapped, and the whole depot was reaped at once. Here the
// interval starts "after" any reading the next slow path could make.
Test(objcache, an_interval_that_started_after_the_reading_is_not_reaped) {
  objcache_t *oc = objcache_create("t.clock", 64, 0, nullptr, nullptr, nullptr, 0, 0);
  std::vector<void *> v(2000);
  for (auto &p : v) p = objcache_get(oc, 0);
  for (void *p : v) objcache_put(oc, p);
  cr_assert_gt(stats_of(oc).depot_full, 2u, "the depot holds full magazines");
  auto *c = reinterpret_cast<sysref::objcache::cache *>(oc);
  {
    sysref::os::guard g(c->dep.lock);
    c->dep.interval_start = sysref::os::coarse_now_ns() + 10'000'000'000ull;
    c->dep.min_full = c->dep.nfull;  // as if nothing had been needed
  }
  for (auto &p : v) p = objcache_get(oc, 0);  // through the depot: reap_if_due
  for (void *p : v) objcache_put(oc, p);
  cr_expect_eq(stats_of(oc).reaped, 0u, "a wrapped difference reaped the depot");
  objcache_destroy(oc);
}

// A cache that stops being asked for objects gives them back on the decay
// timer: the scavenge (from other caches' slow paths) empties its depot,
// the objects go back to their slabs and the slabs through the pool to the
// OS. A cache that keeps cycling within the delay keeps its depot.
Test(objcache, an_idle_cache_gives_its_depot_back) {
  test_crew::pin_to(0);
  // A ctor keeps its depot whole; no dtor lets other caches' slow paths empty it.
  objcache_t *idle = objcache_create("t.idle", 256, 0, stamp_ctor, nullptr, nullptr, 0, 0);
  objcache_t *busy = objcache_create("t.busy", 64, 0, nullptr, nullptr, nullptr, 0, 0);
  std::vector<void *> v;
  for (int i = 0; i < 20000; ++i) v.push_back(objcache_get(idle, 0));
  for (void *p : v) objcache_put(idle, p);
  v.clear();
  uint64_t held = data_mapped();
  cr_expect_geq(stats_of(idle).cached, 19000u, "cached in its depot");
  struct objcache_stats s = stats_of(idle);
  for (int i = 0; i < 200 && s.cached > 1000; ++i) {
    usleep(10000);
    for (int j = 0; j < 5000; ++j) v.push_back(objcache_get(busy, 0));  // slow paths: the scavenge
    for (void *p : v) objcache_put(busy, p);
    v.clear();
    s = stats_of(idle);
  }
  cr_expect_eq(s.cached, 0u, "the depot and the CPUs' magazines were emptied");
  cr_expect_geq(s.reaped, 18000u, "counted as reaped");
  for (int i = 0; i < 100 && data_mapped() > held - 4000000; ++i) {
    usleep(20000);
    for (int j = 0; j < 5000; ++j) v.push_back(objcache_get(busy, 0));
    for (void *p : v) objcache_put(busy, p);
    v.clear();
  }
  cr_expect_lt(data_mapped(), held - 4000000, "and its slabs went back to the OS");
  objcache_destroy(busy);
  objcache_destroy(idle);
}

// A cache whose gets all come from the CPUs' magazines never visits its
// depot, yet it is in use: the scavenge sees its count of gets move and
// leaves its magazines alone (taking them costs each CPU a fence, and the
// next gets would make the objects again). Once the gets stop, the next
// idle period takes them.
Test(objcache, a_cache_served_by_its_magazines_keeps_them_while_in_use) {
  test_crew::pin_to(0);
  objcache_t *used = objcache_create("t.inuse", 64, 0, nullptr, nullptr, nullptr, 0, 0);
  objcache_t *busy = objcache_create("t.driver", 64, 0, nullptr, nullptr, nullptr, 0, 0);
  void *ring[10];
  auto cycle_used = [&] {
    for (void *&p : ring) p = objcache_get(used, 0);
    for (void *p : ring) objcache_put(used, p);
  };
  auto drive_scavenges = [&] {  // depot trips of another cache run the scavenge
    std::vector<void *> v;
    for (int j = 0; j < 500; ++j) v.push_back(objcache_get(busy, 0));
    for (void *p : v) objcache_put(busy, p);
  };
  cycle_used();
  uint64_t made = stats_of(used).slab_allocs;
  // Ten idle periods of a cache without a ctor (SYSREF_DECAY_MS / 8 each).
  uint64_t until = sysref::os::coarse_now_ns() + 10 * uint64_t{sysref::os::opts().decay_ms} * 1000000u / 8;
  while (sysref::os::coarse_now_ns() < until) {
    cycle_used();
    drive_scavenges();
    usleep(1000);
  }
  struct objcache_stats s = stats_of(used);
  cr_expect_eq(s.reaped, 0u, "a cache in use lost %lu cached objects", static_cast<unsigned long>(s.reaped));
  cr_expect_eq(s.slab_allocs, made, "and made its objects again");
  until = sysref::os::coarse_now_ns() + 10 * uint64_t{sysref::os::opts().decay_ms} * 1000000u / 8;
  while (sysref::os::coarse_now_ns() < until && stats_of(used).cached > 0) {
    drive_scavenges();
    usleep(1000);
  }
  cr_expect_eq(stats_of(used).cached, 0u, "idle, it gave its magazines back");
  objcache_destroy(busy);
  objcache_destroy(used);
}

// A cache without a ctor keeps only a few full magazines in its depot (two
// per CPU, plus two): what it is handed beyond that goes straight back to
// the slab layer, where empty slabs serve every other zone. And a get that
// finds its depot dry fills a whole magazine from the slab at once.
Test(objcache, a_ctorless_cache_caps_its_depot_and_fills_by_the_magazine) {
  test_crew::pin_to(0);
  objcache_t *oc = objcache_create("t.cap", 128, 0, nullptr, nullptr, nullptr, 0, 0);
  std::vector<void *> v;
  for (int i = 0; i < 20000; ++i) v.push_back(objcache_get(oc, 0));
  struct objcache_stats s = stats_of(oc);
  cr_expect_lt(s.depot_exchanges, 20000u / 16, "a depot trip per magazine, not per object (%lu)",
               static_cast<unsigned long>(s.depot_exchanges));
  for (void *p : v) objcache_put(oc, p);
  s = stats_of(oc);
  size_t cap = 2 * std::thread::hardware_concurrency() + 2;
  cr_expect_leq(s.depot_full, cap);
  cr_expect_leq(s.cached, (cap + 2 * std::thread::hardware_concurrency()) * s.mag_size);
  cr_expect_geq(s.slab_frees, 20000u - s.cached, "the rest went back to the slabs");
  cr_expect_eq(s.live, 0u);
  objcache_destroy(oc);
}

// Past the cap, a put gives back the magazine it has just filled, whose
// objects were freed last (their lines still cached), and the CPU keeps its
// previous magazine. Which objects went back shows in the slab layer's free
// marker (word 1 = zone secret ^ address): every object put after the depot
// reached its cap, except the last magazine's worth, must carry it.
Test(objcache, past_the_cap_the_magazine_just_filled_goes_back) {
  test_crew::pin_to(0);
  objcache_t *oc = objcache_create("t.cap.last", 128, 0, nullptr, nullptr, nullptr, 0, 0);
  const size_t mag = stats_of(oc).mag_size, cap = 2 * std::thread::hardware_concurrency() + 2;
  // Half a magazine over a whole number: the last one is partly filled.
  const size_t n = (cap + 16) * mag + mag / 2;
  std::vector<void *> v;
  for (size_t i = 0; i < n; ++i) v.push_back(objcache_get(oc, 0));
  for (void *p : v) objcache_put(oc, p);
  // The depot reached its cap once about cap + 2 magazines had been put.
  const size_t from = (cap + 3) * mag, to = n - mag;
  uint64_t secret = sysref::slab::free_secret(sysref::objcache::zone_of(reinterpret_cast<sysref::objcache::cache *>(oc)));
  size_t cached = 0;
  for (size_t i = from; i < to; ++i) {
    auto a = reinterpret_cast<uintptr_t>(v[i]);
    cached += static_cast<uintptr_t *>(v[i])[1] != (secret ^ a);
  }
  cr_expect_eq(cached, 0u, "%zu of the objects put between %zu and %zu are still cached", cached, from, to);
  objcache_destroy(oc);
}
