// Concurrency stress as a plain executable: Criterion's runner cannot start
// under ThreadSanitizer (Criterion issue #274), so this is what the TSan
// flavour runs, and the normal build runs it in both per-CPU modes too.
//
//   stress              every scenario, in order
//   stress NAME...      only the scenarios named (`stress --list` names them)
//
// Exit status: 0 if every check held, 1 if one failed, 2 for a bad argument,
// 3 if the watchdog found a scenario hung (it prints which one, and when its
// threads last made progress). Environment (the test's own, not the
// library's): STRESS_WATCHDOG_S (default 60 s, 180 s under TSan),
// STRESS_TIME_SCALE (multiplies the time each scenario runs; default 1).
// SYSREF_ON_ERROR defaults to `count` here, so that a false error shows up
// as a failed check with numbers rather than as an abort.
//
// The scenarios after the first five reproduce the patterns of reported
// defects (see shared/repro): each runs for a fixed time rather than a fixed
// count, so a slow build (sanitizers) runs fewer iterations, not longer.
//
// The files: stress.hpp (this: what the scenarios share), main.cpp (the
// scenario table, arguments, the watchdog), and one file per layer of
// scenarios: slab.cpp, objcache.cpp, kmalloc.cpp (with the census of the
// kmalloc layer), signals.cpp (signal safety across all three), sysref.cpp
// (lookups and foreach against termination).
#pragma once

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <csignal>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <mutex>
#include <pthread.h>
#include <sched.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sysref/kmalloc_obj.h>
#include <sysref/objcache.h>
#include <thread>
#include <time.h>
#include <unistd.h>
#include <vector>

namespace stress {

using namespace std::chrono_literals;
using steady = std::chrono::steady_clock;

#if defined(__SANITIZE_THREAD__)
inline constexpr bool under_tsan = true;
#else
inline constexpr bool under_tsan = false;
#endif

// Checks that failed so far, over the whole run (defined in main.cpp).
extern std::atomic<int> g_failures;

#define CHECK(cond, ...)                                          \
  do {                                                            \
    if (!(cond)) {                                                \
      std::fprintf(stderr, "FAIL %s:%d: %s: ", __FILE__, __LINE__, #cond); \
      std::fprintf(stderr, __VA_ARGS__);                          \
      std::fputc('\n', stderr);                                   \
      ::stress::g_failures.fetch_add(1);                          \
    }                                                             \
  } while (0)

using ull = unsigned long long;

// Asked once: hardware_concurrency() reads /sys on every call.
inline unsigned ncpu() {
  static const unsigned n = std::max(1u, std::thread::hardware_concurrency());
  return n;
}

inline void move_to(unsigned cpu) {
  cpu_set_t set;
  CPU_ZERO(&set);
  CPU_SET(cpu % ncpu(), &set);
  sched_setaffinity(0, sizeof set, &set);
}

inline kmalloc_zone_stats stats_of(kmalloc_zone_t *z) {
  kmalloc_zone_stats s{};
  kmalloc_obj_zone_stats(z, &s);
  return s;
}

inline struct objcache_stats stats_of(objcache_t *oc) {
  struct objcache_stats s{};
  objcache_stats(oc, &s);
  return s;
}

// A waiting allocation (SR_WAITOK) must not fail: if one does, say which and
// stop here rather than crash on the NULL a few lines later.
template <class T>
T *must(T *p, const char *what) {
  if (!p) {
    std::fprintf(stderr, "FAIL: %s returned NULL: %s\n", what, std::strerror(errno));
    std::fflush(stdout);
    _exit(1);
  }
  return p;
}

// ---- time, progress and the watchdog -----------------------------------------

inline int64_t now_ns() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(steady::now().time_since_epoch())
      .count();
}

extern double g_time_scale;  // STRESS_TIME_SCALE

// When a scenario that runs for `seconds` (scaled by STRESS_TIME_SCALE) ends.
inline steady::time_point deadline(double seconds) {
  return steady::now() + std::chrono::duration_cast<steady::duration>(
                             std::chrono::duration<double>(seconds * g_time_scale));
}

extern std::atomic<const char *> g_scenario;
extern std::atomic<int64_t> g_scenario_start;
extern std::atomic<int64_t> g_progress;  // ns since the scenario started, at the latest progress

// Threads of a scenario call this after each round of work: a hang report
// then says how long the scenario ran before it stopped moving.
inline void progress() {
  g_progress.store(now_ns() - g_scenario_start.load(std::memory_order_relaxed),
                   std::memory_order_relaxed);
}

// A scenario that has not ended after limit_s seconds is hung (a deadlock):
// say which, and when its threads last made progress, then exit with 3.
void start_watchdog(int limit_s);  // main.cpp

// ---- signals -------------------------------------------------------------------

inline void install_handler(void (*fn)(int)) {
  struct sigaction sa{};
  sa.sa_handler = fn;
  sa.sa_flags = SA_RESTART;
  sigemptyset(&sa.sa_mask);
  sigaction(SIGUSR1, &sa, nullptr);
}

// A handler that only counts (false-double-free, malloc-cross-thread).
inline std::atomic<long> g_signals_handled{0};
inline void count_signal(int) { g_signals_handled.fetch_add(1, std::memory_order_relaxed); }

// Sends SIGUSR1 to the enrolled threads in turn, one every `period`, until
// destroyed; with signal_and_move, also pins each target to the next CPU as
// it signals it, so the target is migrated wherever it happens to be (a thread
// moving itself migrates only inside sched_setaffinity). A thread leaves
// before it returns: pthread_kill needs a live thread, and the lock held
// around it keeps the target from leaving.
class signaller {
 public:
  enum mode { signal_only, signal_and_move };
  explicit signaller(std::chrono::microseconds period, mode m = signal_only)
      : period_(period), move_(m == signal_and_move), thread_([this] { run(); }) {}
  ~signaller() {
    stop_.store(true);
    thread_.join();
  }
  signaller(const signaller &) = delete;
  signaller &operator=(const signaller &) = delete;

