// lib/os: aligned mappings, counters, fault injection, machine facts.
#include <criterion/criterion.h>

#include <cerrno>
#include <cstdint>
#include <sysref/os.h>
#include <unistd.h>
#include <vector>

#include "os/os.hpp"

using namespace sysref;

Test(os, map_is_aligned_writable_and_counted) {
  os::fail_after(-1);
  const size_t page = os::page_size();
  for (size_t align : {page, size_t{1} << 16, size_t{1} << 21}) {
    auto before = os::memory_snapshot();
    auto *p = static_cast<unsigned char *>(os::map(align * 2, align));
    cr_assert_not_null(p);
    cr_expect_eq(reinterpret_cast<uintptr_t>(p) % align, 0u, "alignment %zu", align);
    p[0] = 1;
    p[align * 2 - 1] = 2;  // both ends are ours
    auto mid = os::memory_snapshot();
    cr_expect_eq(mid.mapped - before.mapped, align * 2);
    cr_expect_eq(mid.map_calls - before.map_calls, 1u);
    os::unmap(p, align * 2);
    auto after = os::memory_snapshot();
    cr_expect_eq(after.mapped, before.mapped);
    cr_expect_eq(after.released - before.released, align * 2);
    cr_expect_eq(after.unmap_calls - before.unmap_calls, 1u);
  }
}

Test(os, bad_arguments_are_einval) {
  errno = 0;
  cr_expect_null(os::map(0, os::page_size()));
  cr_expect_eq(errno, EINVAL);
  errno = 0;
  cr_expect_null(os::map(os::page_size(), 3 * os::page_size()));
  cr_expect_eq(errno, EINVAL);
}

Test(os, fail_after_lets_n_through_then_refuses_like_the_kernel) {
  const size_t page = os::page_size();
  for (long n : {0L, 1L, 5L}) {
    sysref_os_fail_after(n);
    void *got[8] = {};
    for (long i = 0; i < n; ++i) {
      got[i] = os::map(page, page);
      cr_assert_not_null(got[i], "request %ld of %ld", i, n);
    }
    struct sysref_os_stats before;
    sysref_os_stats(&before);
    errno = 0;
    cr_expect_null(os::map(page, page));
    cr_expect_eq(errno, ENOMEM);
    cr_expect_null(os::map(page, page), "stays refused");
    struct sysref_os_stats after;
    sysref_os_stats(&after);
    cr_expect_eq(after.refused - before.refused, 2u);
    cr_expect_eq(after.map_calls, before.map_calls, "refused requests never reach mmap");
    sysref_os_fail_after(-1);
    void *ok = os::map(page, page);
    cr_expect_not_null(ok, "off again");
    os::unmap(ok, page);
    for (long i = 0; i < n; ++i) os::unmap(got[i], page);
  }
}

Test(os, decommit_keeps_the_range_and_zeroes_it) {
  const size_t page = os::page_size();
  auto *p = static_cast<unsigned char *>(os::map(page * 4, page));
  cr_assert_not_null(p);
  p[page] = 0x5a;
  auto before = os::memory_snapshot();
  os::decommit(p, page * 4);
  auto after = os::memory_snapshot();
  cr_expect_eq(after.decommitted - before.decommitted, page * 4);
  cr_expect_eq(after.madvise_calls - before.madvise_calls, 1u);
  cr_expect_eq(p[page], 0, "anonymous memory reads as zero after MADV_DONTNEED");
  os::unmap(p, page * 4);
}

