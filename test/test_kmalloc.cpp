// lib/kmalloc: conformance of the k* and sr_* functions with kmalloc(3) and
// glibc, size classes, large blocks, bad pointers, fault injection, and a
// two-thread stress. Run once per per-CPU mode (see meson.build).
#include <criterion/criterion.h>

#include <bit>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <csignal>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <pthread.h>
#include <sched.h>
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

using namespace test_crew;

namespace km = sysref::kmalloc;

namespace {

constexpr size_t KiB = 1024, MiB = 1024 * KiB;
constexpr size_t huge = static_cast<size_t>(PTRDIFF_MAX) + 1;

size_t page() { return static_cast<size_t>(sysconf(_SC_PAGESIZE)); }
uintptr_t addr(const void *p) { return reinterpret_cast<uintptr_t>(p); }
bool aligned_to(const void *p, size_t a) { return addr(p) % a == 0; }

// Bytes mapped for data: the library's own metadata stays for good.
uint64_t os_data() {
  struct sysref_os_stats s;
  sysref_os_stats(&s);
  return s.mapped - s.metadata;
}

uint64_t errors() { return km::snapshot().errors; }

void count_errors() { setenv("SYSREF_ON_ERROR", "count", 1); }  // before the first library call

void pin(unsigned cpu) {
  cpu_set_t s;
  CPU_ZERO(&s);
  CPU_SET(cpu % std::thread::hardware_concurrency(), &s);
  sched_setaffinity(0, sizeof s, &s);
}

unsigned char pattern(uint64_t seed, size_t i) { return static_cast<unsigned char>(seed * 131 + i * 7 + (i >> 8)); }

void fill(void *p, size_t n, uint64_t seed) {
  auto *b = static_cast<unsigned char *>(p);
  for (size_t i = 0; i < n; ++i) b[i] = pattern(seed, i);
}

bool holds(const void *p, size_t n, uint64_t seed) {
  auto *b = static_cast<const unsigned char *>(p);
  for (size_t i = 0; i < n; ++i)
    if (b[i] != pattern(seed, i)) return false;
  return true;
}

bool all_zero(const void *p, size_t n) {
  auto *b = static_cast<const unsigned char *>(p);
  for (size_t i = 0; i < n; ++i)
    if (b[i]) return false;
  return true;
}

// The class index holding size bytes (through the layer's own interface).
unsigned class_for(size_t size) {
  unsigned i = 0;
  while (km::class_size(i) < size) ++i;
  return i;
}

uint64_t class_puts(size_t size) {
  struct objcache_stats s{};
  sysref::objcache::stats(km::class_cache(class_for(size)), &s);
  return s.puts;
}

}  // namespace

// ---- malloc, sizes, size classes ---------------------------------------------

Test(kmalloc, malloc_zero_gives_unique_freeable_pointers) {
  std::vector<void *> v;
  for (int i = 0; i < 100; ++i) {
    void *p = sr_malloc(0);
    cr_assert_not_null(p);
    cr_assert(aligned_to(p, 16));
    v.push_back(p);
  }
  std::sort(v.begin(), v.end());
  cr_expect(std::adjacent_find(v.begin(), v.end()) == v.end(), "malloc(0) pointers must be unique");
  for (void *p : v) sr_free(p);
  void *k = kmalloc(0, 0);
  cr_expect_not_null(k);
  kfree(k);
}

Test(kmalloc, impossible_sizes_fail_with_enomem) {
  size_t sizes[] = {huge, SIZE_MAX, SIZE_MAX - 4095, size_t{1} << 50};
  for (size_t s : sizes) {
    errno = 0;
    cr_expect_null(sr_malloc(s), "malloc(%zu)", s);
    cr_expect_eq(errno, ENOMEM);
    errno = 0;
    cr_expect_null(kmalloc(s, 0));
    cr_expect_eq(errno, ENOMEM);
    errno = 0;
    cr_expect_null(sr_aligned_alloc(64, s));
    cr_expect_eq(errno, ENOMEM);
    errno = 0;
    cr_expect_null(sr_valloc(s));
    cr_expect_eq(errno, ENOMEM);
    errno = 0;
    cr_expect_null(sr_pvalloc(s));
    cr_expect_eq(errno, ENOMEM);
    void *out = &out;
    errno = 4242;
    cr_expect_eq(sr_posix_memalign(&out, 64, s), ENOMEM);
    cr_expect_eq(out, &out, "*out untouched on error");
    cr_expect_eq(errno, 4242, "posix_memalign leaves errno alone");
  }
  errno = 0;
  cr_expect_null(kmalloc_aligned(100, size_t{1} << 62, 0));
  cr_expect_eq(errno, ENOMEM);
}

