// lib/objcache: object caches with per-CPU magazines over slab zones. This
// header is the layer's interface (kmalloc and sysref build on it).
#pragma once
#include <cstddef>
#include <cstdint>

#include <sysref/objcache.h>

#include "../slab/slab.hpp"

namespace sysref::objcache {

struct cache;

using ctor_fn = int (*)(void *obj, void *priv, int flags);
using dtor_fn = void (*)(void *obj, void *priv);

struct params {
  const char *name;
  size_t size, align;
  ctor_fn ctor;
  dtor_fn dtor;
  void *priv;
  size_t limit;    // 0: none
  bool internal;   // the library's own: not listed for objcache_reclaim_all's report
};

// Functions returning int give 0 on success, -errno on failure.
cache *create(const params &p);
void destroy(cache *c);
void *get(cache *c, int flags);       // NULL + errno (ENOMEM, or the ctor's error)
void put(cache *c, void *obj);
void put_unconstructed(cache *c, void *obj);  // objcache_dtor: destroy, never cache
size_t reclaim(cache *c);             // bytes given back
size_t reclaim_all();
int stats(cache *c, struct objcache_stats *out);

slab::zone *zone_of(const cache *c);  // where the cache's objects live
size_t object_size(const cache *c);

}  // namespace sysref::objcache
