// Private to lib/sysref: the count encoding, the per-class state and the
// index, shared by object.cpp (the life cycle), index.cpp and class.cpp.
// The theory statement is at the top of object.cpp.
#pragma once
#include <atomic>
#include <cstddef>
#include <cstdint>

#include "../objcache/objcache.hpp"
#include "../os/os.hpp"
#include "rbtree.hpp"
#include "sysref.hpp"

namespace sysref::objects {

// ---- counts (struct sysref.refcnt) ------------------------------------------
// Creating and terminating each have a base below zero; temporary references
// taken in a phase count up from its base, at most phase_room of them.
inline constexpr int32_t cached = 0;                    // in the class's cache, findable, not gettable
inline constexpr int32_t creating_base = -0x40000000;   // DragonFly's -0x40000000
inline constexpr int32_t terminating_base = -0x20000000;
inline constexpr int32_t phase_room = 0x10000000;
inline constexpr int32_t dead = INT32_MIN;              // cached with a seen sysid, or being given back
inline constexpr int32_t saturated_zone = 0x60000000;   // active counts from here are stuck
inline constexpr int32_t saturated = 0x70000000;

inline bool in_phase(int32_t v, int32_t base) { return v >= base && v < base + phase_room; }

// ---- state bits (struct sysref.state) ----------------------------------------
inline constexpr uint32_t st_seen = 1;  // the sysid was seen from outside: retire it

inline std::atomic_ref<int32_t> count(struct sysref *sr) { return std::atomic_ref<int32_t>(sr->refcnt); }
inline std::atomic_ref<uint32_t> state(struct sysref *sr) { return std::atomic_ref<uint32_t>(sr->state); }

// ---- per-class state (behind sysref_class.sr_state) ----------------------------
// Per-CPU counters of the life cycle, at slot + payload_offset + 8 * index.
enum counter : unsigned { c_allocs, c_activations, c_aborts, c_terminations, c_releases, c_lookups, c_misses, n_counters };

struct class_state {
  sysref_class *cls;
  objcache::cache *cache;
  size_t counters;  // per-CPU slot
  std::atomic<uint64_t> constructions, destructions, retired;
  class_state *next;  // the registry, oldest first
};

inline class_state *state_of(const sysref_class *cls) {
  return static_cast<class_state *>(std::atomic_ref<void *>(const_cast<sysref_class *>(cls)->sr_state)
                                        .load(std::memory_order_acquire));
}
// False, with a diagnostic naming fn and the class, if cls is not a class
// sysref_alloc would take.
bool check_class(const char *fn, const sysref_class *cls);
// The class's state, made on first use (its cache too); NULL + errno.
class_state *ensure_state(sysref_class *cls);
void count_event(const class_state *st, counter c);
uint64_t counter_sum(const class_state *st, counter c);
// Lookups of sysids that no object has (per CPU; made with the first class).
void count_unknown_lookup();
uint64_t unknown_lookups();

inline void *object_of(struct sysref *sr) { return reinterpret_cast<char *>(sr) - sr->srclass->offset; }
inline struct sysref *sysref_at(void *obj, const sysref_class *cls) {
  return reinterpret_cast<struct sysref *>(static_cast<char *>(obj) + cls->offset);
}

// ---- the life cycle, for the index (object.cpp) --------------------------------
// Under the shard lock: a reference if sr is active; otherwise marks the
// sysid seen so that the object never comes back with it.
bool take_for_lookup(struct sysref *sr);

// ---- the index (index.cpp) -------------------------------------------------------
sysid_t new_sysid();
void index_prepare();  // the lookup hints, once (with the first class)
void index_insert(struct sysref *sr);
void index_remove(struct sysref *sr);
// The object with that sysid, with a reference (take_for_lookup), or NULL.
// With only set, an object of another class is treated as unknown.
struct sysref *index_lookup(sysid_t id, const sysref_class *only);
int index_foreach(class_state *st, int (*fn)(void *obj, void *arg), void *arg);
void index_prefork();   // every shard lock, in shard order
void index_postfork();  // and back

}  // namespace sysref::objects
