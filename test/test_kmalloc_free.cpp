// lib/kmalloc: free: errno kept, bad pointers counted, double frees of small
// and large blocks detected, blocks freed by a thread other than the one that
// allocated them. Run once per per-CPU mode (see meson.build).

#include <criterion/criterion.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <csignal>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <sysref/kmalloc.h>
#include <sysref/kmalloc_obj.h>
#include <sysref/objcache.h>
#include <sysref/os.h>
#include <thread>
#include <unistd.h>
#include <vector>

#include "crew.hpp"
#include "kmalloc/kmalloc.hpp"
#include "kmalloc/large.hpp"
#include "slab/slab.hpp"
#include "kmalloc_helpers.hpp"

using namespace test_kmalloc;

namespace {

void count_errors() { setenv("SYSREF_ON_ERROR", "count", 1); }  // before the first library call

}  // namespace

// ---- free, errno, bad pointers -------------------------------------------------

Test(kmalloc, free_preserves_errno) {
  void *blocks[] = {sr_malloc(10), sr_malloc(3000), sr_malloc(MiB), sr_aligned_alloc(MiB, 10),
                    kmalloc(100, 0), kmalloc(50000, 0)};
  errno = 4242;
  sr_free(nullptr);
  kfree(nullptr);
  cr_expect_eq(errno, 4242);
  for (int i = 0; i < 6; ++i) {
    errno = 1000 + i;
    if (i & 1) kfree(blocks[i]);
    else sr_free(blocks[i]);
    cr_expect_eq(errno, 1000 + i, "block %d", i);
  }
}

Test(kmalloc, bad_pointers_are_counted_never_touched, .init = count_errors) {
  long on_stack[16] = {};
  void *from_glibc = std::malloc(100);
  std::memset(from_glibc, 0x3c, 100);
  char *small = static_cast<char *>(sr_malloc(256));
  char *big = static_cast<char *>(sr_malloc(MiB));
  kmalloc_zone_t *zone = kmalloc_obj_zone_create("t.other", 64, 0, 0);
  void *zone_obj = kmalloc_obj(zone, 0);
  void *unmapped = reinterpret_cast<void *>(uintptr_t{0x1000});
  void *bad[] = {on_stack, from_glibc, small + 16, small + 1, big + 4096, big + 70000, zone_obj, unmapped};

  for (void *p : bad) {
    uint64_t e = errors();
    sr_free(p);
    cr_expect_eq(errors(), e + 1, "sr_free(%p) counted", p);
    kfree(p);
    cr_expect_eq(errors(), e + 2, "kfree(%p) counted", p);
    errno = 0;
    cr_expect_null(sr_realloc(p, 10));
    cr_expect_eq(errno, EINVAL);
    cr_expect_eq(errors(), e + 3, "sr_realloc(%p) counted", p);
    cr_expect_eq(sr_malloc_usable_size(p), 0u);
    cr_expect_eq(errors(), e + 4, "sr_malloc_usable_size(%p) counted", p);
  }
  // owns(): the layer's memory, inside a block too; nothing else.
  cr_expect(km::owns(small) && km::owns(big) && km::owns(small + 1) && km::owns(big + 70000));
  cr_expect_not(km::owns(on_stack) || km::owns(from_glibc) || km::owns(zone_obj) || km::owns(unmapped));
  for (long x : on_stack) cr_expect_eq(x, 0, "the stack was not written");
  cr_expect(std::all_of(static_cast<unsigned char *>(from_glibc), static_cast<unsigned char *>(from_glibc) + 100,
                        [](unsigned char c) { return c == 0x3c; }));
  // The heap still works: distinct blocks keep coming, the bad ones stay valid.
  std::vector<void *> v;
  for (int i = 0; i < 20000; ++i) {
    size_t s = static_cast<size_t>(i % 97) * 37 + (i % 500 == 0 ? 100 * KiB : 0);
    void *p = sr_malloc(s);
    cr_assert_not_null(p);
    std::memset(p, 0x77, s);
    v.push_back(p);
  }
  std::sort(v.begin(), v.end());
  cr_expect(std::adjacent_find(v.begin(), v.end()) == v.end(), "a block was handed out twice");
  for (void *p : v) sr_free(p);
  uint64_t e = errors();
  sr_free(small);
  sr_free(big);
  cr_expect_eq(errors(), e, "the real blocks free cleanly");
  kfree_obj(zone_obj, zone);
  kmalloc_obj_zone_destroy(zone);
  std::free(from_glibc);
}

Test(kmalloc, foreign_free_aborts_by_default, .signal = SIGABRT) {
  long on_stack[4];
  sr_free(on_stack);
}

Test(kmalloc, interior_free_aborts_by_default, .signal = SIGABRT) {
  char *p = static_cast<char *>(sr_malloc(100));
  kfree(p + 8);
}

