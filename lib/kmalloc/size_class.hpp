// Private to lib/kmalloc: the size classes. Up to 128 bytes the classes are
// 16 bytes apart; above, every power-of-two range is split into 8 equal
// steps, so a block wastes at most 1/8 of the size asked for. Each class is
// an objcache, created on first use (no static constructors: the library may
// run before constructors do, under the preload shim).
#pragma once
#include <array>
#include <atomic>
#include <bit>
#include <cstddef>
#include <cstdint>

#include "../objcache/objcache.hpp"

namespace sysref::kmalloc {

inline constexpr size_t max_small = size_t{32} << 10;  // above: large.cpp
inline constexpr unsigned num_classes = 72;  // 16..128, 7 + 7 * 8 eighths of 2^7..2^15, 32 KiB

// Sizes in index order: index < 8 -> (i + 1) * 16; then n = 7 + (i - 8) / 8,
// k = (i - 8) % 8 -> 2^n * (9 + k) / 8.
constexpr size_t class_size_of(unsigned i) {
  if (i < 8) return size_t{i + 1} * 16;
  unsigned n = 7 + (i - 8) / 8, k = (i - 8) % 8;
  return size_t{9 + k} << (n - 3);
}

// The class for a size above 128 by bit arithmetic: with s = size - 1 in
// [2^n, 2^(n+1)), the top four bits of s pick the step.
constexpr unsigned class_index_arith(size_t size) {
  if (size <= 128) return size ? static_cast<unsigned>((size + 15) / 16 - 1) : 0;
  size_t s = size - 1;
  unsigned n = static_cast<unsigned>(std::bit_width(s)) - 1;
  return 8 + (n - 7) * 8 + static_cast<unsigned>(s >> (n - 3)) - 8;
}

// Every class size is a multiple of 16, so sizes within one 16-byte step
// share a class and a table indexed by (size + 15) / 16 covers <= 1024.
inline constexpr size_t table_limit = 1024;
inline constexpr auto small_table = [] {
  std::array<uint8_t, table_limit / 16 + 1> t{};
  for (size_t i = 0; i < t.size(); ++i) t[i] = static_cast<uint8_t>(class_index_arith(i * 16));
  return t;
}();

// O(1): a table load up to 1 KiB, a bit scan above. size <= max_small.
inline unsigned class_index(size_t size) {
  if (size <= table_limit) return small_table[(size + 15) >> 4];
  return class_index_arith(size);
}

// The smallest power-of-two class holding n bytes (n <= max_small). Its
// objects are aligned to min(size, page size).
inline unsigned pow2_class_index(size_t n) { return class_index(std::bit_ceil(n < 16 ? 16 : n)); }

// One cache line per class: malloc reads its fast word above 1 KiB (below,
// g_small_words) and its cache when the pop refuses. (free finds the
// class's cache, double-free keys and fast word in the zone's geometry
// line: set_tag.)
struct alignas(64) size_class {
  std::atomic<objcache::cache *> cache;  // null until the first allocation
  std::atomic<uintptr_t> fast_word;       // objcache::fast_word_of(cache) once made; 0 before
  slab::zone *zone;                       // set before cache is published
  uint32_t size;
  uint32_t align;
  char name[16];                          // objcache keeps the pointer
};
static_assert(sizeof(size_class) == 64);

// Hidden: the fast paths address it directly, not through the GOT.
[[gnu::visibility("hidden")]] extern size_class g_classes[num_classes];

// malloc's lookup: a size's fast word (size_class::fast_word) with no line
// of the class or its cache in between, so that the pop's loads start one
// load after the call. By 16-byte step up to table_limit (small_table's
// steps), by class above. 0 until the class is made.
[[gnu::visibility("hidden")]] extern std::atomic<uintptr_t> g_small_words[small_table.size()];
inline uintptr_t fast_word_for(size_t size) {  // size <= max_small
  if (__builtin_expect(size <= table_limit, 1))
    return g_small_words[(size + 15) >> 4].load(std::memory_order_relaxed);
  return g_classes[class_index_arith(size)].fast_word.load(std::memory_order_relaxed);
}

objcache::cache *create_class(unsigned index, int flags);  // slow path: NULL + errno

inline objcache::cache *cache_for(unsigned index, int flags) {
  objcache::cache *c = g_classes[index].cache.load(std::memory_order_acquire);
  return c ? c : create_class(index, flags);
}

// The class whose zone is z, or nullptr: z is another layer's zone. The
// zone's tag (class index + 1, in the geometry's cache line) names the
// class; the class's own record must name the zone back.
inline size_class *class_of_zone(const slab::zone *z) {
  unsigned i = slab::tag_of(z) - 1u;  // tag 0 (not ours) wraps past the end
  if (__builtin_expect(i >= num_classes, 0)) return nullptr;
  size_class *c = &g_classes[i];
  return __builtin_expect(c->zone == z, 1) ? c : nullptr;
}

}  // namespace sysref::kmalloc
