// The page map: which slab (or other owner) holds an address, at 64 KiB
// granularity. Two levels over 48-bit addresses; reads take no lock. The
// first leaves live in static storage so that registering a bootstrap
// reserve never needs a page request.
#pragma once
#include <cstddef>
#include <cstdint>

namespace sysref::slab::pagemap {

inline constexpr int granule_shift = 16;
inline constexpr size_t granule = size_t{1} << granule_shift;

// Owners are slab headers (granule-aligned, bit 0 clear) or, for layers
// above the slab layer (kmalloc's large blocks), any pointer with bit 0 set.
inline constexpr uintptr_t foreign_owner_bit = 1;

// Registers [start, start + len) (granule-aligned) to owner. Fails with
// EEXIST if any granule has an owner, ENOMEM if a leaf cannot be mapped,
// EINVAL for an address beyond 48 bits.
int set(uintptr_t start, size_t len, void *owner);
void clear(uintptr_t start, size_t len);
void *get(uintptr_t addr);

}  // namespace sysref::slab::pagemap
