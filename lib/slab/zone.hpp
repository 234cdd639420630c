// Private to lib/slab: the zone and slab structures and the helpers the
// allocation paths and zone management share.
//
// A slab is slab_size bytes aligned to slab_size; its header sits at the base
// and objects follow at first_offset. A list of free objects threads through
// their first word and ends at the slab base (so the list word alone tells
// which slab it belongs to: word & ~mask). A free object's second word holds
// the zone secret XOR its address (double-free detection).
//
// Where a slab's free objects are:
//   - active (bound to one CPU): in that CPU's slot word W (rseq-owned), in
//     `remote` (frees from other CPUs, a lock-free stack), and in `free` /
//     the unused tail (zone lock).
//   - not active: in `free` and the unused tail (zone lock); `remote` holds
//     base | detached_bit, which sends remote freers to the zone lock.
//   - in flight to any slab: on the zone's `deferred` stack, where a free
//     that cannot take the zone lock at once leaves the object (lock-free:
//     a free never waits, so one from a signal handler that interrupted the
//     zone's own slow path cannot deadlock). Whoever next holds the lock
//     files them (drain_deferred).
// nfree counts `free` plus the unused tail, always, under the zone lock.
//
// A slab is bound to a CPU (its `remote` loses the detached bit) only after
// the compare_store that publishes it in the slot succeeded, under the zone
// lock: before that, remote frees go to the lock and nothing can be pushed
// on a stack that a failed bind would have to undo.
//
// Lock order: the registry, zone->refill, zone->lock; then pagemap's grow
// lock and the pool lock (pool.cpp), leaves. For fork (prefork, zone.cpp):
// lazy-zone making, zone-of-zones init, the registry, every zone's refill
// then lock, the page map's grow lock, the pool lock.
#pragma once
#include <atomic>

#include "../os/os.hpp"
#include "../percpu/percpu.hpp"
#include "slab.hpp"

namespace sysref::slab {

inline constexpr uint64_t slab_magic = 0x5359535245465342ull;  // "SYSREFSB"
inline constexpr uint64_t zone_magic = 0x53595352455a4f4eull;  // "SYSREZON"
inline constexpr uintptr_t detached_bit = 1;

enum class where : uint8_t { active, partial, full, spare, reserve };

struct slab {
  uint64_t magic;
  zone *owner;
  std::atomic<uintptr_t> remote;
  uintptr_t free;  // list ending at the slab base
  uint32_t nfree;  // objects on `free` plus never-used tail objects
  uint32_t bump;   // index of the first never-used object
  where list;
  bool is_reserve;
  uint16_t resident;  // pages from the base made resident by populate_ahead (alloc.cpp)
  slab *prev, *next;
};
static_assert(sizeof(slab) <= 64, "a slab header fits one line");

struct slab_list {
  slab *head = nullptr;
  size_t count = 0;
  void push(slab *s) {
    s->prev = nullptr;
    s->next = head;
    if (head) head->prev = s;
    head = s;
    ++count;
  }
  void remove(slab *s) {
    if (s->prev) s->prev->next = s->next;
    else head = s->next;
    if (s->next) s->next->prev = s->prev;
    --count;
  }
};

struct zone : geometry {  // the geometry first: slab.hpp reads it inline
  uint64_t magic;
  uint32_t nobjs;  // objects per slab
  char name[32];
  size_t slab_size;
  uint32_t batch;
  size_t slot;            // per-CPU slot: allocs at +8, W at +16, frees at +24 (counted list)
  os::lock lock;
  os::lock refill;
  bool running;           // has had a slab from the OS: reserves now for emergencies
  os::use mapped_as;      // metadata for the library's internal zones
  unsigned spare_low, spare_high;
  slab_list lists[5];     // indexed by where
  uint64_t sync_maps, proactive_maps, proactive_failures, released, reserve_allocs;
  std::atomic<uint64_t> errors;
  std::atomic<uintptr_t> deferred;  // frees waiting for the lock: linked by word 0, 0-terminated
  bool type_stable;       // never unmaps a slab: late readers of a freed object stay safe
  zone *reg_next;         // the zone registry (fork: every zone's locks), g_registry lock
  zone *next_public;      // the registry of program-made zones (publish)
  bool is_public;
  uint64_t last_bind_ns;  // when a slab was last bound to a CPU: idle zones lose their spares

