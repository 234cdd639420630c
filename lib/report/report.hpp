// lib/report: one data model of the allocator's statistics, gathered from
// each layer's own stats calls (it looks down; nothing looks up at it), and
// two printers, a text table and JSON. Written with write(2) from memory
// the library owns (os::map), never from malloc. This header is the
// layer's interface: the preload shim and the C ABI (sysref_report) use it.
#pragma once
#include <cstddef>
#include <cstdint>

namespace sysref::report {

// ---- counting by the preload shim (per-CPU counters; only when counting()) ----
enum class call : uint8_t {
  malloc, calloc, realloc, reallocarray, free, posix_memalign, aligned_alloc, memalign, valloc,
  pvalloc, malloc_usable_size, new_, new_array, delete_, delete_array, foreign_free, count_
};
// SYSREF_STATS is set: the shim counts calls and requested sizes. Read once.
bool counting();
void count_call(call c);
// A request of that many bytes: the requested total and the size histogram.
void count_request(size_t requested);

// ---- reports ------------------------------------------------------------------
enum class format : uint8_t { text, json };
enum class reason : uint8_t { exit, signal, request, interval };

// Gathers the statistics now and writes one report to fd: 0, or -errno.
// Takes the report lock (one report at a time) and the layers' stats
// locks: not async-signal-safe; never call it from inside malloc.
int write(int fd, format f, reason r);
// The same into path ("%p" = pid), opened O_WRONLY|O_CREAT|O_APPEND.
int write_path(const char *path, format f, reason r);
// One compact JSON line (kind "sample"): time_ms, live_bytes, resident_bytes,
// mapped_bytes, requested... for sysref-stat --interval.
int write_sample(int fd);
int write_sample_path(const char *path);

// For fork: the report lock. A report holds it while it takes every layer's
// stats locks, so the shim's prepare handler takes it first (outermost).
void prefork();
void postfork_parent();
void postfork_child();

// ---- the data model (model.cpp): fixed arrays, no allocation ------------------
inline constexpr unsigned max_classes = 80, max_rows = 64, max_verdicts = 8;
inline constexpr unsigned calls_count = static_cast<unsigned>(call::count_);
// Histogram of requested sizes: bucket i counts sizes <= 8 << i, for
// i < hist_buckets - 1; the last counts everything above 1 MiB.
inline constexpr unsigned hist_buckets = 19;
inline constexpr uint64_t hist_bound(unsigned i) { return uint64_t{8} << i; }
const char *call_name(call c);
const char *reason_text(reason r);

struct class_row {  // a kmalloc size class ever used
  uint64_t size, allocations, frees, live, peak, depot_exchanges, slabs, contention;
  double hit_rate;  // gets and puts served by the CPU's magazines, 0..1
};
struct cache_row {  // an objcache the program made (or a SYSREF class's)
  char name[32];
  uint64_t gets, live, cached;
  double hit_rate;
};
struct zone_row {  // a kmalloc_obj zone the program made
  char name[32];
  uint64_t allocs, frees, live, slabs;
};
struct sysref_row {  // a SYSREF class
  char name[32];
  uint64_t live, active, cached, retired, lookups;
};
struct totals {
  uint64_t requested_bytes, allocated_bytes, internal_fragmentation_bytes, live_bytes,
      peak_live_bytes, freed_bytes, allocations, frees, live_objects, metadata_bytes, mapped_bytes,
      peak_mapped_bytes, resident_bytes, released_bytes, minor_faults, foreign_frees;
  uint64_t idle_bytes;     // mapped, free, waiting on the decay timer: pooled slabs, kept large blocks
  uint64_t decayed_bytes;  // given back because the timer ran out
};
struct model {
  char program[64];
  int pid;
  reason why;
  bool sample;
  uint64_t time_ms;
  unsigned cpus;
  const char *percpu_mode;
  unsigned packages, cores, pus, numa_nodes;
  bool from_hwloc, counting;
  totals t;
  uint64_t calls[calls_count];
  uint64_t histogram[hist_buckets];
  uint64_t large_allocations, large_frees, large_live, large_live_bytes;
  unsigned nclasses, ncaches, nzones, nsysref, nverdicts;
  bool caches_truncated, zones_truncated, sysref_truncated;
  class_row classes[max_classes];
  cache_row caches[max_rows];
  zone_row zones[max_rows];
  sysref_row sysref[max_rows];
  char verdicts[max_verdicts][160];
};
// Fills m from every layer's stats (topology only when with_topology: it
// loads hwloc on first use). Never from inside malloc.
void gather(model &m, reason r, bool with_topology);

// ---- printers (text.cpp, json.cpp) into a caller's buffer ------------------------
struct buffer {
  char *p;
  size_t len, cap;
  bool overflow;
  void put(const char *s);
  void put(const char *s, size_t n);
  void put_char(char c);
  void put_u64(uint64_t v, unsigned width = 0);  // right-aligned in width
  void put_i64(int64_t v);
  void put_fixed(double v, unsigned decimals, unsigned width = 0);
  void pad(size_t from_len, unsigned width);  // spaces up to width since from_len
  void put_json_string(const char *s);
};
void print_text(const model &m, buffer &b);
void print_json(const model &m, buffer &b);  // one line, ending in a newline
void print_sample(const model &m, buffer &b);  // one line

// Per-CPU counter sums (counters.cpp); zeros when counting is off.
void counters_postfork_child();  // a fork during the counters' one-time set-up
void read_counters(uint64_t calls[calls_count], uint64_t *requested, uint64_t hist[hist_buckets]);

}  // namespace sysref::report
