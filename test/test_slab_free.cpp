// lib/slab: frees: double frees, foreign pointers, cross-thread and remote
// frees, frees under moves and signal storms, signal handlers, type-stable
// zones. Run once per per-CPU mode (see meson.build).
#include <criterion/criterion.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <csignal>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <fcntl.h>
#include <pthread.h>
#include <random>
#include <sched.h>
#include <sysref/kmalloc_obj.h>
#include <sys/mman.h>
#include <sysref/os.h>
#include <thread>
#include <unistd.h>
#include <vector>

#include "crew.hpp"
#include "slab/slab.hpp"
#include "slab/zone.hpp"
#include "slab_helpers.hpp"

using namespace test_crew;
using namespace test_slab;

namespace {

uint64_t os_unmap_calls() {
  struct sysref_os_stats s;
  sysref_os_stats(&s);
  return s.unmap_calls;
}

void count_errors() { setenv("SYSREF_ON_ERROR", "count", 1); }  // before the first library call

}  // namespace

// One thread allocates and fills, the other verifies and frees.
Test(slab, cross_thread_frees_keep_contents) {
  kmalloc_zone_t *z = kmalloc_obj_zone_create("t.cross", 80, 0, 0);
  constexpr size_t ring = 1024;
  constexpr long total = 400000;
  std::atomic<void *> slots[ring] = {};
  std::atomic<long> bad{0};
  auto pin = [](unsigned c) {
    cpu_set_t s;
    CPU_ZERO(&s);
    CPU_SET(c % std::thread::hardware_concurrency(), &s);
    sched_setaffinity(0, sizeof s, &s);
  };
  std::thread producer([&] {
    pin(0);
    for (long i = 0; i < total; ++i) {
      auto *p = static_cast<long *>(kmalloc_obj(z, 0));
      for (int k = 0; k < 10; ++k) p[k] = i * 10 + k;
      while (slots[i % ring].load(std::memory_order_acquire)) sched_yield();
      slots[i % ring].store(p, std::memory_order_release);
    }
  });
  std::thread consumer([&] {
    pin(1);
    for (long i = 0; i < total; ++i) {
      void *p;
      while (!(p = slots[i % ring].load(std::memory_order_acquire))) sched_yield();
      slots[i % ring].store(nullptr, std::memory_order_release);
      auto *q = static_cast<long *>(p);
      for (int k = 0; k < 10; ++k)
        if (q[k] != i * 10 + k) bad.fetch_add(1);
      kfree_obj(p, z);
    }
  });
  producer.join();
  consumer.join();
  cr_expect_eq(bad.load(), 0);
  kmalloc_zone_stats s = zstats(z);
  cr_expect_eq(s.allocs, static_cast<uint64_t>(total));
  cr_expect_eq(s.live, 0u);
  kmalloc_obj_zone_destroy(z);
}

Test(slab, double_free_aborts_by_default, .signal = SIGABRT) {
  kmalloc_zone_t *z = kmalloc_obj_zone_create("t.df", 64, 0, 0);
  void *p = kmalloc_obj(z, 0);
  kfree_obj(p, z);
  kfree_obj(p, z);
}

Test(slab, double_free_and_foreign_pointers_are_counted_and_harmless, .init = count_errors) {
  kmalloc_zone_t *z = kmalloc_obj_zone_create("t.bad", 64, 0, 0);
  kmalloc_zone_t *other = kmalloc_obj_zone_create("t.other", 64, 0, 0);
  void *p = kmalloc_obj(z, 0), *q = kmalloc_obj(z, 0), *o = kmalloc_obj(other, 0);
  long on_stack[8];
  void *heap = std::malloc(64);
  kfree_obj(p, z);
  kfree_obj(p, z);                                  // double free, own CPU's slab
  kfree_obj(on_stack, z);                           // foreign: stack
  kfree_obj(heap, z);                               // foreign: C heap
  kfree_obj(o, z);                                  // another zone's object
  kfree_obj(static_cast<char *>(q) + 8, z);         // interior pointer
  cr_expect_eq(zstats(z).errors, 5u);
  // The free list survived: distinct, usable objects keep coming.
  std::vector<void *> v;
  for (int i = 0; i < 5000; ++i) {
    void *r = kmalloc_obj(z, 0);
    cr_assert_not_null(r);
    std::memset(r, 0x77, 64);
    v.push_back(r);
  }
  std::sort(v.begin(), v.end());
  cr_expect(std::adjacent_find(v.begin(), v.end()) == v.end(), "an object was handed out twice");
  free_all(z, v);
  kfree_obj(q, z);
  kfree_obj(o, other);
  kmalloc_zone_stats s = zstats(z);
  cr_expect_eq(s.live, 0u);
  std::free(heap);
  kmalloc_obj_zone_destroy(z);
  kmalloc_obj_zone_destroy(other);
}

