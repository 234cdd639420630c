// The process as the report layer sees it: resident memory, page faults,
// clocks, and the files reports go to. Plain system calls, no allocation.
#include <cerrno>
#include <fcntl.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#include "os.hpp"

extern "C" char *program_invocation_short_name;  // glibc, set before main

namespace sysref::os {
namespace {

constinit std::atomic<uint64_t> g_started{0};

uint64_t read_number(const char *&p) {
  while (*p == ' ') ++p;
  uint64_t v = 0;
  while (*p >= '0' && *p <= '9') v = v * 10 + static_cast<uint64_t>(*p++ - '0');
  return v;
}

}  // namespace

uint64_t resident_bytes() {
  int fd = ::open("/proc/self/statm", O_RDONLY | O_CLOEXEC);
  if (fd < 0) return 0;
  char buf[128];
  ssize_t n;
  do n = ::read(fd, buf, sizeof buf - 1);
  while (n < 0 && errno == EINTR);
  ::close(fd);
  if (n <= 0) return 0;
  buf[n] = '\0';
  const char *p = buf;
  read_number(p);  // size
  return read_number(p) * page_size();  // resident pages
}

uint64_t minor_faults() {
  rusage ru{};
  if (::getrusage(RUSAGE_SELF, &ru) != 0) return 0;
  return static_cast<uint64_t>(ru.ru_minflt);
}

uint64_t now_ns() {
  timespec ts{};
  ::clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<uint64_t>(ts.tv_sec) * 1000000000ull + static_cast<uint64_t>(ts.tv_nsec);
}

uint64_t started_ns() { return g_started.load(std::memory_order_relaxed); }

void mark_started() {
  if (g_started.load(std::memory_order_relaxed)) return;
  uint64_t expected = 0;
  g_started.compare_exchange_strong(expected, now_ns(), std::memory_order_relaxed);
}

int process_id() { return static_cast<int>(::getpid()); }

const char *program_name() {
  const char *n = program_invocation_short_name;
  return n && *n ? n : "?";
}

int open_append(const char *path) {
  int fd;
  do fd = ::open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
  while (fd < 0 && errno == EINTR);
  return fd < 0 ? -errno : fd;
}

int write_all(int fd, const void *buf, size_t len) {
  auto *p = static_cast<const char *>(buf);
  while (len) {
    ssize_t w = ::write(fd, p, len);
    if (w < 0 && errno == EINTR) continue;
    if (w < 0) return -errno;
    if (w == 0) return -EIO;
    p += w;
    len -= static_cast<size_t>(w);
  }
  return 0;
}

void close_fd(int fd) { ::close(fd); }

}  // namespace sysref::os
