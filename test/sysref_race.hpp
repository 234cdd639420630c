// The SYSREF race, shared by the Criterion suite (test_sysref_index.cpp,
// lookups_and_foreach_race_termination) and the plain stress executable
// (stress/sysref.cpp, sysref-race, which is what the TSan flavour runs).
// Each brings its own harness: the threads and the storm they run under,
// how long, and how a failed check is reported.
//
// Owners create, activate, publish and terminate objects (some creations
// aborted, half the sysids seen, a quarter of the terminates keeping a
// reference that an owner drops later); lookups of published sysids, fresh
// and stale, and foreach walks (which terminate objects too) run against
// that. Every lookup hit and every foreach callback must see an active
// object with the sysid it was found by; every activated object terminates
// once; at the end nothing is live.
#pragma once

#include <algorithm>
#include <atomic>
#include <cstdarg>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <mutex>
#include <sched.h>
#include <string>
#include <sysref/sysref.h>
#include <vector>

namespace sysref_race {

// An object: alive is 1 from just before its activation until its
// terminate; id is the sysid its owner recorded before activating it. The
// struct sysref sits inside, not first, so that an object pointer and a
// struct sysref pointer differ.
struct racer {
  uint64_t magic;
  int alive;
  sysid_t id;
  sysref::sysref sr;
};
inline constexpr uint64_t racer_magic = 0x5241434552524143ull;

inline std::atomic_ref<int> alive(racer *t) { return std::atomic_ref<int>(t->alive); }
inline std::atomic_ref<sysid_t> id_of(racer *t) { return std::atomic_ref<sysid_t>(t->id); }
// The sysid without marking it seen (sysref_sysid would, and the object
// would never be recycled): the private field.
inline sysid_t raw_id(const racer *t) {
  return std::atomic_ref<const sysid_t>(t->sr.sysid).load(std::memory_order_relaxed);
}

inline uint64_t lcg(uint64_t &s) {
  s = s * 6364136223846793005ull + 1442695040888963407ull;
  return s >> 33;
}

// What the library's statistics said at one time.
struct snapshot {
  struct sysref_stats cls{}, all{};  // the racers class; every class
  bool ok = true;                    // both sysref_stats calls returned 0
};

struct race;
inline race *g_race;  // while a race exists: terminate runs only then

// The race: what the threads share, and what they counted. One at a time.
struct race {
  static constexpr unsigned nslots = 8, nids = 32;
  std::atomic<racer *> slot[nslots] = {};  // an owner's reference each
  std::atomic<sysid_t> ids[nids] = {};     // published sysids, fresh or stale
  std::atomic<unsigned> next_id{0};
  std::mutex held_lock;
  std::vector<racer *> held;  // references taken in terminate
  std::atomic<bool> stop{false};
  void (*on_round)() = nullptr;  // the harness's, after each round of work
  std::atomic<long> allocs{0}, alloc_failures{0}, aborted{0}, activations{0}, terminations{0},
      double_terminations{0}, bad_objects{0}, lookups{0}, hits{0}, bad_hits{0}, visits{0},
      bad_visits{0}, out_of_order{0}, passes{0}, bad_returns{0}, kills{0};
  snapshot before;  // the statistics when the race began (a scenario may run twice)

  race();
  ~race() { g_race = nullptr; }
  race(const race &) = delete;
  race &operator=(const race &) = delete;

