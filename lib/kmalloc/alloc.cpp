// The core paths: where a request goes (a size class, a power-of-two class
// for alignment, or a large mapping) and how a pointer is traced back to its
// owner through the page map without reading the pointer's memory.
#include <atomic>
#include <bit>
#include <cerrno>
#include <cstdint>
#include <cstring>
#include <sysref/flags.h>

#include "../os/os.hpp"
#include "kmalloc.hpp"
#include "large.hpp"
#include "size_class.hpp"

namespace sysref::kmalloc {
namespace {

constinit std::atomic<uint64_t> g_errors{0};

constexpr int get_flags = SR_NOWAIT | SR_USE_RESERVE;  // what objcache::get takes

// ---- double frees of small blocks ----------------------------------------------
// A small block's word 1 is its free mark while it is free: key ^ address
// once kmalloc freed it (it sits in a magazine unchanged), the zone's
// free_secret ^ address once it went down to the slab layer. Both are in
// the zone's geometry line (upper_key and secret). Every hand-out
// clears it (slab::hand_out too), so a live block's word 1 is the program's,
// and a free that finds either mark there is a second free (a live block
// matches by chance with probability 2^-64 per free).
inline uintptr_t &mark_word(void *p) { return static_cast<uintptr_t *>(p)[1]; }
// The block leaves for the program: no mark.
inline void *handed_out(void *p) {
  if (__builtin_expect(p != nullptr, 1)) mark_word(p) = 0;
  return p;
}
// The same for a pop, which never gives NULL.
inline void *unmarked(void *p) {
  mark_word(p) = 0;
  return p;
}

// Reported, counted, and the block left where it is (free keeps errno).
[[gnu::noinline, gnu::cold]] void double_free(void *p) {
  int saved = errno;
  g_errors.fetch_add(1, std::memory_order_relaxed);  // counted first: abort mode does not return
  os::report_error("sr_free: double free", nullptr, p);
  errno = saved;
}

// The free of a small block of the class whose zone line is g: marked,
// then cached (never twice).
inline void free_small(const slab::geometry &g, objcache::cache *oc, void *p) {
  uintptr_t x = mark_word(p) ^ reinterpret_cast<uintptr_t>(p);
  if (__builtin_expect(x == g.upper_key || x == g.secret, 0)) return double_free(p);
  mark_word(p) = g.upper_key ^ reinterpret_cast<uintptr_t>(p);
  if (__builtin_expect(objcache::put_at(g.upper_word, p), 1)) return;  // classes have no limit
  objcache::put_refused(oc, p);
}

void *from_class(unsigned index, int flags) {
  objcache::cache *c = cache_for(index, flags);
  if (!c) return nullptr;
  void *p = objcache::get(c, flags & get_flags);
  // Zeroed here, not below: a cached object holds whatever it last held.
  if (p && (flags & SR_ZERO)) std::memset(p, 0, g_classes[index].size);
  return handed_out(p);
}

// What a pointer is, from the page map and the layer's own records alone.
struct block {
  enum kind_t : uint8_t { foreign, interior, small, big } kind;
  size_class *cls;
  large::record *rec;
  size_t usable;
};

block locate(const void *p) {
  if (slab::zone *z = slab::owner_of(p)) {
    size_class *c = class_of_zone(z);
    if (!c) return {block::foreign, nullptr, nullptr, 0};  // another layer's zone
    if (!slab::is_object_start(z, p)) return {block::interior, c, nullptr, 0};
    return {block::small, c, nullptr, c->size};
  }
  if (large::record *r = large::find(p)) {
    if (r->start != reinterpret_cast<uintptr_t>(p)) return {block::interior, nullptr, r, 0};
    return {block::big, nullptr, r, r->len};
  }
  return {block::foreign, nullptr, nullptr, 0};
}

// Counted first: in abort mode report_error does not return.
[[gnu::cold]] void bad_pointer(const block &b, const void *p, const char *foreign_msg,
                               const char *interior_msg) {
  g_errors.fetch_add(1, std::memory_order_relaxed);
  os::report_error(b.kind == block::interior ? interior_msg : foreign_msg, nullptr, p);
}

bool usable(const block &b) { return b.kind == block::small || b.kind == block::big; }

// Everything but a plain small request: zeroing, a class not yet made,
// alignment, large sizes.
[[gnu::noinline]] void *alloc_other(size_t size, size_t align, int flags) {
  if (size > static_cast<size_t>(PTRDIFF_MAX)) {
    errno = ENOMEM;
    return nullptr;
  }
  if (align <= 16) {
    if (size <= max_small) return from_class(class_index(size), flags);
    return large::alloc(size, 0, flags);
  }
  size_t need = size > align ? size : align;
  if (align <= os::page_size() && need <= max_small) return from_class(pow2_class_index(need), flags);
  return large::alloc(size, align, flags);  // zeroes a reused mapping for SR_ZERO
}

// A large block or a bad pointer.
[[gnu::noinline]] void free_other(void *p) {
  int saved = errno;
  struct restore {
    int v;
    ~restore() { errno = v; }
  } keep{saved};
  block b = locate(p);
  if (b.kind == block::small)
    free_small(slab::geometry_of(b.cls->zone), b.cls->cache.load(std::memory_order_relaxed), p);
  else if (b.kind == block::big) {
    if (!large::release(b.rec)) bad_pointer(b, p, "sr_free: double free of a large block", nullptr);
  } else
    bad_pointer(b, p, "sr_free: pointer not from this allocator", "sr_free: not the start of a block");
}

}  // namespace

namespace {
// Where malloc's pop refused (or the class is not made yet): the class's
// cache, then the out-of-line get.
[[gnu::noinline]] void *alloc_refused(size_t size, int flags) {
  objcache::cache *c = g_classes[class_index(size)].cache.load(std::memory_order_acquire);
  if (!c) return alloc_other(size, 0, flags);
  return handed_out(objcache::get_refused(c, flags & get_flags));
}
}  // namespace

// malloc's fast path: the size's fast word, then the pop from the loaded
// magazine; no line of the class or of its cache.
SR_FAST_ENTRY void *alloc(size_t size, size_t align, int flags) {
  if (__builtin_expect(size <= max_small && align <= 16 && !(flags & SR_ZERO), 1)) {
    uintptr_t word = fast_word_for(size);
    if (void *p; __builtin_expect(word && objcache::get_at(word, p), 1)) return unmarked(p);
    return alloc_refused(size, flags);
  }
  return alloc_other(size, align, flags);
}

SR_FAST_ENTRY void *alloc_plain(size_t size) {
  if (__builtin_expect(size <= max_small, 1)) {
    uintptr_t word = fast_word_for(size);
    if (void *p; __builtin_expect(word && objcache::get_at(word, p), 1)) return unmarked(p);
    return alloc_refused(size, 0);
  }
  return alloc_other(size, 0, 0);
}

namespace {
// free's rest: a large block, another layer's zone, an interior pointer;
// with no owner, NULL (nothing to do) or a pointer the page map does not
// know: unmapped's (free_or), or reported as foreign (free).
[[gnu::noinline]] void free_rest(void *p, uintptr_t owner, void (*unmapped)(void *)) {
  if (!p) return;
  if (!owner && unmapped) return unmapped(p);
  free_other(p);
}

// free's fast path: the page map, then one zone line (layout, tag, and the
// class's objcache, key and fast word), then the push: three dependent loads
// before the CPU's magazine. A zone carries a tag only when kmalloc made it
// for a class (set_tag, once), so a tag in range names the class. Every
// call is a tail call, so the path needs no stack frame; whatever is not a
// small block of a class (NULL too: the page map has no owner for address
// 0) goes to free_rest.
[[gnu::always_inline]] inline void free_block(void *p, void (*unmapped)(void *)) {
  auto a = reinterpret_cast<uintptr_t>(p);
  auto owner = reinterpret_cast<uintptr_t>(slab::pagemap::get(a));
  // The fast path touches no errno; the slow paths (objcache::put_slow,
  // free_other) preserve it themselves, as free must.
  if (__builtin_expect(owner && !(owner & slab::pagemap::foreign_owner_bit), 1)) {
    const slab::geometry &g = slab::geometry_of(reinterpret_cast<const slab::zone *>(owner));
    auto *oc = static_cast<objcache::cache *>(g.upper);
    if (__builtin_expect(g.tag - 1u < num_classes && slab::starts_object(g, a), 1))  // tag 0 wraps
      return free_small(g, oc, p);
  }
  return free_rest(p, owner, unmapped);
}
}  // namespace

SR_FAST_ENTRY void free(void *p) { free_block(p, nullptr); }
SR_FAST_ENTRY void free_or(void *p, void (*unmapped)(void *)) { free_block(p, unmapped); }

namespace {
// A block that realloc grew out of its class is likely to grow again (a
// string built by appends, an array pushed to): it moves to room for a
// quarter more, never past the next power of two, so a block grown a byte
// at a time moves about once per three classes instead of every class,
// and a size class the program moves through leaves fewer blocks behind.
size_t growth_target(size_t size) {
  if (size > max_small) return size;
  size_t roomy = size + size / 4, pow2 = std::bit_ceil(size);
  size_t target = roomy < pow2 ? roomy : pow2;
  return target < max_small ? target : max_small;
}
}  // namespace

void *realloc(void *p, size_t size, int flags) {
  if (!p) return alloc(size, 0, flags);
  if (size == 0) {
    free(p);
    return nullptr;
  }
  block b = locate(p);
  if (!usable(b)) {
    bad_pointer(b, p, "sr_realloc: pointer not from this allocator", "sr_realloc: not the start of a block");
    errno = EINVAL;
    return nullptr;
  }
  // In place unless it would waste more than half the block; a block of the
  // smallest class it could move to stays too (moving would not shrink it).
  bool same_class = b.kind == block::small && size <= max_small &&
                    &g_classes[class_index(size)] == b.cls;
  if (size <= b.usable && (size >= b.usable / 2 || same_class)) {
    if (flags & SR_ZERO) std::memset(static_cast<char *>(p) + size, 0, b.usable - size);
    return p;
  }
  // A large block grows into the free space right after it, with no copy.
  if (b.kind == block::big && size > b.usable && large::grow_in_place(b.rec, size, flags)) return p;
  void *q = alloc(size > b.usable ? growth_target(size) : size, 0, flags);
  if (!q) return nullptr;  // p untouched
  std::memcpy(q, p, size < b.usable ? size : b.usable);
  free(p);
  return q;
}

size_t usable_size(const void *p) {
  if (!p) return 0;
  block b = locate(p);
  if (usable(b)) return b.usable;
  bad_pointer(b, p, "sr_malloc_usable_size: pointer not from this allocator",
              "sr_malloc_usable_size: not the start of a block");
  return 0;
}

bool owns(const void *p) {
  if (slab::zone *z = slab::owner_of(p)) return class_of_zone(z) != nullptr;
  return large::find(p) != nullptr;
}

void *aligned(size_t size, size_t align, int flags) {
  if (align == 0 || (align & (align - 1)) != 0) {
    errno = EINVAL;
    return nullptr;
  }
  return alloc(size, align, flags);
}

stats snapshot() {
  large::counters l = large::snapshot();
  return {l.allocs, l.frees, l.bytes_mapped, l.bytes_unmapped, g_errors.load(std::memory_order_relaxed),
          l.peak_live_bytes};
}

unsigned class_count() { return num_classes; }
size_t class_size(unsigned index) { return index < num_classes ? class_size_of(index) : 0; }
objcache::cache *class_cache(unsigned index) {
  return index < num_classes ? g_classes[index].cache.load(std::memory_order_acquire) : nullptr;
}

size_t reclaim() {
  size_t bytes = 0;
  for (unsigned i = 0; i < num_classes; ++i)
    if (objcache::cache *c = class_cache(i)) bytes += objcache::reclaim(c);
  bytes += large::flush_kept();
  return bytes;
}

}  // namespace sysref::kmalloc
