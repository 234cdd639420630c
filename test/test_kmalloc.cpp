// lib/kmalloc: conformance of the k* and sr_* functions with kmalloc(3) and
// glibc: malloc and its sizes, size classes, aligned allocation, calloc,
// realloc. Run once per per-CPU mode (see meson.build).

#include <criterion/criterion.h>

#include <bit>

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

#include "kmalloc/kmalloc.hpp"
#include "kmalloc_helpers.hpp"

using namespace test_kmalloc;

namespace {

constexpr size_t huge = static_cast<size_t>(PTRDIFF_MAX) + 1;

void fill(void *p, size_t n, uint64_t seed) {
  auto *b = static_cast<unsigned char *>(p);
  for (size_t i = 0; i < n; ++i) b[i] = pattern(seed, i);
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
