#include "pagemap.hpp"

#include <atomic>
#include <cerrno>

#include "../os/os.hpp"

namespace sysref::slab::pagemap {

constinit std::atomic<detail::leaf *> detail::g_top[detail::top_entries] = {};

namespace {
using namespace detail;

constexpr int static_leaves = 2;
constinit std::atomic<void *> g_static[static_leaves][leaf_entries] = {};
constinit int g_static_used = 0;
constinit os::lock g_grow;

leaf *leaf_for(size_t top, bool create, os::wait w = os::wait::yes, bool *busy = nullptr) {
  leaf *l = g_top[top].load(std::memory_order_acquire);
  if (l || !create) return l;
  if (!g_grow.acquire(w)) {
    *busy = true;
    return nullptr;
  }
  l = g_top[top].load(std::memory_order_relaxed);
  if (!l) {
    if (g_static_used < static_leaves) l = &g_static[g_static_used++];
    else l = static_cast<leaf *>(os::map(sizeof(leaf), os::page_size(), os::use::bootstrap));
    if (l) g_top[top].store(l, std::memory_order_release);
  }
  g_grow.release();
  return l;
}

}  // namespace

int set(uintptr_t start, size_t len, void *owner, os::wait w) {
  if ((start + len) >> address_bits) return EINVAL;
  size_t first = start >> granule_shift, count = len >> granule_shift;
  for (size_t i = first; i < first + count; ++i) {
    bool busy = false;
    leaf *l = leaf_for(i >> leaf_bits, true, w, &busy);
    if (!l) {
      clear(start, (i - first) << granule_shift);
      return busy ? EAGAIN : ENOMEM;
    }
    void *expected = nullptr;
    if (!(*l)[i & (leaf_entries - 1)].compare_exchange_strong(expected, owner,
                                                               std::memory_order_release)) {
      clear(start, (i - first) << granule_shift);
      return EEXIST;
    }
  }
  return 0;
}

void prefork() { g_grow.acquire(); }
void postfork() { g_grow.release(); }

void clear(uintptr_t start, size_t len) {
  size_t first = start >> granule_shift, count = len >> granule_shift;
  for (size_t i = first; i < first + count; ++i) {
    leaf *l = leaf_for(i >> leaf_bits, false);
    if (l) (*l)[i & (leaf_entries - 1)].store(nullptr, std::memory_order_release);
  }
}


}  // namespace sysref::slab::pagemap