// A double free of an object whose slab is no longer bound to any CPU goes
// through the locked path: it must be caught there too.
Test(slab, double_free_on_a_detached_slab_is_caught, .init = count_errors) {
  kmalloc_zone_t *z = kmalloc_obj_zone_create("t.df2", 1024, 0, 0);
  std::vector<void *> v = drain(z, 0, 500);  // several slabs, the first ones detached
  void *victim = v.front();
  kfree_obj(victim, z);
  kfree_obj(victim, z);
  cr_expect_eq(zstats(z).errors, 1u);
  v.erase(v.begin());
  free_all(z, v);
  cr_expect_eq(zstats(z).live, 0u);
  kmalloc_obj_zone_destroy(z);
}

namespace {

// Everything drained from a fresh zone, shuffled, with the entries a batch
// must skip: two nullptrs (silently), and five it must report: a second
// free of an object of the slab bound to this CPU and of one of a detached
// slab, an interior pointer, a stack address and another zone's object.
struct bad_batch {
  std::vector<void *> good, batch;
  long on_stack[4];  // an address no zone owns
  void *other_obj;
};

bad_batch make_batch(kmalloc_zone_t *z, kmalloc_zone_t *other) {
  bad_batch b;
  b.good = drain(z, 0, 2000);  // 256 B objects: several slabs, the last one bound
  cr_assert_eq(b.good.size(), 2000u);
  b.other_obj = kmalloc_obj(other, 0);
  b.batch = b.good;
  std::shuffle(b.batch.begin(), b.batch.end(), std::mt19937(7));
  b.batch.insert(b.batch.begin() + 100, nullptr);
  b.batch.push_back(nullptr);
  b.batch.push_back(b.good.back());   // double free: the bound slab
  b.batch.push_back(b.good.front());  // double free: a detached slab
  b.batch.push_back(static_cast<char *>(b.good[500]) + 16);
  b.batch.push_back(b.on_stack);
  b.batch.push_back(b.other_obj);
  return b;
}

// After a batch of every object: nothing live, no slab left with an object
// missing (partial or full), and the five bad entries counted.
void expect_all_filed(kmalloc_zone_t *z) {
  kmalloc_zone_stats s = zstats(z);
  cr_expect_eq(s.live, 0u);
  cr_expect_eq(s.frees, 2000u);
  cr_expect_eq(s.slabs_partial + s.slabs_full, 0u, "%llu partial, %llu full: an object was not filed",
               (unsigned long long)s.slabs_partial, (unsigned long long)s.slabs_full);
  cr_expect_eq(s.errors, 5u);
  std::vector<void *> again = drain(z, 0, 2000);  // and the objects serve again
  cr_expect_eq(again.size(), 2000u);
  cr_expect(all_distinct(again), "an object was handed out twice");
  free_all(z, again);
}

}  // namespace

// free_batch (what the object cache uses to give a magazine back) frees
// each object as kfree_obj would, and reports the bad ones without losing
// the rest.
Test(slab, a_batch_free_files_every_object_and_reports_the_bad_ones, .init = count_errors) {
  kmalloc_zone_t *z = kmalloc_obj_zone_create("t.batch", 256, 0, 0);
  kmalloc_zone_t *other = kmalloc_obj_zone_create("t.batch.other", 256, 0, 0);
  bad_batch b = make_batch(z, other);
  sysref::slab::free_batch(reinterpret_cast<sysref::slab::zone *>(z), b.batch.data(), b.batch.size());
  expect_all_filed(z);
  kfree_obj(b.other_obj, other);
  kmalloc_obj_zone_destroy(z);
  kmalloc_obj_zone_destroy(other);
}

