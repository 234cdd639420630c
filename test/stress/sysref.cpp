// The SYSREF scenario: lookups and foreach walks against termination, the
// race of test_sysref.cpp (lookups_and_foreach_race_termination) as a plain
// executable, which is what the TSan flavour runs.
#include <cstddef>
#include <sysref/sysref.h>

#include "stress.hpp"

// Classes are designated-initialised as sysref(3) says, naming only the
// public fields: the private ones start out zero, which -Wextra would flag.
#pragma GCC diagnostic ignored "-Wmissing-field-initializers"

namespace stress {

namespace {

// An object: alive is 1 from just before its activation until its
// terminate; id is the sysid its owner recorded before activating it.
struct racer {
  uint64_t magic;
  int alive;
  sysid_t id;
  sysref::sysref sr;
};
constexpr uint64_t racer_magic = 0x5241434552524143ull;

std::atomic_ref<int> alive(racer *t) { return std::atomic_ref<int>(t->alive); }
std::atomic_ref<sysid_t> id_of(racer *t) { return std::atomic_ref<sysid_t>(t->id); }
// The sysid without marking it seen (sysref_sysid would): the private field.
sysid_t raw_id(const racer *t) {
  return std::atomic_ref<const sysid_t>(t->sr.sysid).load(std::memory_order_relaxed);
}

uint64_t lcg(uint64_t &s) {
  s = s * 6364136223846793005ull + 1442695040888963407ull;
  return s >> 33;
}

struct race {
  static constexpr unsigned nslots = 8, nids = 32;
  std::atomic<racer *> slot[nslots] = {};  // an owner's reference each
  std::atomic<sysid_t> ids[nids] = {};     // published sysids, fresh or stale
  std::atomic<unsigned> next_id{0};
  std::mutex held_lock;
  std::vector<racer *> held;  // references taken in terminate
  std::atomic<bool> stop{false};
  std::atomic<long> allocs{0}, alloc_failures{0}, aborted{0}, activations{0}, terminations{0},
      double_terminations{0}, bad_objects{0}, lookups{0}, hits{0}, bad_hits{0}, visits{0},
      bad_visits{0}, out_of_order{0}, passes{0}, bad_returns{0}, kills{0};

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
};
race *g_race;  // while the scenario runs: terminate runs only then

// The ctor and dtor may also run later (a reclaim in another scenario): their
// counts outlive the race.
struct {
  std::atomic<long> ctors{0}, dtors{0}, bad_dtors{0};
} g_racer_counts;

int racer_ctor(void *obj, void *, int) {
  auto *t = static_cast<racer *>(obj);
  t->magic = racer_magic;
  t->alive = 0;
  t->id = 0;
  g_racer_counts.ctors.fetch_add(1, std::memory_order_relaxed);
  return 0;
}

void racer_dtor(void *obj, void *) {
  auto *t = static_cast<racer *>(obj);
  if (t->magic != racer_magic || alive(t).load(std::memory_order_acquire) != 0)
    g_racer_counts.bad_dtors.fetch_add(1);
  t->magic = 0;
  g_racer_counts.dtors.fetch_add(1, std::memory_order_relaxed);
}

// Once per activation; every fourth keeps a reference for later ("work in
// flight"), which another thread drops.
void racer_terminate(void *obj) {
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

struct sysref_class racers = {
    .name = "stress.racer",
    .objsize = sizeof(racer),
    .offset = offsetof(racer, sr),
    .ctor = racer_ctor,
    .dtor = racer_dtor,
    .terminate = racer_terminate,
    .priv = nullptr,
    .flags = 0,
};

// Creates, activates (half of the sysids seen, half not), publishes and
// replaces objects; one creation in eight is aborted.
void owner(race &r, uint64_t seed) {
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
    progress();
  }
}

// Looks published sysids up: a hit must be alive, carry the sysid, and stay
// active while held, even when this thread drops its owner's reference.
void looker(race &r, uint64_t seed) {
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
    progress();
  }
}

struct walk {
  race *r;
  uint64_t seed;
  sysid_t last;
  bool first;
};

int visit(void *obj, void *arg) {
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

void walker(race &r, uint64_t seed) {
  while (!r.stop.load(std::memory_order_relaxed)) {
    walk w{&r, seed++, 0, true};
    if (sysref_foreach(&racers, visit, &w) != 0) r.bad_returns.fetch_add(1);
    r.passes.fetch_add(1, std::memory_order_relaxed);
    progress();
  }
}

}  // namespace

// Owners create, activate, publish and terminate objects (some creations
// aborted, half the sysids seen, a quarter of the terminates keeping a
// reference that an owner drops later); lookups of published sysids, fresh
// and stale, and foreach walks (which terminate objects too) run against
// that, on more threads than CPUs, signalled and moved by a signaller.
// Every lookup hit and every foreach callback must see an active object
// with the sysid it was found by; every activated object terminates once;
// at the end nothing is live.
void sysref_race() {
  race r;
  g_race = &r;
  struct sysref_stats s0{}, all0{};
  sysref_stats(&racers, &s0);
  sysref_stats(nullptr, &all0);
  const unsigned lookers = std::max(2u, ncpu());
  install_handler(count_signal);
  long sent, moved;
  {
    signaller sig(50us, signaller::signal_and_move);
    std::vector<std::thread> threads;
    auto enrolled = [&](auto fn) {
      threads.emplace_back([&sig, fn] {
        sig.enroll();
        fn();
        sig.leave();
      });
    };
    for (uint64_t i = 0; i < 2; ++i) enrolled([&r, i] { owner(r, 1 + i); });
    for (uint64_t i = 0; i < lookers; ++i) enrolled([&r, i] { looker(r, 100 + i); });
    enrolled([&r] { walker(r, 1000); });
    std::this_thread::sleep_until(deadline(1.5));
    r.stop.store(true);
    for (auto &t : threads) t.join();
    sent = sig.sent();
    moved = sig.moved();
  }
  for (unsigned k = 0; k < race::nslots; ++k) r.kill(k);
  while (r.drain()) {
  }
  g_race = nullptr;
  struct sysref_stats s{}, all{};
  sysref_stats(&racers, &s);
  sysref_stats(nullptr, &all);
  all.lookups -= all0.lookups;  // the counters of this run (a scenario may run twice)
  all.lookup_misses -= all0.lookup_misses;
  s.allocs -= s0.allocs;
  std::printf("  %u threads: %ld allocs (%ld aborted), %ld lookups (%ld hits), %ld foreach passes "
              "(%ld visits), %ld kills, %llu constructions, %llu retired; %ld signals, %ld moves\n",
              lookers + 3, r.allocs.load(), r.aborted.load(), r.lookups.load(), r.hits.load(),
              r.passes.load(), r.visits.load(), r.kills.load(), (ull)(s.constructions - s0.constructions),
              (ull)(s.retired - s0.retired), sent, moved);
  g_signals_handled.store(0);
  CHECK(r.alloc_failures.load() == 0, "%ld allocations failed", r.alloc_failures.load());
  CHECK(r.bad_objects.load() == 0, "%ld allocations returned an unconstructed or live object",
        r.bad_objects.load());
  CHECK(r.double_terminations.load() == 0, "%ld terminates of objects not active",
        r.double_terminations.load());
  CHECK(r.terminations.load() == r.activations.load(), "%ld activations, %ld terminates",
        r.activations.load(), r.terminations.load());
  CHECK(r.bad_hits.load() == 0, "%ld of %ld lookup hits saw an object not active or not theirs",
        r.bad_hits.load(), r.hits.load());
  CHECK(r.bad_visits.load() == 0, "%ld of %ld foreach visits saw an object not active",
        r.bad_visits.load(), r.visits.load());
  CHECK(r.out_of_order.load() == 0, "%ld visits out of sysid order", r.out_of_order.load());
  CHECK(r.bad_returns.load() == 0, "%ld foreach calls did not return 0", r.bad_returns.load());
  CHECK(r.hits.load() > 0 && r.visits.load() > 0, "no lookup hit (%ld) or no visit (%ld)",
        r.hits.load(), r.visits.load());
  CHECK(s.live == 0 && s.creating == 0 && s.active == 0 && s.terminating == 0,
        "after every put: live %llu creating %llu active %llu terminating %llu", (ull)s.live,
        (ull)s.creating, (ull)s.active, (ull)s.terminating);
  CHECK(s.allocs == static_cast<uint64_t>(r.allocs.load()), "stats allocs %llu, made %ld",
        (ull)s.allocs, r.allocs.load());
  CHECK(all.lookups == static_cast<uint64_t>(r.lookups.load()) &&
            all.lookup_misses == static_cast<uint64_t>(r.lookups.load() - r.hits.load()),
        "stats lookups %llu misses %llu; made %ld, %ld hits", (ull)all.lookups,
        (ull)all.lookup_misses, r.lookups.load(), r.hits.load());
  CHECK(s.constructions == static_cast<uint64_t>(g_racer_counts.ctors.load()) &&
            s.destructions == static_cast<uint64_t>(g_racer_counts.dtors.load()),
        "stats constructions %llu destructions %llu; ctor ran %ld, dtor %ld", (ull)s.constructions,
        (ull)s.destructions, g_racer_counts.ctors.load(), g_racer_counts.dtors.load());
  CHECK(s.constructions == s.cached + s.destructions, "constructions %llu, cached %llu, destructions %llu",
        (ull)s.constructions, (ull)s.cached, (ull)s.destructions);
  CHECK(g_racer_counts.bad_dtors.load() == 0, "%ld dtors of objects alive or unconstructed",
        g_racer_counts.bad_dtors.load());
}

}  // namespace stress
