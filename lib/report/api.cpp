// C ABI of the report layer: sysref_report(3). -errno results become -1
// with errno set.
#include <cerrno>
#include <sysref/report.h>

#include "report.hpp"

namespace {
namespace r = sysref::report;
int c_result(int rc) { return rc < 0 ? (errno = -rc, -1) : 0; }
bool bad(unsigned flags) { return (flags & ~SYSREF_REPORT_JSON) != 0; }
r::format format_of(unsigned flags) { return flags & SYSREF_REPORT_JSON ? r::format::json : r::format::text; }
}  // namespace

extern "C" {

int sysref_report(int fd, unsigned flags) {
  if (bad(flags)) return errno = EINVAL, -1;
  return c_result(r::write(fd, format_of(flags), r::reason::request));
}

int sysref_report_path(const char *path, unsigned flags) {
  if (bad(flags) || !path) return errno = EINVAL, -1;
  return c_result(r::write_path(path, format_of(flags), r::reason::request));
}

}  // extern "C"