  void kill(unsigned k) {
    if (racer *t = slot[k % nslots].exchange(nullptr)) {
      kills.fetch_add(1, std::memory_order_relaxed);
      sysref_put(&t->sr);
    }
  }
  // Drops the references terminate took; false if there were none.
  bool drain() {
    std::vector<racer *> v;
    {
      std::lock_guard<std::mutex> g(held_lock);
      v.swap(held);
    }
    for (racer *t : v) sysref_put(&t->sr);
    return !v.empty();
  }
  void round() {
    if (on_round) on_round();
  }
  // Once every thread has stopped: drops every reference left (the owners'
  // and those terminate took) and reads the statistics.
  snapshot end();
};

// The ctor and dtor may also run later (a reclaim in another scenario of the
// stress executable): their counts outlive any race.
struct racer_counts {
  std::atomic<long> ctors{0}, dtors{0}, bad_dtors{0};
};
inline racer_counts g_racer_counts;

inline int racer_ctor(void *obj, void *, int) {
  auto *t = static_cast<racer *>(obj);
  t->magic = racer_magic;
  t->alive = 0;
  t->id = 0;
  g_racer_counts.ctors.fetch_add(1, std::memory_order_relaxed);
  return 0;
}

inline void racer_dtor(void *obj, void *) {
  auto *t = static_cast<racer *>(obj);
  if (t->magic != racer_magic || alive(t).load(std::memory_order_acquire) != 0)
    g_racer_counts.bad_dtors.fetch_add(1);
  t->magic = 0;
  g_racer_counts.dtors.fetch_add(1, std::memory_order_relaxed);
}

// Once per activation; every fourth keeps a reference for later ("work in
// flight"), which another thread drops.
inline void racer_terminate(void *obj) {
  auto *t = static_cast<racer *>(obj);
  race &r = *g_race;
  if (alive(t).exchange(0, std::memory_order_acq_rel) != 1) {
    r.double_terminations.fetch_add(1);
    return;  // and take no reference: a library that terminates again on its put would loop
  }
  if (r.terminations.fetch_add(1, std::memory_order_relaxed) % 4 == 0) {
    sysref_get(&t->sr);
    std::lock_guard<std::mutex> g(r.held_lock);
    r.held.push_back(t);
  }
}

// Classes are designated-initialised as sysref(3) says, naming only the
// public fields: the private ones start out zero, which -Wextra would flag.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmissing-field-initializers"
inline struct sysref_class racers = {
    .name = "race.racer",
    .objsize = sizeof(racer),
    .offset = offsetof(racer, sr),
    .ctor = racer_ctor,
    .dtor = racer_dtor,
    .terminate = racer_terminate,
    .priv = nullptr,
    .flags = 0,
};
#pragma GCC diagnostic pop

inline snapshot take_snapshot() {
  snapshot s;
  s.ok = sysref_stats(&racers, &s.cls) == 0 && sysref_stats(nullptr, &s.all) == 0;
  return s;
}

inline race::race() : before(take_snapshot()) { g_race = this; }

inline snapshot race::end() {
  for (unsigned k = 0; k < nslots; ++k) kill(k);
  while (drain()) {
  }
  return take_snapshot();
}

// Creates, activates (half of the sysids seen, half not), publishes and
// replaces objects; one creation in eight is aborted, now and then with a
// temporary reference.
inline void owner(race &r, uint64_t seed) {
  while (!r.stop.load(std::memory_order_relaxed)) {
    uint64_t x = lcg(seed);
    auto *t = static_cast<racer *>(sysref_alloc(&racers));
    if (!t) {
      r.alloc_failures.fetch_add(1);
      continue;
    }
    r.allocs.fetch_add(1, std::memory_order_relaxed);
    if (t->magic != racer_magic || alive(t).load(std::memory_order_acquire) != 0)
      r.bad_objects.fetch_add(1);
    if (x % 8 == 0) {
      if (x % 16 == 0) {
        sysref_get(&t->sr);
        sysref_put(&t->sr);
      }
      sysref_put(&t->sr);
      r.aborted.fetch_add(1, std::memory_order_relaxed);
      continue;
    }
    sysid_t id = (x >> 4) % 2 ? sysref_sysid(&t->sr) : raw_id(t);
    id_of(t).store(id, std::memory_order_relaxed);
    alive(t).store(1, std::memory_order_release);
    r.activations.fetch_add(1, std::memory_order_relaxed);
    sysref_activate(&t->sr);
    r.ids[r.next_id.fetch_add(1, std::memory_order_relaxed) % race::nids].store(
        id, std::memory_order_relaxed);
    if (racer *old = r.slot[(x >> 8) % race::nslots].exchange(t)) sysref_put(&old->sr);
    if ((x >> 12) % 8 == 0) r.drain();
    r.round();
  }
}

// Looks published sysids up: a hit must be alive, carry the sysid, and stay
// active while held, even when this thread drops its owner's reference
// (maybe of this very object).
inline void looker(race &r, uint64_t seed) {
  while (!r.stop.load(std::memory_order_relaxed)) {
    uint64_t x = lcg(seed);
    sysid_t id = r.ids[x % race::nids].load(std::memory_order_relaxed);
    if (!id) {
      sched_yield();
      continue;
    }
    r.lookups.fetch_add(1, std::memory_order_relaxed);
    auto *t = static_cast<racer *>(sysref_lookup(id));
    if (!t) continue;
    r.hits.fetch_add(1, std::memory_order_relaxed);
    if (alive(t).load(std::memory_order_acquire) != 1 ||
        id_of(t).load(std::memory_order_relaxed) != id || t->magic != racer_magic)
      r.bad_hits.fetch_add(1);
    if (!sysref_get_not_zero(&t->sr)) r.bad_hits.fetch_add(1);
    else sysref_put(&t->sr);
    if ((x >> 8) % 16 == 0) r.kill(static_cast<unsigned>(x >> 12));
    if (alive(t).load(std::memory_order_acquire) != 1) r.bad_hits.fetch_add(1);
    sysref_put(&t->sr);
    r.round();
  }
}

struct walk {
  race *r;
  uint64_t seed;
  sysid_t last;
  bool first;
};

// A foreach callback: the object is active, carries its sysid, and comes in
// sysid order; one visit in eight terminates an object.
inline int visit(void *obj, void *arg) {
  auto *w = static_cast<walk *>(arg);
  auto *t = static_cast<racer *>(obj);
  race &r = *w->r;
  r.visits.fetch_add(1, std::memory_order_relaxed);
  sysid_t id = raw_id(t);
  if (alive(t).load(std::memory_order_acquire) != 1 ||
      id_of(t).load(std::memory_order_relaxed) != id || t->magic != racer_magic)
    r.bad_visits.fetch_add(1);
  if (!w->first && id <= w->last) r.out_of_order.fetch_add(1);
  w->first = false;
  w->last = id;
  uint64_t x = lcg(w->seed);
  if (x % 8 == 0) r.kill(static_cast<unsigned>(x >> 8));  // terminations during the walk
  return 0;
}

inline void walker(race &r, uint64_t seed) {
  while (!r.stop.load(std::memory_order_relaxed)) {
    walk w{&r, seed++, 0, true};
    if (sysref_foreach(&racers, visit, &w) != 0) r.bad_returns.fetch_add(1);
    r.passes.fetch_add(1, std::memory_order_relaxed);
    r.round();
  }
}

// The threads of a race: spawn(fn) runs fn on a thread of the harness's.
// Two owners, `lookers` lookers, one walker: lookers + 3 threads.
template <class Spawn>
void start(race &r, unsigned lookers, Spawn spawn) {
  for (uint64_t i = 0; i < 2; ++i) spawn([&r, i] { owner(r, 1 + i); });
  for (uint64_t i = 0; i < lookers; ++i) spawn([&r, i] { looker(r, 100 + i); });
  spawn([&r] { walker(r, 1000); });
}

// ---- the end-of-run accounting ---------------------------------------------------

// A check: whether it held, and what it says (with the numbers).
struct check {
  bool ok;
  std::string what;
};

inline std::string format(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
inline std::string format(const char *fmt, ...) {
  char buf[512];
  va_list ap;
  va_start(ap, fmt);
  std::vsnprintf(buf, sizeof buf, fmt, ap);
  va_end(ap);
  return buf;
}

using ull = unsigned long long;

// What the statistics of this run say: allocs, lookups, misses, retired
// and constructions counted since the race began; the states, the cached
// objects and the destructions as they stand.
struct tally {
  struct sysref_stats cls, all;
};

inline tally of_this_run(const race &r, const snapshot &after) {
  tally t{after.cls, after.all};
  t.cls.allocs -= r.before.cls.allocs;
  t.cls.retired -= r.before.cls.retired;
  t.cls.constructions -= r.before.cls.constructions;
  t.all.lookups -= r.before.all.lookups;
  t.all.lookup_misses -= r.before.all.lookup_misses;
  return t;
}

// Every check of the race, once its threads stopped and end() returned
// `after`: the harness reports the ones that failed.
inline std::vector<check> checks(const race &r, const snapshot &after) {
  const long allocs = r.allocs.load(), lookups = r.lookups.load(), hits = r.hits.load(),
             visits = r.visits.load();
  const tally t = of_this_run(r, after);
  const struct sysref_stats &s = after.cls, &d = t.cls;  // as they stand; of this run
  return {
      {r.before.ok && after.ok, "sysref_stats returned 0"},
      {r.alloc_failures.load() == 0, format("%ld allocations failed", r.alloc_failures.load())},
      {r.bad_objects.load() == 0,
       format("%ld allocations returned an unconstructed or live object", r.bad_objects.load())},
      {r.double_terminations.load() == 0,
       format("%ld terminates of objects not active (terminate ran twice, or on an object never "
              "activated)",
              r.double_terminations.load())},
      {r.terminations.load() == r.activations.load(),
       format("every activated object terminates once: %ld activations, %ld terminates",
              r.activations.load(), r.terminations.load())},
      {r.bad_hits.load() == 0,
       format("%ld of %ld lookup hits saw an object not active or not theirs", r.bad_hits.load(),
              hits)},
      {r.bad_visits.load() == 0,
       format("%ld of %ld foreach visits saw an object not active", r.bad_visits.load(), visits)},
      {r.out_of_order.load() == 0,
       format("%ld foreach visits out of sysid order", r.out_of_order.load())},
      {r.bad_returns.load() == 0,
       format("%ld foreach calls did not return 0", r.bad_returns.load())},
      {hits > 0 && visits > 0, format("no lookup hit (%ld) or no visit (%ld)", hits, visits)},
      {lookups > hits, format("no lookup missed: %ld lookups, %ld hits", lookups, hits)},
      {r.kills.load() > 0 && r.aborted.load() > 0,
       format("no kill (%ld) or no aborted creation (%ld)", r.kills.load(), r.aborted.load())},
      {s.live == 0 && s.creating == 0 && s.active == 0 && s.terminating == 0,
       format("after every put: live %llu creating %llu active %llu terminating %llu", (ull)s.live,
              (ull)s.creating, (ull)s.active, (ull)s.terminating)},
      {s.live == s.creating + s.active + s.terminating,
       format("live %llu != creating %llu + active %llu + terminating %llu", (ull)s.live,
              (ull)s.creating, (ull)s.active, (ull)s.terminating)},
      {s.constructions == s.live + s.cached + s.destructions,
       format("constructions %llu != live %llu + cached %llu + destructions %llu",
              (ull)s.constructions, (ull)s.live, (ull)s.cached, (ull)s.destructions)},
      {s.lookup_misses <= s.lookups && s.retired <= s.destructions,
       format("class lookups %llu misses %llu; retired %llu destructions %llu", (ull)s.lookups,
              (ull)s.lookup_misses, (ull)s.retired, (ull)s.destructions)},
      {d.allocs == static_cast<uint64_t>(allocs),
       format("stats allocs %llu, made %ld", (ull)d.allocs, allocs)},
      {t.all.lookups == static_cast<uint64_t>(lookups) &&
           t.all.lookup_misses == static_cast<uint64_t>(lookups - hits),
       format("stats lookups %llu misses %llu; made %ld, %ld hits", (ull)t.all.lookups,
              (ull)t.all.lookup_misses, lookups, hits)},
      {d.retired > 0, format("no seen object was retired (%llu)", (ull)d.retired)},
      {d.constructions < d.allocs,
       format("unseen objects were not recycled: %llu constructions for %llu allocs",
              (ull)d.constructions, (ull)d.allocs)},
      {s.constructions == static_cast<uint64_t>(g_racer_counts.ctors.load()) &&
           s.destructions == static_cast<uint64_t>(g_racer_counts.dtors.load()),
       format("stats constructions %llu destructions %llu; ctor ran %ld, dtor %ld",
              (ull)s.constructions, (ull)s.destructions, g_racer_counts.ctors.load(),
              g_racer_counts.dtors.load())},
      {g_racer_counts.bad_dtors.load() == 0,
       format("%ld dtors of objects alive or unconstructed", g_racer_counts.bad_dtors.load())},
  };
}

}  // namespace sysref_race