// ---- double frees of small blocks ---------------------------------------------

namespace {

// Word 1 of a block: its free mark while free, cleared on every hand-out.
uintptr_t word1(const void *p) { return static_cast<const uintptr_t *>(p)[1]; }

// n blocks of `size` live at once, from make(): none is handed out twice and
// none carries a free mark. Frees them all.
void expect_distinct_blocks(void *(*make)(size_t), size_t size, int n) {
  std::vector<void *> v;
  for (int i = 0; i < n; ++i) {
    void *p = make(size);
    cr_assert_not_null(p);
    cr_expect_eq(word1(p), 0u, "a block of %zu B came with word 1 set", size);
    std::memset(p, 0x5a, size);
    v.push_back(p);
  }
  std::sort(v.begin(), v.end());
  cr_expect(std::adjacent_find(v.begin(), v.end()) == v.end(), "a %zu B block was handed out twice", size);
  uint64_t e = errors();
  for (void *p : v) sr_free(p);
  cr_expect_eq(errors(), e, "freeing %d live %zu B blocks reported an error", n, size);
}

void *plain(size_t n) { return sr_malloc(n); }
void *aligned64(size_t n) { return sr_aligned_alloc(64, n); }
void *aligned4k(size_t n) { return sr_memalign(4096, n); }
void *zeroed(size_t n) { return sr_calloc(1, n); }

struct kind {
  const char *name;
  void *(*make)(size_t);
  size_t size;
};
const kind kinds[] = {{"malloc 16", plain, 16},          {"malloc 64", plain, 64},
                      {"malloc 1000", plain, 1000},      {"malloc 32 KiB", plain, 32 * KiB},
                      {"malloc 0", plain, 0},            {"calloc 200", zeroed, 200},
                      {"aligned_alloc 64", aligned64, 100}, {"memalign 4096", aligned4k, 100},
                      {"aligned_alloc 64 of 8 KiB", aligned64, 8 * KiB}};

}  // namespace

// A second free of a small block is counted and does nothing: the block is
// not cached twice, so it is not handed out twice afterwards.
Test(kmalloc, double_free_of_small_blocks_is_detected, .init = count_errors) {
  for (const kind &k : kinds) {
    void *p = k.make(k.size);
    cr_assert_not_null(p, "%s", k.name);
    std::memset(p, 0x33, k.size);
    uint64_t e = errors();
    sr_free(p);
    cr_expect_eq(errors(), e, "%s: the first free is clean", k.name);
    sr_free(p);
    cr_expect_eq(errors(), e + 1, "%s: sr_free twice is counted", k.name);
    kfree(p);
    cr_expect_eq(errors(), e + 2, "%s: then kfree is counted too", k.name);
    // p is cached once: two (and many) live blocks are all different.
    void *a = k.make(k.size), *b = k.make(k.size);
    cr_assert(a && b);
    cr_expect_neq(a, b, "%s: the double-freed block came out twice", k.name);
    cr_expect(word1(a) == 0 && word1(b) == 0, "%s: handed out with a free mark", k.name);
    expect_distinct_blocks(k.make, k.size, 300);
    sr_free(a);
    sr_free(b);
    cr_expect_eq(errors(), e + 2, "%s: no further report", k.name);
  }
}

// The slab layer's free marker is a free mark too: a block freed, then given
// back to its slab by a reclaim, and freed again, is a double free.
Test(kmalloc, double_free_after_the_block_went_back_to_its_slab, .init = count_errors) {
  test_crew::pin_to(0);  // one CPU: its magazines are the ones reclaim empties
  for (size_t size : {size_t{16}, size_t{96}, size_t{1000}, 32 * KiB}) {
    void *keep = sr_malloc(size);  // the slab stays in use, so it stays mapped
    void *p = sr_malloc(size);
    cr_assert(keep && p);
    cr_assert_neq(sysref::slab::free_secret(sysref::objcache::zone_of(km::class_cache(class_for(size)))), 0u,
                  "the slab layer publishes its free marker");
    uint64_t e = errors();
    sr_free(p);
    km::reclaim();
    sr_free(p);
    cr_expect_eq(errors(), e + 1, "%zu B: a free of a block the slab holds is counted", size);
    expect_distinct_blocks(plain, size, 300);
    sr_free(keep);
    cr_expect_eq(errors(), e + 1, "%zu B: no further report", size);
  }
}

