// Shared by the kref and SYSREF suites (test_kref.cpp, test_sysref.cpp,
// test_sysref_index.cpp): the count-errors fixture, and the test objects with
// their classes, counts and the helpers that make, find and count them.
#pragma once
#include <criterion/criterion.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <sched.h>
#include <sysref/sysref.h>
#include <thread>
#include <unistd.h>
#include <vector>

namespace test_sysref {

inline void count_errors() { setenv("SYSREF_ON_ERROR", "count", 1); }

// =============================================================================
// SYSREF objects (sysref(3); the semantics: the SYSREF spec). The objcache of
// each class holds per-CPU state, so the suite runs in both per-CPU modes.
// Every test runs in a process of its own: each starts with fresh classes.
// =============================================================================

// A test object. The struct sysref sits inside, not first, so that an object
// pointer and a struct sysref pointer differ.
struct thing {
  uint64_t magic;   // the ctor's stamp: the object is constructed
  uint64_t serial;  // which construction of its class made it (1, 2, ...)
  int alive;        // 1 from just before activation until terminate (atomic_ref)
  int terminations; // terminate calls on this object (atomic_ref)
  sysid_t id;       // the sysid its owner recorded before activation (atomic_ref)
  sysref::sysref sr;
  char payload[24];
};
inline constexpr uint64_t built = 0x5359535245464f4bull;

inline std::atomic_ref<int> alive(thing *t) { return std::atomic_ref<int>(t->alive); }
inline std::atomic_ref<int> terminations(thing *t) { return std::atomic_ref<int>(t->terminations); }
inline std::atomic_ref<sysid_t> id_of(thing *t) { return std::atomic_ref<sysid_t>(t->id); }

// The sysid read from the struct itself. sysref_sysid would mark it seen
// (and the object would never be recycled); the field is private, read here
// only so that a test can know an id without being an outside observer.
inline sysid_t raw_id(const thing *t) {
  return std::atomic_ref<const sysid_t>(t->sr.sysid).load(std::memory_order_relaxed);
}

// What the ctor and dtor of one class did (the class's priv).
struct class_counts {
  std::atomic<long> ctors{0}, dtors{0}, bad_dtors{0};
  std::atomic<thing *> last_dtor{nullptr};
};
inline class_counts g_thing_counts, g_other_counts;

inline int g_fail_ctor = 0;  // errno value the ctor returns when nonzero

inline int thing_ctor(void *obj, void *priv, int) {
  if (g_fail_ctor) return g_fail_ctor;
  auto *t = static_cast<thing *>(obj);
  auto *c = static_cast<class_counts *>(priv);
  t->magic = built;
  t->serial = static_cast<uint64_t>(c->ctors.fetch_add(1) + 1);
  t->alive = 0;
  t->terminations = 0;
  t->id = 0;
  std::memset(t->payload, 0, sizeof t->payload);
  return 0;
}

inline void thing_dtor(void *obj, void *priv) {
  auto *t = static_cast<thing *>(obj);
  auto *c = static_cast<class_counts *>(priv);
  if (t->magic != built || alive(t).load() != 0) c->bad_dtors.fetch_add(1);
  t->magic = 0xdeadull;
  c->last_dtor.store(t);
  c->dtors.fetch_add(1);
}

// Terminate: alive 1 -> 0 (anything else is a terminate of an object that
// was never activated, or a second one), logged, then the test's hook. The
// hook runs only on the first: a hook that takes a reference, on a library
// that ran terminate again when it was dropped, would loop.
inline std::atomic<long> g_terminations{0}, g_bad_terminates{0};
inline std::atomic<pid_t> g_terminate_tid{0};
inline std::mutex g_log_lock;
inline std::vector<thing *> g_term_log;  // in the order terminate ran
inline void (*g_on_terminate)(thing *) = nullptr;

inline void thing_terminate(void *obj) {
  auto *t = static_cast<thing *>(obj);
  bool first = alive(t).exchange(0) == 1;
  terminations(t).fetch_add(1);
  g_terminations.fetch_add(1);
  g_terminate_tid.store(gettid());
  {
    std::lock_guard<std::mutex> g(g_log_lock);
    g_term_log.push_back(t);
  }
  if (!first) g_bad_terminates.fetch_add(1);
  else if (g_on_terminate) g_on_terminate(t);
}

// Hook: terminate takes a reference of its own, dropped later by the test.
inline std::vector<thing *> g_held;
inline void hold_in_terminate(thing *t) {
  sysref_get(&t->sr);
  g_held.push_back(t);
}
inline void drop_held() {
  std::vector<thing *> v;
  v.swap(g_held);
  for (thing *t : v) sysref_put(&t->sr);
  cr_expect_eq(g_bad_terminates.load(), 0,
               "terminate ran again (or on an object never activated) by the time the references "
               "taken in terminate were dropped");
}

// The suite's classes of things: the same ctor/dtor, their own counts.
constexpr struct sysref_class thing_class(const char *name, class_counts *counts,
                                          void (*terminate)(void *) = thing_terminate) {
  return {.name = name,
          .objsize = sizeof(thing),
          .offset = offsetof(thing, sr),
          .ctor = thing_ctor,
          .dtor = thing_dtor,
          .terminate = terminate,
          .priv = counts,
          .flags = 0,
          .sr_state = nullptr,
          .sr_reserved = {}};
}
inline struct sysref_class things = thing_class("t.thing", &g_thing_counts);
inline struct sysref_class others = thing_class("t.other", &g_other_counts);

inline thing *make(struct sysref_class *cls = &things) {
  errno = 0;
  auto *t = static_cast<thing *>(sysref_alloc(cls));
  cr_assert_not_null(t, "sysref_alloc(%s): %s", cls->name, std::strerror(errno));
  cr_assert_eq(t->magic, built, "sysref_alloc(%s) returned an unconstructed object", cls->name);
  cr_assert_eq(alive(t).load(), 0, "a new object is not alive");
  terminations(t).store(0);  // counted per use: a recycled object comes as it was given back
  return t;
}

// Records the id (unseen), marks the object alive, activates it.
inline void activate(thing *t) {
  id_of(t).store(raw_id(t));
  alive(t).store(1);
  sysref_activate(&t->sr);
}

inline thing *make_active(struct sysref_class *cls = &things) {
  thing *t = make(cls);
  activate(t);
  return t;
}

inline thing *lookup(sysid_t id) { return static_cast<thing *>(sysref_lookup(id)); }

inline struct sysref_stats stats(struct sysref_class *cls) {
  struct sysref_stats s;
  std::memset(&s, 0xff, sizeof s);
  cr_assert_eq(sysref_stats(cls, &s), 0, "sysref_stats(%s)", cls ? cls->name : "NULL");
  return s;
}

inline void expect_consistent(const struct sysref_stats &s, const char *when) {
  cr_expect_eq(s.live, s.creating + s.active + s.terminating,
               "%s: live %lu != creating %lu + active %lu + terminating %lu", when,
               (unsigned long)s.live, (unsigned long)s.creating, (unsigned long)s.active,
               (unsigned long)s.terminating);
  cr_expect_eq(s.constructions, s.live + s.cached + s.destructions,
               "%s: constructions %lu != live %lu + cached %lu + destructions %lu", when,
               (unsigned long)s.constructions, (unsigned long)s.live, (unsigned long)s.cached,
               (unsigned long)s.destructions);
  cr_expect_leq(s.lookup_misses, s.lookups, "%s", when);
  cr_expect_leq(s.retired, s.destructions, "%s", when);
}

}  // namespace test_sysref
