// SYSREF objects: reference counts with a life cycle, and sysids.
//
// Theory
// ------
// Vocabulary.
//   class     a static struct sysref_class: object size, where the struct
//             sysref sits in the object, ctor/dtor/terminate. Its state
//             (class.cpp) holds an objcache of the class's objects.
//   sysid     a 64-bit id, given to an object when its objcache constructs
//             it (ctor) and taken away when it destructs it (dtor). Sysids
//             come from one counter and are never handed out twice, so a
//             sysid names one constructed object for as long as it exists.
//   seen      the sysid left the library (sysref_sysid, or a sysref_lookup
//             that found the object): someone outside may hold it. A seen
//             object is destroyed, never cached, when its last reference
//             goes, so its sysid cannot come back naming a new object.
//   index     red-black trees sharded by the low bits of the sysid, one lock
//             per shard (index.cpp). Constructed objects are in the index,
//             cached ones too; get/put/alloc never touch it.
//
// States and counts (refcnt, after DragonFly's kern_sysref.c; C = -2^30,
// T = -2^29: each phase has its own base, so the count alone says which).
//   cached       0         in the objcache, constructed, not in use.
//   creating     C + t     sysref_alloc took it from the cache: the creator
//                          holds an implied reference, t temporary ones.
//   active       n >= 1    sysref_activate added 1 - C; findable.
//   terminating  T + t     the put that took an active count from 1 set T
//                          and runs terminate; the implied reference is the
//                          library's, dropped when terminate returns. (A
//                          class without terminate skips this state.)
//   dead         INT32_MIN given back (being cached or destroyed), or cached
//                          with a seen sysid (a lookup marked it).
//   So a count is negative exactly while the object is not active: lookups
//   (get-not-zero: only n > 0) never find it then, while sysref_get, which
//   needs a reference already, is legal in every state but cached and dead.
//   Temporary references during creating or terminating leave the count
//   above its base, so no put re-triggers terminate; the put that finds the
//   base is the last one and gives the object back: to the cache with its
//   sysid, or, if seen, to the objcache's destructor (the sysid is retired).
//
// Invariants.
//   - Every count change is one atomic read-modify-write, so a transition
//     (1 -> T, C or T -> dead, 0 -> C) happens in exactly one thread. The
//     first attempt guesses the usual value (1 for a get, 2 for a put):
//     an object far away in memory then costs one exclusive fetch of its
//     line instead of a shared fetch and an upgrade.
//   - A lookup changes a count only under its shard lock, and the dtor
//     removes an object from the index under that lock before the memory
//     goes: a lookup never touches a destroyed object.
//   - Seen is never lost: a lookup that misses marks a cached object dead
//     (0 -> dead, which sysref_alloc's 0 -> C then refuses) and any other
//     object seen (a state bit that is only ever set: the give-back reads
//     it after the count went dead, and sysref_alloc again after it won the
//     object, so a bit set in between is caught by the next alloc).
//
// Lock order: a shard lock is a leaf. No library lock is held while
// terminate, a ctor or a dtor runs, or while foreach calls its callback.
#include <cerrno>

#include "object.hpp"

