// Machine topology through hwloc, loaded with dlopen on first use so that a
// program that never asks pays nothing, and so that nothing on an allocation
// path can ever reach it (hwloc allocates with malloc).
#include <dlfcn.h>
#include <hwloc.h>

#include "os.hpp"

namespace sysref::os {
namespace {

topology_info probe() {
  unsigned n = cpu_count();
  topology_info t{1, n, n, 1, false};
  void *h = ::dlopen("libhwloc.so.15", RTLD_NOW | RTLD_LOCAL);
  if (!h) return t;
  auto init = reinterpret_cast<int (*)(hwloc_topology_t *)>(::dlsym(h, "hwloc_topology_init"));
  auto load = reinterpret_cast<int (*)(hwloc_topology_t)>(::dlsym(h, "hwloc_topology_load"));
  // hwloc_get_nbobjs_by_type is an inline in hwloc.h: use what it calls.
  auto depth_of = reinterpret_cast<int (*)(hwloc_topology_t, hwloc_obj_type_t)>(
      ::dlsym(h, "hwloc_get_type_depth"));
  auto nbobjs = reinterpret_cast<unsigned (*)(hwloc_topology_t, int)>(
      ::dlsym(h, "hwloc_get_nbobjs_by_depth"));
  auto destroy = reinterpret_cast<void (*)(hwloc_topology_t)>(::dlsym(h, "hwloc_topology_destroy"));
  hwloc_topology_t topo;
  if (init && load && depth_of && nbobjs && destroy && init(&topo) == 0) {
    if (load(topo) == 0) {
      auto count = [&](hwloc_obj_type_t type) {
        int depth = depth_of(topo, type);
        if (depth == HWLOC_TYPE_DEPTH_UNKNOWN || depth == HWLOC_TYPE_DEPTH_MULTIPLE) return 1u;
        unsigned c = nbobjs(topo, depth);
        return c ? c : 1u;
      };
      t = {count(HWLOC_OBJ_PACKAGE), count(HWLOC_OBJ_CORE), count(HWLOC_OBJ_PU),
           count(HWLOC_OBJ_NUMANODE), true};
    }
    destroy(topo);
  }
  // Keep the library loaded: unloading hwloc while its plugins hold
  // destructors has crashed programs elsewhere; the cost is one mapping.
  return t;
}

}  // namespace

// Probed once. No library lock is held meanwhile: hwloc allocates, and under
// the preload shim that is this library again.
topology_info topology() {
  static constinit std::atomic<uint32_t> state{0};  // 0 not probed, 1 probing, 2 done
  static constinit topology_info cached{};
  uint32_t s = state.load(std::memory_order_acquire);
  if (s == 2) return cached;
  if (s == 0 && state.compare_exchange_strong(s, 1, std::memory_order_acquire)) {
    cached = probe();
    state.store(2, std::memory_order_release);
    futex_wake(&state, INT32_MAX);
    return cached;
  }
  while ((s = state.load(std::memory_order_acquire)) != 2) futex_wait(&state, s);
  return cached;
}

}  // namespace sysref::os
