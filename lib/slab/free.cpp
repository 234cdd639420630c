// kmalloc_obj free paths: one object, and a batch.
//
// Fast path (zone.hpp, free_fast): push onto the current CPU's slot list
// when the object's slab is the one bound to this CPU.
// Otherwise the object is checked and marked free, then:
//   - its slab is bound to another CPU: the slab's lock-free remote stack,
//     collected by that CPU's next refill;
//   - its slab is bound to no CPU: filed under the zone lock, which a free
//     never waits for: if the lock is busy the object goes on the deferred
//     stack, for the holder (or the next one) to file.
// A batch (free_batch: a magazine the layer above gives back) files all of
// its unbound objects under one lock acquisition, or defers them with one
// compare-and-swap, instead of one of each per object.
#include "../percpu/percpu.hpp"
#include "pagemap.hpp"
#include "zone.hpp"

namespace sysref::slab {
namespace {

// p goes back to its slab's locked list (lock held). Returns the slab if it
// became empty and must be released.
slab *free_locked(zone *z, slab *s, uintptr_t p) {
  words(p)[0] = s->free;
  s->free = p;
  ++s->nfree;
  if (s->list == where::active) return nullptr;  // bound again meanwhile: its CPU takes it
  if (s->nfree == z->nobjs) return retire_empty(z, s);
  if (s->nfree == 1) move(z, s, s->is_reserve ? where::reserve : where::partial);
  return nullptr;
}

// The checks every free off the fast path makes, then p is marked free and
// counted; false (reported) when p is not an object of z or already free.
bool mark_freed(zone *z, uintptr_t p, bool tagged) {
  if (pagemap::get(p) != z) {
    bad_free(z, reinterpret_cast<void *>(p), "kfree_obj: pointer not from zone");
    return false;
  }
  uintptr_t *o = words(p);
  if (!tagged && o[1] == z->marker(p)) {
    bad_free(z, reinterpret_cast<void *>(p), "kfree_obj: double free in zone");
    return false;
  }
  o[1] = z->marker(p);
  percpu::add(z->frees_off(), 1);
  return true;
}

// If p's slab is bound to a CPU, p goes on its remote stack: true. False
// when the slab is detached (the zone lock files p).
bool push_remote(zone *z, uintptr_t p) {
  slab *s = slab_of(z, p);
  uintptr_t *o = words(p);
  uintptr_t head = s->remote.load(std::memory_order_relaxed);
  while (!(head & detached_bit)) {
    o[0] = head;
    if (s->remote.compare_exchange_weak(head, p, std::memory_order_release, std::memory_order_relaxed))
      return true;
  }
  return false;
}

// Files a chain of marked objects, linked through their first word from
// head to tail, into their slabs: under the zone lock if it is free at
// once, else onto the deferred stack in one piece.
void file_chain(zone *z, uintptr_t head, uintptr_t tail) {
  if (!z->lock.try_acquire()) {
    uintptr_t top = z->deferred.load(std::memory_order_relaxed);
    do words(tail)[0] = top;
    while (!z->deferred.compare_exchange_weak(top, head, std::memory_order_release, std::memory_order_relaxed));
    return;
  }
  slab *to_release = nullptr;
  drain_deferred(z, &to_release);
  for (uintptr_t p = head, next; p; p = next) {
    next = p == tail ? 0 : words(p)[0];  // free_locked overwrites the link
    if (slab *e = free_locked(z, slab_of(z, p), p)) {
      e->next = to_release;
      to_release = e;
    }
  }
  z->lock.release();
  release_chain(z, to_release);
}

}  // namespace

void drain_deferred(zone *z, slab **release) {
  if (!z->deferred.load(std::memory_order_relaxed)) return;
  uintptr_t p = z->deferred.exchange(0, std::memory_order_acquire);
  while (p) {
    uintptr_t next = words(p)[0];
    if (slab *e = free_locked(z, slab_of(z, p), p)) {
      e->next = *release;
      *release = e;
    }
    p = next;
  }
}

void free_slow(zone *z, uintptr_t p, bool tagged) {
  if (!mark_freed(z, p, tagged) || push_remote(z, p)) return;
  file_chain(z, p, p);
}

void free(zone *z, void *ptr) { free_fast(z, ptr); }

constexpr size_t prefetch_ahead = 8;

void free_batch(zone *z, void *const *objs, size_t n) {
  uintptr_t head = 0, tail = 0;
  for (size_t i = 0; i < n; ++i) {
    // A magazine's objects lie one to a line over many slabs, and the
    // checks read each: start the misses a few objects ahead (frag: 2%).
    if (i + prefetch_ahead < n) __builtin_prefetch(objs[i + prefetch_ahead], 1);
    auto p = reinterpret_cast<uintptr_t>(objs[i]);
    bool tagged;
    if (!p || free_to_slot(z, p, &tagged)) continue;
    if (!mark_freed(z, p, tagged) || push_remote(z, p)) continue;
    // Only objects nobody else can reach yet are linked: the chain is ours.
    words(p)[0] = head;
    if (!head) tail = p;
    head = p;
  }
  if (head) file_chain(z, head, tail);
}

}  // namespace sysref::slab
