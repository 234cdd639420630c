// The page map: which zone (or other owner) holds an address, at 64 KiB
// granularity. Two levels over 48-bit addresses; reads take no lock. The
// first leaves live in static storage so that registering a bootstrap
// reserve never needs a page request.
#pragma once
#include <cstddef>
#include <atomic>
#include <cstdint>

#include "../os/os.hpp"

namespace sysref::slab::pagemap {

inline constexpr int granule_shift = 16;
inline constexpr size_t granule = size_t{1} << granule_shift;

// Owners are zones, for their slabs (bit 0 clear: the slab itself is the
// address masked by the zone's slab size), or, for layers above the slab
// layer (kmalloc's large blocks), any pointer with bit 0 set.
inline constexpr uintptr_t foreign_owner_bit = 1;

// Registers [start, start + len) (granule-aligned) to owner. Fails with
// EEXIST if any granule has an owner, ENOMEM if a leaf cannot be mapped,
// EINVAL for an address beyond 48 bits.
// A leaf is mapped under the grow lock, taken as w allows (else EAGAIN).
int set(uintptr_t start, size_t len, void *owner, os::wait w = os::wait::yes);
void clear(uintptr_t start, size_t len);
// fork: takes and releases the grow lock (slab::prefork calls them).
void prefork();
void postfork();

namespace detail {
inline constexpr int address_bits = 48;
inline constexpr int leaf_bits = 16;
inline constexpr size_t leaf_entries = size_t{1} << leaf_bits;
inline constexpr size_t top_entries = size_t{1} << (address_bits - granule_shift - leaf_bits);
using leaf = std::atomic<void *>[leaf_entries];
[[gnu::visibility("hidden")]] extern std::atomic<leaf *> g_top[top_entries];
}  // namespace detail

// The owner of addr, or nullptr. Two loads, no lock: inline because every
// checked free asks.
inline void *get(uintptr_t addr) {
  using namespace detail;
  size_t i = addr >> granule_shift;
  if (i >> leaf_bits >= top_entries) return nullptr;  // beyond 48 bits (one compare on the index)
  leaf *l = g_top[i >> leaf_bits].load(std::memory_order_acquire);
  return l ? (*l)[i & (leaf_entries - 1)].load(std::memory_order_acquire) : nullptr;
}

}  // namespace sysref::slab::pagemap
