// Scenarios on the malloc family (sr_malloc / kmalloc over the size classes'
// object caches, and large blocks): blocks freed across threads, checked at
// the end by a census of the whole kmalloc layer (defined here, also used by
// signals.cpp).
#include <memory>
#include <random>
#include <sysref/kmalloc.h>
#include <sysref/os.h>

#include "stress.hpp"

// Layer interfaces with no C counterpart yet: reclaiming every kmalloc class
// and walking the classes for a recount.
#include "kmalloc/kmalloc.hpp"

namespace stress {

namespace km = sysref::kmalloc;

// ---- a recount of the kmalloc layer ------------------------------------------------
// Per size class: objects handed out (objcache live), slabs left partial or
// full, bytes the class zone holds; large blocks live; bad pointers seen.

// After a reclaim: objects cached in magazines count as live in the slabs.
kmalloc_census take_census() {
  km::reclaim();
  kmalloc_census k{};
  k.classes.resize(km::class_count());
  for (unsigned i = 0; i < km::class_count(); ++i) {
    sysref::objcache::cache *c = km::class_cache(i);
    if (!c) continue;
    struct objcache_stats os{};
    sysref::objcache::stats(c, &os);
    kmalloc_zone_stats zs{};
    sysref::slab::stats(sysref::objcache::zone_of(c), &zs);
    k.classes[i] = {os.live, zs.live, zs.slabs_partial, zs.slabs_full, zs.bytes_mapped, zs.errors};
  }
  km::stats s = km::snapshot();
  k.large_live_bytes = s.large_bytes_mapped - s.large_bytes_unmapped;
  k.errors = s.errors;
  struct sysref_os_stats o{};
  sysref_os_stats(&o);
  k.data_mapped = o.mapped - o.metadata;
  return k;
}

// Everything allocated since `before` was freed: after a reclaim (every
// cached object back to its slab, kept large mappings unmapped) no class
// holds more objects or more partial/full slabs than it did, and the data
// bytes mapped grew by no more than the class zones' own empty slabs.
void check_census(const kmalloc_census &before, const char *who) {
  kmalloc_census after = take_census();
  uint64_t zone_growth = 0;
  for (unsigned i = 0; i < km::class_count(); ++i) {
    const auto &b = before.classes[i], &a = after.classes[i];
    size_t size = km::class_size(i);
    CHECK(a.live == b.live, "%s: class %zu: objcache live %llu, was %llu", who, size, (ull)a.live,
          (ull)b.live);
    CHECK(a.zone_live == b.zone_live, "%s: class %zu: slab live %llu after reclaim, was %llu", who,
          size, (ull)a.zone_live, (ull)b.zone_live);
    CHECK(a.partial <= b.partial && a.full <= b.full,
          "%s: class %zu: partial slabs %llu (was %llu), full %llu (was %llu) with nothing live",
          who, size, (ull)a.partial, (ull)b.partial, (ull)a.full, (ull)b.full);
    CHECK(a.errors == b.errors, "%s: class %zu: %llu zone errors", who, size,
          (ull)(a.errors - b.errors));
    if (a.bytes_mapped > b.bytes_mapped) zone_growth += a.bytes_mapped - b.bytes_mapped;
  }
  CHECK(after.large_live_bytes == before.large_live_bytes,
        "%s: large blocks: %lld bytes live more than before", who,
        static_cast<long long>(after.large_live_bytes - before.large_live_bytes));
  CHECK(after.errors == before.errors, "%s: %llu bad pointers reported", who,
        (ull)(after.errors - before.errors));
  // Empty slabs in the pool wait for any zone (released to the OS on the decay timer).
  zone_growth += sysref::slab::pool_snapshot().bytes;
  CHECK(after.data_mapped <= before.data_mapped + zone_growth,
        "%s: data mapped %llu KiB after reclaim, was %llu KiB; class zones grew by %llu KiB", who,
        (ull)after.data_mapped >> 10, (ull)before.data_mapped >> 10, (ull)zone_growth >> 10);
}

// Cross-thread frees through the malloc family (the size classes'
// objcaches over slab zones, and large blocks past 32 KiB mapped directly):
// the patterns of r1 and r2 one layer up. Producers and consumers move
// themselves between CPUs, a signaller interrupts and re-pins them, and a
// reclaimer empties every magazine into the slabs every few milliseconds
// while blocks are in flight. Every block is stamped and checked before its
// free; at the end a recount of every class (nothing live, no slab left
// partial or full after a reclaim) and of the bytes mapped.
void malloc_across_threads() {
  kmalloc_census before = take_census();
  const unsigned pairs = std::max(2u, ncpu());
  constexpr size_t ring = 1024;
  struct channel {
    std::atomic<void *> slot[ring];
    std::atomic<long> total{-1};
  };
  std::unique_ptr<channel[]> ch(new channel[pairs]);
  for (unsigned p = 0; p < pairs; ++p)
    for (auto &s : ch[p].slot) s.store(nullptr);
  std::atomic<long> bad{0}, large{0}, reclaims{0};
  std::atomic<bool> stop{false};
  auto end = deadline(1.5);
  install_handler(count_signal);
  signaller sig(50us, signaller::signal_and_move);
  // Magazines emptied into the slabs while their objects are in flight.
  std::thread reclaimer([&] {
    while (!stop.load(std::memory_order_relaxed)) {
      objcache_reclaim_all();
      reclaims.fetch_add(1, std::memory_order_relaxed);
      std::this_thread::sleep_for(5ms);
    }
  });
  std::vector<std::thread> threads;
  for (unsigned p = 0; p < pairs; ++p) {
    threads.emplace_back([&, p] {
      sig.enroll();
      std::mt19937_64 rng(p + 7);
      unsigned cpu = p;
      long i = 0;
      for (;; ++i) {
        if (i % 64 == 0) {
          move_to(cpu++);
          progress();
          if (steady::now() >= end) break;
        }
        size_t size;
        if (rng() % 32 == 0) {
          size = (32 << 10) + 1 + rng() % (300 << 10);
          large.fetch_add(1, std::memory_order_relaxed);
        } else {
          unsigned e = 4 + static_cast<unsigned>(rng() % 11);  // 16 .. 32 KiB
          size = std::min<size_t>((size_t{1} << e) + rng() % (size_t{1} << e), 32 << 10);
        }
        void *b = must(sr_malloc(size), "sr_malloc");
        uint64_t tag = (uint64_t{p} << 48) ^ static_cast<uint64_t>(i);
        block_stamp::put(b, size, tag);
        if (i % 4 == 0) {  // some die on the thread that made them
          if (!block_stamp::holds(b, size, tag)) bad.fetch_add(1);
          sr_free(b);
          continue;
        }
        auto &slot = ch[p].slot[static_cast<size_t>(i) % ring];
        while (slot.load(std::memory_order_acquire)) sched_yield();
        slot.store(b, std::memory_order_release);
      }
      ch[p].total.store(i, std::memory_order_release);
      sig.leave();
    });
    threads.emplace_back([&, p] {
      sig.enroll();
      unsigned cpu = p + 1;
      for (long i = 0;; ++i) {
        if (i % 4 == 0) continue;  // freed by the producer
        auto &slot = ch[p].slot[static_cast<size_t>(i) % ring];
        void *b;
        while (!(b = slot.load(std::memory_order_acquire))) {
          long t = ch[p].total.load(std::memory_order_acquire);
          if (t >= 0 && i >= t) return sig.leave();
          sched_yield();
        }
        slot.store(nullptr, std::memory_order_release);
        auto size = static_cast<size_t>(static_cast<uint64_t *>(b)[0]);
        uint64_t tag = (uint64_t{p} << 48) ^ static_cast<uint64_t>(i);
        if (size > (1u << 20) || sr_malloc_usable_size(b) < size ||
            !block_stamp::holds(b, size, tag))
          bad.fetch_add(1);
        static_cast<uint64_t *>(b)[1] = ~tag;
        sr_free(b);
        if (i % 512 == 1) move_to(cpu++);
      }
    });
  }
  for (auto &t : threads) t.join();
  stop.store(true);
  reclaimer.join();
  long total = 0;
  for (unsigned p = 0; p < pairs; ++p) total += ch[p].total.load();
  std::printf("  %ld blocks (%ld large) through %u producer/consumer pairs; %ld moves, "
              "%ld reclaims\n",
              total, large.load(), pairs, sig.moved(), reclaims.load());
  g_signals_handled.store(0);
  CHECK(bad.load() == 0, "%ld blocks arrived damaged", bad.load());
  check_census(before, "malloc-cross-thread");
}

}  // namespace stress
