// lib/sysref: the life cycle of SYSREF objects (create, activate, put,
// terminate), misuse reports, statistics and bad classes. The suite runs in
// both per-CPU modes (see meson.build).
#include <criterion/criterion.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <csignal>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <string>
#include <sysref/sysref.h>
#include <thread>
#include <unistd.h>
#include <vector>

#include "crew.hpp"
#include "sysref_helpers.hpp"

// Classes are designated-initialised as sysref(3) says, naming only the
// public fields: the private ones start out zero, which -Wextra would flag.
#pragma GCC diagnostic ignored "-Wmissing-field-initializers"

using namespace test_sysref;

namespace {

class_counts g_plain_counts;
// No terminate: the last put of an active object gives it back at once.
struct sysref_class plain = thing_class("t.plain", &g_plain_counts, nullptr);

// Collects what the library writes on stderr between construction and
// text(); nothing else writes there meanwhile in these tests.
class stderr_capture {
 public:
  stderr_capture() {
    cr_assert_eq(pipe(fds_), 0);
    saved_ = dup(STDERR_FILENO);
    dup2(fds_[1], STDERR_FILENO);
  }
  std::string text() {
    dup2(saved_, STDERR_FILENO);
    close(saved_);
    close(fds_[1]);
    std::string s;
    char buf[512];
    ssize_t n;
    while ((n = read(fds_[0], buf, sizeof buf)) > 0) s.append(buf, static_cast<size_t>(n));
    close(fds_[0]);
    return s;
  }

 private:
  int fds_[2] = {-1, -1}, saved_ = -1;
};

std::string hex(const void *p) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "0x%lx", static_cast<unsigned long>(reinterpret_cast<uintptr_t>(p)));
  return buf;
}

// The lines of s that report a misuse of object t of class cls: they begin
// with "sysref: " and name the class and the object (its address, or the
// address of its struct sysref).
size_t reports_about(const std::string &s, const char *cls, const thing *t) {
  size_t n = 0, start = 0;
  while (start < s.size()) {
    size_t end = s.find('\n', start);
    if (end == std::string::npos) end = s.size();
    std::string line = s.substr(start, end - start);
    if (line.rfind("sysref: ", 0) == 0 && line.find(cls) != std::string::npos &&
        (line.find(hex(t)) != std::string::npos || line.find(hex(&t->sr)) != std::string::npos))
      ++n;
    start = end + 1;
  }
  return n;
}

// The .signal = SIGABRT tests: an abort before the misuse (the library
// aborting on a legal call) must not pass for the expected one. The handler
// exits normally unless the misuse is under way, which fails the test.
volatile sig_atomic_t g_misuse_now = 0;
void abort_guard(int) {
  if (!g_misuse_now) _exit(71);
}
void guard_aborts() { std::signal(SIGABRT, abort_guard); }

}  // namespace

// ---- the life cycle ----------------------------------------------------------

Test(sysref, a_new_object_is_creating_and_lookups_miss_it) {
  thing *t = make();
  sysid_t id = raw_id(t);
  struct sysref_stats s = stats(&things);
  cr_expect_eq(s.allocs, 1u);
  cr_expect_eq(s.creating, 1u);
  cr_expect_eq(s.active, 0u);
  cr_expect_eq(s.live, 1u);
  cr_expect_eq(s.constructions, 1u);
  cr_expect_eq(g_thing_counts.ctors.load(), 1);
  cr_expect_null(lookup(id), "a creating object is not findable");
  cr_expect_not(sysref_get_not_zero(&t->sr), "nor does get_not_zero take it");
  s = stats(&things);
  cr_expect_eq(s.lookups, 1u);
  cr_expect_eq(s.lookup_misses, 1u);
  cr_expect_eq(s.creating, 1u, "the failed lookup took nothing");
  activate(t);
  thing *found = lookup(id);
  cr_expect_eq(found, t, "activated: the lookup finds it (seen from now on)");
  sysref_put(&found->sr);
  sysref_put(&t->sr);
  cr_expect_eq(terminations(t).load(), 1);
}