Test(kmalloc, usable_size_covers_every_request) {
  std::vector<std::pair<void *, size_t>> v;
  auto check = [&](size_t s) {
    void *p = sr_malloc(s);
    cr_assert_not_null(p, "malloc(%zu)", s);
    cr_assert(aligned_to(p, 16), "malloc(%zu) = %p", s, p);
    size_t u = sr_malloc_usable_size(p);
    cr_assert_geq(u, s);
    cr_assert_eq(kmalloc_usable_size(p), u);
    std::memset(p, 0x5a, u);  // every usable byte is really there
    fill(p, s, s);
    v.emplace_back(p, s);
  };
  for (size_t s = 0; s <= 5000; ++s) check(s);
  for (size_t s = 5001; s <= 600 * KiB; s += s / 7 + 13) check(s);
  for (size_t s : {32 * KiB - 1, 32 * KiB, 32 * KiB + 1, 64 * KiB, 64 * KiB + 1, 3 * MiB + 5}) check(s);
  for (auto &[p, s] : v) cr_assert(holds(p, s, s), "block of %zu bytes overwritten", s);
  for (auto &[p, s] : v) sr_free(p);
  cr_expect_eq(sr_malloc_usable_size(nullptr), 0u);
  cr_expect_eq(kmalloc_usable_size(nullptr), 0u);
}

// Above 128 bytes a block wastes at most an eighth of the request.
Test(kmalloc, size_class_fragmentation_is_at_most_one_eighth) {
  for (size_t s = 129; s <= 32768; ++s) {
    void *p = sr_malloc(s);
    cr_assert_not_null(p);
    size_t u = sr_malloc_usable_size(p);
    cr_assert(u >= s && u * 8 <= s * 9, "size %zu got %zu usable bytes", s, u);
    sr_free(p);
  }
  for (size_t s = 1; s <= 128; ++s) {
    void *p = sr_malloc(s);
    cr_assert_eq(sr_malloc_usable_size(p), (s + 15) / 16 * 16, "16-byte steps up to 128");
    sr_free(p);
  }
}

Test(kmalloc, every_class_has_its_size_and_power_of_two_classes_are_natural) {
  const size_t pg = page();
  cr_assert_eq(km::class_size(km::class_count() - 1), 32 * KiB);
  for (unsigned i = 0; i < km::class_count(); ++i) {
    size_t size = km::class_size(i);
    if (i) cr_assert_gt(size, km::class_size(i - 1));
    bool pow2 = (size & (size - 1)) == 0;
    std::vector<void *> v;
    for (int k = 0; k < 40; ++k) {
      void *p = sr_malloc(size);
      cr_assert_not_null(p);
      cr_assert_eq(sr_malloc_usable_size(p), size);
      if (pow2) cr_assert(aligned_to(p, std::min(size, pg)), "class %zu: %p", size, p);
      v.push_back(p);
    }
    for (void *p : v) sr_free(p);
  }
}

// ---- aligned allocation ------------------------------------------------------

Test(kmalloc, aligned_calls_return_aligned_blocks_from_16_bytes_to_1_mib) {
  for (size_t align = 1; align <= MiB; align <<= 1) {
    size_t sizes[] = {0, 1, 15, 16, 100, align - 1, align, align + 1, 5000, 33 * KiB, 200 * KiB};
    for (size_t s : sizes) {
      void *got[5] = {};
      got[0] = sr_aligned_alloc(align, s);
      got[1] = sr_memalign(align, s);
      got[2] = kmalloc_aligned(s, align, 0);
      got[3] = kmalloc_aligned(s, align, SR_ZERO);
      if (align >= sizeof(void *)) cr_assert_eq(sr_posix_memalign(&got[4], align, s), 0);
      for (int f = 0; f < 5; ++f) {
        if (f == 4 && align < sizeof(void *)) continue;
        void *p = got[f];
        cr_assert_not_null(p, "call %d align %zu size %zu", f, align, s);
        cr_assert(aligned_to(p, std::max<size_t>(align, 16)), "call %d align %zu size %zu: %p", f, align, s, p);
        size_t u = sr_malloc_usable_size(p);
        cr_assert_geq(u, s);
        if (f == 3) cr_assert(all_zero(p, u), "SR_ZERO block of %zu bytes", s);
        if (s) static_cast<char *>(p)[s - 1] = 1;
        static_cast<char *>(p)[0] = 1;
      }
      for (void *p : got) sr_free(p);
    }
  }
}

Test(kmalloc, bad_alignments) {
  for (size_t a : {size_t{0}, size_t{3}, size_t{24}, size_t{48}, size_t{100}, (SIZE_MAX >> 1) + 2}) {
    errno = 0;
    cr_expect_null(sr_aligned_alloc(a, 64), "aligned_alloc(%zu)", a);
    cr_expect_eq(errno, EINVAL);
    errno = 0;
    cr_expect_null(kmalloc_aligned(64, a, 0), "kmalloc_aligned(%zu)", a);
    cr_expect_eq(errno, EINVAL);
  }
  for (size_t a : {size_t{0}, size_t{1}, size_t{2}, size_t{4}, size_t{3}, size_t{12}, size_t{24}, size_t{96}}) {
    void *out = &out;
    errno = 4242;
    cr_expect_eq(sr_posix_memalign(&out, a, 64), EINVAL, "posix_memalign(%zu)", a);
    cr_expect_eq(out, &out, "*out untouched");
    cr_expect_eq(errno, 4242, "errno untouched");
  }
  // memalign rounds a bad alignment up to the next power of two (glibc).
  struct { size_t asked, expect; } m[] = {{0, 16}, {1, 16}, {24, 32}, {48, 64}, {3000, 4096}, {65537, 131072}};
  for (auto c : m) {
    void *p = sr_memalign(c.asked, 100);
    cr_assert_not_null(p);
    cr_expect(aligned_to(p, c.expect), "memalign(%zu): %p", c.asked, p);
    cr_expect_geq(sr_malloc_usable_size(p), 100u);
    sr_free(p);
  }
  errno = 0;
  cr_expect_null(sr_memalign((SIZE_MAX >> 1) + 2, 10));
  cr_expect_eq(errno, EINVAL);
}

