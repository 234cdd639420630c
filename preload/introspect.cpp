// glibc's malloc introspection and tuning calls, answered from the layers'
// own statistics: mallinfo/mallinfo2, malloc_trim (the layers' reclaim),
// malloc_stats (the report), mallopt (accepted, nothing to tune).
#include <climits>
#include <malloc.h>

#include "../lib/os/os.hpp"
#include "shim.hpp"

namespace km = sysref::kmalloc;
namespace os = sysref::os;
namespace report = sysref::report;

#define SR_EXPORT extern "C" __attribute__((visibility("default")))

namespace {

struct mallinfo2 gather() {
  struct mallinfo2 mi{};
  os::memory_stats m = os::memory_snapshot();
  km::stats k = km::snapshot();
  size_t live = 0, cached = 0, classes = 0;
  for (unsigned i = 0; i < km::class_count(); ++i) {
    sysref::objcache::cache *c = km::class_cache(i);
    struct objcache_stats s{};
    if (!c || sysref::objcache::stats(c, &s) != 0) continue;
    ++classes;
    live += s.live * km::class_size(i);
    cached += s.cached * km::class_size(i);
  }
  size_t large_live = k.large_bytes_mapped - k.large_bytes_unmapped;
  size_t data = m.mapped - m.metadata;  // slabs and large blocks, with their free space
  mi.arena = data;
  mi.ordblks = classes;                 // size classes in use
  mi.hblks = k.large_allocs - k.large_frees;
  mi.hblkhd = large_live;
  mi.usmblks = m.peak_mapped;
  mi.fsmblks = cached;                  // objects cached in magazines
  mi.uordblks = live + large_live;
  mi.fordblks = data > mi.uordblks ? data - mi.uordblks : 0;
  mi.keepcost = 0;
  return mi;
}

int clamp(size_t v) { return v > INT_MAX ? INT_MAX : static_cast<int>(v); }

}  // namespace

SR_EXPORT struct mallinfo2 mallinfo2() noexcept { return gather(); }

SR_EXPORT struct mallinfo mallinfo() noexcept {
  struct mallinfo2 m = gather();
  struct mallinfo o{};
  o.arena = clamp(m.arena);
  o.ordblks = clamp(m.ordblks);
  o.smblks = clamp(m.smblks);
  o.hblks = clamp(m.hblks);
  o.hblkhd = clamp(m.hblkhd);
  o.usmblks = clamp(m.usmblks);
  o.fsmblks = clamp(m.fsmblks);
  o.uordblks = clamp(m.uordblks);
  o.fordblks = clamp(m.fordblks);
  o.keepcost = clamp(m.keepcost);
  return o;
}

// Cached objects back to their slabs, empty slabs and kept large mappings
// back to the OS. 1 if anything was given back (glibc's meaning).
SR_EXPORT int malloc_trim(size_t) noexcept { return km::reclaim() > 0; }

SR_EXPORT void malloc_stats() noexcept {
  report::write(2, os::opts().stats == os::options::stats_format::json ? report::format::json
                                                                          : report::format::text,
                report::reason::request);
}

// Nothing to tune: every parameter is accepted and ignored, with glibc's
// return values (0 only for values glibc itself refuses).
SR_EXPORT int mallopt(int param, int value) noexcept {
  switch (param) {
    case M_MXFAST:
      return value >= 0 && static_cast<size_t>(value) <= 80 * sizeof(size_t) / 4;
    case M_MMAP_THRESHOLD:  // glibc: at most half of its largest heap (32 MiB)
      return static_cast<size_t>(value) <= (size_t{32} << 20);
    default:
      return 1;
  }
}