// With the zone lock busy, the batch's unbound objects go to the deferred
// stack in one piece, and the next lock holder files all of them.
Test(slab, a_batch_free_defers_to_a_busy_zone_lock, .init = count_errors) {
  kmalloc_zone_t *z = kmalloc_obj_zone_create("t.batch", 256, 0, 0);
  kmalloc_zone_t *other = kmalloc_obj_zone_create("t.batch.other", 256, 0, 0);
  bad_batch b = make_batch(z, other);
  auto *zz = reinterpret_cast<sysref::slab::zone *>(z);
  zz->lock.acquire();
  sysref::slab::free_batch(zz, b.batch.data(), b.batch.size());
  bool deferred = zz->deferred.load() != 0;
  zz->lock.release();
  cr_expect(deferred, "the batch waited for the lock instead of deferring");
  expect_all_filed(z);
  kfree_obj(b.other_obj, other);
  kmalloc_obj_zone_destroy(z);
  kmalloc_obj_zone_destroy(other);
}

// ---- regressions: migration, signals, remote frees ----

namespace {

// Sends stderr to /dev/null while it lives: in count mode the library writes
// a line per error, and a test that makes errors on purpose counts them.
class quiet_stderr {
 public:
  quiet_stderr() : saved_(dup(STDERR_FILENO)) {
    int null = open("/dev/null", O_WRONLY);
    if (null < 0) return;
    dup2(null, STDERR_FILENO);
    close(null);
  }
  ~quiet_stderr() {
    if (saved_ < 0) return;
    dup2(saved_, STDERR_FILENO);
    close(saved_);
  }
  quiet_stderr(const quiet_stderr &) = delete;
  quiet_stderr &operator=(const quiet_stderr &) = delete;

 private:
  int saved_;
};

// Polls the zone until ms pass or it reports an error (a failing run stops
// early instead of printing one report after another).
void run_until_error_or(kmalloc_zone_t *z, int ms) {
  for (auto end = after_ms(ms); steady::now() < end && zstats(z).errors == 0;)
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
}

}  // namespace

// Issue 6, defect 1: a free whose restartable sequence aborted after it had
// stored the free marker, and whose retry then ran on another CPU (or found
// another slab bound), was reported as a double free. Four threads on two
// CPUs, moved and signalled while they allocate and free their own objects,
// each freed exactly once; each object carries its owner's stamp so that a
// duplicated hand-out shows up too. Stops at the first report.
Test(slab, objects_freed_once_are_never_reported_under_moves_and_signals, .init = count_errors,
     .timeout = 60) {
  kmalloc_zone_t *z = kmalloc_obj_zone_create("t.once", 32, 0, 0);
  cr_assert_not_null(z);
  constexpr int nthreads = 4, batch = 64;
  std::atomic<uint64_t> made{0}, failed{0}, stamp_mismatches{0};
  {
    crew c(true, 100);
    for (int id = 1; id <= nthreads; ++id)
      c.spawn([&, id] {
        uint64_t *v[batch], seq = 0, n = 0;
        while (!c.stopping()) {
          int got = 0;
          for (; got < batch; ++got) {
            if (!(v[got] = static_cast<uint64_t *>(kmalloc_obj(z, 0)))) break;
            v[got][2] = static_cast<uint64_t>(id);
            v[got][3] = ++seq;
          }
          if (got < batch) failed.fetch_add(1);
          for (int i = 0; i < got; ++i) {
            if (v[i][2] != static_cast<uint64_t>(id)) stamp_mismatches.fetch_add(1);
            kfree_obj(v[i], z);
          }
          n += static_cast<uint64_t>(got);
        }
        made.fetch_add(n);
      });
    run_until_error_or(z, 2000);
  }
  kmalloc_zone_stats s = zstats(z);
  cr_expect_eq(s.errors, 0u, "objects freed once were reported as bad frees");
  cr_expect_eq(stamp_mismatches.load(), 0u, "an object was handed out to two threads");
  cr_expect_eq(failed.load(), 0u, "an allocation failed");
  cr_expect_gt(made.load(), 0u);
  cr_expect_eq(s.allocs, made.load());
  cr_expect_eq(s.frees, made.load(), "every free took effect");
  cr_expect_eq(s.live, 0u);
  kmalloc_obj_zone_destroy(z);
}