Test(kmalloc, valloc_and_pvalloc_are_page_aligned) {
  const size_t pg = page();
  for (size_t s : {size_t{0}, size_t{1}, pg - 1, pg, pg + 1, 5 * pg + 3, 100 * KiB}) {
    void *v = sr_valloc(s);
    cr_assert_not_null(v);
    cr_expect(aligned_to(v, pg));
    cr_expect_geq(sr_malloc_usable_size(v), s);
    void *p = sr_pvalloc(s);
    cr_assert_not_null(p);
    cr_expect(aligned_to(p, pg));
    size_t rounded = s ? (s + pg - 1) / pg * pg : pg;
    cr_expect_geq(sr_malloc_usable_size(p), rounded, "pvalloc(%zu)", s);
    std::memset(p, 1, rounded);
    sr_free(v);
    sr_free(p);
  }
}

// ---- calloc and zeroing ------------------------------------------------------

Test(kmalloc, calloc_zeroes_dirtied_and_recycled_memory) {
  size_t sizes[] = {1, 24, 100, 1000, 4000, 20000, 32768, 40000, 300 * KiB};
  for (int round = 0; round < 3; ++round)
    for (size_t s : sizes) {
      std::vector<void *> dirty;
      for (int i = 0; i < 20; ++i) {
        void *p = sr_malloc(s);
        std::memset(p, 0xa5, sr_malloc_usable_size(p));
        dirty.push_back(p);
      }
      for (void *p : dirty) sr_free(p);  // the next blocks come back from these
      for (int i = 0; i < 20; ++i) {
        void *c = round == 0 ? sr_calloc(1, s) : round == 1 ? sr_calloc(s, 1) : kmalloc(s, SR_ZERO);
        cr_assert_not_null(c);
        cr_assert(all_zero(c, sr_malloc_usable_size(c)), "round %d size %zu", round, s);
        dirty[i] = c;
      }
      for (void *p : dirty) sr_free(p);
    }
  void *a = sr_calloc(0, 5), *b = sr_calloc(5, 0);
  cr_expect_not_null(a);
  cr_expect_not_null(b);
  cr_expect_neq(a, b);
  sr_free(a);
  sr_free(b);
}

Test(kmalloc, calloc_overflow_is_enomem) {
  struct { size_t n, size; } o[] = {{SIZE_MAX, 2}, {2, (SIZE_MAX >> 1) + 1}, {size_t{1} << 32, size_t{1} << 32},
                                    {SIZE_MAX, SIZE_MAX}};
  for (auto c : o) {
    errno = 0;
    cr_expect_null(sr_calloc(c.n, c.size));
    cr_expect_eq(errno, ENOMEM);
  }
}

// ---- realloc -------------------------------------------------------------------

Test(kmalloc, realloc_null_is_malloc_and_size_zero_frees) {
  void *p = sr_realloc(nullptr, 100);
  cr_assert_not_null(p);
  cr_expect_geq(sr_malloc_usable_size(p), 100u);
  uint64_t puts = class_puts(100);
  errno = 4242;
  cr_expect_null(sr_realloc(p, 0));
  cr_expect_eq(errno, 4242, "realloc(p, 0) is not a failure");
  cr_expect_eq(class_puts(100), puts + 1, "the block was freed");

  void *big = sr_realloc(nullptr, MiB);
  cr_assert_not_null(big);
  uint64_t frees = km::snapshot().large_frees;
  cr_expect_null(sr_realloc(big, 0));
  cr_expect_eq(km::snapshot().large_frees, frees + 1);

  void *z = sr_realloc(nullptr, 0);  // malloc(0)
  cr_expect_not_null(z);
  sr_free(z);
  void *k = krealloc(nullptr, 50, SR_ZERO);
  cr_assert_not_null(k);
  cr_expect(all_zero(k, 50));
  cr_expect_null(krealloc(k, 0, 0));
}