Test(sysref, activation_makes_it_findable_with_a_reference) {
  thing *t = make();
  sysid_t id = raw_id(t);
  activate(t);
  struct sysref_stats s = stats(&things);
  cr_expect_eq(s.creating, 0u);
  cr_expect_eq(s.active, 1u);
  thing *a = lookup(id), *b = lookup(id);
  cr_assert_eq(a, t, "lookup returns the object itself, not its struct sysref");
  cr_assert_eq(b, t);
  cr_expect_eq(id_of(a).load(), id);
  cr_expect_eq(stats(&things).lookups, 2u);
  cr_expect_eq(stats(&things).lookup_misses, 0u);
  // Three references now: the owner's and two lookups'. Two puts keep it.
  sysref_put(&a->sr);
  sysref_put(&b->sr);
  cr_expect_eq(terminations(t).load(), 0, "the lookups' references were not the last");
  cr_expect_eq(lookup(id), t, "still active");
  sysref_put(&t->sr);
  cr_expect_eq(terminations(t).load(), 0);
  sysref_put(&t->sr);  // the owner's, the last
  cr_expect_eq(terminations(t).load(), 1);
  cr_expect_null(lookup(id));
}

Test(sysref, the_last_put_terminates_once_in_the_putting_thread) {
  thing *t = make_active();
  sysid_t id = sysref_sysid(&t->sr);  // seen: destroyed when given back
  cr_expect_eq(id, raw_id(t));
  sysref_get(&t->sr);
  sysref_get(&t->sr);
  std::thread([&] { sysref_put(&t->sr); }).join();
  cr_expect_eq(g_terminations.load(), 0);
  pid_t putter = 0;
  std::thread([&] {
    putter = gettid();
    sysref_put(&t->sr);
  }).join();
  cr_expect_eq(g_terminations.load(), 0, "two of three references gone: still active");
  std::thread([&] {
    putter = gettid();
    sysref_put(&t->sr);
  }).join();
  cr_expect_eq(g_terminations.load(), 1, "the last put ran terminate");
  cr_expect_eq(g_terminate_tid.load(), putter, "in the thread of that put");
  cr_expect_eq(g_bad_terminates.load(), 0, "on an active object");
  cr_expect_null(lookup(id));
  struct sysref_stats s = stats(&things);
  cr_expect_eq(s.live, 0u);
  cr_expect_eq(s.retired, 1u, "seen: destroyed");
  cr_expect_eq(s.destructions, 1u);
  cr_expect_eq(g_thing_counts.last_dtor.load(), t);
  cr_expect_eq(g_thing_counts.bad_dtors.load(), 0);
  expect_consistent(s, "after");
}

// Inside terminate the object is terminating: not findable, get_not_zero
// refuses it, sysref_get takes temporary references. It stays out of the
// cache until the last of them goes, and terminate never runs again.
namespace {
struct {
  sysid_t id;
  bool lookup_missed, get_not_zero_refused;
  struct sysref_stats s;
} g_inside;
void look_inside(thing *t) {
  g_inside.lookup_missed = lookup(g_inside.id) == nullptr;
  g_inside.get_not_zero_refused = !sysref_get_not_zero(&t->sr);
  sysref_stats(&things, &g_inside.s);
  hold_in_terminate(t);
  hold_in_terminate(t);
}
}  // namespace

Test(sysref, references_taken_in_terminate_keep_the_object_out_of_the_cache) {
  thing *t = make_active();
  g_inside.id = raw_id(t);
  g_on_terminate = look_inside;
  sysref_put(&t->sr);
  g_on_terminate = nullptr;
  cr_expect_eq(terminations(t).load(), 1);
  cr_expect(g_inside.lookup_missed, "a terminating object is not findable");
  cr_expect(g_inside.get_not_zero_refused, "get_not_zero refuses a terminating object");
  cr_expect_eq(g_inside.s.terminating, 1u);
  cr_expect_eq(g_inside.s.active, 0u);
  cr_assert_eq(g_held.size(), 2u);
  struct sysref_stats s = stats(&things);
  cr_expect_eq(s.terminating, 1u, "two references taken in terminate keep it terminating");
  cr_expect_eq(s.live, 1u);
  cr_expect_eq(s.cached, 0u);
  // Not in the cache: allocations meanwhile never return it.
  std::vector<thing *> v;
  for (int i = 0; i < 64; ++i) {
    v.push_back(make());
    cr_expect_neq(v.back(), t, "a terminating object was handed out");
  }
  for (thing *o : v) sysref_put(&o->sr);  // aborted creations: no terminate
  // More temporary references from outside are legal too.
  sysref_get(&t->sr);
  sysref_put(&t->sr);
  cr_expect_null(lookup(g_inside.id), "still not findable (and now seen)");
  sysref_put(&g_held.back()->sr);
  g_held.pop_back();
  cr_expect_eq(stats(&things).terminating, 1u, "one reference left");
  cr_expect_eq(g_thing_counts.dtors.load(), 0);
  drop_held();
  cr_expect_eq(terminations(t).load(), 1, "dropping them never ran terminate again");
  cr_expect_eq(g_terminations.load(), 1);
  s = stats(&things);
  cr_expect_eq(s.terminating, 0u);
  cr_expect_eq(s.live, 0u);
  cr_expect_eq(s.retired, 1u, "looked up while terminating: seen, so destroyed");
  cr_expect_eq(g_thing_counts.last_dtor.load(), t);
  expect_consistent(s, "after");
}