// The guard for that fix: a retry after an aborted attempt must still catch
// a real double free (the retry used to skip the check, so a signal landing
// before it let the second free through and put the object on the free list
// twice). One thread frees every object twice, the second time after the
// first free returned, while a timer signals it every 50 us.
Test(slab, real_double_frees_are_caught_under_a_signal_storm, .init = count_errors, .timeout = 60) {
  kmalloc_zone_t *z = kmalloc_obj_zone_create("t.df.storm", 64, 0, 0);
  cr_assert_not_null(z);
  constexpr int batch = 32;
  std::atomic<uint64_t> second_frees{0};
  std::atomic<bool> alloc_failed{false};
  quiet_stderr quiet;  // one report per second free
  {
    crew c(false, 50);
    c.spawn([&] {
      void *v[batch];
      uint64_t n = 0;
      while (!c.stopping()) {
        for (auto &p : v)
          if (!(p = kmalloc_obj(z, 0))) {
            alloc_failed.store(true);
            return;
          }
        for (void *p : v) {
          kfree_obj(p, z);
          kfree_obj(p, z);  // the double free
        }
        n += batch;
      }
      second_frees.store(n);
    });
    std::this_thread::sleep_for(std::chrono::milliseconds(2000));
  }
  cr_assert_not(alloc_failed.load());
  kmalloc_zone_stats s = zstats(z);
  cr_expect_gt(second_frees.load(), 0u);
  cr_expect_eq(s.errors, second_frees.load(), "every second free is reported, and only those");
  cr_expect_eq(s.live, 0u);
  // A missed double free leaves an object twice on a free list: take every
  // object the zone holds (and one slab more) and look for repeats.
  std::vector<void *> all = drain(z, 0, (s.slabs + 1) * s.objs_per_slab);
  cr_expect(all_distinct(all), "an object was handed out twice");
  free_all(z, all);
  kmalloc_obj_zone_destroy(z);
}

