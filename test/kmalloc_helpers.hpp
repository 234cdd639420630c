// Shared by the kmalloc suite's files (test_kmalloc.cpp, test_kmalloc_free.cpp,
// test_kmalloc_large.cpp): sizes, alignment, block patterns, error counts.
#pragma once
#include <criterion/criterion.h>

#include <cstddef>
#include <cstdint>
#include <sched.h>
#include <thread>
#include <unistd.h>

#include "kmalloc/kmalloc.hpp"

namespace km = sysref::kmalloc;

namespace test_kmalloc {

inline constexpr size_t KiB = 1024, MiB = 1024 * KiB;

inline size_t page() { return static_cast<size_t>(sysconf(_SC_PAGESIZE)); }
inline uintptr_t addr(const void *p) { return reinterpret_cast<uintptr_t>(p); }
inline bool aligned_to(const void *p, size_t a) { return addr(p) % a == 0; }

inline uint64_t errors() { return km::snapshot().errors; }

inline unsigned char pattern(uint64_t seed, size_t i) { return static_cast<unsigned char>(seed * 131 + i * 7 + (i >> 8)); }

inline bool holds(const void *p, size_t n, uint64_t seed) {
  auto *b = static_cast<const unsigned char *>(p);
  for (size_t i = 0; i < n; ++i)
    if (b[i] != pattern(seed, i)) return false;
  return true;
}

inline bool all_zero(const void *p, size_t n) {
  auto *b = static_cast<const unsigned char *>(p);
  for (size_t i = 0; i < n; ++i)
    if (b[i]) return false;
  return true;
}

// The class index holding size bytes (through the layer's own interface).
inline unsigned class_for(size_t size) {
  unsigned i = 0;
  while (km::class_size(i) < size) ++i;
  return i;
}

}  // namespace test_kmalloc