// Legitimate reuse is never reported: the same address freed, handed out
// again (by malloc, calloc, aligned_alloc or realloc), and freed again;
// realloc in place; realloc that moves.
Test(kmalloc, reuse_of_a_freed_address_is_not_a_double_free, .init = count_errors) {
  uint64_t e = errors();
  for (const kind &k : kinds) {
    for (int round = 0; round < 1000; ++round) {
      void *p = k.make(k.size);
      cr_assert_not_null(p);
      sr_free(p);
      void *q = k.make(k.size);  // most often p again, from the magazine
      cr_assert_not_null(q);
      cr_expect_eq(word1(q), 0u, "%s: a reused block keeps its free mark", k.name);
      sr_free(q);
    }
  }
  // Same address, through the other entry points.
  void *p = sr_malloc(48);
  sr_free(p);
  void *q = sr_calloc(3, 16);
  cr_expect(all_zero(q, 48));
  kfree(q);
  q = kmalloc(40, SR_ZERO);
  cr_expect(all_zero(q, 40));
  kfree(q);
  // In place (same class): the block stays live, no mark.
  p = sr_malloc(100);
  std::memset(p, 0x44, 100);
  q = sr_realloc(p, 90);
  cr_expect_eq(q, p, "realloc 100 -> 90 stays in place");
  q = sr_realloc(q, 112);
  cr_expect_eq(q, p, "realloc 90 -> 112 stays in place");
  sr_free(q);
  // Moved: the old block was freed by realloc, the new one is live.
  p = sr_malloc(16);
  std::memset(p, 0x55, 16);
  q = sr_realloc(p, 1000);
  cr_assert(q && q != p);
  cr_expect_eq(word1(q), 0x5555555555555555u, "realloc kept word 1's contents");
  void *r = sr_malloc(16);  // probably p, handed out again
  cr_expect_eq(word1(r), 0u);
  sr_free(r);
  sr_free(q);
  cr_expect_eq(errors(), e, "legitimate frees were reported");
  // A program's data in word 1 is never mistaken for a mark.
  for (size_t size : {size_t{16}, size_t{64}, size_t{4096}}) {
    auto *w = static_cast<uintptr_t *>(sr_malloc(size));
    w[1] = addr(w);  // a self-pointer, e.g. an empty list head
    sr_free(w);
    w = static_cast<uintptr_t *>(sr_malloc(size));
    w[1] = ~uintptr_t{0};
    sr_free(w);
  }
  cr_expect_eq(errors(), e);
}

// Blocks that went through a magazine, back to the slab layer (reclaim) and
// out again carry neither kmalloc's mark nor the slab layer's marker.
Test(kmalloc, blocks_handed_out_after_a_reclaim_carry_no_mark, .init = count_errors) {
  test_crew::pin_to(0);
  uint64_t e = errors();
  std::vector<void *> v;
  for (int i = 0; i < 500; ++i) v.push_back(sr_malloc(static_cast<size_t>(i % 8 + 1) * 16));
  for (void *p : v) sr_free(p);
  km::reclaim();
  for (int i = 0; i < 500; ++i) {
    void *p = sr_malloc(static_cast<size_t>(i % 8 + 1) * 16);
    cr_assert_not_null(p);
    cr_expect_eq(word1(p), 0u, "block %d", i);
    v[static_cast<size_t>(i)] = p;
  }
  for (void *p : v) sr_free(p);
  cr_expect_eq(errors(), e);
}

Test(kmalloc, double_free_aborts_by_default, .signal = SIGABRT) {
  void *p = sr_malloc(64);
  sr_free(p);
  sr_free(p);
}

// ---- two threads ---------------------------------------------------------------

