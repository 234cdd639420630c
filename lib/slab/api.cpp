// C ABI of the slab layer: kmalloc_obj. Each entry checks its arguments and
// forwards into sysref::slab; -errno results become -1 with errno set.
#include <cerrno>
#include <sysref/kmalloc_obj.h>

#include "../os/os.hpp"
#include "zone.hpp"

namespace {
using sysref::slab::zone;

int c_result(int r) { return r < 0 ? (errno = -r, -1) : r; }
// kmalloc_zone_t is the C name of sysref::slab::zone.
zone *Z(kmalloc_zone_t *z) { return reinterpret_cast<zone *>(z); }
bool ok(kmalloc_zone_t *z) { return z && Z(z)->magic == sysref::slab::zone_magic; }
}  // namespace

extern "C" {

kmalloc_zone_t *kmalloc_obj_zone_create(const char *name, size_t objsize, size_t align,
                                        unsigned flags) {
  zone *z = sysref::slab::zone_create(name, objsize, align, flags);
  if (z) sysref::slab::publish(z);  // listed in the report
  return reinterpret_cast<kmalloc_zone_t *>(z);
}

void *kmalloc_obj(kmalloc_zone_t *z, int flags) {
  if (!ok(z)) return errno = EINVAL, nullptr;
  return sysref::slab::alloc_fast(Z(z), flags);
}

void kfree_obj(void *obj, kmalloc_zone_t *z) {
  if (!ok(z)) return sysref::os::report_error("kfree_obj: not a zone", nullptr, z);
  sysref::slab::free_fast(Z(z), obj);
}

int kmalloc_obj_reserve(kmalloc_zone_t *z, void *mem, size_t len) {
  return c_result(sysref::slab::reserve(Z(z), mem, len));
}

int kmalloc_obj_set_spare(kmalloc_zone_t *z, unsigned low, unsigned high) {
  return c_result(sysref::slab::set_spare(Z(z), low, high));
}

size_t kmalloc_obj_slab_size(kmalloc_zone_t *z) { return ok(z) ? sysref::slab::slab_size(Z(z)) : 0; }

void kmalloc_obj_zone_destroy(kmalloc_zone_t *z) { sysref::slab::zone_destroy(Z(z)); }

int kmalloc_obj_zone_stats(kmalloc_zone_t *z, struct kmalloc_zone_stats *out) {
  return c_result(sysref::slab::stats(Z(z), out));
}
}
