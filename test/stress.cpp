// Concurrency stress for the slab layer as a plain executable: Criterion's
// runner cannot start under ThreadSanitizer (Criterion issue #274), so this
// is what the TSan flavour runs, and the normal build runs it in both
// per-CPU modes too. Exit status 0 only if every check held.
#include <atomic>
#include <cstdio>
#include <cstring>
#include <random>
#include <sched.h>
#include <sysref/kmalloc_obj.h>
#include <sysref/objcache.h>
#include <sysref/os.h>
#include <thread>
#include <vector>

namespace {

std::atomic<int> g_failures{0};

#define CHECK(cond, ...)                                          \
  do {                                                            \
    if (!(cond)) {                                                \
      std::fprintf(stderr, "FAIL %s:%d: %s: ", __FILE__, __LINE__, #cond); \
      std::fprintf(stderr, __VA_ARGS__);                          \
      std::fputc('\n', stderr);                                   \
      g_failures.fetch_add(1);                                    \
    }                                                             \
  } while (0)

unsigned ncpu() { return std::thread::hardware_concurrency(); }

void move_to(unsigned cpu) {
  cpu_set_t set;
  CPU_ZERO(&set);
  CPU_SET(cpu % ncpu(), &set);
  sched_setaffinity(0, sizeof set, &set);
}

kmalloc_zone_stats stats_of(kmalloc_zone_t *z) {
  kmalloc_zone_stats s{};
  kmalloc_obj_zone_stats(z, &s);
  return s;
}

// Producers allocate and stamp; consumers check the stamp and free. Objects
// cross CPUs all the time: remote frees, detached slabs, refills.
void producers_and_consumers() {
  kmalloc_zone_t *z = kmalloc_obj_zone_create("stress.pc", 112, 0, 0);
  kmalloc_obj_set_spare(z, 2, 4);
  constexpr int pairs = 2;
  constexpr long per_producer = 150000;
  constexpr size_t ring = 512;
  struct channel {
    std::atomic<long *> slot[ring];
  };
  std::vector<channel> channels(pairs);
  for (auto &c : channels)
    for (auto &s : c.slot) s.store(nullptr);
  std::atomic<long> bad{0};
  std::vector<std::thread> threads;
  for (int p = 0; p < pairs; ++p) {
    threads.emplace_back([&, p] {
      move_to(static_cast<unsigned>(p));
      for (long i = 0; i < per_producer; ++i) {
        auto *o = static_cast<long *>(kmalloc_obj(z, 0));
        for (int k = 0; k < 14; ++k) o[k] = i ^ (long{p} << 40) ^ k;
        auto &slot = channels[p].slot[i % ring];
        while (slot.load(std::memory_order_acquire)) sched_yield();
        slot.store(o, std::memory_order_release);
      }
    });
    threads.emplace_back([&, p] {
      move_to(static_cast<unsigned>(p + 1));
      for (long i = 0; i < per_producer; ++i) {
        auto &slot = channels[p].slot[i % ring];
        long *o;
        while (!(o = slot.load(std::memory_order_acquire))) sched_yield();
        slot.store(nullptr, std::memory_order_release);
        for (int k = 0; k < 14; ++k)
          if (o[k] != (i ^ (long{p} << 40) ^ k)) bad.fetch_add(1);
        kfree_obj(o, z);
        if (i % 1000 == 0) move_to(static_cast<unsigned>(p + i / 1000));
      }
    });
  }
  for (auto &t : threads) t.join();
  kmalloc_zone_stats s = stats_of(z);
  CHECK(bad.load() == 0, "%ld objects arrived damaged", bad.load());
  CHECK(s.allocs == pairs * per_producer, "allocs %llu", (unsigned long long)s.allocs);
  CHECK(s.live == 0, "live %llu", (unsigned long long)s.live);
  CHECK(s.errors == 0, "errors %llu", (unsigned long long)s.errors);
  kmalloc_obj_zone_destroy(z);
}

// Threads keep a private working set that grows and shrinks at random in
// several zones, migrating as they go; a stats reader runs alongside.
void churn_with_a_reader() {
  kmalloc_zone_t *zones[3] = {kmalloc_obj_zone_create("stress.a", 24, 0, 0),
                              kmalloc_obj_zone_create("stress.b", 640, 64, 0),
                              kmalloc_obj_zone_create("stress.c", 5000, 0, 0)};
  std::atomic<bool> stop{false};
  std::thread reader([&] {
    while (!stop.load()) {
      for (auto *z : zones) {
        kmalloc_zone_stats s = stats_of(z);
        CHECK(s.allocs >= s.frees, "allocs %llu < frees %llu", (unsigned long long)s.allocs,
              (unsigned long long)s.frees);
      }
      sched_yield();
    }
  });
  std::vector<std::thread> workers;
  for (unsigned t = 0; t < 3; ++t)
    workers.emplace_back([&, t] {
      std::mt19937 rng(t);
      struct held {
        unsigned char *p;
        int zone;
        unsigned char tag;
      };
      std::vector<held> mine;
      for (long i = 0; i < 60000; ++i) {
        if (i % 256 == 0) move_to(t + static_cast<unsigned>(i / 256));
        if (mine.empty() || (rng() % 100) < 52) {
          int zi = static_cast<int>(rng() % 3);
          auto *p = static_cast<unsigned char *>(kmalloc_obj(zones[zi], 0));
          auto tag = static_cast<unsigned char>(rng());
          std::memset(p, tag, 24);
          mine.push_back({p, zi, tag});
        } else {
          size_t k = rng() % mine.size();
          held h = mine[k];
          mine[k] = mine.back();
          mine.pop_back();
          for (int b = 0; b < 24; ++b) CHECK(h.p[b] == h.tag, "byte %d of %p", b, (void *)h.p);
          kfree_obj(h.p, zones[h.zone]);
        }
      }
      for (held &h : mine) kfree_obj(h.p, zones[h.zone]);
    });
  for (auto &w : workers) w.join();
  stop.store(true);
  reader.join();
  for (auto *z : zones) {
    kmalloc_zone_stats s = stats_of(z);
    CHECK(s.live == 0 && s.errors == 0, "live %llu errors %llu", (unsigned long long)s.live,
          (unsigned long long)s.errors);
    kmalloc_obj_zone_destroy(z);
  }
}

// Zones created and destroyed on several threads at once (the zone of zones
// and the per-CPU slot allocator under contention); nothing leaks.
void zone_lifecycles() {
  struct sysref_os_stats before, after;
  sysref_os_stats(&before);
  std::vector<std::thread> threads;
  for (unsigned t = 0; t < 3; ++t)
    threads.emplace_back([t] {
      for (int round = 0; round < 150; ++round) {
        move_to(t + static_cast<unsigned>(round));
        kmalloc_zone_t *z = kmalloc_obj_zone_create("stress.life", 32 + 16 * t, 0, 0);
        CHECK(z != nullptr, "round %d", round);
        if (!z) return;
        std::vector<void *> v;
        for (int i = 0; i < 300; ++i) v.push_back(kmalloc_obj(z, 0));
        for (void *p : v) kfree_obj(p, z);
        kmalloc_obj_zone_destroy(z);
      }
    });
  for (auto &t : threads) t.join();
  sysref_os_stats(&after);
  CHECK(after.mapped - after.metadata == before.mapped - before.metadata,
        "data bytes before %llu after %llu", (unsigned long long)(before.mapped - before.metadata),
        (unsigned long long)(after.mapped - after.metadata));
}

// Object caches under concurrency: producers get on one CPU and consumers put
// on another (magazines cross CPUs through the depot), a reader takes stats
// and reclaims meanwhile, and a small limit makes gets wait for puts.
std::atomic<long> g_built{0}, g_unbuilt{0};
int build_obj(void *obj, void *, int) {
  static_cast<uint64_t *>(obj)[0] = 0xc0ffee;
  g_built.fetch_add(1);
  return 0;
}
void unbuild_obj(void *obj, void *) {
  auto *w = static_cast<uint64_t *>(obj);
  CHECK(w[0] == 0xc0ffee, "dtor of an unconstructed object %p", obj);
  w[0] = 0;
  g_unbuilt.fetch_add(1);
}

void caches_across_cpus(size_t limit) {
  objcache_t *oc = objcache_create("stress.oc", 96, 0, build_obj, unbuild_obj, nullptr, limit, 0);
  constexpr size_t ring = 256;
  constexpr long per_producer = 100000;
  struct channel {
    std::atomic<uint64_t *> slot[ring];
  };
  std::vector<channel> ch(2);
  for (auto &c : ch)
    for (auto &s : c.slot) s.store(nullptr);
  std::atomic<bool> stop{false};
  std::thread reader([&] {
    while (!stop.load()) {
      struct objcache_stats s{};
      objcache_stats(oc, &s);
      CHECK(s.gets >= s.puts, "gets %llu < puts %llu", (unsigned long long)s.gets,
            (unsigned long long)s.puts);
      objcache_reclaim(oc);
      sched_yield();
    }
  });
  std::vector<std::thread> threads;
  for (int p = 0; p < 2; ++p) {
    threads.emplace_back([&, p] {
      move_to(static_cast<unsigned>(p));
      for (long i = 0; i < per_producer; ++i) {
        auto *o = static_cast<uint64_t *>(objcache_get(oc, 0));
        CHECK(o[0] == 0xc0ffee, "got an unconstructed object");
        o[1] = static_cast<uint64_t>(i);
        auto &slot = ch[p].slot[i % ring];
        while (slot.load(std::memory_order_acquire)) sched_yield();
        slot.store(o, std::memory_order_release);
      }
    });
    threads.emplace_back([&, p] {
      move_to(static_cast<unsigned>(p + 1));
      for (long i = 0; i < per_producer; ++i) {
        auto &slot = ch[p].slot[i % ring];
        uint64_t *o;
        while (!(o = slot.load(std::memory_order_acquire))) sched_yield();
        slot.store(nullptr, std::memory_order_release);
        CHECK(o[1] == static_cast<uint64_t>(i), "object %ld damaged", i);
        objcache_put(oc, o);
      }
    });
  }
  for (auto &t : threads) t.join();
  stop.store(true);
  reader.join();
  struct objcache_stats s{};
  objcache_stats(oc, &s);
  CHECK(s.gets == 2 * per_producer && s.live == 0, "gets %llu live %llu",
        (unsigned long long)s.gets, (unsigned long long)s.live);
  CHECK(!limit || s.limit_waits > 0 || s.ctor_calls <= limit, "limit %zu never bit", limit);
  objcache_destroy(oc);
  CHECK(g_built.load() == g_unbuilt.load(), "built %ld, destructed %ld", g_built.load(),
        g_unbuilt.load());
}

}  // namespace

int main() {
  producers_and_consumers();
  churn_with_a_reader();
  zone_lifecycles();
  caches_across_cpus(0);
  caches_across_cpus(64);  // a limit smaller than the ring: gets wait for puts
  int f = g_failures.load();
  std::printf("stress: %s\n", f ? "FAILED" : "all checks held");
  return f ? 1 : 0;
}
