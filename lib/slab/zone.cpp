// Zone life cycle: create, reserve, spare watermarks, statistics, destroy,
// and the slab bookkeeping shared with the allocation paths.
//
// Zone structures come from a zone of zones seeded by a static reserve, so
// creating a zone never calls malloc and can happen before the OS has given
// the library a single page.
#include <cerrno>
#include <cstring>

#include "../percpu/percpu.hpp"
#include "pagemap.hpp"
#include "zone.hpp"

namespace sysref::slab {
namespace {

constinit zone g_zones{};  // the zone of zone structures
constinit os::lock g_zones_init;
constinit std::atomic<bool> g_zones_ready{false};
// Three slabs' span holds two whole aligned slabs: a CPU each on small
// machines before any page is mapped for zone structures.
constinit char g_zones_reserve[3 * min_slab] = {};
// Every zone, for fork: a zone is listed once made, unlisted before destroyed.
constinit os::lock g_registry;
constinit zone *g_registry_head = nullptr;
constinit os::lock g_making;  // lazy_zone::make

void registry_add(zone *z) {
  os::guard g(g_registry);
  z->reg_next = g_registry_head;
  g_registry_head = z;
}

void registry_remove(zone *z) {
  os::guard g(g_registry);
  for (zone **p = &g_registry_head; *p; p = &(*p)->reg_next)
    if (*p == z) {
      *p = z->reg_next;
      break;
    }
}

size_t round_up(size_t n, size_t to) { return (n + to - 1) & ~(to - 1); }

void init_slab(zone *z, slab *s, bool is_reserve) {
  uintptr_t base = base_of(s);
  s->magic = slab_magic;
  s->owner = z;
  s->remote.store(base | detached_bit, std::memory_order_relaxed);
  s->free = base;
  s->nfree = z->nobjs;
  s->bump = 0;
  s->resident = 0;
  s->is_reserve = is_reserve;
  s->prev = s->next = nullptr;
}

bool init_zone(zone *z, const char *name, size_t objsize, size_t align) {
  z->magic = zone_magic;
  std::strncpy(z->name, name ? name : "(unnamed)", sizeof z->name - 1);
  z->name[sizeof z->name - 1] = '\0';
  z->objsize = static_cast<uint32_t>(objsize);
  z->first_offset = static_cast<uint32_t>(round_up(sizeof(slab), align));
  z->slab_size = min_slab;
  while ((z->slab_size - z->first_offset) / objsize < 8) z->slab_size <<= 1;
  z->nobjs = static_cast<uint32_t>((z->slab_size - z->first_offset) / objsize);
  z->mask = z->slab_size - 1;
  z->span = z->nobjs * z->objsize;
  z->reciprocal = UINT64_MAX / objsize + 1;  // objsize >= 16: never wraps to 0
  // A batch fills about a page, so refills fault pages in one at a time.
  size_t batch = os::page_size() / objsize;
  z->batch = static_cast<uint32_t>(batch < 4 ? 4 : batch > 64 ? 64 : batch);
  if (z->batch > z->nobjs) z->batch = z->nobjs;
  z->secret = os::random_seed();
  z->running = false;
  z->mapped_as = os::use::data;
  z->spare_low = os::opts().spare_low;
  z->spare_high = os::opts().spare_high;
  for (auto &l : z->lists) l = slab_list{};
  z->sync_maps = z->proactive_maps = z->proactive_failures = z->released = z->reserve_allocs = 0;
  z->errors.store(0, std::memory_order_relaxed);
  z->deferred.store(0, std::memory_order_relaxed);
  z->type_stable = false;
  z->last_bind_ns = os::coarse_now_ns();
  long slot = percpu::slot_alloc();
  if (slot < 0) return false;
  z->slot = static_cast<size_t>(slot);
  return true;
}

zone *zone_of_zones() {
  if (g_zones_ready.load(std::memory_order_acquire)) return &g_zones;
  os::guard g(g_zones_init);
  if (!g_zones_ready.load(std::memory_order_relaxed)) {
    if (!init_zone(&g_zones, "sysref.zones", round_up(sizeof(zone), 64), 64)) return nullptr;
    g_zones.mapped_as = os::use::metadata;
    g_zones.spare_low = g_zones.spare_high = 0;  // metadata grows on demand only
    if (reserve(&g_zones, g_zones_reserve, sizeof g_zones_reserve) < 1) return nullptr;
    registry_add(&g_zones);
    g_zones_ready.store(true, std::memory_order_release);
  }
  return &g_zones;
}

bool valid(const zone *z) { return z && z->magic == zone_magic; }

}  // namespace

void move(zone *z, slab *s, where to) {
  z->on(s->list).remove(s);
  s->list = to;
  z->on(to).push(s);
}

slab *retire_empty(zone *z, slab *s, bool keep) {
  s->free = base_of(s);  // forget the scattered list: the next user carves in order
  s->bump = 0;
  s->resident = 0;  // the decay may decommit it: the next carve populates again
  s->nfree = z->nobjs;
  if (s->is_reserve) {
    move(z, s, where::reserve);
    return nullptr;
  }
  if (keep || z->type_stable || z->on(where::spare).count < z->spare_high) {
    move(z, s, where::spare);
    return nullptr;
  }
  z->on(s->list).remove(s);
  ++z->released;
  return s;
}

slab *map_slab(zone *z, os::wait w) {
  slab *s = pool_take(z->slab_size, z->mapped_as, w);
  if (!s) {
    void *mem = os::map(z->slab_size, z->slab_size, z->mapped_as);
    if (!mem) return nullptr;
    s = static_cast<slab *>(mem);
  }
  init_slab(z, s, false);
  if (pagemap::set(base_of(s), z->slab_size, z, w) != 0) {
    if (!pool_give(s, z->slab_size, z->mapped_as, w)) os::unmap(s, z->slab_size, z->mapped_as);
    return nullptr;
  }
  return s;
}

void unmap_slab(zone *z, slab *s) {
  pagemap::clear(base_of(s), z->slab_size);
  s->magic = 0;
  os::unmap(s, z->slab_size, z->mapped_as);
}

void release_chain(zone *z, slab *chain, os::wait w) {
  while (chain) {
    slab *next = chain->next;
    pagemap::clear(base_of(chain), z->slab_size);
    chain->magic = 0;
    if (!pool_give(chain, z->slab_size, z->mapped_as, w)) os::unmap(chain, z->slab_size, z->mapped_as);
    chain = next;
  }
}

void trim_idle_zones(uint64_t now, uint64_t idle_ns) {
  os::guard g(g_registry);
  for (zone *z = g_registry_head; z; z = z->reg_next) {
    if (!z->lock.try_acquire()) continue;  // busy: not idle
    slab *drop = nullptr;
    // type_stable under the lock: lazy_zone::make sets it after the zone is
    // already in the registry.
    if (!z->type_stable && now >= z->last_bind_ns && now - z->last_bind_ns >= idle_ns) {
      while (slab *s = z->on(where::spare).head) {
        z->on(where::spare).remove(s);
        ++z->released;
        s->next = drop;
        drop = s;
      }
    }
    z->lock.release();
    release_chain(z, drop, os::wait::yes);
  }
}

zone *zone_create(const char *name, size_t objsize, size_t align, unsigned flags) {
  if (align == 0) align = 16;
  if (objsize == 0 || objsize > max_object || (align & (align - 1)) != 0 ||
      align > os::page_size() || flags != 0) {
    errno = EINVAL;
    return nullptr;
  }
  if (align < 16) align = 16;  // two words of free-list bookkeeping per object
  zone *zz = zone_of_zones();
  if (!zz) {
    errno = ENOMEM;
    return nullptr;
  }
  auto *z = static_cast<zone *>(alloc(zz, 0));
  if (!z) return nullptr;
  std::memset(static_cast<void *>(z), 0, sizeof *z);
  if (!init_zone(z, name, round_up(objsize, align), align)) {
    free(zz, z);
    errno = ENOMEM;
    return nullptr;
  }
  registry_add(z);
  return z;
}

namespace {
constinit os::lock g_public_lock;
constinit zone *g_public = nullptr;
}  // namespace

void publish(zone *z) {
  os::guard g(g_public_lock);
  z->is_public = true;
  z->next_public = g_public;
  g_public = z;
}

int for_each_public(int (*fn)(zone *z, void *arg), void *arg) {
  os::guard g(g_public_lock);
  for (zone *z = g_public; z; z = z->next_public)
    if (int r = fn(z, arg)) return r;
  return 0;
}

const char *name_of(const zone *z) { return z->name; }

void zone_destroy(zone *z) {
  if (!valid(z) || z == &g_zones) {
    os::report_error("kmalloc_obj_zone_destroy: not a zone", nullptr, z);
    return;
  }
  if (z->is_public) {
    os::guard g(g_public_lock);
    for (zone **p = &g_public; *p; p = &(*p)->next_public)
      if (*p == z) {
        *p = z->next_public;
        break;
      }
  }
  registry_remove(z);
  z->lock.acquire();
  for (auto &l : z->lists) {
    while (slab *s = l.head) {
      l.remove(s);
      if (s->is_reserve) {
        pagemap::clear(base_of(s), z->slab_size);
        s->magic = 0;  // the caller's memory: hand it back, never unmap it
      } else {
        unmap_slab(z, s);
      }
    }
  }
  z->lock.release();
  percpu::slot_free(z->slot);
  z->magic = 0;
  free(zone_of_zones(), z);
}

int reserve(zone *z, void *mem, size_t len) {
  if (!valid(z) || !mem) return -EINVAL;
  uintptr_t start = round_up(reinterpret_cast<uintptr_t>(mem), z->slab_size);
  uintptr_t end = reinterpret_cast<uintptr_t>(mem) + len;
  if (end < start || end - start < z->slab_size) return -EINVAL;
  size_t count = (end - start) / z->slab_size;
  for (size_t i = 0; i < count; ++i) {
    uintptr_t base = start + i * z->slab_size;
    if (int err = pagemap::set(base, z->slab_size, z)) {
      pagemap::clear(start, i * z->slab_size);
      return -err;
    }
  }
  os::guard g(z->lock);
  for (size_t i = 0; i < count; ++i) {
    auto *s = reinterpret_cast<slab *>(start + i * z->slab_size);
    init_slab(z, s, true);
    s->list = where::reserve;
    z->on(where::reserve).push(s);
  }
  return static_cast<int>(count);
}

int set_spare(zone *z, unsigned low, unsigned high) {
  if (!valid(z) || low > high || high > 1024) return -EINVAL;
  slab *drop = nullptr;
  {
    os::guard g(z->lock);
    z->spare_low = low;
    z->spare_high = high;
    while (!z->type_stable && z->on(where::spare).count > high) {
      slab *s = z->on(where::spare).head;
      z->on(where::spare).remove(s);
      ++z->released;
      s->next = drop;
      drop = s;
    }
  }
  release_chain(z, drop);
  return 0;
}

void mark_internal(zone *z) {
  os::guard g(z->lock);
  z->mapped_as = os::use::metadata;
  z->spare_low = z->spare_high = 0;
}

zone *lazy_zone::make() {
  os::guard g(g_making);
  zone *z = made.load(std::memory_order_relaxed);
  if (!z && (z = zone_create(name, objsize, align, 0)) != nullptr) {
    mark_internal(z);
    if (slabs == type_stable) {
      os::guard g2(z->lock);
      z->type_stable = true;  // never gives a slab back, however many empty
    }
    made.store(z, std::memory_order_release);
  }
  return z;
}

size_t slab_size(const zone *z) { return z->slab_size; }
size_t object_size(const zone *z) { return z->objsize; }

namespace {

// Allocations minus frees over every CPU, each CPU's pair read at one
// moment (frees unchanged around the read of allocs), so a reader that is
// preempted mid-way does not count the pairs that ran meanwhile as live.
void count_pairs(const zone *z, uint64_t *allocs, uint64_t *frees) {
  *allocs = *frees = 0;
  for (unsigned cpu = 0; cpu < percpu::ncpus(); ++cpu) {
    uint64_t a = 0, f = percpu::peek(cpu, z->frees_off());
    for (int tries = 0; tries < 64; ++tries) {
      a = percpu::peek(cpu, z->allocs_off());
      uint64_t again = percpu::peek(cpu, z->frees_off());
      if (again == f) break;
      f = again;
    }
    *allocs += a;
    *frees += f;
  }
  if (*frees > *allocs) *frees = *allocs;  // an object freed on a CPU read after its alloc's
}

}  // namespace

int stats(zone *z, kmalloc_zone_stats *out) {
  if (!valid(z) || !out) return -EINVAL;
  uint64_t allocs, frees;
  count_pairs(z, &allocs, &frees);
  slab *to_release = nullptr;
  z->lock.acquire();
  drain_deferred(z, &to_release);  // slab counts as if every free had been filed
  *out = {};
  out->objsize = z->objsize;
  out->slab_size = z->slab_size;
  out->objs_per_slab = z->nobjs;
  out->allocs = allocs;
  out->frees = frees;
  out->live = allocs - frees;
  out->slabs_active = z->on(where::active).count;
  out->slabs_partial = z->on(where::partial).count;
  out->slabs_full = z->on(where::full).count;
  out->slabs_spare = z->on(where::spare).count;
  uint64_t reserve = 0, total = 0;
  for (auto &l : z->lists) {
    total += l.count;
    for (slab *s = l.head; s; s = s->next) reserve += s->is_reserve;
  }
  out->slabs = total;
  out->slabs_reserve = reserve;
  out->reserve_allocs = z->reserve_allocs;
  out->sync_maps = z->sync_maps;
  out->proactive_maps = z->proactive_maps;
  out->proactive_failures = z->proactive_failures;
  out->slabs_released = z->released;
  out->bytes_mapped = (total - reserve) * z->slab_size;
  out->errors = z->errors.load(std::memory_order_relaxed);
  out->spare_low = z->spare_low;
  out->spare_high = z->spare_high;
  z->lock.release();
  release_chain(z, to_release);
  return 0;
}


// fork: the order of zone.hpp. The registry stays held, so no zone comes or
// goes between prefork and the release.
void prefork() {
  g_making.acquire();
  g_zones_init.acquire();
  g_public_lock.acquire();  // the report holds it while it takes zone locks
  g_registry.acquire();
  for (zone *z = g_registry_head; z; z = z->reg_next) {
    z->refill.acquire();
    z->lock.acquire();
  }
  pagemap::prefork();
  pool_prefork();
}

void postfork_parent() {
  pool_postfork();
  pagemap::postfork();
  for (zone *z = g_registry_head; z; z = z->reg_next) {
    z->lock.release();
    z->refill.release();
  }
  g_registry.release();
  g_public_lock.release();
  g_zones_init.release();
  g_making.release();
}

// The child's only thread is the one that took every lock: releasing them
// also brings its count of held locks (os::reentered) back to zero.
void postfork_child() { postfork_parent(); }


}  // namespace sysref::slab
