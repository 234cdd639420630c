// Shared by the Criterion suites: a crew of worker threads run under a storm
// of CPU moves and signals, the conditions in which the abort and retry
// paths of restartable sequences (and the lock mode's slot locks) are hit.
#pragma once
#include <criterion/criterion.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <csignal>
#include <cstdint>
#include <ctime>
#include <pthread.h>
#include <sched.h>
#include <thread>
#include <unistd.h>
#include <vector>

namespace test_crew {

using steady = std::chrono::steady_clock;
inline steady::time_point after_ms(int ms) { return steady::now() + std::chrono::milliseconds(ms); }

inline void on_sigusr1(int) {}

// Runs worker threads under a storm. With moves, a thread of its own moves
// each targeted worker to another CPU every move_us (sched_setaffinity on
// its tid, wherever the worker is in its work). With signal_us, each
// targeted worker gets SIGUSR1 every signal_us from a timer of its own (an
// empty SA_RESTART handler): a timer interrupt lands on any instruction of
// the worker, as a signal sent from another thread here rarely does. Both
// abort restartable sequences; only a move makes the retry run on the other
// CPU.
class crew {
 public:
  crew(bool moves, unsigned signal_us, unsigned move_us = 50)
      : signal_us_(signal_us), move_us_(move_us) {
    if (signal_us) {
      struct sigaction sa {};
      sa.sa_handler = on_sigusr1;
      sa.sa_flags = SA_RESTART;
      sigemptyset(&sa.sa_mask);
      sigaction(SIGUSR1, &sa, nullptr);
    }
    if (moves) storm_ = std::thread([this] { storm(); });
  }
  crew(const crew &) = delete;
  crew &operator=(const crew &) = delete;
  ~crew() { finish(); }

  // fn runs on a new thread; it should return soon after stopping().
  template <class F>
  void spawn(F fn, bool target = true) {
    int i = count_.load(std::memory_order_relaxed);
    cr_assert_lt(i, max_threads);
    member &m = members_[i];
    m.target = target;
    unsigned signal_us = target ? signal_us_ : 0;
    threads_.emplace_back([&m, fn, signal_us]() mutable {
      timer_t timer{};
      bool armed = signal_us && arm_timer(signal_us, &timer);
      m.tid.store(gettid(), std::memory_order_release);
      fn();
      m.tid.store(0, std::memory_order_release);
      if (armed) timer_delete(timer);
    });
    count_.store(i + 1, std::memory_order_release);
  }
  bool stopping() const { return stop_.load(std::memory_order_relaxed); }
  // Moves made so far (each sched_setaffinity that may migrate a worker).
  uint64_t moves() const { return moves_.load(std::memory_order_acquire); }
  // Ends the moves first, then the workers.
  void finish() {
    storm_stop_.store(true);
    if (storm_.joinable()) storm_.join();
    stop_.store(true);
    for (auto &t : threads_)
      if (t.joinable()) t.join();
  }

 private:
  static constexpr int max_threads = 16;
  struct member {
    std::atomic<pid_t> tid{0};
    bool target = true;
  };
  // SIGUSR1 to the calling thread every us microseconds.
  static bool arm_timer(unsigned us, timer_t *out) {
    struct sigevent ev {};
    ev.sigev_notify = SIGEV_THREAD_ID;
    ev.sigev_signo = SIGUSR1;
    ev._sigev_un._tid = gettid();  // sigev_notify_thread_id, which glibc 2.36 lacks
    if (timer_create(CLOCK_MONOTONIC, &ev, out) != 0) return false;
    struct itimerspec its {};
    its.it_value.tv_nsec = its.it_interval.tv_nsec = static_cast<long>(us) * 1000;
    return timer_settime(*out, 0, &its, nullptr) == 0;
  }
  void storm() {
    unsigned ncpu = std::max(1u, std::thread::hardware_concurrency()), round = 0;
    while (!storm_stop_.load(std::memory_order_relaxed)) {
      int n = count_.load(std::memory_order_acquire);
      for (int i = 0; i < n; ++i) {
        member &m = members_[i];
        pid_t tid = m.tid.load(std::memory_order_acquire);
        if (!tid || !m.target) continue;
        cpu_set_t set;
        CPU_ZERO(&set);
        CPU_SET((static_cast<unsigned>(i) + round) % ncpu, &set);
        moves_.fetch_add(1, std::memory_order_release);  // before: a reader may not miss it
        sched_setaffinity(tid, sizeof set, &set);
      }
      ++round;
      std::this_thread::sleep_for(std::chrono::microseconds(move_us_));
    }
  }

  unsigned signal_us_, move_us_;
  member members_[max_threads];
  std::atomic<int> count_{0};
  std::vector<std::thread> threads_;
  std::atomic<bool> stop_{false}, storm_stop_{false};
  std::atomic<uint64_t> moves_{0};
  std::thread storm_;
};

// Checks statistics snapshots taken while `threads` workers each hold at
// most one object: a snapshot may count one object too many per move the
// crew made while it was read (objcache(3), kmalloc_obj(3)), and one move
// may be in flight. Without moves the bound is exact.
class live_bound {
 public:
  live_bound(const crew &c, bool moves, uint64_t threads) : c_(c), moves_(moves), threads_(threads) {}
  // Takes a snapshot with read() and returns it, noting whether it is over.
  template <class Read>
  auto snapshot(Read read) {
    uint64_t before = c_.moves();
    auto s = read();
    uint64_t moved = moves_ ? c_.moves() - before + 1 : 0;
    if (s.live > threads_ + moved && over_++ == 0) {
      first_live_ = s.live;
      first_moves_ = moved;
    }
    return s;
  }
  void expect_none_over(const char *how) const {
    cr_expect_eq(over_, 0u,
                 "%s: %lu snapshots showed more live objects than exist plus moves (first: %lu live, "
                 "%lu threads, %lu moves)",
                 how, static_cast<unsigned long>(over_), static_cast<unsigned long>(first_live_),
                 static_cast<unsigned long>(threads_), static_cast<unsigned long>(first_moves_));
  }

 private:
  const crew &c_;
  bool moves_;
  uint64_t threads_, over_ = 0, first_live_ = 0, first_moves_ = 0;
};

// Pins the calling thread to one CPU (cpu modulo the CPU count).
inline void pin_to(unsigned cpu) {
  cpu_set_t set;
  CPU_ZERO(&set);
  CPU_SET(cpu % std::max(1u, std::thread::hardware_concurrency()), &set);
  sched_setaffinity(0, sizeof set, &set);
}

// Pins the calling thread to cpu, which must exist, and checks it runs there.
inline void move_to(unsigned cpu) {
  pin_to(cpu);
  cr_assert_eq(sched_getcpu(), static_cast<int>(cpu), "could not move to CPU %u", cpu);
}

}  // namespace test_crew
