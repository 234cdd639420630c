// lib/objcache: magazines, depot, constructed-object caching, reaping,
// reclaim, limits, growth. Run once per per-CPU mode (see meson.build).
#include <criterion/criterion.h>

#include <atomic>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <sched.h>
#include <sysref/objcache.h>
#include <sysref/os.h>
#include <thread>
#include <unistd.h>
#include <vector>

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

void pin(unsigned cpu) {
  cpu_set_t set;
  CPU_ZERO(&set);
  CPU_SET(cpu % std::thread::hardware_concurrency(), &set);
  sched_setaffinity(0, sizeof set, &set);
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
  pin(0);
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
  pin(0);
  objcache_t *oc = objcache_create("t.reclaim", 256, 0, nullptr, nullptr, nullptr, 0, 0);
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
  pin(0);
  objcache_t *oc = widgets();
  std::vector<void *> v;
  for (int i = 0; i < 3000; ++i) v.push_back(objcache_get(oc, 0));
  for (void *p : v) objcache_put(oc, p);  // a burst: the depot fills
  v.clear();
  struct objcache_stats s0 = stats_of(oc);
  cr_assert_gt(s0.depot_full, 10u);
  // Then a small steady load for a few intervals: the burst is not needed.
  // It still outgrows this CPU's two magazines, so it visits the depot, where
  // reaping runs (without the reaper thread, slow paths are its only driver).
  for (int t = 0; t < 8; ++t) {
    usleep(25000);
    for (int i = 0; i < 300; ++i) v.push_back(objcache_get(oc, 0));
    for (void *p : v) objcache_put(oc, p);
    v.clear();
  }
  struct objcache_stats s = stats_of(oc);
  cr_expect_gt(s.reaped, 2000u, "the burst's objects were reaped");
  cr_expect_eq(s.dtor_calls, s.reaped, "reaped objects were destructed");
  cr_expect_lt(s.depot_full, s0.depot_full);
  cr_expect_eq(s.gets, s.puts + s.live);
  objcache_destroy(oc);
}

// A producer and a consumer on two CPUs both trade with the depot all the
// time; with a low contention threshold the magazine size must grow.
Test(objcache, magazines_grow_under_a_contended_two_thread_load, .init = fast_reaping) {
  if (std::thread::hardware_concurrency() < 2) cr_skip_test("needs two CPUs");
  objcache_t *oc = objcache_create("t.grow", 64, 0, nullptr, nullptr, nullptr, 0, 0);
  std::atomic<bool> stop{false};
  auto worker = [&](unsigned cpu) {
    pin(cpu);
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
  cr_expect_gt(s.mag_size, 15u);
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
    pin(0);
    for (long i = 0; i < total; ++i) {
      auto *w = static_cast<widget *>(objcache_get(oc, 0));
      if (w->magic != built) bad.fetch_add(1);
      std::memset(w->payload, static_cast<int>(i & 0x7f), sizeof w->payload);
      while (slots[i % ring].load(std::memory_order_acquire)) sched_yield();
      slots[i % ring].store(w, std::memory_order_release);
    }
  });
  std::thread consumer([&] {
    pin(1);
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
  pin(0);
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
  for (int i = 0; i < 3000; ++i) v.push_back(objcache_get(oc, 0));
  for (void *p : v) objcache_put(oc, p);
  cr_assert_gt(stats_of(oc).depot_full, 10u);
  struct objcache_stats s {};
  for (int i = 0; i < 200; ++i) {  // no calls into the cache meanwhile but stats
    usleep(10000);
    s = stats_of(oc);
    if (s.depot_full == 0) break;
  }
  cr_expect_eq(s.depot_full, 0u, "two idle intervals reap every full depot magazine");
  cr_expect_gt(s.reaped, 2500u);
  cr_expect_eq(s.dtor_calls, s.reaped);
  objcache_destroy(oc);
}

// Objects a thread put back on CPU 1 before it exited are cached in CPU 1's
// magazines. Reclaim from CPU 0 must take them too.
Test(objcache, reclaim_takes_other_cpus_magazines) {
  if (std::thread::hardware_concurrency() < 2) cr_skip_test("needs two CPUs");
  objcache_t *oc = widgets();
  std::thread t([&] {
    pin(1);
    std::vector<void *> v;
    for (int i = 0; i < 50; ++i) v.push_back(objcache_get(oc, 0));  // fits CPU 1's magazines
    for (void *p : v) objcache_put(oc, p);
  });
  t.join();
  pin(0);
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
    pin(1);
    void *v[8];
    for (auto &p : v) p = objcache_get(oc, 0);
    for (auto *p : v) objcache_put(oc, p);
  });
  t.join();
  pin(0);
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
