// Writing reports: one at a time under the report lock, gathered into a
// model and printed into memory the library maps for itself (kept for the
// next report), then written with write(2). No malloc anywhere on the way.
#include <cerrno>

#include "../os/os.hpp"
#include "report.hpp"

namespace sysref::report {
namespace {

constexpr size_t region_bytes = size_t{512} << 10;  // the model, then the text

constinit os::lock g_report_lock;
constinit char *g_region = nullptr;  // under the lock

size_t model_bytes() {
  size_t page = os::page_size();
  return (sizeof(model) + page - 1) & ~(page - 1);
}

// The region, mapped on the first report (lock held); nullptr + ENOMEM.
char *region() {
  static_assert(sizeof(model) < region_bytes / 4, "the model outgrew the report region");
  if (!g_region) g_region = static_cast<char *>(os::map(region_bytes, os::page_size(), os::use::metadata));
  return g_region;
}

// "%p" becomes the pid; the rest is copied. False if it does not fit.
bool expand(const char *path, char *out, size_t cap) {
  buffer b{out, 0, cap - 1, false};
  for (const char *s = path; *s; ++s) {
    if (s[0] == '%' && s[1] == 'p') {
      b.put_i64(os::process_id());
      ++s;
    } else {
      b.put_char(*s);
    }
  }
  out[b.len] = '\0';
  return !b.overflow;
}

enum class what : uint8_t { text, json, sample };

int emit(int fd, what w, reason r) {
  if (fd < 0) return -EBADF;
  os::guard g(g_report_lock);
  char *mem = region();
  if (!mem) return -ENOMEM;
  auto &m = *reinterpret_cast<model *>(mem);
  // Topology loads hwloc on first use: fine here, reports are never made
  // inside malloc. Samples skip it (they carry no topology).
  gather(m, r, w != what::sample);
  m.sample = w == what::sample;
  buffer b{mem + model_bytes(), 0, region_bytes - model_bytes(), false};
  switch (w) {
    case what::text: print_text(m, b); break;
    case what::json: print_json(m, b); break;
    case what::sample: print_sample(m, b); break;
  }
  if (b.overflow) {  // cannot happen with today's row limits; never write half a line
    b.len = b.cap - 1;
    b.p[b.len - 1] = '\n';
  }
  return os::write_all(fd, b.p, b.len);
}

int emit_path(const char *path, what w, reason r) {
  if (!path || !*path) return -EINVAL;
  char name[512];
  if (!expand(path, name, sizeof name)) return -ENAMETOOLONG;
  int fd = os::open_append(name);
  if (fd < 0) return fd;
  int rc = emit(fd, w, r);
  os::close_fd(fd);
  return rc;
}

what of(format f) { return f == format::json ? what::json : what::text; }

}  // namespace

int write(int fd, format f, reason r) { return emit(fd, of(f), r); }
int write_path(const char *path, format f, reason r) { return emit_path(path, of(f), r); }
int write_sample(int fd) { return emit(fd, what::sample, reason::interval); }
int write_sample_path(const char *path) { return emit_path(path, what::sample, reason::interval); }

void prefork() { g_report_lock.acquire(); }
void postfork_parent() { g_report_lock.release(); }
void postfork_child() {
  // The child's single thread holds it in name only: start it afresh, and
  // undo the held-lock count acquire() made in the parent's thread.
  g_report_lock.release();
  g_report_lock.reset();
  counters_postfork_child();
}

}  // namespace sysref::report