Test(sysref, an_unseen_terminated_object_returns_to_the_cache_after_its_last_reference) {
  test_crew::pin_to(0);
  thing *t = make_active();
  sysid_t id = raw_id(t);
  uint64_t serial = t->serial;
  g_on_terminate = hold_in_terminate;
  sysref_put(&t->sr);
  g_on_terminate = nullptr;
  cr_expect_eq(stats(&things).cached, 0u, "held in terminate: not cached yet");
  drop_held();
  struct sysref_stats s = stats(&things);
  cr_expect_eq(s.cached, 1u, "given back to the cache");
  cr_expect_eq(s.live, 0u);
  cr_expect_eq(s.destructions, 0u);
  cr_expect_eq(s.retired, 0u);
  thing *again = make();
  cr_expect_eq(again, t, "the cache hands the same object out again");
  cr_expect_eq(raw_id(again), id, "with its sysid");
  cr_expect_eq(again->serial, serial, "not constructed again");
  cr_expect_eq(stats(&things).constructions, 1u);
  sysref_put(&again->sr);
  cr_expect_eq(g_terminations.load(), 1);
}

Test(sysref, putting_a_creating_object_aborts_the_creation) {
  test_crew::pin_to(0);
  thing *t = make();
  sysref_put(&t->sr);
  cr_expect_eq(g_terminations.load(), 0, "no terminate for an object never activated");
  struct sysref_stats s = stats(&things);
  cr_expect_eq(s.live, 0u);
  cr_expect_eq(s.creating, 0u);
  cr_expect_eq(s.cached, 1u, "unseen: back in the cache");
  // With temporary references: only the last put gives it back.
  thing *u = make();
  sysref_get(&u->sr);
  sysref_get(&u->sr);
  sysref_put(&u->sr);
  sysref_put(&u->sr);
  cr_expect_eq(stats(&things).creating, 1u, "the creator's reference remains");
  sysref_put(&u->sr);
  s = stats(&things);
  cr_expect_eq(s.creating, 0u);
  cr_expect_eq(s.live, 0u);
  // Seen while creating: destroyed, not cached.
  thing *w = make();
  sysid_t id = sysref_sysid(&w->sr);
  sysref_put(&w->sr);
  s = stats(&things);
  cr_expect_eq(s.retired, 1u);
  cr_expect_eq(g_thing_counts.last_dtor.load(), w);
  cr_expect_null(lookup(id));
  cr_expect_eq(g_terminations.load(), 0);
  expect_consistent(s, "after");
}

Test(sysref, temporary_references_of_a_creating_object_survive_activation) {
  thing *t = make();
  sysref_get(&t->sr);
  sysref_get(&t->sr);
  activate(t);  // count: 1 + 2
  sysref_put(&t->sr);
  sysref_put(&t->sr);
  cr_expect_eq(terminations(t).load(), 0, "the activated creator's reference remains");
  thing *f = lookup(raw_id(t));
  cr_expect_eq(f, t);
  sysref_put(&f->sr);
  sysref_put(&t->sr);
  cr_expect_eq(terminations(t).load(), 1);
}

Test(sysref, get_not_zero_takes_only_active_objects) {
  test_crew::pin_to(0);
  thing *t = make();
  cr_expect_not(sysref_get_not_zero(&t->sr), "creating");
  activate(t);
  cr_expect(sysref_get_not_zero(&t->sr), "active");
  sysref_put(&t->sr);
  sysref_put(&t->sr);  // terminated, unseen: cached
  cr_expect_eq(stats(&things).cached, 1u);
  cr_expect_not(sysref_get_not_zero(&t->sr), "cached: refused, and no misuse");
  cr_expect_eq(stats(&things).live, 0u, "the refusal took nothing");
  thing *again = make();
  cr_expect_eq(again, t);
  sysref_put(&again->sr);
}

