// lib/sysref: reference-counted objects. For now the kref counts (Akaros
// rules, saturating); SYSREF objects with sysids build on objcache next.
// This header is the layer's interface.
#pragma once
#include <sysref/kref.h>

namespace sysref::kref {

void init(struct kref *k, void (*release)(struct kref *), unsigned n);
void get(struct kref *k, unsigned n);
bool get_not_zero(struct kref *k, unsigned n);
bool put(struct kref *k);
void resurrect(struct kref *k, unsigned n);
unsigned refcnt(const struct kref *k);

}  // namespace sysref::kref