namespace sysref::objects {
namespace {

const char *name_of(const struct sysref *sr) {
  return sr->srclass && sr->srclass->name ? sr->srclass->name : "(unknown class)";
}

void misuse(const char *what, struct sysref *sr) { os::report_error(what, name_of(sr), sr); }

// The last reference went (the count was a phase's base, ours alone):
// back to the cache, or destroyed if its sysid was seen. The parent's
// reference goes after it. No one else can reach the parent link now.
void give_back(struct sysref *sr, bool was_terminating) {
  class_state *st = state_of(sr->srclass);
  void *obj = object_of(sr);
  count_event(st, was_terminating ? c_releases : c_aborts);
  struct sysref *parent = sr->parent;
  if (parent) sr->parent = nullptr;
  // The count is dead (set by the caller): lookups miss and only mark seen.
  if (state(sr).load(std::memory_order_acquire) & st_seen) {
    st->retired.fetch_add(1, std::memory_order_relaxed);
    objcache::put_unconstructed(st->cache, obj);
  } else {
    // A lookup from here on marks it dead; one that set seen after the
    // load above is caught by alloc.
    count(sr).store(cached, std::memory_order_release);
    objcache::put_inline(st->cache, obj);
  }
  if (parent) put(parent);
}

void terminate(struct sysref *sr) {
  count_event(state_of(sr->srclass), c_terminations);
  if (sr->srclass->terminate) sr->srclass->terminate(object_of(sr));
  put(sr);  // the library's reference
}

// One attempt with the usual value, then from what the count really holds.
bool change(struct sysref *sr, int32_t &v, int32_t next, std::memory_order mo) {
  return count(sr).compare_exchange_strong(v, next, mo, std::memory_order_relaxed);
}

}  // namespace

void *alloc(sysref_class *cls) {
  class_state *st = state_of(cls);
  if (__builtin_expect(!st, 0) && !(st = ensure_state(cls))) return nullptr;
  for (;;) {
    void *obj = objcache::get_inline(st->cache, SR_WAITOK);
    if (!obj) return nullptr;
    struct sysref *sr = sysref_at(obj, cls);
    int32_t expect = cached;
    if (__builtin_expect(change(sr, expect, creating_base, std::memory_order_acquire), 1) &&
        __builtin_expect(!(state(sr).load(std::memory_order_relaxed) & st_seen), 1)) {
      count_event(st, c_allocs);
      return obj;
    }
    // Its sysid was seen while it sat in the cache: retire it, take another.
    count(sr).store(dead, std::memory_order_relaxed);
    st->retired.fetch_add(1, std::memory_order_relaxed);
    objcache::put_unconstructed(st->cache, obj);
  }
}

void activate(struct sysref *sr) {
  int32_t v = creating_base;
  while (!change(sr, v, v + 1 - creating_base, std::memory_order_release)) {
    if (!in_phase(v, creating_base)) {
      misuse("sysref_activate: object is not being created (activated twice, or given back)", sr);
      return;
    }
  }
  count_event(state_of(sr->srclass), c_activations);
}

void get(struct sysref *sr) {
  int32_t v = 1;
  while (!change(sr, v, v + 1, std::memory_order_relaxed)) {
    if (__builtin_expect(v > 0 && v < saturated_zone - 1, 1)) continue;
    if (in_phase(v, creating_base) || in_phase(v, terminating_base)) {
      if (v + 1 - (v < terminating_base ? creating_base : terminating_base) < phase_room) continue;
      misuse("sysref_get: too many temporary references", sr);
      return;
    }
    if (v >= saturated_zone - 1) {
      if (v != saturated) misuse("sysref_get: reference count overflow (the object is leaked)", sr);
      count(sr).store(saturated, std::memory_order_relaxed);
      return;
    }
    misuse("sysref_get: reference taken on an object that was given back", sr);
    return;
  }
}

bool get_not_zero(struct sysref *sr) {
  int32_t v = 1;
  while (!change(sr, v, v + 1, std::memory_order_acquire)) {
    if (v <= 0) return false;
    if (v >= saturated_zone - 1) return true;
  }
  return true;
}

void put(struct sysref *sr) {
  int32_t v = 2;
  for (;;) {
    int32_t next;
    if (__builtin_expect(v > 1 && v < saturated_zone, 1) || (v > creating_base && v < creating_base + phase_room) ||
        (v > terminating_base && v < terminating_base + phase_room)) {
      next = v - 1;
    } else if (v == 1) {
      // active -> terminating; with no terminate to run, nothing can take a
      // reference meanwhile: straight to given back.
      next = sr->srclass->terminate ? terminating_base : dead;
    } else if (v == creating_base || v == terminating_base) {
      next = dead;  // the last reference of creating or terminating
    } else if (v >= saturated_zone) {
      return;  // saturated: never released
    } else {
      misuse("sysref_put: reference dropped on an object that was given back", sr);
      return;
    }
    // acq_rel: whatever the holders did happens before terminate and reuse.
    if (!change(sr, v, next, std::memory_order_acq_rel)) continue;
    if (v == 1 && next != dead) {
      terminate(sr);  // (a temporary reference dropped to T is not this)
    } else if (next == dead) {
      if (v == 1) count_event(state_of(sr->srclass), c_terminations);
      give_back(sr, v != creating_base);
    }
    return;
  }
}

bool take_for_lookup(struct sysref *sr) {
  int32_t v = 1;
  for (;;) {
    if (v > 0) {
      if (v >= saturated_zone - 1) break;
      if (change(sr, v, v + 1, std::memory_order_acquire)) break;
    } else if (v == cached) {
      // A cached object whose sysid is now seen: alloc's 0 -> C refuses it.
      if (change(sr, v, dead, std::memory_order_relaxed)) return false;
    } else {
      state(sr).fetch_or(st_seen, std::memory_order_relaxed);
      return false;
    }
  }
  if (!(state(sr).load(std::memory_order_relaxed) & st_seen)) state(sr).fetch_or(st_seen, std::memory_order_relaxed);
  return true;
}

void *lookup(sysid_t id, const sysref_class *only) {
  struct sysref *sr = index_lookup(id, only);
  return sr ? object_of(sr) : nullptr;
}

sysid_t sysid(struct sysref *sr) {
  if (!(state(sr).load(std::memory_order_relaxed) & st_seen)) state(sr).fetch_or(st_seen, std::memory_order_relaxed);
  return sr->sysid;
}

void set_parent(struct sysref *child, struct sysref *parent) {
  if (parent) get(parent);
  struct sysref *old = std::atomic_ref<struct sysref *>(child->parent).exchange(parent, std::memory_order_acq_rel);
  if (old) put(old);
}

struct sysref *parent(struct sysref *child) {
  return std::atomic_ref<struct sysref *>(child->parent).load(std::memory_order_acquire);
}

int foreach(sysref_class *cls, int (*fn)(void *obj, void *arg), void *arg) {
  if (!fn || !check_class("sysref_foreach", cls)) return -EINVAL;
  class_state *st = state_of(cls);
  return st ? index_foreach(st, fn, arg) : 0;  // no cache yet: no objects
}

}  // namespace sysref::objects
