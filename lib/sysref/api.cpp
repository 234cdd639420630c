// C ABI of the sysref layer: one-line forwards.
#include <sysref/kref.h>

#include "sysref.hpp"

namespace k = sysref::kref;

extern "C" {
void kref_init(struct kref *kref, void (*release)(struct kref *), unsigned int n) { k::init(kref, release, n); }
void kref_get(struct kref *kref, unsigned int n) { k::get(kref, n); }
bool kref_get_not_zero(struct kref *kref, unsigned int n) { return k::get_not_zero(kref, n); }
bool kref_put(struct kref *kref) { return k::put(kref); }
void kref_resurrect(struct kref *kref, unsigned int n) { k::resurrect(kref, n); }
unsigned int kref_refcnt(const struct kref *kref) { return k::refcnt(kref); }
}