// A block realloc grows out of its class moves to room for a quarter more,
// never past the next power of two: grown 8 bytes at a time from 16 B to
// 4 KiB it crosses 41 classes but moves about once per three.
Test(kmalloc, realloc_growth_leaves_room_to_grow) {
  char *p = nullptr;
  int moves = 0;
  for (size_t n = 16; n <= 4096; n += 8) {
    char *q = static_cast<char *>(sr_realloc(p, n));
    cr_assert_not_null(q);
    q[n - 1] = static_cast<char>(n);
    if (p && q != p) {
      ++moves;
      cr_expect_eq(q[n - 9], static_cast<char>(n - 8), "the contents moved with the block");
    }
    size_t usable = sr_malloc_usable_size(q);
    cr_expect(usable >= n && usable <= std::bit_ceil(n), "%zu bytes: usable %zu", n, usable);
    p = q;
  }
  cr_expect_leq(moves, 20, "%d moves", moves);
  cr_expect_eq(sr_malloc_usable_size(p), 4096u, "grown to a power of two, it stops there");
  sr_free(p);
}

Test(kmalloc, realloc_keeps_contents_across_classes_and_the_large_path) {
  size_t size = 1;
  void *p = sr_malloc(size);
  fill(p, size, 1);
  std::vector<size_t> steps;
  for (size_t s = 1; s < 3 * MiB; s = s * 13 / 10 + 1) steps.push_back(s);
  for (size_t i = steps.size(); i-- > 0;) steps.push_back(steps[i] / 3 + 1);
  uint64_t seed = 1;
  for (size_t next : steps) {
    void *q = (seed & 1) ? sr_realloc(p, next) : krealloc(p, next, 0);
    cr_assert_not_null(q, "realloc %zu -> %zu", size, next);
    cr_assert(holds(q, std::min(size, next), seed), "contents lost in realloc %zu -> %zu", size, next);
    cr_assert_geq(sr_malloc_usable_size(q), next);
    p = q;
    size = next;
    fill(p, size, ++seed);
  }
  sr_free(p);
}

Test(kmalloc, realloc_in_place_when_the_block_still_fits) {
  void *p = sr_malloc(1000);  // usable 1024
  cr_assert_eq(sr_malloc_usable_size(p), 1024u);
  fill(p, 1000, 9);
  cr_expect_eq(sr_realloc(p, 1024), p, "grows within the usable size");
  cr_expect_eq(sr_realloc(p, 600), p);
  cr_expect_eq(sr_realloc(p, 512), p, "exactly half still stays");
  cr_expect(holds(p, 512, 9));
  void *q = sr_realloc(p, 511);
  cr_expect_neq(q, p, "less than half moves to a smaller class");
  cr_expect(holds(q, 511, 9));
  void *r = sr_realloc(q, 1025);
  cr_expect_neq(r, q, "beyond the usable size moves");
  cr_expect(holds(r, 511, 9));
  sr_free(r);

  void *small = sr_malloc(10);
  cr_expect_eq(sr_realloc(small, 1), small, "the smallest class cannot shrink");
  sr_free(small);

  void *big = sr_malloc(MiB);
  cr_assert_eq(sr_malloc_usable_size(big), MiB);
  fill(big, MiB, 3);
  cr_expect_eq(sr_realloc(big, 600 * KiB), big);
  cr_expect_eq(sr_realloc(big, MiB), big);
  void *small2 = sr_realloc(big, 100);
  cr_expect_neq(small2, big, "a large block shrunk to 100 bytes moves to a class");
  cr_expect_leq(sr_malloc_usable_size(small2), 112u);
  cr_expect(holds(small2, 100, 3));
  sr_free(small2);

  // SR_ZERO: a block shrunk in place reads as zero past its new size.
  void *z = kmalloc(200, SR_ZERO);
  std::memset(z, 0xff, 200);
  cr_assert_eq(krealloc(z, 150, SR_ZERO), z);
  void *z2 = krealloc(z, 200, SR_ZERO);
  cr_assert_eq(z2, z);
  cr_expect(all_zero(static_cast<char *>(z) + 150, sr_malloc_usable_size(z) - 150));
  void *z3 = krealloc(z, 5000, SR_ZERO);
  cr_expect(all_zero(static_cast<char *>(z3) + 150, 5000 - 150));
  kfree(z3);
}

Test(kmalloc, failed_realloc_leaves_the_block_untouched) {
  for (size_t s : {size_t{1000}, size_t{40000}}) {
    void *p = sr_malloc(s);
    fill(p, s, 77);
    sysref_os_fail_after(0);
    errno = 0;
    cr_expect_null(sr_realloc(p, 10 * MiB));
    cr_expect_eq(errno, ENOMEM);
    errno = 0;
    cr_expect_null(sr_reallocarray(p, 10, MiB));
    cr_expect_eq(errno, ENOMEM);
    sysref_os_fail_after(-1);
    errno = 0;
    cr_expect_null(sr_reallocarray(p, SIZE_MAX / 2, 3), "overflow");
    cr_expect_eq(errno, ENOMEM);
    errno = 0;
    cr_expect_null(sr_realloc(p, huge));
    cr_expect_eq(errno, ENOMEM);
    cr_expect(holds(p, s, 77), "the old block still holds its contents");
    cr_expect_geq(sr_malloc_usable_size(p), s, "and is still allocated");
    sr_free(p);
  }
}

