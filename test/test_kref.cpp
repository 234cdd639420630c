// lib/sysref: kref counts (Akaros rules, saturating): gets, puts, resurrect,
// saturation, misuse reports, and races of puts and lookups.
#include <criterion/criterion.h>

#include <atomic>
#include <csignal>
#include <sched.h>
#include <sysref/kref.h>
#include <thread>
#include <vector>

#include "sysref_helpers.hpp"

using test_sysref::count_errors;

namespace {

struct object {
  struct kref ref;
  int releases;
};

std::atomic<int> g_released{0};

void release(struct kref *k) {
  reinterpret_cast<object *>(k)->releases++;
  g_released.fetch_add(1);
}

}  // namespace

Test(kref, put_of_the_last_reference_releases_exactly_once) {
  object o{};
  kref_init(&o.ref, release, 1);
  kref_get(&o.ref, 2);
  cr_expect_eq(kref_refcnt(&o.ref), 3u);
  cr_expect_not(kref_put(&o.ref));
  cr_expect_not(kref_put(&o.ref));
  cr_expect_eq(o.releases, 0);
  cr_expect(kref_put(&o.ref), "the last put says it released");
  cr_expect_eq(o.releases, 1);
  cr_expect_eq(kref_refcnt(&o.ref), 0u);
}

Test(kref, get_not_zero_refuses_a_dead_count_and_takes_a_live_one) {
  object o{};
  kref_init(&o.ref, release, 1);
  cr_expect(kref_get_not_zero(&o.ref, 5));
  cr_expect_eq(kref_refcnt(&o.ref), 6u);
  for (int i = 0; i < 6; ++i) kref_put(&o.ref);
  cr_expect_eq(o.releases, 1);
  cr_expect_not(kref_get_not_zero(&o.ref, 1), "a released object stays dead");
  cr_expect_eq(kref_refcnt(&o.ref), 0u, "and the refused get took nothing");
}

Test(kref, resurrect_brings_a_zero_count_back) {
  object o{};
  kref_init(&o.ref, release, 0);
  kref_resurrect(&o.ref, 2);
  cr_expect_eq(kref_refcnt(&o.ref), 2u);
  kref_put(&o.ref);
  cr_expect(kref_put(&o.ref));
  cr_expect_eq(o.releases, 1);
  kref_resurrect(&o.ref, 1);  // a cache hands the object out again
  cr_expect(kref_put(&o.ref));
  cr_expect_eq(o.releases, 2);
}

// Counts saturate instead of wrapping, and a saturated object is never
// released, whatever the puts that follow.
Test(kref, counts_saturate_and_a_saturated_count_is_never_released) {
  object o{};
  kref_init(&o.ref, release, 0x7ffffff0u);
  kref_get(&o.ref, 0x20);
  cr_expect_eq(kref_refcnt(&o.ref), KREF_SATURATED);
  for (int i = 0; i < 1000; ++i) cr_assert_not(kref_put(&o.ref));
  cr_expect_eq(kref_refcnt(&o.ref), KREF_SATURATED);
  cr_expect(kref_get_not_zero(&o.ref, 1));
  kref_resurrect(&o.ref, 3);
  cr_expect_eq(kref_refcnt(&o.ref), KREF_SATURATED);
  object big{};
  kref_init(&big.ref, release, 0xfffffff0u);  // more than a live count holds
  cr_expect_eq(kref_refcnt(&big.ref), KREF_SATURATED);
  cr_expect(kref_get_not_zero(&big.ref, 1));
  object near{};
  kref_init(&near.ref, release, 0x7ffffffeu);
  cr_expect(kref_get_not_zero(&near.ref, 4));
  cr_expect_eq(kref_refcnt(&near.ref), KREF_SATURATED);
  cr_expect_eq(o.releases + big.releases + near.releases, 0);
}

Test(kref, a_get_on_zero_aborts_by_default, .signal = SIGABRT) {
  object o{};
  kref_init(&o.ref, release, 0);
  kref_get(&o.ref, 1);
}

Test(kref, a_put_below_zero_aborts_by_default, .signal = SIGABRT) {
  object o{};
  kref_init(&o.ref, release, 0);
  kref_put(&o.ref);
}

