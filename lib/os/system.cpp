// Machine facts and small kernel services: page size, CPU ids, futexes,
// random seeds, and diagnostics written with write(2).
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <fcntl.h>
#include <linux/futex.h>
#include <linux/membarrier.h>
#include <sched.h>
#include <sys/random.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "os.hpp"

namespace sysref::os {
namespace {

// Parses "0-3,5,7-9" (the kernel's cpu list format) and returns max id + 1.
unsigned parse_cpu_list(const char *s) {
  unsigned best = 0, cur = 0;
  bool have = false;
  for (;; ++s) {
    if (*s >= '0' && *s <= '9') {
      cur = cur * 10 + static_cast<unsigned>(*s - '0');
      have = true;
      continue;
    }
    if (have && cur + 1 > best) best = cur + 1;
    cur = 0;
    have = false;
    if (*s == '\0' || *s == '\n') return best;
  }
}

unsigned read_possible_cpus() {
  unsigned n = 0;
  int fd = ::open("/sys/devices/system/cpu/possible", O_RDONLY | O_CLOEXEC);
  if (fd >= 0) {
    char buf[256];
    ssize_t r = ::read(fd, buf, sizeof buf - 1);
    ::close(fd);
    if (r > 0) {
      buf[r] = '\0';
      n = parse_cpu_list(buf);
    }
  }
  // Without the sysfs file: the highest CPU in the affinity mask, from the
  // raw system call. Not sysconf(_SC_NPROCESSORS_CONF): its fallbacks open
  // directories and files with malloc, and this runs inside the first malloc
  // of a preloaded program.
  if (!n) {
    unsigned long mask[1024 / (8 * sizeof(unsigned long))] = {};
    long r = ::syscall(SYS_sched_getaffinity, 0, sizeof mask, mask);
    for (long i = 0; i < r / static_cast<long>(sizeof(unsigned long)); ++i)
      if (mask[i]) n = static_cast<unsigned>(i * 64 + 64 - __builtin_clzl(mask[i]));
  }
  return n ? n : 1;
}

constinit std::atomic<size_t> g_page{0};
constinit std::atomic<unsigned> g_cpus{0};

size_t format_hex(char *out, uintptr_t v) {
  char tmp[2 + 16];
  size_t n = 0;
  do {
    tmp[n++] = "0123456789abcdef"[v & 15];
    v >>= 4;
  } while (v);
  out[0] = '0';
  out[1] = 'x';
  for (size_t i = 0; i < n; ++i) out[2 + i] = tmp[n - 1 - i];
  return n + 2;
}

void compose(char *buf, size_t cap, const char *what, const char *detail, const void *ptr) {
  size_t len = 0;
  auto put = [&](const char *s) {
    while (*s && len + 1 < cap) buf[len++] = *s++;
  };
  put("sysref: ");
  put(what);
  if (detail) {
    put(": ");
    put(detail);
  }
  if (ptr && len + 20 < cap) {
    put(" ");
    len += format_hex(buf + len, reinterpret_cast<uintptr_t>(ptr));
  }
  put("\n");
  buf[len] = '\0';
}

}  // namespace

size_t page_size() {
  size_t p = g_page.load(std::memory_order_relaxed);
  if (!p) {
    p = static_cast<size_t>(::sysconf(_SC_PAGESIZE));
    g_page.store(p, std::memory_order_relaxed);
  }
  return p;
}

unsigned cpu_count() {
  unsigned n = g_cpus.load(std::memory_order_relaxed);
  if (!n) {
    n = read_possible_cpus();
    g_cpus.store(n, std::memory_order_relaxed);
  }
  return n;
}

unsigned current_cpu() {
  int c = ::sched_getcpu();
  unsigned n = cpu_count();
  return c < 0 ? 0 : static_cast<unsigned>(c) % n;
}

uint64_t random_seed() {
  uint64_t v = 0;
  if (::getrandom(&v, sizeof v, GRND_NONBLOCK) != sizeof v) {
    timespec ts{};
    ::clock_gettime(CLOCK_MONOTONIC, &ts);
    v = static_cast<uint64_t>(ts.tv_nsec) * 0x9e3779b97f4a7c15ull ^ reinterpret_cast<uintptr_t>(&v);
  }
  return v | 1;  // never zero: zero is what fresh memory holds
}

uint64_t coarse_now_ns() {
  timespec ts{};
  ::clock_gettime(CLOCK_MONOTONIC_COARSE, &ts);
  return static_cast<uint64_t>(ts.tv_sec) * 1000000000ull + static_cast<uint64_t>(ts.tv_nsec);
}

void sleep_ms(unsigned ms) {
  timespec ts{static_cast<time_t>(ms / 1000), static_cast<long>(ms % 1000) * 1000000L};
  while (::nanosleep(&ts, &ts) != 0 && errno == EINTR) {
  }
}

void yield_cpu() { ::sched_yield(); }

bool rseq_fence_register() {
  return ::syscall(SYS_membarrier, MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED_RSEQ, 0, 0) == 0;
}

bool rseq_fence(unsigned cpu) {
  return ::syscall(SYS_membarrier, MEMBARRIER_CMD_PRIVATE_EXPEDITED_RSEQ, MEMBARRIER_CMD_FLAG_CPU,
                   static_cast<int>(cpu)) == 0;
}

void futex_wait(std::atomic<uint32_t> *word, uint32_t expected) {
  ::syscall(SYS_futex, reinterpret_cast<uint32_t *>(word), FUTEX_WAIT_PRIVATE, expected, nullptr,
            nullptr, 0);
}

void futex_wait_for(std::atomic<uint32_t> *word, uint32_t expected, unsigned ms) {
  timespec ts{static_cast<time_t>(ms / 1000), static_cast<long>(ms % 1000) * 1000000L};
  ::syscall(SYS_futex, reinterpret_cast<uint32_t *>(word), FUTEX_WAIT_PRIVATE, expected, &ts, nullptr,
            0);
}

void futex_wake(std::atomic<uint32_t> *word, int n) {
  ::syscall(SYS_futex, reinterpret_cast<uint32_t *>(word), FUTEX_WAKE_PRIVATE, n, nullptr, nullptr,
            0);
}

constinit thread_local unsigned t_locks_held = 0;

void lock::slow_acquire() {
  // Spin briefly: critical sections here are short, a sleep costs microseconds.
  for (int i = 0; i < 64; ++i) {
    uint32_t c = 0;
    if (word_.load(std::memory_order_relaxed) == 0 &&
        word_.compare_exchange_weak(c, 1, std::memory_order_acquire))
      return;
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#endif
  }
  while (word_.exchange(2, std::memory_order_acquire) != 0) futex_wait(&word_, 2);
}

void write_stderr(const char *msg) {
  size_t len = std::strlen(msg);
  while (len) {
    ssize_t w = ::write(STDERR_FILENO, msg, len);
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0) return;
    msg += w;
    len -= static_cast<size_t>(w);
  }
}

void report_error(const char *what, const char *detail, const void *ptr) {
  if (opts().error_mode == on_error::abort_process) fatal(what, detail, ptr);
  int saved = errno;
  char buf[256];
  compose(buf, sizeof buf, what, detail, ptr);
  write_stderr(buf);
  errno = saved;
}

void fatal(const char *what, const char *detail, const void *ptr) {
  char buf[256];
  compose(buf, sizeof buf, what, detail, ptr);
  write_stderr(buf);
  std::abort();
}

}  // namespace sysref::os