// The span heap's address space: reserving costs nothing counted, a commit
// is a page request (counted, refusable), a release gives the pages back
// and keeps the range reserved, and a range committed again reads as zero.
Test(os, reserve_commit_release) {
  os::fail_after(-1);
  const size_t page = os::page_size(), size = size_t{1} << 22, align = size_t{1} << 21;
  auto before = os::memory_snapshot();
  auto *r = static_cast<unsigned char *>(os::reserve(size, align));
  cr_assert_not_null(r);
  cr_expect_eq(reinterpret_cast<uintptr_t>(r) % align, 0u);
  cr_expect_eq(os::memory_snapshot().mapped, before.mapped, "a reservation is not memory");
  cr_assert(os::commit(r + page, 2 * page));
  r[page] = 0x5a;
  r[3 * page - 1] = 0x5b;
  auto mid = os::memory_snapshot();
  cr_expect_eq(mid.mapped - before.mapped, 2 * page);
  cr_expect_eq(mid.map_calls - before.map_calls, 1u);
  os::release(r + page, 2 * page);
  auto after = os::memory_snapshot();
  cr_expect_eq(after.mapped, before.mapped);
  cr_expect_eq(after.released - before.released, 2 * page);
  os::fail_after(0);
  errno = 0;
  cr_expect_not(os::commit(r + page, page), "fault injection refuses a commit");
  cr_expect_eq(errno, ENOMEM);
  os::fail_after(-1);
  cr_assert(os::commit(r + page, page));
  cr_expect_eq(r[page], 0, "committed again, the range reads as zero");
  os::release(r + page, page);
  os::unreserve(r, size);
  cr_expect_null(os::reserve(size, page / 2), "an alignment below the page size is refused");
}

Test(os, machine_facts) {
  cr_expect_eq(os::page_size(), static_cast<size_t>(sysconf(_SC_PAGESIZE)));
  cr_expect_geq(os::cpu_count(), static_cast<unsigned>(sysconf(_SC_NPROCESSORS_ONLN)));
  cr_expect_lt(os::current_cpu(), os::cpu_count());
  cr_expect_neq(os::random_seed(), os::random_seed());
}

Test(os, topology_loads_hwloc_lazily) {
  os::topology_info t = os::topology();
  cr_expect(t.from_hwloc, "libhwloc.so.15 should load on a machine with hwloc installed");
  cr_expect_geq(t.pus, 1u);
  cr_expect_leq(t.pus, os::cpu_count());
  cr_expect_geq(t.cores, 1u);
}

Test(os, lock_excludes) {
  os::lock l;
  cr_expect(l.try_acquire());
  cr_expect_not(l.try_acquire());
  l.release();
  cr_expect(l.try_acquire());
  l.release();
}

Test(os, metadata_is_counted_apart_from_data) {
  const size_t page = os::page_size();
  auto before = os::memory_snapshot();
  void *meta = os::map(page * 2, page, os::use::metadata);
  void *data = os::map(page * 3, page);
  auto mid = os::memory_snapshot();
  cr_expect_eq(mid.mapped - before.mapped, page * 5);
  cr_expect_eq(mid.metadata - before.metadata, page * 2);
  os::unmap(meta, page * 2, os::use::metadata);
  os::unmap(data, page * 3);
  auto after = os::memory_snapshot();
  cr_expect_eq(after.mapped, before.mapped);
  cr_expect_eq(after.metadata, before.metadata);
}

// Each Criterion test runs in its own process, so .init can set the
// environment before the option table is first read.
void set_options() {
  setenv("SYSREF_SPARE_LOW", "3", 1);
  setenv("SYSREF_SPARE_HIGH", "7", 1);
  setenv("SYSREF_ON_ERROR", "count", 1);
  setenv("SYSREF_FAULT", "12", 1);
  setenv("SYSREF_PERCPU", "sometimes", 1);  // not a value it takes
}

Test(os, options_come_from_the_environment, .init = set_options) {
  const os::options &o = os::opts();
  cr_expect_eq(o.spare_low, 3u);
  cr_expect_eq(o.spare_high, 7u);
  cr_expect(o.error_mode == os::on_error::count);
  cr_expect_eq(o.fault_after, 12);
  cr_expect(o.percpu == os::percpu_choice::automatic, "a bad value leaves the default");
  const size_t page = os::page_size();
  std::vector<void *> got;
  while (void *p = os::map(page, page)) got.push_back(p);
  cr_expect_eq(got.size(), 12u, "SYSREF_FAULT=12 lets twelve page requests through");
  for (void *p : got) os::unmap(p, page);
  os::fail_after(-1);
}

void bad_spares() {
  setenv("SYSREF_SPARE_LOW", "9", 1);
  setenv("SYSREF_SPARE_HIGH", "2", 1);
}

Test(os, spare_low_above_high_is_lifted, .init = bad_spares) {
  cr_expect_eq(os::opts().spare_low, 9u);
  cr_expect_eq(os::opts().spare_high, 9u);
}
