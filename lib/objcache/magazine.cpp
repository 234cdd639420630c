// Magazine memory: one internal kmalloc_obj zone per size, made on first use.
// Magazines never come from malloc or from an object cache, so allocating one
// can never recurse into the caches they serve.
#include "magazine.hpp"

#include <atomic>

#include "../os/os.hpp"

namespace sysref::objcache {
namespace {

constexpr size_t bytes_for(unsigned index) { return sizeof(magazine) + mag_sizes[index] * sizeof(void *); }

constinit slab::lazy_zone g_zones[mag_size_count] = {
    {{}, "sysref.magazines", bytes_for(0), 64}, {{}, "sysref.magazines", bytes_for(1), 64},
    {{}, "sysref.magazines", bytes_for(2), 64}, {{}, "sysref.magazines", bytes_for(3), 64},
    {{}, "sysref.magazines", bytes_for(4), 64}, {{}, "sysref.magazines", bytes_for(5), 64},
    {{}, "sysref.magazines", bytes_for(6), 64}};
static_assert(mag_size_count == 7, "one lazy zone per magazine size");

}  // namespace

magazine *mag_alloc(unsigned index, int flags) {
  slab::zone *z = g_zones[index].made.load(std::memory_order_acquire);
  // Making the zone waits for locks: not from a handler that interrupted
  // library code (a put there does without a new magazine).
  if (!z && (flags & SR_NOWAIT) && os::reentered()) return nullptr;
  if (!z && !(z = g_zones[index].make())) return nullptr;
  auto *m = static_cast<magazine *>(slab::alloc(z, flags & (SR_NOWAIT | SR_USE_RESERVE)));
  if (!m) return nullptr;
  m->word = 0;
  m->capacity = mag_sizes[index];
  m->size_index = index;
  m->next = nullptr;
  return m;
}

void mag_free(magazine *m) { slab::free(g_zones[m->size_index].get(), m); }

size_t mag_bytes(const magazine *m) { return sizeof(magazine) + m->capacity * sizeof(void *); }

}  // namespace sysref::objcache
