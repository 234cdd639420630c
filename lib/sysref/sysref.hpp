// lib/sysref: reference-counted objects. kref (Akaros rules, saturating
// counts) and SYSREF objects with sysids on top of objcache. This header is
// the layer's interface; the theory statement is at the top of object.cpp.
#pragma once
#include <sysref/kref.h>
#include <sysref/sysref.h>

namespace sysref::kref {

void init(struct kref *k, void (*release)(struct kref *), unsigned n);
void get(struct kref *k, unsigned n);
bool get_not_zero(struct kref *k, unsigned n);
bool put(struct kref *k);
void resurrect(struct kref *k, unsigned n);
unsigned refcnt(const struct kref *k);

}  // namespace sysref::kref

namespace sysref::objects {

void *alloc(sysref_class *cls);  // NULL + errno
void activate(struct sysref *sr);
void get(struct sysref *sr);
bool get_not_zero(struct sysref *sr);
void put(struct sysref *sr);
void *lookup(sysid_t id, const sysref_class *only = nullptr);  // only: that class's objects
sysid_t sysid(struct sysref *sr);
int foreach(sysref_class *cls, int (*fn)(void *obj, void *arg), void *arg);
void set_parent(struct sysref *child, struct sysref *parent);
struct sysref *parent(struct sysref *child);
int stats(sysref_class *cls, struct sysref_stats *out);  // 0, or -errno

// Every class that has made its cache, in the order they were made (for the
// report): fn(cls, arg) until it returns non-zero.
int for_each_class(int (*fn)(sysref_class *cls, void *arg), void *arg);

// fork (the preload shim's atfork handlers): the class lock (held while a
// class makes its cache, so before every lower layer's locks), then every
// index shard's lock (leaves). Released in the parent and in the child.
void prefork();
void postfork_parent();
void postfork_child();

}  // namespace sysref::objects