Test(kmalloc, reallocarray_grows_an_array) {
  long *v = nullptr;
  size_t cap = 0;
  for (long i = 0; i < 100000; ++i) {
    if (static_cast<size_t>(i) == cap) {
      cap = cap ? cap * 2 : 4;
      auto *nv = static_cast<long *>(sr_reallocarray(v, cap, sizeof *v));
      cr_assert_not_null(nv);
      v = nv;
    }
    v[i] = i * i;
  }
  for (long i = 0; i < 100000; ++i) cr_assert_eq(v[i], i * i);
  cr_expect_null(sr_reallocarray(v, 0, 8), "n = 0 is realloc(p, 0): freed");
}

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
  pin(0);  // one CPU: its magazines are the ones reclaim empties
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
  pin(0);
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

// ---- large blocks --------------------------------------------------------------

Test(kmalloc, large_blocks_own_whole_granules_and_are_counted) {
  km::reclaim();  // no kept mappings: every block below is a fresh map
  km::reclaim();  // the baseline without memory that waits to be reused
  km::stats before = km::snapshot();
  uint64_t data = os_data();
  void *a = sr_malloc(32 * KiB + 1), *b = sr_malloc(200 * KiB), *c = sr_aligned_alloc(MiB, 70 * KiB);
  cr_assert(a && b && c);
  cr_expect(aligned_to(a, 64 * KiB) && aligned_to(b, 64 * KiB) && aligned_to(c, MiB));
  cr_expect_eq(sr_malloc_usable_size(a), 64 * KiB);
  cr_expect_eq(sr_malloc_usable_size(b), 256 * KiB);
  cr_expect_eq(sr_malloc_usable_size(c), 128 * KiB);
  km::stats mid = km::snapshot();
  cr_expect_eq(mid.large_allocs - before.large_allocs, 3u);
  cr_expect_eq(mid.large_bytes_mapped - before.large_bytes_mapped, (64 + 256 + 128) * KiB);
  cr_expect_geq(os_data() - data, (64 + 256 + 128) * KiB);
  void *d = kmalloc(MiB, SR_NOWAIT);
  cr_expect_not_null(d, "SR_NOWAIT maps a large block: a system call waits for no thread");
  kfree(d);
  sr_free(a);
  sr_free(b);
  kfree(c);
  km::stats after = km::snapshot();
  cr_expect_eq(after.large_frees - before.large_frees, 4u);
  cr_expect_eq(after.large_bytes_unmapped - before.large_bytes_unmapped, (64 + 256 + 128 + 1024) * KiB);
  km::reclaim();  // freed blocks are kept mapped for a while: flush them
  cr_expect_eq(os_data(), data, "every large byte went back");
}

Test(kmalloc, nowait_and_reserve_flags_pass_through) {
  void *warm = kmalloc(64, 0);  // the class exists and has objects ready
  kfree(warm);
  void *p = kmalloc(64, SR_NOWAIT | SR_ZERO);
  cr_assert_not_null(p, "a cached object is ready");
  cr_expect(all_zero(p, 64));
  void *q = kmalloc(64, SR_USE_RESERVE);
  cr_expect_not_null(q);
  kfree(p);
  kfree(q);
}

// kmalloc_reclaim: cached small blocks go back to their slabs and kept large
// mappings are unmapped; what it returns is what left the caches, and a
// second call finds nothing.
Test(kmalloc, reclaim_gives_cached_blocks_and_kept_mappings_back) {
  pin(0);  // one CPU: its magazines are the ones reclaim empties
  kmalloc_reclaim();
  std::vector<void *> v;
  for (int i = 0; i < 200; ++i) v.push_back(sr_malloc(48));
  void *large = sr_malloc(300 * KiB);
  cr_assert_not_null(large);
  for (void *p : v) sr_free(p);
  sr_free(large);
  const uint64_t data_before = os_data();
  size_t given = kmalloc_reclaim();
  cr_expect_geq(given, 200 * 48 + 300 * KiB, "200 blocks of 48 B and a 300 KiB mapping: %zu", given);
  cr_expect_lt(os_data(), data_before, "the kept large mapping went back to the OS");
  cr_expect_eq(kmalloc_reclaim(), 0u, "a second call has nothing left to give");
}

// ---- fault injection -----------------------------------------------------------

// For n = 0..200: allocate a mix of sizes until the OS refuses, check ENOMEM,
// free everything, let the OS answer again, allocate again; afterwards the os
// counters show every data byte back where it started. No spare slabs: with
// them, which zones hold their one or two after a reclaim depends on when
// the scavenge last emptied each cache, and the comparison would be off by
// a few slabs either way.
void no_spare_slabs() {
  setenv("SYSREF_SPARE_LOW", "0", 1);
  setenv("SYSREF_SPARE_HIGH", "0", 1);
}