  size_t allocs_off() const { return slot + 8; }
  size_t w_off() const { return slot + 16; }
  size_t frees_off() const { return slot + 24; }
  slab_list &on(where w) { return lists[static_cast<int>(w)]; }
  uintptr_t marker(uintptr_t obj) const { return secret ^ obj; }
};

inline slab *slab_of(const zone *z, uintptr_t p) { return reinterpret_cast<slab *>(p & ~z->mask); }
inline uintptr_t base_of(const slab *s) { return reinterpret_cast<uintptr_t>(s); }
inline uintptr_t *words(uintptr_t obj) { return reinterpret_cast<uintptr_t *>(obj); }  // link, marker

// Shared between alloc.cpp and zone.cpp (all with z->lock held).
void move(zone *z, slab *s, where to);
// A slab whose objects are all free: keep it spare (always with keep), or
// queue it for release (returned: the caller releases it after dropping the
// lock).
slab *retire_empty(zone *z, slab *s, bool keep = false);
void unmap_slab(zone *z, slab *s);  // to the OS at once, without the lock
// Slabs linked by next leave the zone for the pool (pool.cpp), without the
// lock; w says whether the pool's lock may be waited for (else: unmapped).
void release_chain(zone *z, slab *chain, os::wait w = os::wait::unless_reentered);
// Files every deferred free into its slab (lock held); slabs that became
// empty and must be released are prepended to *release.
void drain_deferred(zone *z, slab **release);
// A slab from the pool or the OS, in the page map; nullptr if neither gave
// one (or w forbade a wait). May be called with z->lock held.
slab *map_slab(zone *z, os::wait w = os::wait::yes);

// ---- the empty-slab pool (pool.cpp) -------------------------------------------
// Empty slabs no zone needs stay mapped in a process-wide pool, by slab size,
// for any zone to take (what one size class gave up is the next slab of
// another, its pages already faulted in); one that sat there for
// SYSREF_DECAY_MS goes back to the OS. Out of the page map while pooled.
slab *pool_take(size_t slab_size, os::use u, os::wait w);
bool pool_give(slab *s, size_t slab_size, os::use u, os::wait w);  // false: not taken
// Spare slabs of zones that bound none for idle_ns move to the pool (zone.cpp);
// zone locks only if free at once.
void trim_idle_zones(uint64_t now, uint64_t idle_ns);
void pool_prefork();  // the pool lock, for fork (a leaf: last)
void pool_postfork();

// ---- the fast paths, inline so the C ABI entry points are the whole path ---
// (static: they contain rseq critical sections, see SR_RSEQ_FN)
void *alloc_slow(zone *z, int flags);
// p's slab is not this CPU's active one (or the slot was out of reach);
// tagged: p's free marker may be this call's own (see push_counted).
void free_slow(zone *z, uintptr_t p, bool tagged);
// The object leaves the allocator: no free marker any more, zeroed on request.
inline void *hand_out(const zone *z, uintptr_t obj, int flags) {
  auto *o = reinterpret_cast<uintptr_t *>(obj);
  o[1] = 0;
  if (flags & SR_ZERO) __builtin_memset(o, 0, z->objsize);
  return o;
}
[[noreturn, gnu::cold]] void corrupted(zone *z, uintptr_t obj);
[[gnu::cold]] void bad_free(zone *z, void *ptr, const char *what);

// Pops an object from the current CPU's slot (the pop counts it).
SR_RSEQ_FN bool pop_object(zone *z, int flags, uintptr_t *obj) {
  os::wait w = flags & SR_NOWAIT ? os::wait::no : os::wait::yes;
  if (__builtin_expect(!percpu::pop_counted(z->w_off(), z->mask, obj, w), 0)) return false;
  // The next link (now the list head) must stay inside this slab: anything
  // else is a write after free, and following it would spread the damage.
  if (__builtin_expect(((*reinterpret_cast<uintptr_t *>(*obj) ^ *obj) & ~z->mask) != 0, 0))
    corrupted(z, *obj);
  return true;
}

SR_RSEQ_FN void *alloc_fast(zone *z, int flags) {
  uintptr_t obj;
  if (__builtin_expect(!pop_object(z, flags, &obj), 0)) return alloc_slow(z, flags);
  return hand_out(z, obj, flags);
}

// A free's checks and its push onto this CPU's slot: true when p is done
// with (pushed, or reported), false when it needs free_slow (with *tagged).
SR_RSEQ_FN bool free_to_slot(zone *z, uintptr_t p, bool *tagged) {
  auto *ptr = reinterpret_cast<void *>(p);
  if (__builtin_expect(!starts_object(*z, p), 0)) {
    bad_free(z, ptr, "kfree_obj: not the start of an object of zone");
    return true;
  }
  switch (percpu::push_counted(z->w_off(), ~z->mask, p & ~z->mask, p, z->marker(p),
                               os::wait::unless_reentered)) {
    case percpu::pushed:
      return true;
    case percpu::duplicate:
      bad_free(z, ptr, "kfree_obj: double free in zone");
      return true;
    case percpu::not_owner_tagged:
      *tagged = true;
      return false;
    case percpu::not_owner:
      break;
  }
  *tagged = false;
  return false;
}

SR_RSEQ_FN void free_fast(zone *z, void *ptr) {
  if (!ptr) return;
  uintptr_t p = reinterpret_cast<uintptr_t>(ptr);
  bool tagged;
  if (!free_to_slot(z, p, &tagged)) free_slow(z, p, tagged);
}

}  // namespace sysref::slab
