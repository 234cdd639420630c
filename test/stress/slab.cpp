// Scenarios on slab zones (kmalloc_obj): producers and consumers, churn
// with a stats reader, zone life cycles, and two reported defects: false
// double frees under signals and migration (r1), lost remote frees (r2).
#include <random>
#include <sysref/os.h>

#include "stress.hpp"
#include "slab/slab.hpp"

namespace stress {

// ================================================================================
// The original scenarios
// ================================================================================

// Producers allocate and stamp; consumers check the stamp and free. Objects
// cross CPUs all the time: remote frees, detached slabs, refills.
void producers_and_consumers() {
  kmalloc_zone_t *z = kmalloc_obj_zone_create("stress.pc", 112, 0, 0);
  kmalloc_obj_set_spare(z, 2, 4);
  constexpr int pairs = 2;
  constexpr long per_producer = 150000;
  constexpr size_t ring = 512;
  struct channel {
    std::atomic<long *> slot[ring];
  };
  std::vector<channel> channels(pairs);
  for (auto &c : channels)
    for (auto &s : c.slot) s.store(nullptr);
  std::atomic<long> bad{0};
  std::vector<std::thread> threads;
  for (int p = 0; p < pairs; ++p) {
    threads.emplace_back([&, p] {
      move_to(static_cast<unsigned>(p));
      for (long i = 0; i < per_producer; ++i) {
        auto *o = static_cast<long *>(kmalloc_obj(z, 0));
        for (int k = 0; k < 14; ++k) o[k] = i ^ (long{p} << 40) ^ k;
        auto &slot = channels[p].slot[i % ring];
        while (slot.load(std::memory_order_acquire)) sched_yield();
        slot.store(o, std::memory_order_release);
      }
    });
    threads.emplace_back([&, p] {
      move_to(static_cast<unsigned>(p + 1));
      for (long i = 0; i < per_producer; ++i) {
        auto &slot = channels[p].slot[i % ring];
        long *o;
        while (!(o = slot.load(std::memory_order_acquire))) sched_yield();
        slot.store(nullptr, std::memory_order_release);
        for (int k = 0; k < 14; ++k)
          if (o[k] != (i ^ (long{p} << 40) ^ k)) bad.fetch_add(1);
        kfree_obj(o, z);
        if (i % 1000 == 0) move_to(static_cast<unsigned>(p + i / 1000));
      }
    });
  }
  for (auto &t : threads) t.join();
  kmalloc_zone_stats s = stats_of(z);
  CHECK(bad.load() == 0, "%ld objects arrived damaged", bad.load());
  CHECK(s.allocs == pairs * per_producer, "allocs %llu", (unsigned long long)s.allocs);
  CHECK(s.live == 0, "live %llu", (unsigned long long)s.live);
  CHECK(s.errors == 0, "errors %llu", (unsigned long long)s.errors);
  kmalloc_obj_zone_destroy(z);
}

// Threads keep a private working set that grows and shrinks at random in
// several zones, migrating as they go; a stats reader runs alongside.
void churn_with_a_reader() {
  kmalloc_zone_t *zones[3] = {kmalloc_obj_zone_create("stress.a", 24, 0, 0),
                              kmalloc_obj_zone_create("stress.b", 640, 64, 0),
                              kmalloc_obj_zone_create("stress.c", 5000, 0, 0)};
  std::atomic<bool> stop{false};
  std::thread reader([&] {
    while (!stop.load()) {
      for (auto *z : zones) {
        kmalloc_zone_stats s = stats_of(z);
        CHECK(s.allocs >= s.frees, "allocs %llu < frees %llu", (unsigned long long)s.allocs,
              (unsigned long long)s.frees);
      }
      sched_yield();
    }
  });
  std::vector<std::thread> workers;
  for (unsigned t = 0; t < 3; ++t)
    workers.emplace_back([&, t] {
      std::mt19937 rng(t);
      struct held {
        unsigned char *p;
        int zone;
        unsigned char tag;
      };
      std::vector<held> mine;
      for (long i = 0; i < 60000; ++i) {
        if (i % 256 == 0) move_to(t + static_cast<unsigned>(i / 256));
        if (mine.empty() || (rng() % 100) < 52) {
          int zi = static_cast<int>(rng() % 3);
          auto *p = static_cast<unsigned char *>(kmalloc_obj(zones[zi], 0));
          auto tag = static_cast<unsigned char>(rng());
          std::memset(p, tag, 24);
          mine.push_back({p, zi, tag});
        } else {
          size_t k = rng() % mine.size();
          held h = mine[k];
          mine[k] = mine.back();
          mine.pop_back();
          for (int b = 0; b < 24; ++b) CHECK(h.p[b] == h.tag, "byte %d of %p", b, (void *)h.p);
          kfree_obj(h.p, zones[h.zone]);
        }
      }
      for (held &h : mine) kfree_obj(h.p, zones[h.zone]);
    });
  for (auto &w : workers) w.join();
  stop.store(true);
  reader.join();
  for (auto *z : zones) {
    kmalloc_zone_stats s = stats_of(z);
    CHECK(s.live == 0 && s.errors == 0, "live %llu errors %llu", (unsigned long long)s.live,
          (unsigned long long)s.errors);
    kmalloc_obj_zone_destroy(z);
  }
}

// Zones created and destroyed on several threads at once (the zone of zones
// and the per-CPU slot allocator under contention); nothing leaks.
void zone_lifecycles() {
  struct sysref_os_stats before, after;
  sysref::slab::flush_pool();  // empty slabs wait in the pool for any zone: count what zones hold
  sysref_os_stats(&before);
  std::vector<std::thread> threads;
  for (unsigned t = 0; t < 3; ++t)
    threads.emplace_back([t] {
      for (int round = 0; round < 150; ++round) {
        move_to(t + static_cast<unsigned>(round));
        kmalloc_zone_t *z = kmalloc_obj_zone_create("stress.life", 32 + 16 * t, 0, 0);
        CHECK(z != nullptr, "round %d", round);
        if (!z) return;
        std::vector<void *> v;
        for (int i = 0; i < 300; ++i) v.push_back(kmalloc_obj(z, 0));
        for (void *p : v) kfree_obj(p, z);
        kmalloc_obj_zone_destroy(z);
      }
    });
  for (auto &t : threads) t.join();
  sysref::slab::flush_pool();
  sysref_os_stats(&after);
  CHECK(after.mapped - after.metadata == before.mapped - before.metadata,
        "data bytes before %llu after %llu", (unsigned long long)(before.mapped - before.metadata),
        (unsigned long long)(after.mapped - after.metadata));
}

// ================================================================================
// Patterns of reported defects
// ================================================================================

// r1, false "double free" from kfree_obj: a free whose restartable section
// was aborted after it had stored the free marker in the object, and which
// then retried on another CPU, took its own marker for an earlier free.
// Aborts come from preemption, migration and signals: more threads than
// CPUs, each moving itself to another CPU every few batches, and a
// signaller that sends SIGUSR1 and re-pins its target every 20 us (only a
// migration in the middle of the section reproduces r1). Each object is
// freed once, by the thread that allocated it, and carries its owner's
// stamp: every error the zone counts is false, and a stamp mismatch would be
// an object handed out twice.
void signalled_batches() {
  kmalloc_zone_t *z = kmalloc_obj_zone_create("stress.r1", 32, 0, 0);
  const unsigned nthreads = std::max(6u, 3 * ncpu());
  constexpr int batch = 64;
  std::atomic<bool> stop{false};
  std::atomic<long> mismatches{0}, batches{0};
  install_handler(count_signal);
  long sent, moved;
  {
    signaller sig(20us, signaller::signal_and_move);
    std::vector<std::thread> threads;
    for (unsigned t = 0; t < nthreads; ++t)
      threads.emplace_back([&, t] {
        sig.enroll();
        const uint64_t id = t + 1;
        uint64_t *v[batch];
        uint64_t seq = 0;
        unsigned cpu = t;
        for (long n = 1; !stop.load(std::memory_order_relaxed); ++n) {
          for (auto &o : v) {
            o = static_cast<uint64_t *>(must(kmalloc_obj(z, 0), "kmalloc_obj"));
            o[2] = id;
            o[3] = ++seq;
          }
          uint64_t expect = seq - batch;
          for (auto *o : v) {
            if (o[2] != id || o[3] != ++expect) mismatches.fetch_add(1);
            kfree_obj(o, z);
          }
          if (n % 4 == 0) move_to(++cpu);
          batches.fetch_add(1, std::memory_order_relaxed);
          progress();
        }
        sig.leave();
      });
    auto end = deadline(1.5);
    while (steady::now() < end && stats_of(z).errors == 0) std::this_thread::sleep_for(20ms);
    stop.store(true);
    for (auto &t : threads) t.join();
    sent = sig.sent();
    moved = sig.moved();
  }
  kmalloc_zone_stats s = stats_of(z);
  std::printf("  %u threads, %ld batches of %d, %ld signals sent, %ld handled, %ld moves\n",
              nthreads, batches.load(), batch, sent, g_signals_handled.exchange(0), moved);
  CHECK(s.errors == 0, "%llu false double frees (allocs %llu, frees %llu)", (ull)s.errors,
        (ull)s.allocs, (ull)s.frees);
  CHECK(s.allocs == s.frees && s.live == 0, "allocs %llu frees %llu live %llu", (ull)s.allocs,
        (ull)s.frees, (ull)s.live);
  CHECK(mismatches.load() == 0, "%ld objects carried another owner's stamp", mismatches.load());
  kmalloc_obj_zone_destroy(z);
}

// r2, lost remote frees: binding a partial slab to a CPU set its remote
// stack before the commit that binds it; when that commit failed (the thread
// had moved), the stack was overwritten, dropping the frees other CPUs had
// pushed on it meanwhile. A producer bounced between CPUs by a toggler
// thread allocates, a consumer on another thread frees; once all is freed,
// a dropped free shows as a slab that stays partial (or full) for good.
void bounced_producer() {
  kmalloc_zone_t *z = kmalloc_obj_zone_create("stress.r2", 16, 0, 0);
  constexpr size_t ring = 65536;
  std::vector<std::atomic<void *>> slots(ring);
  std::atomic<pid_t> producer_tid{0};
  std::atomic<long> total{-1};  // objects produced, once the producer is done
  std::atomic<bool> stop{false};
  auto end = deadline(2.0);
  std::thread producer([&] {
    producer_tid.store(gettid());
    long i = 0;
    for (;; ++i) {
      if (i % 4096 == 0) {
        progress();
        if (steady::now() >= end) break;
      }
      void *o = must(kmalloc_obj(z, 0), "kmalloc_obj");
      auto &slot = slots[static_cast<size_t>(i) % ring];
      while (slot.load(std::memory_order_acquire)) sched_yield();
      slot.store(o, std::memory_order_release);
    }
    total.store(i, std::memory_order_release);
  });
  std::thread consumer([&] {
    for (long i = 0;; ++i) {
      auto &slot = slots[static_cast<size_t>(i) % ring];
      void *o;
      while (!(o = slot.load(std::memory_order_acquire))) {
        long t = total.load(std::memory_order_acquire);
        if (t >= 0 && i >= t) return;
        sched_yield();
      }
      slot.store(nullptr, std::memory_order_release);
      kfree_obj(o, z);
    }
  });
  std::thread toggler([&] {
    unsigned cpu = 0;
    while (!stop.load(std::memory_order_relaxed)) {
      if (pid_t tid = producer_tid.load()) {
        cpu_set_t set;
        CPU_ZERO(&set);
        CPU_SET(cpu++ % ncpu(), &set);
        sched_setaffinity(tid, sizeof set, &set);
      }
      std::this_thread::sleep_for(50us);
    }
  });
  producer.join();
  consumer.join();
  stop.store(true);
  toggler.join();
  kmalloc_zone_stats s = stats_of(z);
  std::printf("  %ld objects handed over; slabs: active %llu partial %llu full %llu spare %llu\n",
              total.load(), (ull)s.slabs_active, (ull)s.slabs_partial, (ull)s.slabs_full,
              (ull)s.slabs_spare);
  CHECK(s.live == 0 && s.errors == 0 && s.allocs == static_cast<uint64_t>(total.load()),
        "allocs %llu live %llu errors %llu", (ull)s.allocs, (ull)s.live, (ull)s.errors);
  CHECK(s.slabs_partial == 0 && s.slabs_full == 0,
        "nothing is live, yet %llu slabs are partial and %llu full: remote frees were lost",
        (ull)s.slabs_partial, (ull)s.slabs_full);
  kmalloc_obj_zone_destroy(z);
}

}  // namespace stress
