// Large blocks: one mapping each, whole 64 KiB granules aligned to 64 KiB
// (or more), registered in the page map under a record from an internal
// slab zone. Records never come from malloc and never live in the block.
#include "large.hpp"
#include "kmalloc.hpp"

#include <atomic>
#include <cstring>
#include <cerrno>
#include <sysref/flags.h>

#include "../os/os.hpp"
#include "../slab/pagemap.hpp"
#include "../slab/slab.hpp"

namespace sysref::kmalloc::large {
namespace {

namespace pagemap = slab::pagemap;

constexpr uint64_t record_magic = 0x53524b4c41524745ull;  // "SRKLARGE"
constexpr size_t granule = pagemap::granule;
// Nothing larger can be mapped under 48-bit addresses; the bound also keeps
// the rounding below from overflowing.
constexpr size_t max_bytes = size_t{1} << 46;

constinit slab::lazy_zone g_records{{}, "kmalloc.large", sizeof(record), 0, slab::lazy_zone::type_stable};

struct atomic_counters {
  std::atomic<uint64_t> allocs, frees, mapped, unmapped;
  std::atomic<uint64_t> peak_live;  // most bytes in blocks handed out at once
};
constinit atomic_counters g_count{};

slab::zone *records() { return g_records.get(); }

// Freed blocks stay mapped for a while: a fresh mapping costs a page fault
// per page (11-15 us each on these machines), so unmapping at once and
// mapping again for the next block makes a 1 MiB malloc/free cycle cost
// milliseconds. At most kept_max blocks and kept_bytes_max bytes are kept;
// one that sat unused for a reap interval is unmapped on the next large
// request or free.
struct kept_block {
  uintptr_t start;
  size_t len;
  uint64_t since;  // coarse ns
};
constexpr int kept_max = 16;
constexpr size_t kept_bytes_max = size_t{64} << 20;
constinit os::lock g_kept_lock;
constinit kept_block g_kept[kept_max] = {};
constinit int g_nkept = 0;
constinit size_t g_kept_bytes = 0;
constinit std::atomic<uint64_t> g_reused{0};

void drop_kept(int i, kept_block *out) {  // lock held
  *out = g_kept[i];
  g_kept_bytes -= g_kept[i].len;
  g_kept[i] = g_kept[--g_nkept];
}

void unmap_all(const kept_block *v, int n) {
  for (int i = 0; i < n; ++i) os::unmap(reinterpret_cast<void *>(v[i].start), v[i].len, os::use::data);
}

// A kept mapping of at least len bytes (at most twice that: no big waste)
// whose start satisfies align; unmaps what has expired on the way.
bool take_kept(size_t len, size_t align, kept_block *got) {
  kept_block expired[kept_max];
  int nexpired = 0;
  bool found = false;
  uint64_t ttl = uint64_t{os::opts().reap_interval_ms} * 1000000u;
  {
    os::guard g(g_kept_lock);
    uint64_t now = os::coarse_now_ns();  // under the lock: never older than a `since`
    for (int i = g_nkept - 1; i >= 0; --i) {
      const kept_block &k = g_kept[i];
      if (!found && k.len >= len && k.len / 2 <= len && k.start % align == 0) {
        drop_kept(i, got);
        found = true;
      } else if (now - k.since >= ttl) {
        drop_kept(i, &expired[nexpired++]);
      }
    }
  }
  unmap_all(expired, nexpired);
  return found;
}

// Keeps a freed mapping for reuse, and unmaps kept ones that expired. From
// a signal handler that interrupted this code (the kept lock out of reach)
// the mapping is simply unmapped.
void keep_or_unmap(uintptr_t start, size_t len) {
  kept_block expired[kept_max];
  int nexpired = 0;
  bool kept = false;
  if (g_kept_lock.acquire(os::wait::unless_reentered)) {
    uint64_t now = os::coarse_now_ns(), ttl = uint64_t{os::opts().reap_interval_ms} * 1000000u;
    for (int i = g_nkept - 1; i >= 0; --i)
      if (now - g_kept[i].since >= ttl) drop_kept(i, &expired[nexpired++]);
    if (g_nkept < kept_max && g_kept_bytes + len <= kept_bytes_max) {
      g_kept[g_nkept++] = {start, len, now};
      g_kept_bytes += len;
      kept = true;
    }
    g_kept_lock.release();
  }
  unmap_all(expired, nexpired);
  if (!kept) os::unmap(reinterpret_cast<void *>(start), len, os::use::data);
}

void *tagged(record *r) { return reinterpret_cast<void *>(reinterpret_cast<uintptr_t>(r) | pagemap::foreign_owner_bit); }

}  // namespace

void *alloc(size_t size, size_t align, int flags) {
  if ((flags & SR_NOWAIT) || size > max_bytes || align > max_bytes) {
    errno = ENOMEM;
    return nullptr;
  }
  slab::zone *rz = records();
  if (!rz) {
    errno = ENOMEM;
    return nullptr;
  }
  auto *r = static_cast<record *>(slab::alloc(rz, flags & SR_USE_RESERVE));
  if (!r) return nullptr;
  size_t len = size ? (size + granule - 1) & ~(granule - 1) : granule;
  size_t map_align = align > granule ? align : granule;
  kept_block k;
  void *m;
  if (take_kept(len, map_align, &k)) {
    m = reinterpret_cast<void *>(k.start);
    len = k.len;
    g_reused.fetch_add(1, std::memory_order_relaxed);
    if (flags & SR_ZERO) std::memset(m, 0, len);  // only fresh mappings read as zero
  } else if (!(m = os::map(len, map_align, os::use::data))) {
    slab::free(rz, r);
    errno = ENOMEM;
    return nullptr;
  }
  r->start = reinterpret_cast<uintptr_t>(m);
  r->len = len;
  std::atomic_ref<uint64_t>(r->magic).store(record_magic, std::memory_order_release);
  if (pagemap::set(r->start, len, tagged(r)) != 0) {  // a page-map leaf could not be mapped
    os::unmap(m, len, os::use::data);
    std::atomic_ref<uint64_t>(r->magic).store(0, std::memory_order_relaxed);
    slab::free(rz, r);
    errno = ENOMEM;
    return nullptr;
  }
  g_count.allocs.fetch_add(1, std::memory_order_relaxed);
  uint64_t live = g_count.mapped.fetch_add(len, std::memory_order_relaxed) + len -
                  g_count.unmapped.load(std::memory_order_relaxed);
  uint64_t peak = g_count.peak_live.load(std::memory_order_relaxed);
  while (live > peak && !g_count.peak_live.compare_exchange_weak(peak, live, std::memory_order_relaxed)) {
  }
  return m;
}

// Two threads may free one block at once (a double free): records stay
// mapped for good (their zone keeps its slabs), so a late reader of a freed
// record reads a dead record, never unmapped memory; and the magic is
// claimed with a compare-and-swap, so only one of them releases the block.
record *find(const void *p) {
  auto v = reinterpret_cast<uintptr_t>(pagemap::get(reinterpret_cast<uintptr_t>(p)));
  if (!(v & pagemap::foreign_owner_bit)) return nullptr;
  auto *r = reinterpret_cast<record *>(v & ~pagemap::foreign_owner_bit);
  return std::atomic_ref<uint64_t>(r->magic).load(std::memory_order_acquire) == record_magic ? r : nullptr;
}

bool release(record *r) {
  uint64_t expected = record_magic;
  if (!std::atomic_ref<uint64_t>(r->magic).compare_exchange_strong(expected, 0, std::memory_order_acq_rel))
    return false;  // someone else is releasing it
  uintptr_t start = r->start;
  size_t len = r->len;
  // Out of the page map first: from here on the range is nobody's.
  pagemap::clear(start, len);
  keep_or_unmap(start, len);
  slab::free(g_records.get(), r);
  g_count.frees.fetch_add(1, std::memory_order_relaxed);
  g_count.unmapped.fetch_add(len, std::memory_order_relaxed);
  return true;
}

size_t flush_kept() {
  kept_block all[kept_max];
  int n;
  size_t bytes;
  {
    os::guard g(g_kept_lock);
    n = g_nkept;
    bytes = g_kept_bytes;
    for (int i = 0; i < n; ++i) all[i] = g_kept[i];
    g_nkept = 0;
    g_kept_bytes = 0;
  }
  unmap_all(all, n);
  return bytes;
}

counters snapshot() {
  auto ld = [](const std::atomic<uint64_t> &a) { return a.load(std::memory_order_relaxed); };
  return {ld(g_count.allocs), ld(g_count.frees), ld(g_count.mapped), ld(g_count.unmapped), ld(g_reused),
          ld(g_count.peak_live)};
}

}  // namespace sysref::kmalloc::large

namespace sysref::kmalloc {
// fork: the kept-mappings lock is a leaf (nothing is taken under it).
void prefork_large() { large::g_kept_lock.acquire(); }
void postfork_large() { large::g_kept_lock.release(); }
}  // namespace sysref::kmalloc
