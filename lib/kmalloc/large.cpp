// Large blocks: whole 64 KiB granules aligned to 64 KiB (or more) from the
// span heap, registered in the page map under a record from an internal
// slab zone. Records never come from malloc and never live in the block.
#include "large.hpp"
#include "kmalloc.hpp"
#include "span_heap.hpp"

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

constinit std::atomic<bool> g_hooked{false};

void count_handed_out(size_t len) {
  uint64_t live = g_count.mapped.fetch_add(len, std::memory_order_relaxed) + len -
                  g_count.unmapped.load(std::memory_order_relaxed);
  os::raise_peak(g_count.peak_live, live);
}

void *tagged(record *r) { return reinterpret_cast<void *>(reinterpret_cast<uintptr_t>(r) | pagemap::foreign_owner_bit); }

}  // namespace

void *alloc(size_t size, size_t align, int flags) {
  // SR_NOWAIT: the span heap if its lock is free at once, else a map (a
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
  uintptr_t old_start;
  size_t old_len;
  void *m = span_heap::take(len, map_align, w, &old_start, &old_len);
  if (!m) {
    slab::free(rz, r);
    return nullptr;
  }
  if (old_len && (flags & SR_ZERO)) std::memset(reinterpret_cast<void *>(old_start), 0, old_len);  // the rest is fresh
  r->start = reinterpret_cast<uintptr_t>(m);
  r->len = len;
  std::atomic_ref<uint64_t>(r->magic).store(record_magic, std::memory_order_release);
  if (pagemap::set(r->start, len, tagged(r), w) != 0) {  // a page-map leaf could not be had
    span_heap::give(r->start, len);
    std::atomic_ref<uint64_t>(r->magic).store(0, std::memory_order_relaxed);
    slab::free(rz, r);
    errno = ENOMEM;
    return nullptr;
  }
  g_count.allocs.fetch_add(1, std::memory_order_relaxed);
  count_handed_out(len);
  return m;
}

bool grow_in_place(record *r, size_t size, int flags) {
  const os::wait w = flags & SR_NOWAIT ? os::wait::no : os::wait::yes;
  if (size > max_bytes) return false;
  size_t len = (size + granule - 1) & ~(granule - 1);
  if (len <= r->len) return true;
  uintptr_t old_start;
  size_t old_len;
  if (!span_heap::grow(r->start, r->len, len, w, &old_start, &old_len)) return false;
  // The growth joins the block in the page map before the block says so.
  if (pagemap::set(r->start + r->len, len - r->len, tagged(r), w) != 0) {
    span_heap::give(r->start + r->len, len - r->len);
    return false;
  }
  if (old_len && (flags & SR_ZERO)) std::memset(reinterpret_cast<void *>(old_start), 0, old_len);
  count_handed_out(len - r->len);
  r->len = len;
  return true;
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
  span_heap::give(start, len);
  if (!g_hooked.load(std::memory_order_relaxed) && !g_hooked.exchange(true, std::memory_order_relaxed))
    objcache::set_decay_hook(span_heap::decay);  // idle programs: the scavenge and the reaper age the kept bytes
  slab::free(g_records.get(), r);
  g_count.frees.fetch_add(1, std::memory_order_relaxed);
  g_count.unmapped.fetch_add(len, std::memory_order_relaxed);
  return true;
}

size_t flush_kept() { return span_heap::flush(); }

counters snapshot() {
  auto ld = [](const std::atomic<uint64_t> &a) { return a.load(std::memory_order_relaxed); };
  span_heap::counters h = span_heap::snapshot();
  return {ld(g_count.allocs),    ld(g_count.frees), ld(g_count.mapped), ld(g_count.unmapped),
          h.reused,              ld(g_count.peak_live), h.kept_bytes,   h.decayed_bytes};
}

}  // namespace sysref::kmalloc::large

namespace sysref::kmalloc {
// fork: the span heap's lock is a leaf (nothing is taken under it).
void prefork_large() { span_heap::prefork(); }
void postfork_large() { span_heap::postfork(); }
}  // namespace sysref::kmalloc