// Issue 6, defect 2: binding a partial slab set its remote stack to "bound"
// before the compare-and-store that binds it; when that store failed (the
// thread had moved), the remote stack was reset, dropping the frees other
// CPUs had pushed meanwhile. A producer moved between CPUs every 50 us
// allocates, a consumer frees; once every object is freed no slab may stay
// partial or full.
Test(slab, remote_frees_survive_a_producer_moved_between_cpus, .timeout = 60) {
  kmalloc_zone_t *z = kmalloc_obj_zone_create("t.remote", 16, 0, 0);
  cr_assert_not_null(z);
  constexpr size_t ring = 65536;
  constexpr long max_objects = 8000000;
  void *const done = reinterpret_cast<void *>(uintptr_t{1});  // the producer's last word
  static std::atomic<void *> slots[ring];
  std::atomic<long> produced{0}, consumed{0};
  std::atomic<bool> alloc_failed{false};
  {
    crew c(true, 0);
    c.spawn([&] {  // the producer, moved by the storm
      const auto end = after_ms(2500);
      long i = 0;
      for (; i < max_objects && (i % 1024 || steady::now() < end); ++i) {
        void *p = kmalloc_obj(z, 0);
        if (!p) {
          alloc_failed.store(true);
          break;
        }
        while (slots[i % ring].load(std::memory_order_acquire)) sched_yield();
        slots[i % ring].store(p, std::memory_order_release);
      }
      while (slots[i % ring].load(std::memory_order_acquire)) sched_yield();
      slots[i % ring].store(done, std::memory_order_release);
      produced.store(i);
    });
    c.spawn(
        [&] {  // the consumer, left where the scheduler puts it
          for (long i = 0;; ++i) {
            void *p;
            while (!(p = slots[i % ring].load(std::memory_order_acquire))) sched_yield();
            slots[i % ring].store(nullptr, std::memory_order_release);
            if (p == done) break;
            kfree_obj(p, z);
            consumed.store(i + 1, std::memory_order_relaxed);
          }
        },
        false);
    while (produced.load() == 0 && !alloc_failed.load())  // the moves go on until the producer is done
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  cr_assert_not(alloc_failed.load());
  cr_assert_eq(consumed.load(), produced.load());
  kmalloc_zone_stats s = zstats(z);
  cr_expect_eq(s.allocs, static_cast<uint64_t>(produced.load()));
  cr_expect_eq(s.frees, s.allocs);
  cr_expect_eq(s.live, 0u);
  cr_expect_eq(s.slabs_partial, 0u, "every object is free: no slab may stay partial (frees were lost)");
  cr_expect_eq(s.slabs_full, 0u, "every object is free: no slab may stay full (frees were lost)");
  kmalloc_obj_zone_destroy(z);
}

// A type-stable zone (the large-block records: a late page-map reader may
// still look at a freed record) never unmaps a slab, however many empty
// ones it holds. It used to keep at most 1024 spares and unmap the rest.
// Issue 6, defect 8.
Test(slab, type_stable_zone_never_unmaps_a_slab) {
  static sysref::slab::lazy_zone records{{}, "t.stable", 4096, 0, sysref::slab::lazy_zone::type_stable};
  sysref::slab::zone *z = records.get();
  cr_assert_not_null(z);
  auto *kz = reinterpret_cast<kmalloc_zone_t *>(z);
  const size_t per_slab = zstats(kz).objs_per_slab, slabs = 1100;
  std::vector<void *> v;
  for (size_t i = 0; i < per_slab * slabs; ++i) {
    void *p = sysref::slab::alloc(z, 0);
    cr_assert_not_null(p);
    v.push_back(p);
  }
  uint64_t unmaps = os_unmap_calls();
  for (void *p : v) sysref::slab::free(z, p);
  kmalloc_zone_stats s = zstats(kz);
  cr_expect_eq(s.slabs_released, 0u, "%llu slabs went back to the OS", (unsigned long long)s.slabs_released);
  cr_expect_eq(os_unmap_calls(), unmaps);
  cr_expect_geq(s.slabs, slabs);
  // Every freed object is still readable memory.
  uint64_t sum = 0;
  for (void *p : v) sum += *static_cast<volatile uint64_t *>(p);
  (void)sum;
}

// Issue 6, defect 4, made deterministic: the signal arrives while this very
// thread holds the zone lock, as if it had been interrupted in the zone's
// slow path. The handler's kfree_obj of an object whose slab is on no CPU
// (it needs the zone lock) must take the lock-free way, and its
// kmalloc_obj(SR_NOWAIT) with this CPU's slab used up must fail at once:
// waiting would never end.
namespace {

struct {
  kmalloc_zone_t *z;
  void *to_free;
  void *got;
  int got_errno;
  bool ran;
} g_held;

void free_and_get_nowait(int) {
  int saved = errno;
  kfree_obj(g_held.to_free, g_held.z);
  errno = 0;
  g_held.got = kmalloc_obj(g_held.z, SR_NOWAIT);
  g_held.got_errno = errno;
  g_held.ran = true;
  errno = saved;
}

}  // namespace

Test(slab, a_handler_interrupting_the_zone_lock_never_waits, .timeout = 10) {
  pin_to(0);
  kmalloc_zone_t *z = kmalloc_obj_zone_create("t.sigzone", 1024, 0, 0);
  auto *zone = reinterpret_cast<sysref::slab::zone *>(z);
  // Three slabs' worth: the first slabs are full and bound to no CPU.
  std::vector<void *> v = drain(z, 0, 3 * zstats(z).objs_per_slab);
  // Use up this CPU's slab, so that any further allocation needs the lock.
  namespace percpu = sysref::percpu;
  while (percpu::peek(percpu::current_cpu(), zone->w_off()) & zone->mask) v.push_back(kmalloc_obj(z, 0));
  g_held = {z, v.front(), nullptr, 0, false};
  const uint64_t live = zstats(z).live;
  struct sigaction sa {};
  sa.sa_handler = free_and_get_nowait;
  sigaction(SIGUSR1, &sa, nullptr);
  zone->lock.acquire();
  raise(SIGUSR1);  // runs the handler now, on this thread
  zone->lock.release();
  cr_assert(g_held.ran);
  cr_expect_null(g_held.got, "the only way to an object was the zone lock");
  cr_expect_eq(g_held.got_errno, ENOMEM);
  kmalloc_zone_stats s = zstats(z);  // files the deferred free
  cr_expect_eq(s.live, live - 1, "the handler's free counted");
  cr_expect_geq(s.slabs_partial, 1u, "and filed into its slab once the lock was free");
  cr_expect_eq(s.errors, 0u);
  v.erase(v.begin());
  free_all(z, v);
  s = zstats(z);
  cr_expect_eq(s.live, 0u);
  cr_expect_eq(s.slabs_partial + s.slabs_full, 0u, "nothing was lost on the way");
  kmalloc_obj_zone_destroy(z);
}
