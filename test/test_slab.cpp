// lib/slab: kmalloc_obj zones. Run once per per-CPU mode (see meson.build).
#include <criterion/criterion.h>

#include <algorithm>
#include <atomic>
#include <csignal>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <sched.h>
#include <sysref/kmalloc_obj.h>
#include <sysref/os.h>
#include <thread>
#include <vector>

namespace {

// Bytes mapped for data: the library's own metadata (per-CPU region, page
// map, zone structures) stays for the life of the process.
uint64_t os_mapped() {
  struct sysref_os_stats s;
  sysref_os_stats(&s);
  return s.mapped - s.metadata;
}
uint64_t os_map_calls() {
  struct sysref_os_stats s;
  sysref_os_stats(&s);
  return s.map_calls;
}

kmalloc_zone_stats zstats(kmalloc_zone_t *z) {
  kmalloc_zone_stats s;
  cr_assert_eq(kmalloc_obj_zone_stats(z, &s), 0);
  return s;
}

// Everything the zone hands out until it says no (bounded for safety).
std::vector<void *> drain(kmalloc_zone_t *z, int flags, size_t cap = 1 << 20) {
  std::vector<void *> got;
  while (got.size() < cap) {
    void *p = kmalloc_obj(z, flags);
    if (!p) break;
    got.push_back(p);
  }
  return got;
}

void free_all(kmalloc_zone_t *z, std::vector<void *> &v) {
  for (void *p : v) kfree_obj(p, z);
  v.clear();
}

void count_errors() { setenv("SYSREF_ON_ERROR", "count", 1); }  // before the first library call


}  // namespace

Test(slab, objects_are_distinct_aligned_and_keep_their_contents) {
  for (size_t align : {0, 16, 64, 256, 4096}) {
    kmalloc_zone_t *z = kmalloc_obj_zone_create("t.align", 200, align, 0);
    cr_assert_not_null(z);
    std::vector<unsigned char *> v;
    for (int i = 0; i < 5000; ++i) {
      auto *p = static_cast<unsigned char *>(kmalloc_obj(z, 0));
      cr_assert_not_null(p);
      cr_assert_eq(reinterpret_cast<uintptr_t>(p) % (align ? align : 16), 0u);
      std::memset(p, i & 0xff, 200);
      v.push_back(p);
    }
    for (int i = 0; i < 5000; ++i)
      for (int k = 0; k < 200; ++k) cr_assert_eq(v[i][k], i & 0xff, "object %d byte %d", i, k);
    for (auto *p : v) kfree_obj(p, z);
    kmalloc_obj_zone_destroy(z);
  }
}

Test(slab, zero_flag_zeroes_reused_objects) {
  kmalloc_zone_t *z = kmalloc_obj_zone_create("t.zero", 96, 0, 0);
  void *p = kmalloc_obj(z, 0);
  std::memset(p, 0xff, 96);
  kfree_obj(p, z);
  auto *q = static_cast<unsigned char *>(kmalloc_obj(z, SR_ZERO));
  cr_expect_eq(static_cast<void *>(q), p, "LIFO: the same object comes back");
  for (int i = 0; i < 96; ++i) cr_assert_eq(q[i], 0);
  kfree_obj(q, z);
  kmalloc_obj_zone_destroy(z);
}

Test(slab, bad_arguments_give_einval) {
  struct { size_t size, align; unsigned flags; } bad[] = {
      {0, 0, 0}, {(256u << 10) + 1, 0, 0}, {64, 24, 0}, {64, 8192, 0}, {64, 0, 1}};
  for (auto &b : bad) {
    errno = 0;
    cr_expect_null(kmalloc_obj_zone_create("bad", b.size, b.align, b.flags));
    cr_expect_eq(errno, EINVAL, "size %zu align %zu", b.size, b.align);
  }
  errno = 0;
  cr_expect_null(kmalloc_obj(nullptr, 0));
  cr_expect_eq(errno, EINVAL);
  kmalloc_zone_t *z = kmalloc_obj_zone_create("t.args", 64, 0, 0);
  cr_expect_eq(kmalloc_obj_set_spare(z, 3, 2), -1);
  cr_expect_eq(errno, EINVAL);
  char small[1024];
  cr_expect_eq(kmalloc_obj_reserve(z, small, sizeof small), -1, "no whole slab fits");
  cr_expect_eq(errno, EINVAL);
  kfree_obj(nullptr, z);  // a no-op, as free(NULL)
  kmalloc_obj_zone_destroy(z);
}