// terminate runs with no library lock held: it may use the whole API.
namespace {
thing *g_victim;
struct {
  bool missed_self, foreach_ok, other_terminated;
  int visits;
  thing *fresh;
} g_reentry;
void use_library_in_terminate(thing *t) {
  if (t == g_victim) return;  // the nested terminate below
  g_reentry.missed_self = lookup(raw_id(t)) == nullptr;
  g_reentry.fresh = static_cast<thing *>(sysref_alloc(&things));
  if (g_reentry.fresh) activate(g_reentry.fresh);
  g_reentry.foreach_ok = sysref_foreach(&things, [](void *obj, void *) {
    auto *o = static_cast<thing *>(obj);
    g_reentry.visits++;
    return alive(o).load() == 1 ? 0 : 1;
  }, nullptr) == 0;
  sysref_put(&g_victim->sr);  // a nested terminate
  g_reentry.other_terminated = terminations(g_victim).load() == 1;
  struct sysref_stats s;
  sysref_stats(nullptr, &s);
}
}  // namespace

Test(sysref, terminate_may_call_the_library, .timeout = 20) {
  thing *t = make_active();
  g_victim = make_active();
  g_on_terminate = use_library_in_terminate;
  sysref_put(&t->sr);
  g_on_terminate = nullptr;
  cr_expect(g_reentry.missed_self);
  cr_assert_not_null(g_reentry.fresh, "sysref_alloc in terminate");
  cr_expect(g_reentry.foreach_ok, "foreach in terminate visited only active objects");
  cr_expect_eq(g_reentry.visits, 2, "the victim and the fresh object, not the terminating one");
  cr_expect(g_reentry.other_terminated, "a put in terminate terminates another object");
  cr_expect_eq(g_terminations.load(), 2);
  sysref_put(&g_reentry.fresh->sr);
  cr_expect_eq(stats(&things).live, 0u);
}

Test(sysref, a_class_without_terminate) {
  test_crew::pin_to(0);
  thing *t = make_active(&plain);
  sysref_put(&t->sr);
  struct sysref_stats s = stats(&plain);
  cr_expect_eq(s.live, 0u);
  cr_expect_eq(s.terminating, 0u);
  cr_expect_eq(s.cached, 1u);
  cr_expect_eq(g_terminations.load(), 0);
}

Test(sysref, a_failing_ctor_fails_the_alloc_with_its_errno) {
  g_fail_ctor = ENOTRECOVERABLE;
  for (int i = 0; i < 100; ++i) {
    errno = 0;
    cr_assert_null(sysref_alloc(&things));
    cr_assert_eq(errno, ENOTRECOVERABLE);
  }
  g_fail_ctor = 0;
  struct sysref_stats s = stats(&things);
  cr_expect_eq(s.allocs, 0u, "allocs counts only calls that returned an object");
  cr_expect_eq(s.constructions, 0u);
  cr_expect_eq(s.live, 0u);
  thing *t = make_active();
  sysref_put(&t->sr);
  cr_expect_eq(stats(&things).allocs, 1u);
}

// ---- misuse ----------------------------------------------------------------------

Test(sysref, a_put_on_a_given_back_object_aborts, .init = guard_aborts, .signal = SIGABRT) {
  thing *t = make();
  sysref_put(&t->sr);  // aborted creation: cached (unseen, so the memory stays)
  g_misuse_now = 1;
  sysref_put(&t->sr);
}

Test(sysref, activating_twice_aborts, .init = guard_aborts, .signal = SIGABRT) {
  thing *t = make_active();
  g_misuse_now = 1;
  sysref_activate(&t->sr);
}

Test(sysref, a_get_on_a_cached_object_aborts, .init = guard_aborts, .signal = SIGABRT) {
  thing *t = make_active();
  sysref_put(&t->sr);  // terminated, unseen: cached
  g_misuse_now = 1;
  sysref_get(&t->sr);
}

Test(sysref, activating_a_terminating_object_aborts, .init = guard_aborts, .signal = SIGABRT) {
  thing *t = make_active();
  g_on_terminate = [](thing *o) {
    g_misuse_now = 1;
    sysref_activate(&o->sr);
  };
  sysref_put(&t->sr);
}

