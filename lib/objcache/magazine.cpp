// Magazine memory: one internal kmalloc_obj zone per size, made on first use.
// Magazines never come from malloc or from an object cache, so allocating one
// can never recurse into the caches they serve.
#include "magazine.hpp"

#include <atomic>

#include "../os/os.hpp"

namespace sysref::objcache {
namespace {

constinit std::atomic<slab::zone *> g_zones[mag_size_count] = {};
constinit os::lock g_zones_lock;

slab::zone *zone_for(unsigned index) {
  slab::zone *z = g_zones[index].load(std::memory_order_acquire);
  if (z) return z;
  os::guard g(g_zones_lock);
  z = g_zones[index].load(std::memory_order_relaxed);
  if (!z) {
    z = slab::zone_create("sysref.magazines", sizeof(magazine) + mag_sizes[index] * sizeof(void *),
                          64, 0);
    if (!z) return nullptr;
    slab::mark_internal(z);
    g_zones[index].store(z, std::memory_order_release);
  }
  return z;
}

}  // namespace

magazine *mag_alloc(unsigned index, int flags) {
  slab::zone *z = zone_for(index);
  if (!z) return nullptr;
  auto *m = static_cast<magazine *>(slab::alloc(z, flags & (SR_NOWAIT | SR_USE_RESERVE)));
  if (!m) return nullptr;
  m->word = 0;
  m->capacity = mag_sizes[index];
  m->size_index = index;
  m->next = nullptr;
  return m;
}

void mag_free(magazine *m) { slab::free(g_zones[m->size_index].load(std::memory_order_relaxed), m); }

size_t mag_bytes(const magazine *m) { return sizeof(magazine) + m->capacity * sizeof(void *); }

}  // namespace sysref::objcache
