// The stress executable: the scenario table, the command line, the watchdog
// (what it is and how it is run: stress.hpp).
#include <cstdlib>
#include <sysref/percpu.h>

#include "stress.hpp"

namespace stress {

std::atomic<int> g_failures{0};
double g_time_scale = 1.0;
std::atomic<const char *> g_scenario{nullptr};
std::atomic<int64_t> g_scenario_start{0};
std::atomic<int64_t> g_progress{0};  // ns since the scenario started, at the latest progress

// A scenario that has not ended after limit_s seconds is hung (a deadlock):
// say which, and when its threads last made progress, then exit with 3.
void start_watchdog(int limit_s) {
  std::thread([limit_s] {
    for (;;) {
      std::this_thread::sleep_for(200ms);
      const char *name = g_scenario.load();
      if (!name) continue;
      int64_t ran = now_ns() - g_scenario_start.load();
      if (ran < int64_t{limit_s} * 1000000000) continue;
      char msg[256];
      int n = std::snprintf(
          msg, sizeof msg,
          "stress: scenario %s hung: not done after %d s (mode %s); its threads last "
          "made progress %.3f s after it started\n",
          name, limit_s, sysref_percpu_mode(), static_cast<double>(g_progress.load()) / 1e9);
      size_t len = std::min(static_cast<size_t>(std::max(n, 0)), sizeof msg - 1);
      [[maybe_unused]] ssize_t written = write(2, msg, len);
      _exit(3);
    }
  }).detach();
}

namespace {

struct scenario {
  const char *name;
  void (*run)();
};

constexpr scenario scenarios[] = {
    {"producers-and-consumers", producers_and_consumers},
    {"churn-with-a-reader", churn_with_a_reader},
    {"zone-lifecycles", zone_lifecycles},
    {"caches-across-cpus", [] { caches_across_cpus(0); }},
    // A limit smaller than the ring: gets wait for puts.
    {"caches-at-a-limit", [] { caches_across_cpus(64); }},
    {"false-double-free", signalled_batches},
    {"lost-remote-frees", bounced_producer},
    {"malloc-cross-thread", malloc_across_threads},
    {"dtor-reentry", reentrant_dtors},
    {"signal-safety", signal_safety},
    {"sysref-race", sysref_race},
};

}  // namespace
}  // namespace stress

int main(int argc, char **argv) {
  using namespace stress;
  // Before any library call: the library reads its options once.
  setenv("SYSREF_ON_ERROR", "count", 0);
  if (const char *s = std::getenv("STRESS_TIME_SCALE")) g_time_scale = std::max(0.01, std::atof(s));
  int watchdog_s = under_tsan ? 180 : 60;
  if (const char *s = std::getenv("STRESS_WATCHDOG_S")) watchdog_s = std::max(1, std::atoi(s));

  std::vector<const scenario *> chosen;
  for (int i = 1; i < argc; ++i) {
    if (!std::strcmp(argv[i], "--list")) {
      for (const scenario &s : scenarios) std::printf("%s\n", s.name);
      return 0;
    }
    const scenario *found = nullptr;
    for (const scenario &s : scenarios)
      if (!std::strcmp(argv[i], s.name)) found = &s;
    if (!found) {
      std::fprintf(stderr, "stress: no scenario %s (stress --list names them)\n", argv[i]);
      return 2;
    }
    chosen.push_back(found);
  }
  if (chosen.empty())
    for (const scenario &s : scenarios) chosen.push_back(&s);

  std::printf("stress: mode %s, %u CPUs%s\n", sysref_percpu_mode(), ncpu(),
              under_tsan ? ", ThreadSanitizer" : "");
  start_watchdog(watchdog_s);
  for (const scenario *s : chosen) {
    std::printf("%s\n", s->name);
    std::fflush(stdout);
    int failures_before = g_failures.load();
    g_progress.store(0);
    g_scenario_start.store(now_ns());
    g_scenario.store(s->name);
    s->run();
    g_scenario.store(nullptr);
    std::printf("  %s in %.2f s\n", g_failures.load() == failures_before ? "ok" : "FAILED",
                static_cast<double>(now_ns() - g_scenario_start.load()) / 1e9);
    std::fflush(stdout);
  }
  int f = g_failures.load();
  std::printf("stress: %s\n", f ? "FAILED" : "all checks held");
  return f ? 1 : 0;
}
