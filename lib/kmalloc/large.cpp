// Large blocks: one mapping each, whole 64 KiB granules aligned to 64 KiB
// (or more), registered in the page map under a record from an internal
// slab zone. Records never come from malloc and never live in the block.
#include "large.hpp"

#include <atomic>
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
};
constinit atomic_counters g_count{};

slab::zone *records() { return g_records.get(); }

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
  void *m = os::map(len, align > granule ? align : granule, os::use::data);
  if (!m) {
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
  g_count.mapped.fetch_add(len, std::memory_order_relaxed);
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
  os::unmap(reinterpret_cast<void *>(start), len, os::use::data);
  slab::free(g_records.get(), r);
  g_count.frees.fetch_add(1, std::memory_order_relaxed);
  g_count.unmapped.fetch_add(len, std::memory_order_relaxed);
  return true;
}

counters snapshot() {
  auto ld = [](const std::atomic<uint64_t> &a) { return a.load(std::memory_order_relaxed); };
  return {ld(g_count.allocs), ld(g_count.frees), ld(g_count.mapped), ld(g_count.unmapped)};
}

}  // namespace sysref::kmalloc::large
