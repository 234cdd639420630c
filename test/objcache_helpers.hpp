// Shared by the objcache suite's files (test_objcache.cpp,
// test_objcache_depot.cpp): the constructed widget, its ctor and dtor and their
// counts, the widget cache, statistics, and the bytes mapped for data.
#pragma once
#include <criterion/criterion.h>

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <sysref/objcache.h>
#include <sysref/os.h>

namespace test_objcache {

struct widget {
  uint64_t magic;        // set by the ctor: proves the object is constructed
  uint64_t serial;
  char payload[48];
};
inline constexpr uint64_t built = 0xb011dab1e;

inline std::atomic<long> g_ctors{0}, g_dtors{0};
inline int g_fail_ctor = 0;  // errno value the ctor returns when nonzero

inline int widget_ctor(void *obj, void *priv, int) {
  if (g_fail_ctor) return g_fail_ctor;
  auto *w = static_cast<widget *>(obj);
  w->magic = built;
  w->serial = static_cast<std::atomic<uint64_t> *>(priv)->fetch_add(1);
  g_ctors.fetch_add(1);
  return 0;
}

inline void widget_dtor(void *obj, void *) {
  auto *w = static_cast<widget *>(obj);
  cr_assert_eq(w->magic, built, "dtor of an object not in constructed state");
  w->magic = 0;
  g_dtors.fetch_add(1);
}

inline std::atomic<uint64_t> g_serials{0};

inline objcache_t *widgets(size_t limit = 0) {
  objcache_t *oc = objcache_create("t.widget", sizeof(widget), 0, widget_ctor, widget_dtor,
                                   &g_serials, limit, 0);
  cr_assert_not_null(oc);
  return oc;
}

inline struct objcache_stats stats_of(objcache_t *oc) {
  struct objcache_stats s;
  cr_assert_eq(objcache_stats(oc, &s), 0);
  return s;
}

inline uint64_t data_mapped() {
  struct sysref_os_stats s;
  sysref_os_stats(&s);
  return s.mapped - s.metadata;
}

}  // namespace test_objcache
