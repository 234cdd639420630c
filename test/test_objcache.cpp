// lib/objcache: magazines, depot, constructed-object caching, reaping,
// reclaim, limits, growth. Run once per per-CPU mode (see meson.build).
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

using namespace test_crew;

namespace {

struct widget {
  uint64_t magic;        // set by the ctor: proves the object is constructed
  uint64_t serial;
  char payload[48];
};
constexpr uint64_t built = 0xb011dab1e;

std::atomic<long> g_ctors{0}, g_dtors{0};
int g_fail_ctor = 0;  // errno value the ctor returns when nonzero

int widget_ctor(void *obj, void *priv, int) {
  if (g_fail_ctor) return g_fail_ctor;
  auto *w = static_cast<widget *>(obj);
  w->magic = built;
  w->serial = static_cast<std::atomic<uint64_t> *>(priv)->fetch_add(1);
  g_ctors.fetch_add(1);
  return 0;
}

void widget_dtor(void *obj, void *) {
  auto *w = static_cast<widget *>(obj);
  cr_assert_eq(w->magic, built, "dtor of an object not in constructed state");
  w->magic = 0;
  g_dtors.fetch_add(1);
}

std::atomic<uint64_t> g_serials{0};

int stamp_ctor(void *obj, void *, int) {
  *static_cast<uint64_t *>(obj) = built;
  return 0;
}

objcache_t *widgets(size_t limit = 0) {
  objcache_t *oc = objcache_create("t.widget", sizeof(widget), 0, widget_ctor, widget_dtor,
                                   &g_serials, limit, 0);
  cr_assert_not_null(oc);
  return oc;
}

struct objcache_stats stats_of(objcache_t *oc) {
  struct objcache_stats s;
  cr_assert_eq(objcache_stats(oc, &s), 0);
  return s;
}

uint64_t data_mapped() {
  struct sysref_os_stats s;
  sysref_os_stats(&s);
  return s.mapped - s.metadata;
}

void fast_reaping() {
  setenv("SYSREF_REAP_INTERVAL_MS", "20", 1);
  setenv("SYSREF_MAG_CONTENTION", "0", 1);
}
void count_errors() { setenv("SYSREF_ON_ERROR", "count", 1); }

}  // namespace

Test(objcache, ctor_runs_once_per_object_not_per_get) {
  test_crew::pin_to(0);
  objcache_t *oc = widgets();
  for (int round = 0; round < 1000; ++round) {
    std::vector<widget *> v;
    for (int i = 0; i < 40; ++i) {
      auto *w = static_cast<widget *>(objcache_get(oc, 0));
      cr_assert_not_null(w);
      cr_assert_eq(w->magic, built, "every object comes back constructed");
      v.push_back(w);
    }
    for (auto *w : v) objcache_put(oc, w);
  }
  struct objcache_stats s = stats_of(oc);
  cr_expect_eq(s.gets, 40000u);
  cr_expect_leq(s.ctor_calls, 80u, "40 objects in use at once: about that many constructed");
  cr_expect_eq(s.ctor_calls, static_cast<uint64_t>(g_ctors.load()));
  cr_expect_eq(s.dtor_calls, 0u, "nothing destructed while the cache keeps them");
  cr_expect_eq(s.gets, s.puts + s.live);
  cr_expect_eq(s.live, 0u);
  cr_expect_eq(s.cached + s.dtor_calls, s.ctor_calls, "constructed objects are cached or destructed");
  objcache_destroy(oc);
  cr_expect_eq(g_dtors.load(), g_ctors.load(), "destroy destructs every cached object");
}

Test(objcache, stats_add_up_with_objects_out) {
  objcache_t *oc = widgets();
  std::vector<void *> v;
  for (int i = 0; i < 500; ++i) v.push_back(objcache_get(oc, 0));
  for (int i = 0; i < 200; ++i) objcache_put(oc, v[i]);
  objcache_dtor(oc, v[200]);  // counts as a put, destructs
  struct objcache_stats s = stats_of(oc);
  cr_expect_eq(s.gets, 500u);
  cr_expect_eq(s.puts, 201u);
  cr_expect_eq(s.live, 299u);
  cr_expect_eq(s.dtor_calls, 1u);
  cr_expect_eq(s.ctor_calls, s.cached + s.live + s.dtor_calls);
  for (int i = 201; i < 500; ++i) objcache_put(oc, v[i]);
  objcache_destroy(oc);
}

