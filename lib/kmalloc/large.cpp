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
#include "../objcache/objcache.hpp"
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

// Freed blocks stay mapped on a decay timer: a fresh mapping costs a page
// fault per page (11-15 us each on these machines), so unmapping at once
// and mapping again for the next block makes a 1 MiB malloc/free cycle cost
// milliseconds. What is kept is what the recent past needed: never more
// bytes than the most that were live at once in the last two decay periods,
// and a block nobody reused for SYSREF_DECAY_MS is unmapped (on the next
// large request or free, or the scavenge: objcache::set_decay_hook).
// A request takes the smallest kept block that fits, splitting off the
// rest; when none fits, it maps a fresh block and moves kept pages into it
// (os::move_pages), so the pages already faulted in serve it whatever the
// sizes: only the growth faults.
struct kept_block {
  uintptr_t start;
  size_t len;
  uint64_t since;  // coarse ns
};
constexpr int kept_max = 64;
constinit os::lock g_kept_lock;
constinit kept_block g_kept[kept_max] = {};
constinit int g_nkept = 0;
constinit size_t g_kept_bytes = 0;
constinit std::atomic<uint64_t> g_reused{0}, g_decayed{0};
// Most live bytes in the current and the previous decay period (kept lock).
constinit uint64_t g_window_peak[2] = {}, g_window_start = 0;
constinit std::atomic<uint64_t> g_live_peak_now{0};  // raised by alloc, read at window ends
constinit std::atomic<bool> g_hooked{false};

struct expired_list {
  kept_block v[kept_max];
  int n = 0;
  void unmap_all() {
    for (int i = 0; i < n; ++i) os::unmap(reinterpret_cast<void *>(v[i].start), v[i].len, os::use::data);
  }
};

void drop_kept(int i, kept_block *out) {  // lock held
  *out = g_kept[i];
  g_kept_bytes -= g_kept[i].len;
  g_kept[i] = g_kept[--g_nkept];
}

uint64_t live_bytes() {
  return g_count.mapped.load(std::memory_order_relaxed) - g_count.unmapped.load(std::memory_order_relaxed);
}

// Ends the decay period if due, and drops blocks kept for a whole one
// (lock held; now read under it, so never older than a `since`).
void age(uint64_t now, expired_list *out) {
  uint64_t delay = uint64_t{os::opts().decay_ms} * 1000000u;
  if (now - g_window_start >= delay) {
    g_window_peak[1] = g_window_peak[0];
    g_window_peak[0] = g_live_peak_now.exchange(live_bytes(), std::memory_order_relaxed);
    g_window_start = now;
  }
  for (int i = g_nkept - 1; i >= 0; --i)
    if (now - g_kept[i].since >= delay) {
      g_decayed.fetch_add(g_kept[i].len, std::memory_order_relaxed);
      drop_kept(i, &out->v[out->n++]);
    }
}

uint64_t budget() {  // lock held
  uint64_t now_peak = g_live_peak_now.load(std::memory_order_relaxed);
  uint64_t b = g_window_peak[0] > g_window_peak[1] ? g_window_peak[0] : g_window_peak[1];
  return now_peak > b ? now_peak : b;
}

// The smallest kept mapping of at least len bytes whose start satisfies
// align, cut to len (the rest stays kept); if none, up to len bytes of
// kept mappings, newest first, as pieces (*npieces) for the caller to move
// into a fresh block. Ages the list on the way.
bool take_kept(size_t len, size_t align, os::wait w, kept_block *got, kept_block *pieces, int *npieces) {
  expired_list expired;
  bool found = false;
  *npieces = 0;
  if (!g_kept_lock.acquire(w)) return false;
  age(os::coarse_now_ns(), &expired);
  int best = -1;
  for (int i = 0; i < g_nkept; ++i) {
    const kept_block &k = g_kept[i];
    if (k.len >= len && k.start % align == 0 && (best < 0 || k.len < g_kept[best].len)) best = i;
  }
  if (best >= 0) {
    kept_block &k = g_kept[best];
    *got = {k.start, len, k.since};
    if (k.len > len) {  // the tail stays: granule-aligned, since len is whole granules
      k.start += len;
      k.len -= len;
      g_kept_bytes -= len;
    } else {
      kept_block gone;
      drop_kept(best, &gone);
    }
    found = true;
  } else {
    for (size_t need = len; need && g_nkept;) {
      int newest = 0;
      for (int i = 1; i < g_nkept; ++i)
        if (g_kept[i].since > g_kept[newest].since) newest = i;
      kept_block &k = g_kept[newest];
      if (k.len > need) {  // the piece is k's head; its tail stays kept
        pieces[(*npieces)++] = {k.start, need, k.since};
        k.start += need;
        k.len -= need;
        g_kept_bytes -= need;
        need = 0;
      } else {
        need -= k.len;
        drop_kept(newest, &pieces[(*npieces)++]);
      }
    }
  }
  g_kept_lock.release();
  expired.unmap_all();
  return found;
}