namespace {

constexpr size_t ring_size = 512;
struct ring {
  std::atomic<void *> slot[ring_size] = {};
};

uint64_t mix64(uint64_t x) {
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

// Mostly small, some medium, a few large: every path crosses threads.
size_t size_for(int who, long i) {
  uint64_t h = mix64(static_cast<uint64_t>(i) * 2 + static_cast<uint64_t>(who));
  unsigned r = h % 1000;
  h >>= 10;
  if (r < 700) return h % 256;
  if (r < 950) return 256 + h % 3840;
  if (r < 996) return 4096 + h % (28 * KiB);
  return 32 * KiB + 1 + h % (300 * KiB);
}

// Stamps the first and last 64 bytes (all of a small block).
void stamp(void *p, size_t s, uint64_t seed) {
  auto *b = static_cast<unsigned char *>(p);
  for (size_t k = 0; k < s && k < 64; ++k) b[k] = pattern(seed, k);
  for (size_t k = s > 64 ? s - 64 : 0; k < s; ++k) b[k] = pattern(seed, k);
}
bool stamped(const void *p, size_t s, uint64_t seed) {
  auto *b = static_cast<const unsigned char *>(p);
  for (size_t k = 0; k < s && k < 64; ++k)
    if (b[k] != pattern(seed, k)) return false;
  for (size_t k = s > 64 ? s - 64 : 0; k < s; ++k)
    if (b[k] != pattern(seed, k)) return false;
  return true;
}

void worker(int who, ring &out, ring &in, long total, std::atomic<long> &bad) {
  test_crew::pin_to(static_cast<unsigned>(who));
  long made = 0, taken = 0;
  while ((made < total || taken < total) && bad.load(std::memory_order_relaxed) == 0) {
    bool progress = false;
    if (made < total && !out.slot[made % ring_size].load(std::memory_order_acquire)) {
      size_t s = size_for(who, made);
      void *p = (made % 3) ? sr_malloc(s) : kmalloc(s, 0);
      if (!p) {
        bad.fetch_add(1);  // stops both threads
        return;
      }
      stamp(p, s, static_cast<uint64_t>(made) * 2 + static_cast<uint64_t>(who));
      out.slot[made % ring_size].store(p, std::memory_order_release);
      ++made;
      progress = true;
    }
    if (taken < total) {
      void *p = in.slot[taken % ring_size].load(std::memory_order_acquire);
      if (p) {
        in.slot[taken % ring_size].store(nullptr, std::memory_order_relaxed);
        int from = 1 - who;
        size_t s = size_for(from, taken);
        uint64_t seed = static_cast<uint64_t>(taken) * 2 + static_cast<uint64_t>(from);
        if (!stamped(p, s, seed) || sr_malloc_usable_size(p) < s) bad.fetch_add(1);
        if (taken % 7 == 0) {  // resize a block another CPU allocated
          void *q = sr_realloc(p, s * 2 + 1);
          if (!q || !holds(q, std::min<size_t>(s, 64), seed)) bad.fetch_add(1);
          p = q;
        }
        (taken & 1) ? kfree(p) : sr_free(p);
        ++taken;
        progress = true;
      }
    }
    if (!progress) sched_yield();
  }
}

}  // namespace

Test(kmalloc, two_threads_free_each_others_blocks) {
  static ring a_to_b, b_to_a;
  std::atomic<long> bad{0};
  constexpr long total = 150000;
  uint64_t large_before = km::snapshot().large_allocs;
  std::thread a(worker, 0, std::ref(a_to_b), std::ref(b_to_a), total, std::ref(bad));
  std::thread b(worker, 1, std::ref(b_to_a), std::ref(a_to_b), total, std::ref(bad));
  a.join();
  b.join();
  cr_expect_eq(bad.load(), 0, "blocks lost their contents or an allocation failed");
  km::stats s = km::snapshot();
  cr_expect_gt(s.large_allocs - large_before, 100u, "the large path was exercised");
  cr_expect_eq(s.large_allocs, s.large_frees);
  cr_expect_eq(s.errors, 0u);
}

// Two threads freeing the same large block at once (a double free): exactly
// one of them releases it, the other is reported, nothing is unmapped twice.
Test(kmalloc, racing_double_free_of_a_large_block_releases_it_once, .init = count_errors) {
  if (std::thread::hardware_concurrency() < 2) cr_skip_test("needs two CPUs");
  const int rounds = 2000;
  km::large::counters before = km::large::snapshot();
  uint64_t errors_before = km::snapshot().errors;
  for (int i = 0; i < rounds; ++i) {
    void *p = sr_malloc(1 << 20);
    cr_assert_not_null(p);
    std::atomic<int> go{0};
    auto freer = [&] {
      go.fetch_add(1);
      while (go.load() < 2) {
      }
      sr_free(p);
    };
    std::thread a(freer), b(freer);
    a.join();
    b.join();
  }
  km::large::counters after = km::large::snapshot();
  cr_expect_eq(after.allocs - before.allocs, static_cast<uint64_t>(rounds));
  cr_expect_eq(after.frees - before.frees, static_cast<uint64_t>(rounds), "each block released once");
  cr_expect_eq(after.bytes_unmapped - before.bytes_unmapped, after.bytes_mapped - before.bytes_mapped);
  cr_expect_eq(km::snapshot().errors - errors_before, static_cast<uint64_t>(rounds),
               "every second free reported");
}

// Frees that reach the slow put path (magazines full, a new magazine refused
// by the OS, slabs going back) must still leave errno alone.
Test(kmalloc, free_preserves_errno_on_its_slow_paths) {
  std::vector<void *> v;
  for (int i = 0; i < 20000; ++i) v.push_back(sr_malloc(64));
  sysref_os_fail_after(0);
  for (void *p : v) {
    errno = 4242;
    sr_free(p);
    cr_assert_eq(errno, 4242);
  }
  sysref_os_fail_after(-1);
}

// A freed large block stays mapped for a while and serves the next request
// that fits, so a malloc/free cycle of a big buffer does not fault every
// page in again; asked for zeroed memory, a reused mapping is zeroed.
