// The one table of runtime options. Every SYSREF_* variable is read here,
// once, and nowhere else; the rest of the library asks opts().
#include <csignal>
#include <cstdlib>
#include <cstring>

#include "os.hpp"

namespace sysref::os {
namespace {

bool parse_long(const char *s, long *out) {
  if (!s || !*s) return false;
  char *end = nullptr;
  long v = std::strtol(s, &end, 10);
  if (*end != '\0') return false;
  *out = v;
  return true;
}

bool parse_count(const char *s, unsigned *out) {
  long n;
  if (!parse_long(s, &n) || n < 0 || n > 1024) return false;
  *out = static_cast<unsigned>(n);
  return true;
}

// Milliseconds, from min up to an hour.
bool parse_ms(const char *s, long min, unsigned *out) {
  long n;
  if (!parse_long(s, &n) || n < min || n > 3600000) return false;
  *out = static_cast<unsigned>(n);
  return true;
}

// A signal by number, or by name with or without "SIG" (USR2, SIGUSR2);
// 0 or "none": no signal.
bool parse_signal(const char *s, int *out) {
  static constexpr struct {
    const char *name;
    int number;
  } names[] = {{"none", 0}, {"USR1", SIGUSR1}, {"USR2", SIGUSR2}, {"HUP", SIGHUP},
               {"PROF", SIGPROF}, {"WINCH", SIGWINCH}, {"URG", SIGURG}};
  long n;
  if (parse_long(s, &n)) {
    if (n < 0 || n >= SIGRTMAX) return false;
    *out = static_cast<int>(n);
    return true;
  }
  if (!std::strncmp(s, "SIG", 3)) s += 3;
  for (const auto &e : names)
    if (!std::strcmp(s, e.name)) return *out = e.number, true;
  return false;
}

void complain(const char *name, const char *value) {
  write_stderr("sysref: ignoring ");
  write_stderr(name);
  write_stderr("=");
  write_stderr(value);
  write_stderr(": not a value it takes\n");
}

using setter = bool (*)(options &, const char *);

struct entry {
  const char *name;
  setter set;
};

// Name, parser. Documented in sysref(7); keep the two in step.
constexpr entry table[] = {
    {"SYSREF_ON_ERROR",
     [](options &o, const char *v) {
       if (!std::strcmp(v, "abort")) o.error_mode = on_error::abort_process;
       else if (!std::strcmp(v, "count")) o.error_mode = on_error::count;
       else return false;
       return true;
     }},
    {"SYSREF_PERCPU",
     [](options &o, const char *v) {
       if (!std::strcmp(v, "rseq")) o.percpu = percpu_choice::rseq;
       else if (!std::strcmp(v, "lock")) o.percpu = percpu_choice::lock;
       else if (!std::strcmp(v, "auto")) o.percpu = percpu_choice::automatic;
       else return false;
       return true;
     }},
    {"SYSREF_FAULT",
     [](options &o, const char *v) { return parse_long(v, &o.fault_after); }},
    {"SYSREF_SPARE_LOW", [](options &o, const char *v) { return parse_count(v, &o.spare_low); }},
    {"SYSREF_SPARE_HIGH", [](options &o, const char *v) { return parse_count(v, &o.spare_high); }},
    {"SYSREF_REAP_INTERVAL_MS", [](options &o, const char *v) { return parse_ms(v, 1, &o.reap_interval_ms); }},
    {"SYSREF_REAP_THREAD",
     [](options &o, const char *v) {
       if (!std::strcmp(v, "1")) o.reap_thread = true;
       else if (!std::strcmp(v, "0")) o.reap_thread = false;
       else return false;
       return true;
     }},
    {"SYSREF_DECAY_MS", [](options &o, const char *v) { return parse_ms(v, 0, &o.decay_ms); }},
    {"SYSREF_MAG_CONTENTION", [](options &o, const char *v) { return parse_count(v, &o.mag_contention); }},
    {"SYSREF_STATS",
     [](options &o, const char *v) {
       using f = options::stats_format;
       if (!std::strcmp(v, "0") || !std::strcmp(v, "off")) o.stats = f::off;
       else if (!std::strcmp(v, "1") || !std::strcmp(v, "text")) o.stats = f::text;
       else if (!std::strcmp(v, "json")) o.stats = f::json;
       else return false;
       return true;
     }},
    {"SYSREF_STATS_FILE",
     [](options &o, const char *v) {
       size_t n = std::strlen(v);
       if (n >= sizeof o.stats_file) return false;
       std::memcpy(o.stats_file, v, n + 1);
       return true;
     }},
    {"SYSREF_STATS_SIGNAL", [](options &o, const char *v) { return parse_signal(v, &o.stats_signal); }},
    {"SYSREF_STATS_INTERVAL_MS", [](options &o, const char *v) { return parse_ms(v, 0, &o.stats_interval_ms); }},
};

options load() {
  options o;
  for (const entry &e : table) {
    const char *v = std::getenv(e.name);
    if (v && !e.set(o, v)) complain(e.name, v);
  }
  if (o.spare_low > o.spare_high) o.spare_high = o.spare_low;
  return o;
}

}  // namespace

const options &opts() {
  // getenv neither allocates nor locks, so this is safe on any path; a race
  // between two first callers computes the same value twice.
  static constinit options cached{};
  static constinit std::atomic<int> state{0};
  if (state.load(std::memory_order_acquire) == 2) return cached;
  int expected = 0;
  if (state.compare_exchange_strong(expected, 1, std::memory_order_acq_rel)) {
    cached = load();
    state.store(2, std::memory_order_release);
  } else {
    while (state.load(std::memory_order_acquire) != 2) {
    }
  }
  return cached;
}

}  // namespace sysref::os