// In count mode misuse is reported and the object is leaked (saturated),
// never released a second time.
Test(kref, misuse_is_reported_and_leaks_rather_than_releases, .init = count_errors) {
  int fds[2];
  cr_assert_eq(pipe(fds), 0);
  int saved = dup(STDERR_FILENO);
  dup2(fds[1], STDERR_FILENO);
  object o{};
  kref_init(&o.ref, release, 1);
  cr_expect(kref_put(&o.ref));
  kref_get(&o.ref, 1);  // on zero: reported
  cr_expect_not(kref_put(&o.ref));
  object u{};
  kref_init(&u.ref, release, 0);
  cr_expect_not(kref_put(&u.ref));  // below zero: reported
  dup2(saved, STDERR_FILENO);
  close(fds[1]);
  char buf[512] = {};
  ssize_t n = read(fds[0], buf, sizeof buf - 1);
  close(fds[0]);
  cr_assert_gt(n, 0);
  cr_expect_not_null(strstr(buf, "kref_get: reference taken on a zero count"), "%s", buf);
  cr_expect_not_null(strstr(buf, "kref_put: count dropped below zero"), "%s", buf);
  cr_expect_eq(o.releases, 1, "released once, never again");
  cr_expect_eq(u.releases, 0);
  cr_expect_eq(kref_refcnt(&o.ref), KREF_SATURATED);
  cr_expect_eq(kref_refcnt(&u.ref), KREF_SATURATED);
}

// Threads take and drop references while lookups race with the last put:
// release runs exactly once, and a get_not_zero that succeeds never follows
// it.
Test(kref, racing_puts_and_lookups_release_once) {
  constexpr int rounds = 2000, nthreads = 4;
  for (int r = 0; r < rounds; ++r) {
    object o{};
    std::atomic<bool> late_get{false};
    g_released.store(0);
    kref_init(&o.ref, [](struct kref *k) {
      auto *obj = reinterpret_cast<object *>(k);
      obj->releases++;
      g_released.fetch_add(1);
    }, nthreads);
    std::vector<std::thread> t;
    for (int i = 0; i < nthreads; ++i)
      t.emplace_back([&] {
        for (int j = 0; j < 8; ++j)
          if (kref_get_not_zero(&o.ref, 1)) {
            if (g_released.load()) late_get.store(true);
            kref_put(&o.ref);
          }
        kref_put(&o.ref);
      });
    for (auto &th : t) th.join();
    cr_assert_eq(o.releases, 1, "round %d", r);
    cr_assert_not(late_get.load(), "round %d: a lookup succeeded after release", r);
  }
}

// The largest live count is 2^31 - 1: one more saturates, in get and in
// resurrect alike.
Test(kref, live_counts_reach_the_top_before_saturating) {
  object o{};
  kref_init(&o.ref, release, 0x7fffffffu);
  cr_expect_eq(kref_refcnt(&o.ref), 0x7fffffffu, "the top live count is not saturated");
  cr_expect_not(kref_put(&o.ref));
  cr_expect_eq(kref_refcnt(&o.ref), 0x7ffffffeu, "and puts still count down from it");
  kref_get(&o.ref, 1);
  cr_expect_eq(kref_refcnt(&o.ref), 0x7fffffffu);
  kref_get(&o.ref, 1);
  cr_expect_eq(kref_refcnt(&o.ref), KREF_SATURATED);
  object r{};
  kref_init(&r.ref, release, 0x7ffffffeu);
  kref_resurrect(&r.ref, 1);
  cr_expect_eq(kref_refcnt(&r.ref), 0x7fffffffu);
  kref_resurrect(&r.ref, 1);
  cr_expect_eq(kref_refcnt(&r.ref), KREF_SATURATED);
  object g{};
  kref_init(&g.ref, release, 0x7ffffffeu);
  cr_expect(kref_get_not_zero(&g.ref, 1));
  cr_expect_eq(kref_refcnt(&g.ref), 0x7fffffffu);
  cr_expect_eq(o.releases + r.releases + g.releases, 0);
}

Test(kref, a_null_release_is_allowed) {
  struct kref k;
  kref_init(&k, nullptr, 2);
  cr_expect_not(kref_put(&k));
  cr_expect(kref_put(&k), "the last put still says so");
  cr_expect_eq(kref_refcnt(&k), 0u);
}

// Threads that push a count past the top at once: it saturates and stays
// saturated whatever the puts that follow, and is never released.
Test(kref, racing_gets_past_the_top_saturate_and_never_release) {
  object o{};
  g_released.store(0);
  kref_init(&o.ref, release, 0x7fff0000u);
  std::vector<std::thread> t;
  for (int i = 0; i < 4; ++i)
    t.emplace_back([&] {
      for (int j = 0; j < 100000; ++j) kref_get(&o.ref, 1);
      for (int j = 0; j < 200000; ++j) kref_put(&o.ref);
    });
  for (auto &th : t) th.join();
  cr_expect_eq(kref_refcnt(&o.ref), KREF_SATURATED);
  cr_expect_eq(g_released.load(), 0);
  cr_expect_eq(o.releases, 0);
}