Test(objcache, failing_ctor_returns_its_errno_and_leaks_nothing) {
  objcache_t *oc = widgets();
  uint64_t before = data_mapped();
  g_fail_ctor = ENOTRECOVERABLE;
  for (int i = 0; i < 1000; ++i) {
    errno = 0;
    cr_assert_null(objcache_get(oc, 0));
    cr_assert_eq(errno, ENOTRECOVERABLE);
  }
  g_fail_ctor = 0;
  struct objcache_stats s = stats_of(oc);
  cr_expect_eq(s.ctor_failures, 1000u);
  cr_expect_eq(s.live, 0u);
  cr_expect_eq(s.slab_allocs, s.slab_frees, "every object taken for a failed ctor went back");
  void *ok = objcache_get(oc, 0);
  cr_expect_not_null(ok, "the cache works again once the ctor does");
  objcache_put(oc, ok);
  objcache_destroy(oc);
  cr_expect_eq(data_mapped(), before);
}

Test(objcache, limit_nowait_and_waitok) {
  objcache_t *oc = widgets(4);
  void *held[4];
  for (auto &h : held) cr_assert_not_null(h = objcache_get(oc, 0));
  errno = 0;
  cr_expect_null(objcache_get(oc, SR_NOWAIT));
  cr_expect_eq(errno, ENOMEM);
  std::atomic<bool> put_done{false};
  std::thread later([&] {
    usleep(50000);
    put_done.store(true);
    objcache_put(oc, held[0]);
  });
  void *got = objcache_get(oc, SR_WAITOK);  // sleeps until the put above
  cr_expect_not_null(got);
  cr_expect(put_done.load(), "the get returned only after a put");
  later.join();
  struct objcache_stats s = stats_of(oc);
  cr_expect_geq(s.limit_waits, 1u);
  cr_expect_eq(s.limit, 4u);
  cr_expect_leq(s.live + s.cached, 4u, "never more than the limit in existence");
  objcache_put(oc, got);
  for (int i = 1; i < 4; ++i) objcache_put(oc, held[i]);
  objcache_destroy(oc);
}

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

Test(objcache, cross_thread_puts_keep_contents) {
  objcache_t *oc = widgets();
  constexpr size_t ring = 256;
  constexpr long total = 300000;
  std::atomic<widget *> slots[ring] = {};
  std::atomic<long> bad{0};
  std::thread producer([&] {
    test_crew::pin_to(0);
    for (long i = 0; i < total; ++i) {
      auto *w = static_cast<widget *>(objcache_get(oc, 0));
      if (w->magic != built) bad.fetch_add(1);
      std::memset(w->payload, static_cast<int>(i & 0x7f), sizeof w->payload);
      while (slots[i % ring].load(std::memory_order_acquire)) sched_yield();
      slots[i % ring].store(w, std::memory_order_release);
    }
  });
  std::thread consumer([&] {
    test_crew::pin_to(1);
    for (long i = 0; i < total; ++i) {
      widget *w;
      while (!(w = slots[i % ring].load(std::memory_order_acquire))) sched_yield();
      slots[i % ring].store(nullptr, std::memory_order_release);
      for (char c : w->payload)
        if (c != static_cast<char>(i & 0x7f)) bad.fetch_add(1);
      objcache_put(oc, w);
    }
  });
  producer.join();
  consumer.join();
  cr_expect_eq(bad.load(), 0);
  struct objcache_stats s = stats_of(oc);
  cr_expect_eq(s.gets, static_cast<uint64_t>(total));
  cr_expect_eq(s.live, 0u);
  objcache_destroy(oc);
}

// The get/put counts live in the magazine word until they near 2^27; the
// fold that moves them out must keep the totals exact.
Test(objcache, counts_stay_exact_past_the_fold, .timeout = 120) {
  test_crew::pin_to(0);
  objcache_t *oc = objcache_create("t.fold", 32, 0, nullptr, nullptr, nullptr, 0, 0);
  const long pairs = (1L << 27) + 12345;
  for (long i = 0; i < pairs; ++i) objcache_put(oc, objcache_get(oc, 0));
  struct objcache_stats s = stats_of(oc);
  cr_expect_eq(s.gets, static_cast<uint64_t>(pairs));
  cr_expect_eq(s.puts, static_cast<uint64_t>(pairs));
  cr_expect_eq(s.live, 0u);
  objcache_destroy(oc);
}