namespace {
// After misuse, the class still works: n objects at once are distinct, go
// through their whole life cycle and terminate once each.
void expect_class_works(struct sysref_class *cls, const char *when) {
  std::vector<thing *> v;
  for (int i = 0; i < 32; ++i) v.push_back(make(cls));
  std::vector<thing *> sorted = v;
  std::sort(sorted.begin(), sorted.end());
  cr_expect(std::adjacent_find(sorted.begin(), sorted.end()) == sorted.end(),
            "%s: one object handed out twice", when);
  long before = g_terminations.load();
  for (thing *t : v) activate(t);
  for (thing *t : v) {
    thing *f = lookup(raw_id(t));
    cr_expect_eq(f, t, "%s: lookup", when);
    if (f) sysref_put(&f->sr);
  }
  for (thing *t : v) sysref_put(&t->sr);
  cr_expect_eq(g_terminations.load() - before, 32, "%s", when);
  for (thing *t : v) cr_expect_eq(terminations(t).load(), 1, "%s", when);
}
}  // namespace

// SYSREF_ON_ERROR=count: each misuse is one line naming the class and the
// object, the call does nothing harmful, and the class goes on working.
Test(sysref, misuse_is_reported_with_the_class_and_harms_nothing, .init = count_errors) {
  static struct sysref_class misused = thing_class("t.misused", &g_other_counts);
  test_crew::pin_to(0);
  // A put on a given-back object.
  thing *a = make(&misused);
  sysref_put(&a->sr);
  stderr_capture cap;
  sysref_put(&a->sr);
  std::string out = cap.text();
  cr_expect_eq(reports_about(out, "t.misused", a), 1u, "put on a cached object: [%s]", out.c_str());
  struct sysref_stats s = stats(&misused);
  cr_expect_eq(s.live, 0u, "the bad put changed nothing");
  cr_expect_leq(s.cached, 1u, "the object was not put into the cache twice");
  expect_consistent(s, "after the bad put");
  expect_class_works(&misused, "after a put on a cached object");

  // Activating an active object.
  thing *b = make_active(&misused);
  stderr_capture cap2;
  sysref_activate(&b->sr);
  out = cap2.text();
  cr_expect_eq(reports_about(out, "t.misused", b), 1u, "activate twice: [%s]", out.c_str());
  cr_expect_eq(terminations(b).load(), 0);
  thing *f = lookup(raw_id(b));
  cr_expect_eq(f, b, "still active after the second activate");
  if (f) sysref_put(&f->sr);
  sysref_put(&b->sr);
  cr_expect_leq(terminations(b).load(), 1, "never terminated twice");
  expect_consistent(stats(&misused), "after activating twice");
  expect_class_works(&misused, "after activating twice");

  // A get on a cached object.
  thing *c = make_active(&misused);
  sysref_put(&c->sr);
  cr_expect_eq(terminations(c).load(), 1);
  stderr_capture cap3;
  sysref_get(&c->sr);
  out = cap3.text();
  cr_expect_eq(reports_about(out, "t.misused", c), 1u, "get on a cached object: [%s]", out.c_str());
  cr_expect_eq(terminations(c).load(), 1);
  cr_expect_eq(stats(&misused).live, 0u, "the bad get made nothing live");
  expect_consistent(stats(&misused), "after the bad get");
  expect_class_works(&misused, "after a get on a cached object");
  cr_expect_eq(g_bad_terminates.load(), 0, "terminate only ever ran on active objects");
  cr_expect_eq(g_other_counts.bad_dtors.load(), 0);
}

// ---- statistics and classes ------------------------------------------------------------

