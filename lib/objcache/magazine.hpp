// Magazines: fixed-capacity stacks of constructed objects (Bonwick & Adams).
// The first word is the percpu layer's counted-stack word,
// [gets:24 | puts:24 | rounds:16]; see percpu.hpp, counted stacks.
#pragma once
#include <cstddef>
#include <cstdint>

#include "../percpu/percpu.hpp"
#include "../slab/slab.hpp"

namespace sysref::objcache {

struct magazine {
  uint64_t word;       // rounds and the unfolded get/put counts
  uint32_t capacity;
  uint32_t size_index; // into mag_sizes
  magazine *next;      // depot list link
  // capacity item pointers follow the header (percpu's stack layout: +24)
};
static_assert(sizeof(magazine) == 24, "items start at +24, where percpu expects them");

inline void **items(magazine *m) { return reinterpret_cast<void **>(m + 1); }

// Capacities grow through this table under depot contention (libumem's rule).
inline constexpr uint32_t mag_sizes[] = {3, 7, 15, 31, 63, 127, 255};
inline constexpr unsigned mag_size_count = sizeof mag_sizes / sizeof mag_sizes[0];

// Where a cache starts: the largest magazine with (rounds + 1) * size at
// most mag_start_bytes: 255 rounds up to 64 bytes, 127 up to 128, 63 up to
// 256, 31 up to 512, 15 up to 1 KiB, 7 up to 2 KiB, 3 above. A magazine
// holds about 16 KiB whatever the size: a program that builds and tears
// down thousands of tiny nodes goes to the depot once per 255 of them, and
// one that uses many classes of large objects caches about 2 * 16 KiB of
// each per CPU, until contention grows the magazines.
inline constexpr size_t mag_start_bytes = size_t{16} << 10;
inline unsigned initial_mag_index(size_t objsize) {
  unsigned i = mag_size_count - 1;
  while (i > 0 && (mag_sizes[i] + 1) * objsize > mag_start_bytes) --i;
  return i;
}

inline uint64_t word_of(const magazine *m) { return __atomic_load_n(&m->word, __ATOMIC_RELAXED); }
inline uint32_t rounds_of(uint64_t w) { return static_cast<uint32_t>(w & percpu::stack_count_mask); }
inline uint64_t puts_of(uint64_t w) { return (w >> percpu::stack_lo_shift) & percpu::stack_counter_mask; }
inline uint64_t gets_of(uint64_t w) { return w >> percpu::stack_hi_shift; }

// A new empty magazine of mag_sizes[index] rounds from the library's own
// zones (never malloc); nullptr when there is no memory (flags as slab::alloc).
magazine *mag_alloc(unsigned index, int flags);
void mag_free(magazine *m);
size_t mag_bytes(const magazine *m);

}  // namespace sysref::objcache