Test(kmalloc, fault_injection_sweep, .init = no_spare_slabs) {
  pin(0);  // one CPU: its magazines are the ones reclaim empties
  const size_t mix[] = {24, 200, 1500, 7000, 30000, 50000, 100, 400 * KiB, 64, 3000, 2 * MiB, 0, 777};
  auto round = [&](std::vector<void *> &v) {
    for (size_t s : mix) {
      void *p = sr_malloc(s);
      cr_assert_not_null(p, "size %zu after the OS recovered", s);
      std::memset(p, 0x11, s);
      v.push_back(p);
    }
  };
  std::vector<void *> v;
  for (int i = 0; i < 3; ++i) round(v);  // every class made, slabs and spares in place
  for (void *p : v) sr_free(p);
  v.clear();
  km::reclaim();  // the classes' magazines and the kept large mappings
  km::reclaim();
  const uint64_t base = os_data();
  for (long n = 0; n <= 200; ++n) {
    sysref_os_fail_after(n);
    errno = 0;
    for (size_t i = 0; i < 100000; ++i) {
      size_t s = mix[i % (sizeof mix / sizeof mix[0])];
      void *p = (i & 1) ? sr_malloc(s) : kmalloc(s, 0);
      if (!p) break;
      std::memset(p, static_cast<int>(i), std::min<size_t>(s, 256));
      v.push_back(p);
    }
    cr_assert_eq(errno, ENOMEM, "n=%ld: refusal must surface as ENOMEM", n);
    cr_assert_lt(v.size(), 100000u, "n=%ld: never ran out", n);
    for (void *p : v) sr_free(p);
    v.clear();
    sysref_os_fail_after(-1);
    round(v);
    for (void *p : v) sr_free(p);
    v.clear();
    km::reclaim();  // the classes' magazines and the kept large mappings
    cr_assert_eq(os_data(), base, "n=%ld: data bytes %+ld", n, static_cast<long>(os_data() - base));
  }
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
  pin(static_cast<unsigned>(who));
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
Test(kmalloc, large_blocks_are_reused_and_zeroed_on_request) {
  km::reclaim();
  km::large::counters before = km::large::snapshot();
  for (int i = 0; i < 50; ++i) {
    auto *p = static_cast<unsigned char *>(sr_malloc(1 << 20));
    std::memset(p, 0xab, 1 << 20);
    sr_free(p);
  }
  km::large::counters mid = km::large::snapshot();
  cr_expect_geq(mid.reused - before.reused, 49u, "all but the first came from a kept mapping");
  auto *z = static_cast<unsigned char *>(sr_calloc(1, 1 << 20));
  for (size_t i = 0; i < (1u << 20); i += 4096) cr_assert_eq(z[i], 0, "calloc over a reused mapping");
  cr_expect_gt(km::large::snapshot().reused, mid.reused, "and that calloc was a reuse");
  sr_free(z);
  uint64_t data = os_data();
  size_t flushed = km::reclaim();
  cr_expect_geq(flushed, size_t{1} << 20);
  cr_expect_leq(os_data() + (1u << 20), data, "reclaim unmaps kept mappings");
}

// The span heap: a freed block's pages serve the next block at the same
// addresses (pages touched where they were cost no fault), a larger block
// grows the freed range into the address space beside it and commits only
// the growth, and calloc zeroes only the part that held old data.
Test(kmalloc, large_blocks_reuse_their_addresses_and_grow_in_place) {
  km::reclaim();
  auto *p = static_cast<unsigned char *>(sr_malloc(8 * MiB));
  cr_assert_not_null(p);
  std::memset(p, 0x5a, 8 * MiB);
  sr_free(p);
  auto *q = static_cast<unsigned char *>(sr_malloc(6 * MiB));
  cr_assert_not_null(q);
  cr_expect(q >= p && q + 6 * MiB <= p + 8 * MiB, "a smaller block comes from the freed range");
  sr_free(q);  // merges back into one 8 MiB range
  uint64_t data = os_data();
  auto *r = static_cast<unsigned char *>(sr_calloc(1, 10 * MiB));
  cr_assert_not_null(r);
  cr_expect(r <= p && r + 10 * MiB >= p + 8 * MiB, "a larger block grows the freed range in place");
  cr_expect_eq(os_data() - data, 2 * MiB, "only the growth is new memory");
  for (size_t i = 0; i < 10 * MiB; i += 4096) cr_assert_eq(r[i], 0, "calloc over a grown block, byte %zu", i);
  sr_free(r);
  km::reclaim();
  cr_expect_leq(os_data() + 10 * MiB, data + 2 * MiB, "reclaim gives the kept range back");
}

// A large block that realloc grows takes the free space right after it, as
// glibc's mremap does: a buffer grown a MiB at a time is never copied (the
// moves would make that quadratic), and krealloc with SR_ZERO finds the
// growth zeroed, kept pages of an earlier block included.
Test(kmalloc, realloc_grows_a_large_block_in_place) {
  km::reclaim();
  // Leaves kept pages behind, which end half-way through a step: one growth
  // takes the last of them and vacant space after them.
  const size_t scratch_size = 8 * MiB + 512 * KiB;
  auto *scratch = static_cast<unsigned char *>(sr_malloc(scratch_size));
  cr_assert_not_null(scratch);
  std::memset(scratch, 0xee, scratch_size);
  sr_free(scratch);
  auto *p = static_cast<unsigned char *>(sr_malloc(1 * MiB));
  cr_assert_not_null(p);
  std::memset(p, 0x11, 1 * MiB);
  unsigned char *first = p;
  int moves = 0;
  for (size_t n = 2; n <= 32; ++n) {
    auto *q = static_cast<unsigned char *>(krealloc(p, n * MiB, SR_ZERO));
    cr_assert_not_null(q);
    moves += q != p;
    p = q;
    cr_assert_eq(p[(n - 1) * MiB - 1], n == 2 ? 0x11 : 0x22, "the old bytes stayed");
    for (size_t i = (n - 1) * MiB; i < n * MiB; i += 4096) cr_assert_eq(p[i], 0, "grown bytes read zero at %zu", i);
    std::memset(p + (n - 1) * MiB, 0x22, MiB);
  }
  cr_expect_eq(moves, 0, "grown in place: %d moves", moves);
  cr_expect_eq(p, first);
  // Something right after it: the next growth moves the block, contents and all.
  auto *blocker = static_cast<unsigned char *>(sr_malloc(1 * MiB));
  cr_assert_not_null(blocker);
  bool adjacent = blocker == p + 32 * MiB;
  auto *q = static_cast<unsigned char *>(sr_realloc(p, 40 * MiB));
  cr_assert_not_null(q);
  if (adjacent) cr_expect_neq(q, p, "no room after it: moved");
  cr_expect_eq(q[0], 0x11);
  cr_expect_eq(q[32 * MiB - 1], 0x22);
  sr_free(blocker);
  sr_free(q);
  km::reclaim();
}

// Two blocks live at a time, sizes varying (a decoder's buffers): after the
// first rounds nearly every block is served from pages the heap already
// has. (Mapping each block afresh would make all its bytes new memory.)
Test(kmalloc, alternating_large_blocks_reuse_the_heaps_pages) {
  km::reclaim();
  auto ever_mapped = [] {
    sysref::os::memory_stats m = sysref::os::memory_snapshot();
    return m.mapped + m.released;
  };
  uint64_t seed = 12345, fresh_from = 0, handed_out = 0;
  unsigned char *held = nullptr;
  for (int round = 0; round < 60; ++round) {
    if (round == 10) fresh_from = ever_mapped();
    seed = seed * 6364136223846793005u + 1442695040888963407u;
    size_t size = (2 + (seed >> 33) % 5) * MiB + (seed >> 20) % MiB;  // 2-7 MiB
    auto *p = static_cast<unsigned char *>(sr_malloc(size));
    cr_assert_not_null(p);
    std::memset(p, round, size);
    if (held) sr_free(held);
    held = p;
    if (round >= 10) handed_out += size;
  }
  sr_free(held);
  uint64_t fresh = ever_mapped() - fresh_from;
  cr_expect_lt(fresh, handed_out / 4, "%lu MiB of new memory for %lu MiB of blocks",
               static_cast<unsigned long>(fresh / MiB), static_cast<unsigned long>(handed_out / MiB));
  km::reclaim();
}

// ---- regressions: large blocks under moves and signals, kept mappings ----

namespace {

void decay_after_100ms() { setenv("SYSREF_DECAY_MS", "100", 1); }
void decay_with_the_reaper() {
  setenv("SYSREF_DECAY_MS", "100", 1);
  setenv("SYSREF_REAP_THREAD", "1", 1);
}
uint64_t os_map_calls() {
  struct sysref_os_stats s;
  sysref_os_stats(&s);
  return s.map_calls;
}

}  // namespace

// Issue 6, defect 1, through kmalloc: a large block's record goes back to an
// internal slab zone, where a free whose restartable sequence aborted and
// retried on another CPU was taken for a double free, and (SYSREF_ON_ERROR
// left at abort) killed the process. Eight threads, moved between the CPUs
// and signalled, allocate and free 40 KiB blocks.
Test(kmalloc, large_frees_from_moved_and_signalled_threads_are_not_double_frees, .timeout = 60) {
  constexpr int nthreads = 8, batch = 4;
  km::reclaim();
  const uint64_t data = os_data();
  const km::stats before = km::snapshot();
  std::atomic<uint64_t> made{0};
  std::atomic<bool> failed{false};
  {
    crew c(true, 200);
    for (int t = 0; t < nthreads; ++t)
      c.spawn([&] {
        void *v[batch];
        uint64_t n = 0;
        while (!c.stopping() && !failed.load(std::memory_order_relaxed)) {
          int got = 0;
          while (got < batch && (v[got] = sr_malloc(40 * KiB)) != nullptr) ++got;
          if (got < batch) failed.store(true);
          for (int i = 0; i < got; ++i) sr_free(v[i]);
          n += static_cast<uint64_t>(got);
        }
        made.fetch_add(n);
      });
    std::this_thread::sleep_until(after_ms(2000));
  }
  cr_assert_not(failed.load(), "a large allocation failed");
  const km::stats after = km::snapshot();
  cr_expect_gt(made.load(), 0u);
  cr_expect_eq(after.large_allocs - before.large_allocs, made.load());
  cr_expect_eq(after.large_frees - before.large_frees, made.load(), "every block was released");
  cr_expect_eq(after.errors, before.errors, "no free was reported");
  km::reclaim();
  cr_expect_eq(os_data(), data, "every large byte went back");
}

// Issue 6, defect 7b: kmalloc(3): a kept block that stayed unused for
// SYSREF_DECAY_MS is unmapped at the next large request or free. A free, not only a
// request, must do it.
Test(kmalloc, a_kept_block_unused_for_an_interval_goes_at_the_next_free, .init = decay_after_100ms) {
  void *a = sr_malloc(4 * MiB), *b = sr_malloc(MiB);
  cr_assert(a && b);
  sr_free(a);  // kept mapped for reuse
  usleep(300 * 1000);  // three intervals unused
  struct sysref_os_stats before, after;
  sysref_os_stats(&before);
  sr_free(b);
  sysref_os_stats(&after);
  cr_expect_geq(after.unmap_calls, before.unmap_calls + 1, "the expired block was not unmapped");
  cr_expect_leq(after.mapped + 4 * MiB, before.mapped, "A's 4 MiB went back");
}

// The decay timer, through the malloc family (issue 9). A program that
// frees and allocates again within SYSREF_DECAY_MS maps nothing after its
// first round (small blocks come back through the empty-slab pool, large
// ones from the kept mappings); once it goes idle, the reaper thread gives
// the memory back.
namespace {
void busy_round(std::vector<void *> &v) {
  static const size_t large[] = {5 * MiB, 9 * MiB, 7 * MiB};
  for (int i = 0; i < 20000; ++i) v.push_back(sr_malloc(64 + 64 * (i % 8)));
  for (size_t n : large) v.push_back(sr_malloc(n));
  for (void *p : v) {
    cr_assert_not_null(p);
    std::memset(p, 0x3c, 64);
  }
}
}  // namespace

void decay_after_a_second() { setenv("SYSREF_DECAY_MS", "1000", 1); }

// A second: rounds on a loaded machine stay well within it.
Test(kmalloc, a_busy_loop_maps_nothing_after_its_first_round, .init = decay_after_a_second) {
  pin(0);  // one CPU: every round needs the same slabs (a move could strand a few on another CPU)
  std::vector<void *> v;
  for (int round = 0; round < 6; ++round) {
    uint64_t calls = os_map_calls();
    busy_round(v);
    for (void *p : v) sr_free(p);
    v.clear();
    if (round > 1)  // the first two: magazines and page-map leaves settle
      cr_expect_eq(os_map_calls(), calls, "round %d mapped %lu times", round,
                   static_cast<unsigned long>(os_map_calls() - calls));
  }
}

Test(kmalloc, memory_goes_back_when_the_program_goes_idle, .init = decay_with_the_reaper) {
  km::reclaim();
  const uint64_t data = os_data();
  std::vector<void *> v;
  busy_round(v);
  const uint64_t busy = os_data();
  cr_expect_geq(busy - data, 21 * MiB);
  for (void *p : v) sr_free(p);
  uint64_t now = os_data();
  for (int i = 0; i < 100 && now > data + 2 * MiB; ++i) {
    usleep(20 * 1000);  // idle: not one call into the library
    now = os_data();
  }
  cr_expect_leq(now, data + 2 * MiB, "idle for 2 s and still %lu bytes over", static_cast<unsigned long>(now - data));
  km::large::counters lc = km::large::snapshot();
  cr_expect_geq(lc.decayed_bytes, 21 * MiB, "the large mappings decayed");
  cr_expect_gt(sysref::slab::pool_snapshot().bytes_decayed, 0u, "and the empty slabs");
}

// SR_NOWAIT on size classes nothing was ever allocated from (a fresh
// process: Criterion runs each test in its own): every class makes its
// cache and maps its first slab without waiting for anyone (issue 9).
Test(kmalloc, nowait_serves_the_first_request_of_every_size_class) {
  for (unsigned i = 0; i < km::class_count(); ++i) {
    size_t size = km::class_size(i);
    cr_assert_null(km::class_cache(i), "class %zu is fresh", size);
    errno = 0;
    void *p = kmalloc(size, SR_NOWAIT);
    cr_assert_not_null(p, "class %zu: errno %d", size, errno);
    std::memset(p, 0x77, size);
    void *q = kmalloc(size, SR_NOWAIT | SR_ZERO);
    cr_assert_not_null(q);
    for (size_t b = 0; b < size; ++b) cr_assert_eq(static_cast<unsigned char *>(q)[b], 0);
    kfree(p);
    kfree(q);
  }
  void *big = kmalloc(3 * MiB, SR_NOWAIT);
  cr_expect_not_null(big, "and a large block: a map waits for no thread");
  kfree(big);
}
