// C ABI of the os layer: forwards into sysref::os.
#include <cerrno>
#include <sysref/os.h>

#include "os.hpp"

namespace sysref::os {
int public_stats(struct sysref_os_stats *out) {
  if (!out) return errno = EINVAL, -1;
  memory_stats m = memory_snapshot();
  *out = {page_size(), cpu_count(), m.mapped,      m.peak_mapped,   m.metadata,    m.released,
          m.decommitted, m.map_calls, m.unmap_calls, m.madvise_calls, m.refused};
  return 0;
}
}  // namespace sysref::os

extern "C" {
void sysref_os_fail_after(long n) { sysref::os::fail_after(n); }
int sysref_os_stats(struct sysref_os_stats *out) { return sysref::os::public_stats(out); }
}
