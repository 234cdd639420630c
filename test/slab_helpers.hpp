// Shared by the slab suite's files (test_slab.cpp, test_slab_free.cpp): zone
// statistics, draining a zone, freeing what was drained, repeated objects.
#pragma once
#include <criterion/criterion.h>

#include <algorithm>
#include <cstddef>
#include <sysref/kmalloc_obj.h>
#include <vector>

namespace test_slab {

inline kmalloc_zone_stats zstats(kmalloc_zone_t *z) {
  kmalloc_zone_stats s;
  cr_assert_eq(kmalloc_obj_zone_stats(z, &s), 0);
  return s;
}

// Everything the zone hands out until it says no (bounded for safety).
inline std::vector<void *> drain(kmalloc_zone_t *z, int flags, size_t cap = 1 << 20) {
  std::vector<void *> got;
  while (got.size() < cap) {
    void *p = kmalloc_obj(z, flags);
    if (!p) break;
    got.push_back(p);
  }
  return got;
}

inline void free_all(kmalloc_zone_t *z, std::vector<void *> &v) {
  for (void *p : v) kfree_obj(p, z);
  v.clear();
}

inline bool all_distinct(std::vector<void *> v) {
  std::sort(v.begin(), v.end());
  return std::adjacent_find(v.begin(), v.end()) == v.end();
}

}  // namespace test_slab
