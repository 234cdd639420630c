// kmalloc_obj allocation paths (the free side is free.cpp).
//
// Fast path: pop from the current CPU's slot list (one rseq section, no
// lock), counted in the same commit.
// Slow path (zone lock held, once per batch): refill the slot from the
// active slab's remote frees, its locked free list or its unused tail;
// otherwise bind another slab to the CPU (partial, spare, reserve, or one
// mapped now) and retire the exhausted one. After the lock is dropped the
// caller may map spare slabs ahead of demand (proactive refill), once the
// zone has needed a second slab.
// SR_NOWAIT takes every lock only if it is free at once.
#include <cerrno>
#include <cstring>

#include "../percpu/percpu.hpp"
#include "pagemap.hpp"
#include "zone.hpp"

namespace sysref::slab {
namespace {

// Length of a list ending at base.
uint32_t list_length(uintptr_t list, uintptr_t base) {
  uint32_t n = 0;
  for (; list != base; list = words(list)[0]) ++n;
  return n;
}

// Prepends a base-terminated list to s->free (lock held). Returns its length.
uint32_t give_to_free(slab *s, uintptr_t list) {
  uintptr_t base = base_of(s);
  if (list == base) return 0;
  uint32_t n = 1;
  uintptr_t tail = list;
  while (words(tail)[0] != base) {
    tail = words(tail)[0];
    ++n;
  }
  words(tail)[0] = s->free;
  s->free = list;
  s->nfree += n;
  return n;
}

// The pages up to end (carve's next objects) are about to be written: in a
// zone that holds several slabs (one that grows) they are made resident
// ahead, with the pages after them, in one call, instead of one fault per
// page. Each fault is a trap into the kernel (16 us on the 2-vCPU VM of
// bench/results, against 1.4 us per page populated). The slabs bound to
// CPUs share the pages ahead: all together at most as many as the zone
// holds slabs, and a slab is 16 pages or more, so at most 1/16 of a zone's
// memory is resident before it is used. Not a reserve slab: that memory is
// the caller's, and only what carve writes is touched.
void populate_ahead(zone *z, slab *s, uintptr_t end) {
  const size_t page = os::page_size();
  uintptr_t base = base_of(s), done = base + s->resident * page;
  if (end <= done || s->is_reserve) return;
  size_t held = 0;
  for (const slab_list &l : z->lists) held += l.count;
  if (held < 2) return;  // a zone's first slab faults its pages in one at a time
  size_t bound = z->on(where::active).count, ahead = held / (bound ? bound : 1);  // >= 1: bound <= held
  size_t from = (end - base - 1) / page, pages = z->slab_size / page;  // end's page, then ahead
  size_t to = from + ahead < pages ? from + ahead : pages;
  os::populate(reinterpret_cast<void *>(done), base + to * page - done);
  s->resident = static_cast<uint16_t>(to);
}

// Up to max never-used objects as a base-terminated list (lock held).
uintptr_t carve(zone *z, slab *s, uint32_t max) {
  uintptr_t base = base_of(s);
  uint32_t n = z->nobjs - s->bump;
  if (n > max) n = max;
  if (n == 0) return base;
  uintptr_t first = base + z->first_offset + uintptr_t{s->bump} * z->objsize;
  populate_ahead(z, s, first + uintptr_t{n} * z->objsize);
  for (uint32_t i = 0; i < n; ++i) {
    uintptr_t obj = first + uintptr_t{i} * z->objsize;
    words(obj)[0] = i + 1 < n ? obj + z->objsize : base;
  }
  s->bump += n;
  s->nfree -= n;
  return first;
}

// Objects for the slot from a slab's locked stores (lock held): its free
// list, or else up to a batch of its unused tail. Base if none.
uintptr_t take_local(zone *z, slab *s) {
  uintptr_t base = base_of(s);
  if (s->free != base) {
    uintptr_t list = s->free;
    s->nfree -= list_length(list, base);
    s->free = base;
    return list;
  }
  return carve(z, s, z->batch);
}

// Objects for the slot from the active slab (lock held): its remote frees
// first, then its locked stores.
uintptr_t take_objects(zone *z, slab *s) {
  uintptr_t base = base_of(s);
  if (s->remote.load(std::memory_order_relaxed) != base)
    return s->remote.exchange(base, std::memory_order_acquire);
  return take_local(z, s);
}

// The slab stops being bound to a CPU (lock held): collect its remote frees,
// then file it by fullness. Returns a slab to release, if any (never with
// keep_empty).
slab *detach(zone *z, slab *s, bool keep_empty = false) {
  uintptr_t list = s->remote.exchange(base_of(s) | detached_bit, std::memory_order_acquire);
  give_to_free(s, list);
  if (s->nfree == z->nobjs) return retire_empty(z, s, keep_empty);
  move(z, s, s->nfree == 0 ? where::full : s->is_reserve ? where::reserve : where::partial);
  return nullptr;
}

// A slab to bind to a CPU (lock held; may drop it to map). nullptr if none;
// then *refused says whether mapping a slab failed (not set when SR_NOWAIT
// left the mapping to the thread already at it).
slab *next_slab(zone *z, int flags, bool *refused) {
  if (!z->running && z->on(where::reserve).head) return z->on(where::reserve).head;
  if (z->on(where::partial).head) return z->on(where::partial).head;
  if (z->on(where::spare).head) return z->on(where::spare).head;
  slab *s;
  if (flags & SR_NOWAIT) {
    // GFP_NOWAIT: memory that can be had at once, never a wait for another
    // thread. Another thread holding refill is mapping for this zone: leave
    // it to them. Otherwise map here, keeping the zone lock (retaking it
    // after the map could mean waiting); try-acquiring refill under the
    // lock inverts the order, but a try never waits, so it cannot deadlock.
    if (!z->refill.try_acquire()) return nullptr;
    s = map_slab(z, os::wait::no);
    z->refill.release();
  } else {
    z->lock.release();
    s = map_slab(z);
    z->lock.acquire();
  }
  if (!s) {
    *refused = true;
    return nullptr;
  }
  ++z->sync_maps;
  z->running = true;
  s->list = where::spare;
  z->on(where::spare).push(s);
  return s;
}

// With no slab to bind and none to be had from the OS, the slabs bound to
// CPUs (this one's too) are unbound, with the objects in their slots, and
// filed by fullness (lock held): a thread that moved to another CPU must not
// fail while the objects it freed wait on the first one. An empty one stays
// as a spare even past the spare target: the OS just refused a slab. True
// if any slab was unbound.
bool unbind_all(zone *z, os::wait w) {
  bool any = false;
  for (unsigned cpu = 0; cpu < percpu::ncpus(); ++cpu) {
    uintptr_t word = percpu::take_word(cpu, z->w_off(), w);
    if (!word) continue;
    auto *s = reinterpret_cast<slab *>(word & ~z->mask);
    give_to_free(s, word);  // the slot's objects: a base-terminated list, or just the base
    detach(z, s, true);
    any = true;
  }
  return any;
}

// One object straight from a reserve slab, for SR_USE_RESERVE when the OS
// said no (lock held). The slab is not bound to the CPU: the reserve must
// not drain into ordinary allocations.
uintptr_t from_reserve(zone *z) {
  slab *s = z->on(where::reserve).head;
  if (!s) return 0;
  uintptr_t base = base_of(s), obj;
  if (s->free != base) {
    obj = s->free;
    s->free = words(obj)[0];
    --s->nfree;
  } else {
    obj = carve(z, s, 1);
  }
  if (s->nfree == 0) move(z, s, where::full);
  ++z->reserve_allocs;
  return obj;
}

void proactive_refill(zone *z) {
  if (!z->refill.try_acquire()) return;  // someone else is at it: never wait for them
  for (;;) {
    z->lock.acquire();
    bool enough = z->on(where::spare).count >= z->spare_high;
    z->lock.release();
    if (enough) break;
    slab *s = map_slab(z);
    z->lock.acquire();
    if (!s) {
      ++z->proactive_failures;  // silent: the next allocator to notice retries
      z->lock.release();
      break;
    }
    ++z->proactive_maps;
    z->running = true;
    s->list = where::spare;
    z->on(where::spare).push(s);
    z->lock.release();
  }
  z->refill.release();
}

}  // namespace

void *alloc_slow(zone *z, int flags) {
  const bool nowait = flags & SR_NOWAIT;
  const os::wait w = nowait ? os::wait::no : os::wait::yes;
  if (!z->lock.acquire(w)) {
    errno = ENOMEM;
    return nullptr;
  }
  slab *to_release = nullptr;
  drain_deferred(z, &to_release);
  uintptr_t emergency = 0;
  bool refill = false, failed = false, unbound = false;
  for (int misses = 0;;) {
    unsigned cpu = percpu::current_cpu();
    uintptr_t cur = percpu::peek(cpu, z->w_off());
    if (cur & z->mask) break;  // the slot has objects again: back to the fast path
    slab *s = cur ? reinterpret_cast<slab *>(cur) : nullptr;
    // Under SR_NOWAIT in lock mode the slot lock may be out of reach (held
    // by the frame a signal handler interrupted): give up, never spin.
    if (nowait && misses++ > 2) {
      failed = true;
      break;
    }
    if (s) {
      uintptr_t list = take_objects(z, s);
      if (list == cur) {
        // exhausted: fall through to bind another slab
      } else if (percpu::compare_store(z->w_off(), cur, list, w)) {
        break;
      } else {
        give_to_free(s, list);  // the slot changed under us (or we moved): retry
        continue;
      }
    }
    bool refused = false;
    slab *n = next_slab(z, flags, &refused);
    if (!n && refused && !unbound) {
      unbound = true;
      if (unbind_all(z, w)) continue;
    }
    if (!n) {
      if ((flags & SR_USE_RESERVE) && (emergency = from_reserve(z)) != 0) break;
      failed = true;
      break;
    }
    if (percpu::peek(percpu::current_cpu(), z->w_off()) != cur) continue;  // changed while mapping
    // n is detached: its remote frees went to the lock, which we hold.
    uintptr_t list = take_local(z, n);
    if (!percpu::compare_store(z->w_off(), cur, list, w)) {
      give_to_free(n, list);
      continue;
    }
    n->remote.store(base_of(n), std::memory_order_release);  // bound: remote frees go lock-free
    refill = n->list == where::spare;
    z->last_bind_ns = os::coarse_now_ns();
    move(z, n, where::active);
    if (s) {
      if (slab *e = detach(z, s)) {
        e->next = to_release;
        to_release = e;
      }
    }
    break;
  }
  // Spares start with a zone's second slab from the OS: a spare's header
  // page is memory, and a zone that never outgrew one slab (a size class a
  // program touches a few times) would keep pages it never uses.
  refill = refill && z->on(where::spare).count < z->spare_low && z->sync_maps + z->proactive_maps >= 2;
  z->lock.release();

  release_chain(z, to_release, w);
  if (refill && !nowait) proactive_refill(z);
  if (!nowait) decay_tick();
  if (emergency) {
    percpu::add(z->allocs_off(), 1);  // not popped from a slot: count it here
    return hand_out(z, emergency, flags);
  }
  if (failed) {
    errno = ENOMEM;
    return nullptr;
  }
  // The slot has objects now. Other threads on this CPU may take them
  // first: a plain request goes round again; SR_NOWAIT, whose pop may also
  // find the slot lock out of reach (lock mode, in a signal handler), fails.
  uintptr_t obj;
  if (pop_object(z, flags, &obj)) return hand_out(z, obj, flags);
  if (nowait) {
    errno = ENOMEM;
    return nullptr;
  }
  return alloc_slow(z, flags);
}

void corrupted(zone *z, uintptr_t obj) {
  os::fatal("free list corrupted (write after free?) in zone", z->name, reinterpret_cast<void *>(obj));
}

void bad_free(zone *z, void *ptr, const char *what) {
  os::report_error(what, z->name, ptr);
  z->errors.fetch_add(1, std::memory_order_relaxed);
}

void *alloc(zone *z, int flags) { return alloc_fast(z, flags); }

}  // namespace sysref::slab