Test(sysref, stats_add_up) {
  test_crew::pin_to(0);
  thing *a1 = make(), *a2 = make(), *a3 = make(), *a4 = make(), *a5 = make();
  thing *b1 = make(&others), *b2 = make(&others);
  activate(a2);
  activate(a3);
  activate(a5);
  activate(b1);
  g_on_terminate = hold_in_terminate;
  sysref_put(&a3->sr);  // terminating, held
  g_on_terminate = nullptr;
  sysref_put(&a4->sr);  // aborted: cached
  thing *f = lookup(raw_id(a5));  // hit: seen
  cr_assert_eq(f, a5);
  sysref_put(&f->sr);
  sysref_put(&a5->sr);  // terminated, destroyed
  f = lookup(raw_id(a2));  // hit
  cr_assert_eq(f, a2);
  sysref_put(&f->sr);
  cr_expect_null(lookup(raw_id(a1)));  // creating: miss, seen
  cr_expect_null(lookup(raw_id(a3)));  // terminating: miss, seen
  f = lookup(raw_id(b1));
  cr_assert_eq(f, b1);
  sysref_put(&f->sr);
  sysid_t unknown = std::max(raw_id(a1), raw_id(b2)) + 1000000000ull;
  cr_expect_null(lookup(unknown));

  struct sysref_stats a = stats(&things), b = stats(&others), all = stats(nullptr);
  cr_expect_eq(a.allocs, 5u);
  cr_expect_eq(a.creating, 1u);
  cr_expect_eq(a.active, 1u);
  cr_expect_eq(a.terminating, 1u);
  cr_expect_eq(a.live, 3u);
  cr_expect_eq(a.cached, 1u);
  cr_expect_eq(a.lookups, 4u);
  cr_expect_eq(a.lookup_misses, 2u);
  cr_expect_eq(a.retired, 1u);
  cr_expect_eq(a.constructions, 5u);
  cr_expect_eq(a.destructions, 1u);
  expect_consistent(a, "class a");
  cr_expect_eq(b.allocs, 2u);
  cr_expect_eq(b.creating, 1u);
  cr_expect_eq(b.active, 1u);
  cr_expect_eq(b.live, 2u);
  cr_expect_eq(b.lookups, 1u);
  cr_expect_eq(b.lookup_misses, 0u);
  expect_consistent(b, "class b");
  cr_expect_eq(all.live, a.live + b.live);
  cr_expect_eq(all.creating, a.creating + b.creating);
  cr_expect_eq(all.active, a.active + b.active);
  cr_expect_eq(all.terminating, a.terminating + b.terminating);
  cr_expect_eq(all.cached, a.cached + b.cached);
  cr_expect_eq(all.allocs, a.allocs + b.allocs);
  cr_expect_eq(all.retired, a.retired + b.retired);
  cr_expect_eq(all.constructions, a.constructions + b.constructions);
  cr_expect_eq(all.destructions, a.destructions + b.destructions);
  cr_expect_eq(all.lookups, a.lookups + b.lookups + 1, "the unknown sysid counts in the sums only");
  cr_expect_eq(all.lookup_misses, a.lookup_misses + b.lookup_misses + 1);

  sysref_put(&a1->sr);  // seen: retired
  sysref_put(&a2->sr);  // seen: retired
  drop_held();          // a3 seen: retired
  sysref_put(&b1->sr);  // seen: retired
  sysref_put(&b2->sr);  // unseen: cached
  a = stats(&things);
  b = stats(&others);
  cr_expect_eq(a.live, 0u);
  cr_expect_eq(a.retired, 4u);
  cr_expect_eq(a.destructions, 4u);
  cr_expect_eq(a.cached, 1u);
  cr_expect_eq(b.retired, 1u);
  cr_expect_eq(b.cached, 1u);
  expect_consistent(a, "class a at the end");
  expect_consistent(b, "class b at the end");
  cr_expect_eq(g_thing_counts.dtors.load(), 4);
  cr_expect_eq(g_other_counts.dtors.load(), 1);
  cr_expect_eq(g_thing_counts.bad_dtors.load() + g_other_counts.bad_dtors.load(), 0);
}

Test(sysref, bad_classes_are_refused_with_einval_and_a_line_naming_them) {
  static struct sysref_class bad[] = {
      {.name = nullptr, .objsize = sizeof(thing), .offset = offsetof(thing, sr)},
      {.name = "t.bad.objsize", .objsize = 0, .offset = 0},
      {.name = "t.bad.offset", .objsize = sizeof(thing), .offset = sizeof(thing) - sizeof(sysref::sysref) + 8},
      {.name = "t.bad.far", .objsize = sizeof(thing), .offset = 1u << 20},
      {.name = "t.bad.align", .objsize = sizeof(thing), .offset = offsetof(thing, sr) + 4},
      {.name = "t.bad.flags", .objsize = sizeof(thing), .offset = offsetof(thing, sr), .flags = 1},
  };
  for (auto &cls : bad) {
    for (int twice = 0; twice < 2; ++twice) {
      stderr_capture cap;
      errno = 0;
      void *p = sysref_alloc(&cls);
      int err = errno;
      std::string out = cap.text();
      const char *name = cls.name ? cls.name : "(no name)";
      cr_expect_null(p, "%s", name);
      cr_expect_eq(err, EINVAL, "%s: errno %d", name, err);
      cr_expect_neq(out.find("sysref: "), std::string::npos, "%s: no diagnostic", name);
      if (cls.name) cr_expect_neq(out.find(cls.name), std::string::npos, "%s: [%s]", name, out.c_str());
    }
  }
  thing *t = make_active();  // a good class is unaffected
  sysref_put(&t->sr);
  cr_expect_eq(stats(nullptr).allocs, 1u);
}
