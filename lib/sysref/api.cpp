// C ABI of the sysref layer: one-line forwards.
#include <cerrno>
#include <sysref/kref.h>
#include <sysref/sysref.h>

#include "sysref.hpp"

namespace k = sysref::kref;
namespace o = sysref::objects;

namespace {
int as_c(int r) { return r < 0 ? (errno = -r, -1) : r; }
}  // namespace

extern "C" {
void kref_init(struct kref *kref, void (*release)(struct kref *), unsigned int n) { k::init(kref, release, n); }
void kref_get(struct kref *kref, unsigned int n) { k::get(kref, n); }
bool kref_get_not_zero(struct kref *kref, unsigned int n) { return k::get_not_zero(kref, n); }
bool kref_put(struct kref *kref) { return k::put(kref); }
void kref_resurrect(struct kref *kref, unsigned int n) { k::resurrect(kref, n); }
unsigned int kref_refcnt(const struct kref *kref) { return k::refcnt(kref); }
}

// Inside namespace sysref, where the C header puts its declarations for C++.
namespace sysref {
extern "C" {
void *sysref_alloc(struct sysref_class *cls) { return o::alloc(cls); }
void sysref_activate(struct sysref *sr) { o::activate(sr); }
void sysref_get(struct sysref *sr) { o::get(sr); }
bool sysref_get_not_zero(struct sysref *sr) { return o::get_not_zero(sr); }
void sysref_put(struct sysref *sr) { o::put(sr); }
void *sysref_lookup(sysid_t id) { return o::lookup(id); }
void *sysref_lookup_class(struct sysref_class *cls, sysid_t id) { return cls ? o::lookup(id, cls) : nullptr; }
sysid_t sysref_sysid(struct sysref *sr) { return o::sysid(sr); }
int sysref_foreach(struct sysref_class *cls, int (*fn)(void *, void *), void *arg) { return as_c(o::foreach(cls, fn, arg)); }
void sysref_set_parent(struct sysref *child, struct sysref *parent) { o::set_parent(child, parent); }
struct sysref *sysref_parent(struct sysref *child) { return o::parent(child); }
int sysref_stats(struct sysref_class *cls, struct sysref_stats *out) { return as_c(o::stats(cls, out)); }
}
}  // namespace sysref
