// lib/slab: kmalloc_obj zones. One zone per object size; slabs aligned to
// their size (pointer -> slab is a mask); a per-CPU active slab whose free
// list lives in the CPU's slot; lock-free remote frees; proactive refill;
// registered reserves. This header is the layer's interface.
#pragma once
#include <cstddef>
#include <cstdint>

#include <sysref/kmalloc_obj.h>

namespace sysref::slab {

struct zone;

inline constexpr size_t max_object = size_t{256} << 10;
inline constexpr size_t min_slab = size_t{64} << 10;

// Functions returning int give 0 (or a count) on success, -errno on failure.
zone *zone_create(const char *name, size_t objsize, size_t align, unsigned flags);
void zone_destroy(zone *z);
// The library's own zones (magazines, cache structures): their pages count
// as metadata, and they keep no spare slabs.
void mark_internal(zone *z);
void *alloc(zone *z, int flags);
void free(zone *z, void *obj);
int reserve(zone *z, void *mem, size_t len);
int set_spare(zone *z, unsigned low, unsigned high);
size_t slab_size(const zone *z);
size_t object_size(const zone *z);
int stats(zone *z, kmalloc_zone_stats *out);

// The zone that owns p, or nullptr when p lies in no slab the library knows
// (it reads only the page map and the slab header, never p itself).
zone *owner_of(const void *p);
// Whether p is the start of an object in z's slab layout (arithmetic only).
bool is_object_start(const zone *z, const void *p);

// A word the layer above may attach to a zone (kmalloc: its size class).
void set_user(zone *z, void *user);
void *user(const zone *z);

}  // namespace sysref::slab
