// lib/slab: kmalloc_obj zones. One zone per object size; slabs aligned to
// their size (pointer -> slab is a mask); a per-CPU active slab whose free
// list lives in the CPU's slot; lock-free remote frees; proactive refill;
// registered reserves. This header is the layer's interface.
#pragma once
#include <cstddef>
#include <atomic>
#include <cstdint>

#include <sysref/kmalloc_obj.h>

#include "pagemap.hpp"

namespace sysref::slab {

// A zone's layout, at the start of every zone: what a pointer check needs,
// and what the layer above keeps there so that its free reads this one line.
// With off = (p & mask) - first_offset, p is an object start iff off < span
// and off is a multiple of objsize. For off < 2^32 and m = 2^64 / objsize
// rounded up, objsize divides off iff off * m < m (mod 2^64), and the
// quotient is the high half of off * m (Lemire, Kaser and Kurz, "Faster
// remainder by direct computation", 2019). An offset below the first
// object wraps, and fails off < span. One multiply and two compares: every
// free runs it, and on the churn workload this form took 3% less time than
// the odd-inverse multiply and rotate by a variable count it replaced.
struct geometry {
  uintptr_t mask;         // slab_size - 1
  uint64_t reciprocal;    // 2^64 / objsize, rounded up
  uint32_t first_offset;  // of the first object in a slab
  uint32_t objsize;
  uint32_t span;          // nobjs * objsize: offsets from there on are the slab's slack
  uint16_t unused;
  uint16_t tag;           // the layer above's (kmalloc: class index + 1); 0 = none (zones start zeroed)
  uint64_t secret;        // free marker: a free object's word 1 is secret ^ its address (odd)
  // The layer above's, set with tag (kmalloc: the class's objcache, its
  // own free mark, and the cache's fast word).
  void *upper;
  uint64_t upper_key;
  uintptr_t upper_word;
};
static_assert(sizeof(geometry) == 64, "a free reads one line of its zone");

struct zone;

inline const geometry &geometry_of(const zone *z) { return *reinterpret_cast<const geometry *>(z); }
// The tag and pointer, read with the geometry (one cache line: zones are
// 64-byte aligned), so a free finds its owner from the line it reads anyway.
inline uint32_t tag_of(const zone *z) { return geometry_of(z).tag; }
inline void *upper_of(const zone *z) { return geometry_of(z).upper; }
inline void set_tag(zone *z, uint16_t tag, void *upper, uint64_t upper_key, uintptr_t upper_word) {
  auto *g = reinterpret_cast<geometry *>(z);
  g->upper = upper;
  g->upper_key = upper_key;
  g->upper_word = upper_word;
  g->tag = tag;
}
// The word a free object of z holds at +8 is this secret ^ its address
// (slab::hand_out clears it): a layer above that keeps its own mark there
// must never produce that value.
inline uint64_t free_secret(const zone *z) { return geometry_of(z).secret; }

// The layout's test, from its parts (geometry's comment).
inline bool is_start_offset(uint64_t off, uint32_t span, uint64_t reciprocal) {
  return (off < span) & (off * reciprocal < reciprocal);
}
inline uint64_t object_offset(uintptr_t p, uintptr_t mask, uint32_t first_offset) {
  return (p & mask) - first_offset;
}
inline bool starts_object(const geometry &g, uintptr_t p) {
  return is_start_offset(object_offset(p, g.mask, g.first_offset), g.span, g.reciprocal);
}
// Index of the object p starts in its slab, or ~0 if p is not the start of
// an object of this layout. Arithmetic only.
inline uintptr_t object_index(const geometry &g, uintptr_t p) {
  uint64_t off = object_offset(p, g.mask, g.first_offset);
  if (!is_start_offset(off, g.span, g.reciprocal)) return ~uintptr_t{0};
  __extension__ using u128 = unsigned __int128;
  return static_cast<uintptr_t>((u128{off} * g.reciprocal) >> 64);
}

// The same test, copied once into the line of another structure (objcache's
// cache head), for a hot check that should not read the zone.
struct start_test {
  uint64_t reciprocal;
  uint32_t mask;          // slabs hold 8 objects of at most max_object: a few MiB
  uint32_t first_offset;
  uint32_t span;
  bool operator()(uintptr_t p) const { return is_start_offset(object_offset(p, mask, first_offset), span, reciprocal); }
};
inline start_test start_test_of(const geometry &g) {
  return {g.reciprocal, static_cast<uint32_t>(g.mask), g.first_offset, g.span};
}

inline constexpr size_t max_object = size_t{256} << 10;
inline constexpr size_t min_slab = size_t{64} << 10;
static_assert(max_object * 16 <= UINT32_MAX, "geometry and start_test keep sizes and offsets in 32 bits");

// Functions returning int give 0 (or a count) on success, -errno on failure.
zone *zone_create(const char *name, size_t objsize, size_t align, unsigned flags);
void zone_destroy(zone *z);
// The library's own zones (magazines, cache structures): their pages count
// as metadata, and they keep no spare slabs.
void mark_internal(zone *z);

// An internal zone made on first use: `made` holds it once made (thread-safe;
// no static constructors, so it works before the program's constructors run).
struct lazy_zone {
  enum keep : bool { may_release = false, type_stable = true };
  std::atomic<zone *> made{nullptr};
  const char *name;
  size_t objsize, align;
  keep slabs = may_release;  // type_stable: empty slabs are kept, never unmapped
  zone *get() {
    zone *z = made.load(std::memory_order_acquire);
    return z ? z : make();
  }
  zone *make();  // nullptr + errno if it cannot be made
};
void *alloc(zone *z, int flags);
void free(zone *z, void *obj);
// free() of each of objs[0..n) (nullptrs skipped), with one zone lock
// acquisition for all the objects whose slab no CPU has bound.
void free_batch(zone *z, void *const *objs, size_t n);
int reserve(zone *z, void *mem, size_t len);
int set_spare(zone *z, unsigned low, unsigned high);
size_t slab_size(const zone *z);
size_t object_size(const zone *z);
int stats(zone *z, kmalloc_zone_stats *out);

// The zone that owns p, or nullptr when p lies in no slab the library knows
// (it reads only the page map, never p itself).
inline zone *owner_of(const void *p) {
  auto v = reinterpret_cast<uintptr_t>(pagemap::get(reinterpret_cast<uintptr_t>(p)));
  if (v & pagemap::foreign_owner_bit) return nullptr;
  return reinterpret_cast<zone *>(v);  // slabs are registered under their zone
}
// Whether p is the start of an object in z's slab layout (arithmetic only).
inline bool is_object_start(const zone *z, const void *p) {
  return starts_object(geometry_of(z), reinterpret_cast<uintptr_t>(p));
}
// Both: p is the start of one of z's objects.
inline bool holds(const zone *z, const void *p) { return owner_of(p) == z && is_object_start(z, p); }

// Zones the program made through kmalloc_obj_zone_create (the C ABI marks
// them), for the report: fn(z, arg) under the registry lock, newest first,
// until it returns non-zero. Lock order: registry, then zone locks.
void publish(zone *z);
int for_each_public(int (*fn)(zone *z, void *arg), void *arg);
const char *name_of(const zone *z);

// Memory back to the OS on a timer (pool.cpp). decay_tick does the work at
// most every SYSREF_DECAY_MS / 4, from any slow path that holds no library
// lock (and the reaper thread): idle zones' spare slabs go to the pool, and
// pooled slabs unused for SYSREF_DECAY_MS are unmapped. Cheap when not due.
void decay_tick();
// Unmaps every pooled slab now (kmalloc_reclaim, low memory); bytes.
size_t flush_pool();
struct pool_stats {
  uint64_t bytes;          // empty slabs pooled now, mapped
  uint64_t slabs_reused;   // slabs a zone took from the pool instead of the OS
  uint64_t bytes_decayed;  // unmapped by the timer (flush_pool not counted)
};
pool_stats pool_snapshot();

// fork (the preload shim's atfork handlers): prefork takes every lock of the
// layer (lazy-zone making, zone-of-zones init, the zone registry, each
// zone's refill and lock, the page map's grow lock); the other two release
// them, in the parent and in the child (whose only thread is the one that
// took them).
void prefork();
void postfork_parent();
void postfork_child();

}  // namespace sysref::slab