Test(objcache, fault_injection_sweep) {
  sysref::slab::flush_pool();
  uint64_t base = data_mapped();
  for (long n = 0; n <= 200; n += 5) {
    // Big objects: a few dozen per slab, so n page requests run out quickly.
    objcache_t *oc = objcache_create("t.sweep", 2048, 0, widget_ctor, widget_dtor, &g_serials, 0, 0);
    cr_assert_not_null(oc);
    sysref_os_fail_after(n);
    std::vector<void *> v;
    errno = 0;
    while (v.size() < 100000) {
      void *p = objcache_get(oc, 0);
      if (!p) break;
      v.push_back(p);
    }
    cr_assert_eq(errno, ENOMEM, "n=%ld", n);
    for (void *p : v) objcache_put(oc, p);  // must work with the OS refusing
    v.clear();
    sysref_os_fail_after(-1);
    for (int i = 0; i < 100; ++i) v.push_back(objcache_get(oc, 0));
    for (void *p : v) cr_assert_not_null(p, "n=%ld", n);
    for (void *p : v) objcache_put(oc, p);
    objcache_destroy(oc);
    sysref::slab::flush_pool();  // empty slabs wait there for any zone: not a leak
    cr_assert_eq(data_mapped(), base, "n=%ld: leaked", n);
  }
  cr_expect_eq(g_ctors.load(), g_dtors.load(), "every constructed object destructed");
}