Test(slab, stats_add_up) {
  kmalloc_zone_t *z = kmalloc_obj_zone_create("t.stats", 48, 0, 0);
  std::vector<void *> v;
  for (int i = 0; i < 3000; ++i) v.push_back(kmalloc_obj(z, 0));
  for (int i = 0; i < 1000; ++i) kfree_obj(v[i], z);
  kmalloc_zone_stats s = zstats(z);
  cr_expect_eq(s.allocs, 3000u);
  cr_expect_eq(s.frees, 1000u);
  cr_expect_eq(s.live, 2000u);
  cr_expect_eq(s.allocs, s.frees + s.live);
  cr_expect_eq(s.objsize, 48u);
  cr_expect_eq(s.slabs, s.slabs_active + s.slabs_partial + s.slabs_full + s.slabs_spare +
                            (s.slabs_reserve - 0), "every slab is on one list (no reserve here)");
  cr_expect_geq(s.slabs * s.objs_per_slab, s.live);
  cr_expect_eq(s.bytes_mapped, s.slabs * s.slab_size);
  for (int i = 1000; i < 3000; ++i) kfree_obj(v[i], z);
  kmalloc_obj_zone_destroy(z);
}

Test(slab, destroy_releases_every_byte) {
  uint64_t before = os_mapped();
  kmalloc_zone_t *z = kmalloc_obj_zone_create("t.destroy", 512, 0, 0);
  std::vector<void *> v = drain(z, 0, 20000);
  free_all(z, v);
  v = drain(z, 0, 5000);  // leave some live: destroy must not care
  cr_expect_gt(os_mapped(), before);
  kmalloc_obj_zone_destroy(z);
  cr_expect_eq(os_mapped(), before);
}

Test(slab, empty_slabs_beyond_the_spare_target_go_back) {
  kmalloc_zone_t *z = kmalloc_obj_zone_create("t.release", 1024, 0, 0);
  cr_assert_eq(kmalloc_obj_set_spare(z, 1, 2), 0);
  std::vector<void *> v = drain(z, 0, 30000);  // ~480 slabs
  uint64_t peak = os_mapped();
  free_all(z, v);
  kmalloc_zone_stats s = zstats(z);
  cr_expect_leq(s.slabs_spare, 2u);
  cr_expect_gt(s.slabs_released, 400u);
  cr_expect_lt(os_mapped(), peak - 400 * s.slab_size);
  kmalloc_obj_zone_destroy(z);
}

Test(slab, proactive_refill_keeps_spares_ready) {
  kmalloc_zone_t *z = kmalloc_obj_zone_create("t.refill", 2048, 0, 0);
  cr_assert_eq(kmalloc_obj_set_spare(z, 2, 3), 0);
  std::vector<void *> v;
  for (int i = 0; i < 200; ++i) v.push_back(kmalloc_obj(z, 0));
  kmalloc_zone_stats s = zstats(z);
  cr_expect_gt(s.proactive_maps, 0u);
  cr_expect_geq(s.slabs_spare, 2u, "refilled up to the low mark at least");
  cr_expect_leq(s.slabs_spare, 3u);
  cr_expect_leq(s.sync_maps, 1u, "only the very first slab is mapped while a caller waits");
  free_all(z, v);
  kmalloc_obj_zone_destroy(z);
}

Test(slab, nowait_never_maps) {
  kmalloc_zone_t *z = kmalloc_obj_zone_create("t.nowait", 64, 0, 0);
  uint64_t calls = os_map_calls();
  errno = 0;
  cr_expect_null(kmalloc_obj(z, SR_NOWAIT), "a new zone has nothing ready");
  cr_expect_eq(errno, ENOMEM);
  cr_expect_eq(os_map_calls(), calls);
  void *p = kmalloc_obj(z, SR_WAITOK);
  cr_expect_not_null(p);
  void *q = kmalloc_obj(z, SR_NOWAIT);
  cr_expect_not_null(q, "now the active slab has objects");
  kfree_obj(p, z);
  kfree_obj(q, z);
  kmalloc_obj_zone_destroy(z);
}

