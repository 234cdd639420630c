// Private to lib/kmalloc: blocks above 32 KiB, mapped directly. Each block
// owns whole 64 KiB granules of the page map, which point (tagged with
// pagemap::foreign_owner_bit) at a record kept outside the block, so that
// looking a pointer up never touches the memory it points to.
#pragma once
#include <cstddef>
#include <cstdint>

namespace sysref::kmalloc::large {

struct record {
  uint64_t magic;
  uintptr_t start;
  size_t len;  // mapped bytes: the usable size
};

// A block of at least size bytes aligned to align (0 or a power of two).
// SR_NOWAIT uses the span heap only if its lock is free, and may map.
void *alloc(size_t size, size_t align, int flags);
// The record of the block whose granules hold p, or nullptr (p may be
// inside the block: compare record::start).
record *find(const void *p);
// Grows r's block in place to at least size bytes (the span heap's room
// right after it); false if there is none. SR_ZERO zeroes the growth.
bool grow_in_place(record *r, size_t size, int flags);
// Unmaps the block; false if another thread is releasing it (a double free).
bool release(record *r);

struct counters {
  uint64_t allocs, frees, bytes_mapped, bytes_unmapped;  // blocks handed out / given back
  uint64_t reused;  // allocations served (in part) by kept bytes of freed blocks
  uint64_t peak_live_bytes;  // most bytes in blocks handed out at once
  uint64_t kept_bytes;       // freed blocks kept mapped for reuse, now
  uint64_t decayed_bytes;    // kept bytes unmapped because nobody reused them in time
};
// Gives every kept byte back now (low memory, tests); bytes given back.
size_t flush_kept();
counters snapshot();

}  // namespace sysref::kmalloc::large