// Keeps a freed mapping within the budget, oldest kept ones unmapped first
// to make room. From a signal handler that interrupted this code (the lock
// out of reach) the mapping is unmapped.
void keep_or_unmap(uintptr_t start, size_t len, uint64_t since) {
  expired_list expired;
  bool kept = false;
  if (g_kept_lock.acquire(os::wait::unless_reentered)) {
    age(os::coarse_now_ns(), &expired);
    uint64_t limit = budget();
    while (g_nkept > 0 && (g_kept_bytes + len > limit || g_nkept == kept_max)) {
      int oldest = 0;
      for (int i = 1; i < g_nkept; ++i)
        if (g_kept[i].since < g_kept[oldest].since) oldest = i;
      drop_kept(oldest, &expired.v[expired.n++]);
    }
    if (os::opts().decay_ms && g_kept_bytes + len <= limit) {
      g_kept[g_nkept++] = {start, len, since};
      g_kept_bytes += len;
      kept = true;
    }
    g_kept_lock.release();
  }
  expired.unmap_all();
  if (!kept) os::unmap(reinterpret_cast<void *>(start), len, os::use::data);
}

void *tagged(record *r) { return reinterpret_cast<void *>(reinterpret_cast<uintptr_t>(r) | pagemap::foreign_owner_bit); }

}  // namespace

void *alloc(size_t size, size_t align, int flags) {
  // SR_NOWAIT: a kept mapping if its lock is free at once, else a map (a
  // system call: it waits for no other thread of this library).
  const os::wait w = flags & SR_NOWAIT ? os::wait::no : os::wait::yes;
  if (size > max_bytes || align > max_bytes) {
    errno = ENOMEM;
    return nullptr;
  }
  slab::zone *rz = records();
  if (!rz) {
    errno = ENOMEM;
    return nullptr;
  }
  auto *r = static_cast<record *>(slab::alloc(rz, flags & (SR_USE_RESERVE | SR_NOWAIT)));
  if (!r) return nullptr;
  size_t len = size ? (size + granule - 1) & ~(granule - 1) : granule;
  size_t map_align = align > granule ? align : granule;
  kept_block k, pieces[kept_max];
  int npieces;
  void *m;
  if (take_kept(len, map_align, w, &k, pieces, &npieces)) {
    m = reinterpret_cast<void *>(k.start);
    g_reused.fetch_add(1, std::memory_order_relaxed);
    if (flags & SR_ZERO) std::memset(m, 0, len);  // only fresh mappings read as zero
  } else if ((m = os::map(len, map_align, os::use::data)) != nullptr) {
    size_t moved = 0;
    for (int i = 0; i < npieces; ++i) {
      if (os::move_pages(reinterpret_cast<void *>(pieces[i].start), pieces[i].len, static_cast<char *>(m) + moved))
        moved += pieces[i].len;
      else
        os::unmap(reinterpret_cast<void *>(pieces[i].start), pieces[i].len, os::use::data);
    }
    if (moved) g_reused.fetch_add(1, std::memory_order_relaxed);
    if (moved && (flags & SR_ZERO)) std::memset(m, 0, moved);
  } else {
    for (int i = 0; i < npieces; ++i) keep_or_unmap(pieces[i].start, pieces[i].len, pieces[i].since);
    slab::free(rz, r);
    errno = ENOMEM;
    return nullptr;
  }
  r->start = reinterpret_cast<uintptr_t>(m);
  r->len = len;
  std::atomic_ref<uint64_t>(r->magic).store(record_magic, std::memory_order_release);
  if (pagemap::set(r->start, len, tagged(r), w) != 0) {  // a page-map leaf could not be had
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
  peak = g_live_peak_now.load(std::memory_order_relaxed);
  while (live > peak && !g_live_peak_now.compare_exchange_weak(peak, live, std::memory_order_relaxed)) {
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
  keep_or_unmap(start, len, os::coarse_now_ns());
  if (!g_hooked.load(std::memory_order_relaxed) && !g_hooked.exchange(true, std::memory_order_relaxed))
    objcache::set_decay_hook(decay);  // idle programs: the scavenge and the reaper age the kept list
  slab::free(g_records.get(), r);
  g_count.frees.fetch_add(1, std::memory_order_relaxed);
  g_count.unmapped.fetch_add(len, std::memory_order_relaxed);
  return true;
}

size_t flush_kept() {
  expired_list all;
  size_t bytes;
  {
    os::guard g(g_kept_lock);
    bytes = g_kept_bytes;
    while (g_nkept) drop_kept(g_nkept - 1, &all.v[all.n++]);
  }
  all.unmap_all();
  return bytes;
}

void decay() {
  expired_list expired;
  if (!g_kept_lock.acquire(os::wait::unless_reentered)) return;
  age(os::coarse_now_ns(), &expired);
  g_kept_lock.release();
  expired.unmap_all();
}

counters snapshot() {
  auto ld = [](const std::atomic<uint64_t> &a) { return a.load(std::memory_order_relaxed); };
  uint64_t kept;
  {
    os::guard g(g_kept_lock);
    kept = g_kept_bytes;
  }
  return {ld(g_count.allocs), ld(g_count.frees), ld(g_count.mapped), ld(g_count.unmapped), ld(g_reused),
          ld(g_count.peak_live), kept, ld(g_decayed)};
}

}  // namespace sysref::kmalloc::large

namespace sysref::kmalloc {
// fork: the kept-mappings lock is a leaf (nothing is taken under it).
void prefork_large() { large::g_kept_lock.acquire(); }
void postfork_large() { large::g_kept_lock.release(); }
}  // namespace sysref::kmalloc