// For n = 0..200: allocate until refused, check ENOMEM, free, allow, reuse;
// the os counters show nothing leaked.
Test(slab, fault_injection_sweep) {
  uint64_t base = os_mapped();
  for (long n = 0; n <= 200; ++n) {
    kmalloc_zone_t *z = kmalloc_obj_zone_create("t.sweep", 4096, 0, 0);
    cr_assert_not_null(z);
    sysref_os_fail_after(n);
    errno = 0;
    std::vector<void *> v = drain(z, 0);
    cr_assert_eq(errno, ENOMEM, "n=%ld: refusal must surface as ENOMEM", n);
    cr_assert_lt(v.size(), 1u << 20, "n=%ld: the zone never ran out", n);
    for (size_t i = 0; i < v.size(); ++i) std::memset(v[i], static_cast<int>(i), 64);
    free_all(z, v);
    sysref_os_fail_after(-1);
    for (int i = 0; i < 100; ++i) v.push_back(kmalloc_obj(z, 0));
    for (void *p : v) cr_assert_not_null(p, "n=%ld: allocation after the OS recovered", n);
    free_all(z, v);
    kmalloc_obj_zone_destroy(z);
    cr_assert_eq(os_mapped(), base, "n=%ld: bytes leaked: %lu", n, (unsigned long)(os_mapped() - base));
  }
}

// Runs purely from a reserve: the OS refuses everything from the start.
Test(slab, zone_runs_from_a_reserve_alone) {
  static char reserve_mem[3 << 16];
  kmalloc_zone_t *z = kmalloc_obj_zone_create("t.boot", 128, 0, 0);
  int slabs = kmalloc_obj_reserve(z, reserve_mem, sizeof reserve_mem);
  cr_assert_geq(slabs, 2);
  sysref_os_fail_after(0);
  uint64_t calls = os_map_calls();
  errno = 0;
  std::vector<void *> v = drain(z, 0);
  kmalloc_zone_stats s = zstats(z);
  cr_expect_eq(v.size(), static_cast<size_t>(slabs) * s.objs_per_slab, "every reserve object");
  cr_expect_eq(errno, ENOMEM);
  cr_expect_eq(os_map_calls(), calls, "the page provider was never reached");
  for (void *p : v) {
    auto a = reinterpret_cast<uintptr_t>(p);
    cr_assert(a >= reinterpret_cast<uintptr_t>(reserve_mem) &&
              a < reinterpret_cast<uintptr_t>(reserve_mem) + sizeof reserve_mem);
  }
  free_all(z, v);
  v = drain(z, 0);
  cr_expect_eq(v.size(), static_cast<size_t>(slabs) * s.objs_per_slab, "and all of it again");
  free_all(z, v);
  sysref_os_fail_after(-1);
  kmalloc_obj_zone_destroy(z);
}

// Once running, the reserve is only for SR_USE_RESERVE when the OS says no.
Test(slab, use_reserve_succeeds_while_plain_requests_fail) {
  static char reserve_mem[2 << 16];
  kmalloc_zone_t *z = kmalloc_obj_zone_create("t.emerg", 256, 0, 0);
  cr_assert_eq(kmalloc_obj_set_spare(z, 0, 0), 0);
  void *first = kmalloc_obj(z, 0);  // from the OS: the zone is running
  cr_assert_geq(kmalloc_obj_reserve(z, reserve_mem, sizeof reserve_mem), 1);
  sysref_os_fail_after(0);
  std::vector<void *> plain = drain(z, 0);
  errno = 0;
  cr_expect_null(kmalloc_obj(z, 0));
  cr_expect_eq(errno, ENOMEM);
  for (void *p : plain) {
    auto a = reinterpret_cast<uintptr_t>(p);
    cr_assert(a < reinterpret_cast<uintptr_t>(reserve_mem) ||
                  a >= reinterpret_cast<uintptr_t>(reserve_mem) + sizeof reserve_mem,
              "plain requests never dip into the reserve");
  }
  void *e1 = kmalloc_obj(z, SR_USE_RESERVE), *e2 = kmalloc_obj(z, SR_USE_RESERVE | SR_ZERO);
  cr_assert_not_null(e1);
  cr_assert_not_null(e2);
  cr_expect(reinterpret_cast<uintptr_t>(e1) >= reinterpret_cast<uintptr_t>(reserve_mem));
  for (int i = 0; i < 256; ++i) cr_assert_eq(static_cast<unsigned char *>(e2)[i], 0);
  cr_expect_null(kmalloc_obj(z, 0), "still no for plain callers");
  cr_expect_eq(zstats(z).reserve_allocs, 2u);
  kfree_obj(e1, z);
  kfree_obj(e2, z);
  sysref_os_fail_after(-1);
  free_all(z, plain);
  kfree_obj(first, z);
  kmalloc_zone_stats s = zstats(z);
  cr_expect_eq(s.live, 0u);
  cr_expect_geq(s.slabs_reserve, 1u, "reserve slabs stay with the zone");
  kmalloc_obj_zone_destroy(z);
}

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