Test(objcache, bad_arguments_and_foreign_objects, .init = count_errors) {
  errno = 0;
  cr_expect_null(objcache_create("bad", 0, 0, nullptr, nullptr, nullptr, 0, 0));
  cr_expect_eq(errno, EINVAL);
  cr_expect_null(objcache_create("bad", 64, 3, nullptr, nullptr, nullptr, 0, 0));
  cr_expect_null(objcache_create("bad", 64, 0, nullptr, nullptr, nullptr, 0, 7));
  errno = 0;
  cr_expect_null(objcache_get(nullptr, 0));
  cr_expect_eq(errno, EINVAL);
  objcache_t *a = widgets(), *b = widgets();
  void *from_b = objcache_get(b, 0);
  long local;
  objcache_put(a, from_b);                               // another cache's object
  objcache_put(a, &local);                               // not from any cache
  objcache_put(a, static_cast<char *>(from_b) + 8);      // interior
  void *mine = objcache_get(a, 0);
  cr_expect_not_null(mine, "the cache still works");
  cr_expect_eq(stats_of(a).live, 1u, "the bad puts changed nothing");
  objcache_put(a, mine);
  objcache_put(b, from_b);
  objcache_destroy(a);
  objcache_destroy(b);
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

// At the limit, with every object cached on a CPU whose thread is gone, a
// get must find them rather than fail (SR_NOWAIT) or sleep forever.
Test(objcache, limit_reaches_objects_stranded_on_another_cpu) {
  if (std::thread::hardware_concurrency() < 2) cr_skip_test("needs two CPUs");
  objcache_t *oc = widgets(8);
  std::thread t([&] {
    test_crew::pin_to(1);
    void *v[8];
    for (auto &p : v) p = objcache_get(oc, 0);
    for (auto *p : v) objcache_put(oc, p);
  });
  t.join();
  test_crew::pin_to(0);
  std::vector<void *> got;
  for (int i = 0; i < 8; ++i) {
    void *p = objcache_get(oc, SR_NOWAIT);
    cr_assert_not_null(p, "object %d: the limit counts cached objects, and they are reachable", i);
    got.push_back(p);
  }
  errno = 0;
  cr_expect_null(objcache_get(oc, SR_NOWAIT), "and the ninth is refused");
  cr_expect_eq(errno, ENOMEM);
  struct objcache_stats s = stats_of(oc);
  cr_expect_eq(s.ctor_calls, 8u, "no object beyond the limit was made");
  for (void *p : got) objcache_put(oc, p);
  objcache_destroy(oc);
}

// ---- regressions: destructors and locks, statistics, magazines, puts ----

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

// Issue 6, defect 6: a statistics snapshot read the put counts long before
// the get counts; a reader preempted in between reported as live every pair
// done meanwhile (587,086 once). Two threads each hold at most one object,
// first left where the scheduler puts them, then moved between CPUs; every
// snapshot must say so, and must not claim more cached objects than were
// ever constructed.
Test(objcache, stats_snapshots_stay_within_what_exists, .timeout = 60) {
  objcache_t *oc = widgets();
  constexpr uint64_t nthreads = 2;
  for (bool moves : {false, true}) {
    std::atomic<bool> get_failed{false};
    uint64_t snapshots = 0, puts_ahead = 0, cached_over = 0, over_cached = 0, over_ctors = 0;
    {
      crew c(moves, 0);
      live_bound bound(c, moves, nthreads);
      for (uint64_t t = 0; t < nthreads; ++t)
        c.spawn([&, t] {
          pin_to(static_cast<unsigned>(t));  // from here on only the crew moves it
          while (!c.stopping()) {
            void *w = objcache_get(oc, 0);
            if (!w) {
              get_failed.store(true);
              return;
            }
            objcache_put(oc, w);
          }
        });
      for (auto end = after_ms(1000); steady::now() < end; ++snapshots) {
        struct objcache_stats s = bound.snapshot([&] { return stats_of(oc); });
        if (s.puts > s.gets) ++puts_ahead;
        if (s.cached > s.ctor_calls && cached_over++ == 0) {
          over_cached = s.cached;
          over_ctors = s.ctor_calls;
        }
      }
      bound.expect_none_over(moves ? "threads moved" : "threads in place");
    }
    const char *how = moves ? "threads moved" : "threads in place";
    cr_assert_not(get_failed.load());
    cr_expect_gt(snapshots, 0u);
    cr_expect_eq(puts_ahead, 0u, "%s: %lu snapshots showed more puts than gets", how,
                 static_cast<unsigned long>(puts_ahead));
    cr_expect_eq(cached_over, 0u, "%s: %lu snapshots showed more objects cached than constructed (first: %lu of %lu)",
                 how, static_cast<unsigned long>(cached_over), static_cast<unsigned long>(over_cached),
                 static_cast<unsigned long>(over_ctors));
    struct objcache_stats s = stats_of(oc);
    cr_expect_eq(s.live, 0u);
    cr_expect_eq(s.gets, s.puts);
  }
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

// Issue 6, defect 7c: a put never needs fresh memory. Magazines are the
// library's metadata and may be made; object memory is never mapped by puts.
Test(objcache, puts_never_map_object_memory) {
  objcache_t *oc = objcache_create("t.putmaps", 64, 0, nullptr, nullptr, nullptr, 0, 0);
  cr_assert_not_null(oc);
  std::vector<void *> v(300000);
  for (auto &p : v) cr_assert_not_null(p = objcache_get(oc, 0));
  const uint64_t before = data_mapped();
  for (void *p : v) objcache_put(oc, p);
  cr_expect_leq(data_mapped(), before, "puts mapped %lu bytes of object memory",
                static_cast<unsigned long>(data_mapped() - before));
  cr_expect_eq(stats_of(oc).live, 0u);
  objcache_destroy(oc);
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

// Issue 6, defect 4, made deterministic: the signal arrives while this very
// thread holds a lock of the cache, as if interrupted in its slow path: the
// depot lock, or the per-CPU slot lock that guards its magazines in lock
// mode. With no magazine on this CPU, the handler's put can reach neither a
// magazine nor the depot: it must park the object (constructed) without
// waiting; the handler's SR_NOWAIT gets must return at once, the first with
// that very object.
namespace {

struct {
  objcache_t *oc;
  void *to_put, *first, *second;
  bool ran;
} g_held;

void put_and_get_nowait(int) {
  int saved = errno;
  objcache_put(g_held.oc, g_held.to_put);
  g_held.first = objcache_get(g_held.oc, SR_NOWAIT);
  g_held.second = objcache_get(g_held.oc, SR_NOWAIT);
  g_held.ran = true;
  errno = saved;
}

void handler_under(sysref::os::lock &(*which)(sysref::objcache::cache *)) {
  pin_to(0);
  objcache_t *oc = widgets();
  void *obj = objcache_get(oc, 0);
  objcache_reclaim(oc);  // no magazine left on any CPU
  auto *c = reinterpret_cast<sysref::objcache::cache *>(oc);
  const uint64_t dtors = stats_of(oc).dtor_calls;
  g_held = {oc, obj, nullptr, nullptr, false};
  struct sigaction sa {};
  sa.sa_handler = put_and_get_nowait;
  sigaction(SIGUSR1, &sa, nullptr);
  sysref::os::lock &held = which(c);
  held.acquire();
  raise(SIGUSR1);  // runs the handler now, on this thread
  held.release();
  cr_assert(g_held.ran);
  cr_expect_eq(g_held.first, obj, "the parked object came back first, still constructed");
  cr_expect_eq(static_cast<widget *>(obj)->magic, built);
  cr_expect_not_null(g_held.second, "the next one was made without a lock");
  struct objcache_stats s = stats_of(oc);
  cr_expect_eq(s.live, 2u);
  cr_expect_eq(s.gets, s.puts + s.live);
  objcache_put(oc, g_held.first);
  objcache_put(oc, g_held.second);
  s = stats_of(oc);
  cr_expect_eq(s.live, 0u);
  cr_expect_eq(s.dtor_calls, dtors, "no object was destructed on the way");
  objcache_destroy(oc);
}

}  // namespace

Test(objcache, a_handler_interrupting_the_depot_lock_never_waits, .timeout = 10) {
  handler_under([](sysref::objcache::cache *c) -> sysref::os::lock & { return c->dep.lock; });
}

Test(objcache, a_handler_interrupting_the_slot_lock_never_waits, .timeout = 10) {
  handler_under([](sysref::objcache::cache *c) -> sysref::os::lock & {
    namespace percpu = sysref::percpu;
    return *reinterpret_cast<sysref::os::lock *>(percpu::address(percpu::current_cpu(), c->slot));
  });
}

// What a handler parks in a spill slot is still the cache's: statistics
// count it as cached, and objcache_reclaim destructs it.
namespace {

void put_only(int) { objcache_put(g_held.oc, g_held.to_put); }

}  // namespace

Test(objcache, a_parked_object_is_cached_and_reclaimed, .timeout = 10) {
  pin_to(0);
  objcache_t *oc = widgets();
  void *obj = objcache_get(oc, 0);
  objcache_reclaim(oc);  // no magazine left on any CPU
  auto *c = reinterpret_cast<sysref::objcache::cache *>(oc);
  g_held = {oc, obj, nullptr, nullptr, false};
  struct sigaction sa {};
  sa.sa_handler = put_only;
  sigaction(SIGUSR1, &sa, nullptr);
  c->dep.lock.acquire();
  raise(SIGUSR1);
  c->dep.lock.release();
  struct objcache_stats s = stats_of(oc);
  cr_expect_eq(s.live, 0u);
  cr_expect_eq(s.cached, 1u, "the parked object is cached");
  const uint64_t dtors = s.dtor_calls;
  cr_expect_geq(objcache_reclaim(oc), sizeof(widget));
  s = stats_of(oc);
  cr_expect_eq(s.cached, 0u);
  cr_expect_eq(s.dtor_calls, dtors + 1, "reclaim destructed it");
  objcache_destroy(oc);
}

// SR_NOWAIT on a cache nothing was ever taken from: the slab layer maps a
// slab when no other thread is mapping for the zone, so the get succeeds
// and the ctor runs, whatever the object size (issue 9: every NOWAIT get of
// a fresh cache used to fail).
Test(objcache, nowait_on_a_fresh_cache_of_every_size) {
  const size_t sizes[] = {16, 64, 512, 1024, 4096, 8192, 16384, 32768, 65536, 131072, 262144};
  for (size_t size : sizes) {
    long ctors = g_ctors.load();
    objcache_t *oc = objcache_create("t.nowait", size, 0, widget_ctor, widget_dtor, &g_serials, 0, 0);
    cr_assert_not_null(oc);
    errno = 0;
    void *p = objcache_get(oc, SR_NOWAIT);
    cr_assert_not_null(p, "size %zu: errno %d", size, errno);
    cr_expect_eq(static_cast<widget *>(p)->magic, built, "size %zu: constructed", size);
    cr_expect_eq(g_ctors.load(), ctors + 1);
    objcache_put(oc, p);
    objcache_destroy(oc);
  }
  // The case from the issue: 700 NOWAIT gets of a fresh 4 KiB cache.
  objcache_t *oc = objcache_create("t.nowait.4k", 4096, 0, widget_ctor, widget_dtor, &g_serials, 0, 0);
  std::vector<void *> v;
  long ctors = g_ctors.load();
  for (int i = 0; i < 700; ++i) {
    void *p = objcache_get(oc, SR_NOWAIT);
    cr_assert_not_null(p, "get %d", i);
    v.push_back(p);
  }
  cr_expect_eq(g_ctors.load() - ctors, 700);
  for (void *p : v) objcache_put(oc, p);
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
