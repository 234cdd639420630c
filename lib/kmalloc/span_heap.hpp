// Private to lib/kmalloc: the address space of large blocks (large.cpp).
// Blocks are carved from address space the heap reserved for itself, so a
// freed block's pages serve the next block at the same addresses, freed
// neighbours merge, and a block grows into the free space beside it. What
// nobody reuses goes back to the OS on the decay timer (SYSREF_DECAY_MS).
#pragma once
#include <cstddef>
#include <cstdint>

#include "../os/os.hpp"

namespace sysref::kmalloc::span_heap {

// A usable block of len bytes (whole granules) aligned to align (a power of
// two, at least a granule), or nullptr with errno = ENOMEM. [*old_start,
// *old_start + *old_len) is the part of it that held an earlier block and may
// hold its data; the rest reads as zero. Under os::wait::no it never waits
// for the heap's lock (it maps the block on its own instead).
void *take(size_t len, size_t align, os::wait w, uintptr_t *old_start, size_t *old_len);
// Grows the block [start, start + len) in place to new_len bytes, from the
// kept or vacant range right after it; false if neither has the room (or
// the lock is out of reach under w). [*old_start, *old_start + *old_len):
// the part of the growth that held an earlier block (the rest reads zero).
bool grow(uintptr_t start, size_t len, size_t new_len, os::wait w, uintptr_t *old_start, size_t *old_len);
// A freed block (already out of the page map): kept for reuse as far as
// live and kept bytes stay within the most bytes live at once in the last
// two decay periods, or given back.
void give(uintptr_t start, size_t len);
// Gives back every kept byte now; bytes given back.
size_t flush();
// Gives back what nobody reused for SYSREF_DECAY_MS (the scavenge's hook).
void decay();

struct counters {
  uint64_t reused;         // blocks served (in part) from kept bytes
  uint64_t kept_bytes;     // freed bytes kept for reuse, now
  uint64_t decayed_bytes;  // kept bytes given back because nobody reused them in time
};
counters snapshot();

// fork: the heap's lock is a leaf.
void prefork();
void postfork();

}  // namespace sysref::kmalloc::span_heap