  // The calling thread is signalled (and moved) from now on. It also yields
  // to the signaller: at a lower priority its wake-ups preempt the workers,
  // otherwise on a busy machine they come a few per millisecond at best.
  void enroll() {
    setpriority(PRIO_PROCESS, 0, 10);  // this thread only (Linux)
    std::lock_guard<std::mutex> g(m_);
    targets_.push_back({pthread_self(), gettid()});
  }
  void leave() {
    std::lock_guard<std::mutex> g(m_);
    pthread_t self = pthread_self();
    targets_.erase(std::find_if(targets_.begin(), targets_.end(),
                                [&](const target &t) { return pthread_equal(t.thread, self); }));
  }
  long sent() const { return sent_.load(); }
  long moved() const { return moved_.load(); }

 private:
  struct target {
    pthread_t thread;
    pid_t tid;
  };

  void run() {
    // Sleeps of tens of microseconds, not the default 50 us of slack.
    prctl(PR_SET_TIMERSLACK, 1UL, 0UL, 0UL, 0UL);
    auto ns = std::chrono::nanoseconds(period_).count();
    timespec pause{static_cast<time_t>(ns / 1000000000), static_cast<long>(ns % 1000000000)};
    size_t next = 0;
    unsigned cpu = 0;
    while (!stop_.load(std::memory_order_relaxed)) {
      {
        std::lock_guard<std::mutex> g(m_);
        if (!targets_.empty()) {
          const target &t = targets_[next++ % targets_.size()];
          if (move_) {
            cpu_set_t set;
            CPU_ZERO(&set);
            CPU_SET(cpu++ % ncpu(), &set);
            if (sched_setaffinity(t.tid, sizeof set, &set) == 0)
              moved_.fetch_add(1, std::memory_order_relaxed);
          }
          if (pthread_kill(t.thread, SIGUSR1) == 0) sent_.fetch_add(1, std::memory_order_relaxed);
        }
      }
      nanosleep(&pause, nullptr);
    }
  }

  std::chrono::microseconds period_;
  bool move_;
  std::mutex m_;
  std::vector<target> targets_;
  std::atomic<bool> stop_{false};
  std::atomic<long> sent_{0}, moved_{0};
  std::thread thread_;  // last: starts once the members above exist
};

// Stamps for sr_malloc blocks (of at least 16 bytes): the size and a tag at
// the start, the tag again in the last 8 bytes (where they do not overlap
// the start); the consumer checks both before the free.
struct block_stamp {
  static void put(void *p, size_t size, uint64_t tag) {
    auto *w = static_cast<uint64_t *>(p);
    w[0] = size;
    w[1] = tag;
    if (size >= 24) std::memcpy(static_cast<char *>(p) + size - 8, &tag, 8);
  }
  static bool holds(void *p, size_t size, uint64_t tag) {
    auto *w = static_cast<uint64_t *>(p);
    uint64_t last = tag;
    if (size >= 24) std::memcpy(&last, static_cast<char *>(p) + size - 8, 8);
    return w[0] == size && w[1] == tag && last == tag;
  }
};

// ---- a recount of the kmalloc layer ------------------------------------------------
// Per size class: objects handed out (objcache live), slabs left partial or
// full, bytes the class zone holds; large blocks live; bad pointers seen.

struct kmalloc_census {
  struct cls {
    uint64_t live, zone_live, partial, full, bytes_mapped, errors;
  };
  std::vector<cls> classes;
  uint64_t large_live_bytes, errors, data_mapped;
};

// After a reclaim: objects cached in magazines count as live in the slabs.
kmalloc_census take_census();

// Everything allocated since `before` was freed: after a reclaim (every
// cached object back to its slab, kept large mappings unmapped) no class
// holds more objects or more partial/full slabs than it did, and the data
// bytes mapped grew by no more than the class zones' own empty slabs.
void check_census(const kmalloc_census &before, const char *who);

// ---- the scenarios, by layer -----------------------------------------------------

// slab.cpp
void producers_and_consumers();
void churn_with_a_reader();
void zone_lifecycles();
void signalled_batches();  // false-double-free
void bounced_producer();   // lost-remote-frees

// objcache.cpp
void caches_across_cpus(size_t limit);
void reentrant_dtors();  // dtor-reentry

// kmalloc.cpp
void malloc_across_threads();

// signals.cpp
void signal_safety();

// sysref.cpp
void sysref_race();

}  // namespace stress
