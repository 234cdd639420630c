// Address space from the kernel: aligned mappings, counted, with a fault
// injection switch that refuses requests exactly as the kernel would.
#include <cerrno>
#include <sys/mman.h>

#include "os.hpp"

namespace sysref::os {
namespace {

struct counters {
  std::atomic<uint64_t> mapped{0}, peak{0}, metadata{0}, released{0}, decommitted{0};
  std::atomic<uint64_t> map_calls{0}, unmap_calls{0}, madvise_calls{0}, refused{0};
  std::atomic<long> fail_remaining{-2};  // -2: not yet read from options
};
constinit counters g;

// One page request: true if it may go to the kernel.
bool admit() {
  long r = g.fail_remaining.load(std::memory_order_relaxed);
  if (r == -2) {
    long from_env = opts().fault_after;
    g.fail_remaining.compare_exchange_strong(r, from_env, std::memory_order_relaxed);
    r = g.fail_remaining.load(std::memory_order_relaxed);
  }
  while (r >= 0) {
    if (r == 0) return false;
    if (g.fail_remaining.compare_exchange_weak(r, r - 1, std::memory_order_relaxed)) return true;
  }
  return true;
}

void account_mapped(size_t size, use u) {
  if (u != use::data) g.metadata.fetch_add(size, std::memory_order_relaxed);
  uint64_t now = g.mapped.fetch_add(size, std::memory_order_relaxed) + size;
  raise_peak(g.peak, now);
}

// size bytes aligned to align (a power of two, at least a page), private
// and anonymous: over-mapped by align - page, then both ends trimmed (the
// kernel has no aligned mmap, and the trims are cheap next to the faults
// that follow).
void *aligned_mmap(size_t size, size_t align, int prot, int flags) {
  const size_t page = page_size();
  size_t span = size + align - page;
  void *raw = ::mmap(nullptr, span, prot, MAP_PRIVATE | MAP_ANONYMOUS | flags, -1, 0);
  if (raw == MAP_FAILED) return nullptr;
  uintptr_t r = reinterpret_cast<uintptr_t>(raw), base = (r + align - 1) & ~(uintptr_t)(align - 1);
  if (base > r) ::munmap(raw, base - r);
  if (r + span > base + size) ::munmap(reinterpret_cast<void *>(base + size), r + span - (base + size));
  return reinterpret_cast<void *>(base);
}

}  // namespace

void fail_after(long n) { g.fail_remaining.store(n < 0 ? -1 : n, std::memory_order_relaxed); }

void *map(size_t size, size_t align, use u) {
  const size_t page = page_size();
  mark_started();
  if (size == 0 || size % page != 0 || align == 0 || (align & (align - 1)) != 0) {
    errno = EINVAL;
    return nullptr;
  }
  if (u != use::bootstrap && !admit()) {
    g.refused.fetch_add(1, std::memory_order_relaxed);
    errno = ENOMEM;
    return nullptr;
  }
  void *p = aligned_mmap(size, align > page ? align : page, PROT_READ | PROT_WRITE, 0);
  if (!p) {
    g.refused.fetch_add(1, std::memory_order_relaxed);
    return nullptr;
  }
  g.map_calls.fetch_add(1, std::memory_order_relaxed);
  account_mapped(size, u);
  return p;
}

void unmap(void *p, size_t size, use u) {
  if (!p || size == 0) return;
  ::munmap(p, size);
  if (u != use::data) g.metadata.fetch_sub(size, std::memory_order_relaxed);
  g.unmap_calls.fetch_add(1, std::memory_order_relaxed);
  g.mapped.fetch_sub(size, std::memory_order_relaxed);
  g.released.fetch_add(size, std::memory_order_relaxed);
}

void decommit(void *p, size_t size) {
  if (!p || size == 0) return;
  ::madvise(p, size, MADV_DONTNEED);
  g.madvise_calls.fetch_add(1, std::memory_order_relaxed);
  g.decommitted.fetch_add(size, std::memory_order_relaxed);
}

void populate(void *p, size_t size) {
#ifdef MADV_POPULATE_WRITE
  if (!p || size == 0) return;
  ::madvise(p, size, MADV_POPULATE_WRITE);
  g.madvise_calls.fetch_add(1, std::memory_order_relaxed);
#else
  (void)p, (void)size;
#endif
}

void *reserve(size_t size, size_t align) {
  const size_t page = page_size();
  if (size == 0 || size % page != 0 || align < page || (align & (align - 1)) != 0) return nullptr;
  return aligned_mmap(size, align, PROT_NONE, MAP_NORESERVE);
}

bool commit(void *p, size_t size) {
  mark_started();
  if (!admit() || ::mprotect(p, size, PROT_READ | PROT_WRITE) != 0) {
    g.refused.fetch_add(1, std::memory_order_relaxed);
    errno = ENOMEM;
    return false;
  }
  g.map_calls.fetch_add(1, std::memory_order_relaxed);
  account_mapped(size, use::data);
  return true;
}

void release(void *p, size_t size) {
  // A fresh inaccessible mapping over the range drops its pages (and their
  // commit charge) in one call and keeps the address space reserved.
  if (::mmap(p, size, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE | MAP_FIXED, -1, 0) == MAP_FAILED)
    ::madvise(p, size, MADV_DONTNEED);  // out of mappings: the pages still go; commit() works either way
  g.unmap_calls.fetch_add(1, std::memory_order_relaxed);
  g.mapped.fetch_sub(size, std::memory_order_relaxed);
  g.released.fetch_add(size, std::memory_order_relaxed);
}

void unreserve(void *p, size_t size) { ::munmap(p, size); }

memory_stats memory_snapshot() {
  auto ld = [](const std::atomic<uint64_t> &a) { return a.load(std::memory_order_relaxed); };
  return {ld(g.mapped),    ld(g.peak),        ld(g.metadata),  ld(g.released), ld(g.decommitted),
          ld(g.map_calls), ld(g.unmap_calls), ld(g.madvise_calls), ld(g.refused)};
}

}  // namespace sysref::os
