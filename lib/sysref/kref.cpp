// kref: reference counts (Akaros rules) that saturate instead of wrapping.
//
// The count is a uint32_t. Live counts stay below 2^31; anything from 2^31
// up is the saturated zone, and a count that enters it is set to
// KREF_SATURATED (3 * 2^30), 2^30 away from both ends, so that racing gets
// and puts cannot carry it out again. A saturated object is never released:
// a leak, never a use after free. The same holds after misuse (a get on
// zero, a put below zero), which is reported and then saturates.
#include <atomic>

#include "../os/os.hpp"
#include "sysref.hpp"

namespace sysref::kref {
namespace {

constexpr uint32_t saturated_zone = 0x80000000u;

std::atomic_ref<uint32_t> count(struct kref *k) { return std::atomic_ref<uint32_t>(k->refcount); }

bool saturated(uint32_t v) { return v >= saturated_zone; }

// old + n, or the saturated value if that leaves the live range.
uint32_t add(uint32_t old, unsigned n) {
  uint64_t sum = uint64_t{old} + n;
  return sum >= saturated_zone ? KREF_SATURATED : static_cast<uint32_t>(sum);
}

void saturate(struct kref *k) { count(k).store(KREF_SATURATED, std::memory_order_relaxed); }

}  // namespace

void init(struct kref *k, void (*release)(struct kref *), unsigned n) {
  k->release = release;
  k->reserved = 0;
  count(k).store(add(0, n), std::memory_order_release);
}

void get(struct kref *k, unsigned n) {
  uint32_t old = count(k).fetch_add(n, std::memory_order_relaxed);
  if (__builtin_expect(old != 0 && !saturated(old) && uint64_t{old} + n < saturated_zone, 1)) return;
  if (old == 0) {
    saturate(k);  // whoever saw zero may be releasing it: leak it instead
    os::report_error("kref_get: reference taken on a zero count", nullptr, k);
    return;
  }
  saturate(k);
}

bool get_not_zero(struct kref *k, unsigned n) {
  uint32_t v = count(k).load(std::memory_order_relaxed);
  do {
    if (v == 0) return false;
    if (saturated(v)) return true;
  } while (!count(k).compare_exchange_weak(v, add(v, n), std::memory_order_acquire, std::memory_order_relaxed));
  return true;
}

bool put(struct kref *k) {
  // acq_rel: every use of the object by other holders happens before release.
  uint32_t old = count(k).fetch_sub(1, std::memory_order_acq_rel);
  if (__builtin_expect(old > 1 && !saturated(old), 1)) return false;
  if (old == 1) {
    if (k->release) k->release(k);
    return true;
  }
  saturate(k);
  if (old == 0) os::report_error("kref_put: count dropped below zero", nullptr, k);
  return false;
}

void resurrect(struct kref *k, unsigned n) {
  uint32_t old = count(k).fetch_add(n, std::memory_order_acquire);
  if (saturated(old) || uint64_t{old} + n >= saturated_zone) saturate(k);
}

unsigned refcnt(const struct kref *k) {
  uint32_t v = std::atomic_ref<uint32_t>(const_cast<uint32_t &>(k->refcount)).load(std::memory_order_relaxed);
  return saturated(v) ? KREF_SATURATED : v;
}

}  // namespace sysref::kref
