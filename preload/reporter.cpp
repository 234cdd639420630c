// The report triggers, only when SYSREF_STATS is set: at exit (init.cpp's
// destructor calls report_at_exit), on the signal SYSREF_STATS_SIGNAL
// (default SIGUSR2) and every SYSREF_STATS_INTERVAL_MS (a sample). The
// signal handler only sets a flag and wakes the reporter thread with a
// futex; that thread gathers and writes, outside any handler.
#include <atomic>
#include <cerrno>
#include <csignal>
#include <fcntl.h>
#include <pthread.h>
#include <unistd.h>

#include "../lib/os/os.hpp"
#include "shim.hpp"

namespace sysref::preload {
namespace {

constinit std::atomic<uint32_t> g_wake{0};       // futex word: bumped by every wake-up
constinit std::atomic<bool> g_signalled{false};  // a report was asked for by the signal
constinit bool g_thread_wanted = false;          // signal installed or samples due
constinit std::atomic<bool> g_exit_done{false};
// The reporter thread is writing: the exit report waits for it, so that it
// is the last thing in the file (seq_cst pairs with g_exit_done, Dekker-like).
constinit std::atomic<bool> g_busy{false};
// Reports without SYSREF_STATS_FILE go to a copy of stderr made at start:
// programs such as ls close fd 2 in an atexit handler, before the report.
constinit int g_fd = STDERR_FILENO;

report::format format() {
  return os::opts().stats == os::options::stats_format::json ? report::format::json : report::format::text;
}

void write_report(report::reason r) {
  const char *file = os::opts().stats_file;
  if (file[0]) report::write_path(file, format(), r);
  else if (report::write(g_fd, format(), r) == -EBADF && g_fd != STDERR_FILENO)
    report::write(STDERR_FILENO, format(), r);  // the program closed our copy
}

void write_sample() {
  const char *file = os::opts().stats_file;
  if (file[0]) report::write_sample_path(file);
  else if (report::write_sample(g_fd) == -EBADF && g_fd != STDERR_FILENO)
    report::write_sample(STDERR_FILENO);
}

// Async-signal-safe: an atomic store, an atomic add and a futex system call.
void on_signal(int) {
  int saved = errno;
  g_signalled.store(true, std::memory_order_release);
  g_wake.fetch_add(1, std::memory_order_release);
  os::futex_wake(&g_wake, 1);
  errno = saved;
}

// What the reporter thread writes, unless the exit report has begun.
void from_thread(void (*write)()) {
  g_busy.store(true);
  if (!g_exit_done.load()) write();
  g_busy.store(false);
}

void *reporter_main(void *) {
  const unsigned interval = os::opts().stats_interval_ms;
  uint64_t next = interval ? os::coarse_now_ns() / 1000000 + interval : 0;
  for (;;) {
    uint32_t seen = g_wake.load(std::memory_order_acquire);
    if (g_exit_done.load()) return nullptr;
    if (g_signalled.exchange(false, std::memory_order_acq_rel)) {
      from_thread([] { write_report(report::reason::signal); });
      continue;
    }
    if (!interval) {
      os::futex_wait(&g_wake, seen);
      continue;
    }
    uint64_t now = os::coarse_now_ns() / 1000000;
    if (now >= next) {
      from_thread(write_sample);
      next += interval;
      if (next <= now) next = now + interval;  // fell behind: no burst of samples
      continue;
    }
    os::futex_wait_for(&g_wake, seen, static_cast<unsigned>(next - now));
  }
  return nullptr;
}

// The thread takes no signals (the program's handlers run on its own
// threads) and is detached: it never keeps the process from exiting.
void start_thread() {
  sigset_t all, old;
  sigfillset(&all);
  pthread_sigmask(SIG_SETMASK, &all, &old);
  pthread_attr_t attr;
  pthread_attr_init(&attr);
  pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
  pthread_t t;
  if (pthread_create(&t, &attr, reporter_main, nullptr) != 0)
    os::write_stderr("sysref: cannot start the statistics thread: no signal reports or samples\n");
  pthread_attr_destroy(&attr);
  pthread_sigmask(SIG_SETMASK, &old, nullptr);
}

// Only where the program left the signal's default action.
bool install_signal(int sig) {
  struct sigaction old{};
  if (sig <= 0 || sigaction(sig, nullptr, &old) != 0) return false;
  if (!(old.sa_flags & SA_SIGINFO) && old.sa_handler != SIG_DFL) return false;
  if ((old.sa_flags & SA_SIGINFO) && old.sa_sigaction) return false;
  struct sigaction sa{};
  sa.sa_handler = on_signal;
  sa.sa_flags = SA_RESTART;
  sigemptyset(&sa.sa_mask);
  return sigaction(sig, &sa, nullptr) == 0;
}

}  // namespace

void start_reporting() {
  const os::options &o = os::opts();
  if (o.stats == os::options::stats_format::off) return;
  if (!o.stats_file[0]) {
    int fd = fcntl(STDERR_FILENO, F_DUPFD_CLOEXEC, 10);
    if (fd >= 0) g_fd = fd;
  }
  bool signal = install_signal(o.stats_signal);
  g_thread_wanted = signal || o.stats_interval_ms > 0;
  if (g_thread_wanted) start_thread();
}

// The child of a fork has no reporter thread: it gets its own.
void restart_after_fork() {
  g_busy.store(false);  // the parent's reporter thread did not come along
  if (g_thread_wanted) start_thread();
}

void report_at_exit() {
  if (os::opts().stats == os::options::stats_format::off) return;
  if (g_exit_done.exchange(true)) return;
  while (g_busy.load()) os::yield_cpu();  // a sample being written finishes first
  write_report(report::reason::exit);
}

}  // namespace sysref::preload
