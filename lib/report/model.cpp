// gather(): the one data model, filled from each layer's own stats calls.
// Everything the totals say is derived from the rows below them, so they
// add up by construction:
//   allocations  = sum of class gets + large allocations
//   frees        = sum of class puts + large frees
//   allocated    = sum of class gets * class size + large bytes handed out
//   freed        = sum of class puts * class size + large bytes given back
//   live         = allocated - freed (and live objects = allocations - frees)
#include <cstring>

#include <sysref/sysref.h>

#include "../kmalloc/kmalloc.hpp"
#include "../kmalloc/large.hpp"
#include "../objcache/objcache.hpp"
#include "../os/os.hpp"
#include "../percpu/percpu.hpp"
#include "../slab/slab.hpp"
#include "../sysref/sysref.hpp"
#include "report.hpp"

namespace sysref::report {
namespace {

void copy_name(char *dst, size_t cap, const char *src) {
  size_t n = 0;
  if (src)
    for (; src[n] && n + 1 < cap; ++n) dst[n] = src[n];
  dst[n] = '\0';
}

// Gets and puts that stayed in the CPU's magazines: every depot exchange
// and every object made from the slab layer is a miss.
double hit_rate(const struct objcache_stats &s) {
  uint64_t ops = s.gets + s.puts, misses = s.depot_exchanges + s.slab_allocs;
  if (!ops) return 1.0;
  if (misses > ops) misses = ops;
  return static_cast<double>(ops - misses) / static_cast<double>(ops);
}

void gather_classes(model &m) {
  for (unsigned i = 0; i < kmalloc::class_count() && m.nclasses < max_classes; ++i) {
    objcache::cache *c = kmalloc::class_cache(i);
    struct objcache_stats s{};
    if (!c || objcache::stats(c, &s) != 0 || s.gets == 0) continue;
    struct kmalloc_zone_stats z{};
    slab::stats(objcache::zone_of(c), &z);
    class_row &r = m.classes[m.nclasses++];
    r.size = kmalloc::class_size(i);
    r.allocations = s.gets;
    r.frees = s.puts;
    r.live = s.gets - s.puts;
    r.peak = objcache::peak_objects(c);
    if (r.peak < r.live) r.peak = r.live;  // a race with a construction in flight
    r.depot_exchanges = s.depot_exchanges;
    r.slabs = z.slabs;
    r.contention = s.contention;
    r.hit_rate = hit_rate(s);
  }
}

int add_cache(objcache::cache *c, void *arg) {
  auto &m = *static_cast<model *>(arg);
  if (m.ncaches == max_rows) return m.caches_truncated = true, 1;
  struct objcache_stats s{};
  if (objcache::stats(c, &s) != 0) return 0;
  cache_row &r = m.caches[m.ncaches++];
  copy_name(r.name, sizeof r.name, objcache::name_of(c));
  r.gets = s.gets;
  r.live = s.live;
  r.cached = s.cached;
  r.hit_rate = hit_rate(s);
  return 0;
}

int add_zone(slab::zone *z, void *arg) {
  auto &m = *static_cast<model *>(arg);
  if (m.nzones == max_rows) return m.zones_truncated = true, 1;
  struct kmalloc_zone_stats s{};
  if (slab::stats(z, &s) != 0) return 0;
  zone_row &r = m.zones[m.nzones++];
  copy_name(r.name, sizeof r.name, slab::name_of(z));
  r.allocs = s.allocs;
  r.frees = s.frees;
  r.live = s.live;
  r.slabs = s.slabs;
  return 0;
}

int add_sysref_class(sysref_class *cls, void *arg) {
  auto &m = *static_cast<model *>(arg);
  if (m.nsysref == max_rows) return m.sysref_truncated = true, 1;
  struct sysref_stats s{};
  if (objects::stats(cls, &s) != 0) return 0;
  sysref_row &r = m.sysref[m.nsysref++];
  copy_name(r.name, sizeof r.name, cls->name);
  r.live = s.live;
  r.active = s.active;
  r.cached = s.cached;
  r.retired = s.retired;
  r.lookups = s.lookups;
  return 0;
}

// Appends one verdict: the pieces concatenated, numbers in decimal.
struct verdict {
  model &m;
  char *p = nullptr;
  size_t n = 0;
  explicit verdict(model &mm) : m(mm) {
    if (m.nverdicts < max_verdicts) p = m.verdicts[m.nverdicts++];
  }
  verdict &operator<<(const char *s) {
    while (p && *s && n + 1 < sizeof m.verdicts[0]) p[n++] = *s++;
    if (p) p[n] = '\0';
    return *this;
  }
  verdict &operator<<(uint64_t v) {
    char d[24];
    int k = 0;
    do d[k++] = static_cast<char>('0' + v % 10);
    while (v /= 10);
    char s[24];
    for (int i = 0; i < k; ++i) s[i] = d[k - 1 - i];
    s[k] = '\0';
    return *this << static_cast<const char *>(s);
  }
};

void judge(model &m) {
  const totals &t = m.t;
  if (m.why == reason::exit && t.live_bytes)
    verdict(m) << "memory still live at exit: " << t.live_bytes << " bytes in " << t.live_objects
               << (t.live_objects == 1 ? " block" : " blocks") << " never freed";
  for (unsigned i = 0; i < m.nclasses; ++i) {
    const class_row &r = m.classes[i];
    // Only where objects come back (half of them or more): a class that
    // only grows takes every object from the slabs, and that is no fault.
    if (r.allocations >= 1000 && r.frees * 2 >= r.allocations && r.hit_rate < 0.5)
      verdict(m) << "size class " << r.size << ": magazine hit rate "
                 << static_cast<uint64_t>(r.hit_rate * 100) << "% over " << r.allocations
                 << " allocations (objects go to the depot or the slabs)";
    // Heavy: at least 100 waits, and one depot visit in ten had to wait.
    if (r.contention >= 100 && r.contention * 10 >= r.depot_exchanges)
      verdict(m) << "size class " << r.size << ": heavy depot contention (" << r.contention
                 << " waits in " << r.depot_exchanges << " exchanges)";
  }
  if (t.foreign_frees)
    verdict(m) << t.foreign_frees << " frees of pointers this allocator did not hand out "
               << "(passed to the C library)";
}

}  // namespace

void gather(model &m, reason r, bool with_topology) {
  std::memset(static_cast<void *>(&m), 0, sizeof m);
  copy_name(m.program, sizeof m.program, os::program_name());
  m.pid = os::process_id();
  m.why = r;
  uint64_t now = os::now_ns(), start = os::started_ns();
  m.time_ms = start && now > start ? (now - start) / 1000000 : 0;
  m.cpus = os::cpu_count();
  m.percpu_mode = percpu::mode_name();
  m.counting = counting();
  uint64_t requested = 0;
  read_counters(m.calls, &requested, m.histogram);

  gather_classes(m);
  kmalloc::stats k = kmalloc::snapshot();
  m.large_allocations = k.large_allocs;
  m.large_frees = k.large_frees;
  m.large_live = k.large_allocs - k.large_frees;
  m.large_live_bytes = k.large_bytes_mapped - k.large_bytes_unmapped;

  totals &t = m.t;
  uint64_t peak = k.large_peak_bytes;
  for (unsigned i = 0; i < m.nclasses; ++i) {
    const class_row &c = m.classes[i];
    t.allocations += c.allocations;
    t.frees += c.frees;
    t.allocated_bytes += c.allocations * c.size;
    t.freed_bytes += c.frees * c.size;
    peak += c.peak * c.size;
  }
  t.allocations += k.large_allocs;
  t.frees += k.large_frees;
  t.allocated_bytes += k.large_bytes_mapped;
  t.freed_bytes += k.large_bytes_unmapped;
  t.live_objects = t.allocations - t.frees;
  t.live_bytes = t.allocated_bytes - t.freed_bytes;
  t.peak_live_bytes = peak > t.live_bytes ? peak : t.live_bytes;
  t.requested_bytes = requested;
  t.internal_fragmentation_bytes =
      m.counting && requested && requested <= t.allocated_bytes ? t.allocated_bytes - requested : 0;
  os::memory_stats ms = os::memory_snapshot();
  t.metadata_bytes = ms.metadata;
  t.mapped_bytes = ms.mapped;
  t.peak_mapped_bytes = ms.peak_mapped;
  t.released_bytes = ms.released + ms.decommitted;
  slab::pool_stats pool = slab::pool_snapshot();
  kmalloc::large::counters lc = kmalloc::large::snapshot();
  t.idle_bytes = pool.bytes + lc.kept_bytes;
  t.decayed_bytes = pool.bytes_decayed + lc.decayed_bytes;
  t.resident_bytes = os::resident_bytes();
  t.minor_faults = os::minor_faults();
  t.foreign_frees = m.calls[static_cast<unsigned>(call::foreign_free)];

  objcache::for_each_public(add_cache, &m);
  slab::for_each_public(add_zone, &m);
  objects::for_each_class(add_sysref_class, &m);
  judge(m);
  // Last: hwloc, loaded on the first report, allocates (through the shim,
  // when preloaded); the numbers above are the program's, taken before.
  if (with_topology) {
    os::topology_info ti = os::topology();
    m.packages = ti.packages;
    m.cores = ti.cores;
    m.pus = ti.pus;
    m.numa_nodes = ti.numa_nodes;
    m.from_hwloc = ti.from_hwloc;
  }
}

}  // namespace sysref::report
