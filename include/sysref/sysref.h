/* SYSREF: reference-counted objects with system-wide ids (sysids), after
 * DragonFly's kern_sysref.c. An object is born *creating* (sysref_alloc),
 * becomes *active* and findable by sysid (sysref_activate), turns
 * *terminating* when its last active reference goes (the class's terminate
 * runs once), and returns to its class's object cache when the references
 * taken meanwhile are gone. Its sysid comes with the constructed object, so
 * the next sysref_alloc may hand the same sysid out again, unless it was
 * ever seen from outside (sysref_lookup, sysref_sysid): then the object is
 * destroyed and its sysid is retired for good. See sysref(3). */
#ifndef SYSREF_SYSREF_H
#define SYSREF_SYSREF_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sysref/flags.h>

/* In C++ the declarations live in namespace sysref (the C++ layer's, see
 * <sysref/sysref.hpp>): C++ cannot have both a namespace and a global struct
 * named sysref. There the struct is sysref::sysref; everything else is also
 * brought into the global namespace below. The C ABI is the same. */
#ifdef __cplusplus
namespace sysref {
extern "C" {
#endif

typedef uint64_t sysid_t;

struct sysref_class;

/* Embedded in every object of a class. Private: use the functions. */
struct sysref {
	int32_t refcnt;
	uint32_t state;
	sysid_t sysid;
	struct sysref_class *srclass;
	struct sysref *parent;
	uintptr_t node[3]; /* the sysid index (a red-black tree node) */
};

/* A class: static, designated-initialised. objsize bytes per object, the
 * struct sysref at offset (8-byte aligned). ctor and dtor may be NULL; they
 * run when the class's object cache makes or unmakes an object, never per
 * sysref_alloc. terminate (may be NULL) runs once, when an active object's
 * last reference goes: take it out of your own structures there. */
struct sysref_class {
	const char *name;
	size_t objsize;
	size_t offset;
	int (*ctor)(void *obj, void *priv, int flags);
	void (*dtor)(void *obj, void *priv);
	void (*terminate)(void *obj);
	void *priv;
	unsigned flags; /* 0 */
	/* private state follows, zero-initialised */
	void *sr_state;
	uintptr_t sr_reserved[3];
};

/* The object that embeds sr, from a pointer to its struct sysref. */
#define sysref_entry(sr, type, member) ((type *)((char *)(sr) - offsetof(type, member)))

struct sysref_stats {
	uint64_t live;          /* creating + active + terminating */
	uint64_t creating;      /* allocated, not yet activated */
	uint64_t active;        /* findable by sysid */
	uint64_t terminating;   /* terminate ran (or runs); references remain */
	uint64_t cached;        /* constructed objects the class's cache holds */
	uint64_t allocs;        /* sysref_alloc calls that returned an object */
	uint64_t lookups;       /* sysref_lookup calls (on this class's sysids) */
	uint64_t lookup_misses; /* of those, the ones that returned NULL */
	uint64_t retired;       /* objects destroyed because their sysid was seen */
	uint64_t constructions; /* objects constructed, each with a new sysid */
	uint64_t destructions;  /* objects destructed (retired or reclaimed) */
};

/* A new object in the creating state, or NULL + errno (EINVAL for a bad
 * class, ENOMEM, or the ctor's error). It holds one reference, the
 * creator's: sysref_activate it, or sysref_put it to give it back. */
SYSREF_API void *sysref_alloc(struct sysref_class *cls);
/* Creating -> active: findable, the creator's reference now counts 1. */
SYSREF_API void sysref_activate(struct sysref *sr);
/* Adds a reference; the caller holds one (or the object is creating or
 * terminating: temporary references are allowed then). */
SYSREF_API void sysref_get(struct sysref *sr);
/* Adds a reference if the object is active: false otherwise. */
SYSREF_API bool sysref_get_not_zero(struct sysref *sr);
/* Drops a reference; see the life cycle above. */
SYSREF_API void sysref_put(struct sysref *sr);
/* The active object with that sysid, with a reference taken for the caller,
 * or NULL (creating, terminating, cached or unknown). Marks the sysid seen. */
SYSREF_API void *sysref_lookup(sysid_t id);
/* sysref_lookup, restricted to objects of cls: NULL for an object of
 * another class (nothing taken, nothing marked). */
SYSREF_API void *sysref_lookup_class(struct sysref_class *cls, sysid_t id);
/* The object's sysid; marks it seen. */
SYSREF_API sysid_t sysref_sysid(struct sysref *sr);
/* Calls fn on every active object of cls in sysid order, with a reference
 * held during the call. Stops when fn returns non-zero and returns that
 * value; 0 when every object was visited; -1 + errno EINVAL (fn NULL, or
 * cls NULL or not a class sysref_alloc would take). */
SYSREF_API int sysref_foreach(struct sysref_class *cls, int (*fn)(void *obj, void *arg), void *arg);
/* child holds a reference on parent until child is given back or destroyed
 * (a previous parent's reference is dropped). parent may be NULL. */
SYSREF_API void sysref_set_parent(struct sysref *child, struct sysref *parent);
SYSREF_API struct sysref *sysref_parent(struct sysref *child);
/* Statistics of cls, or with cls NULL the sum over every class (lookups of
 * unknown sysids count there only). 0, or -1 + errno. */
SYSREF_API int sysref_stats(struct sysref_class *cls, struct sysref_stats *out);

#ifdef __cplusplus
} /* extern "C" */
} /* namespace sysref */
using sysref::sysid_t;
using sysref::sysref_class;
using sysref::sysref_stats;
using sysref::sysref_alloc;
using sysref::sysref_activate;
using sysref::sysref_get;
using sysref::sysref_get_not_zero;
using sysref::sysref_put;
using sysref::sysref_lookup;
using sysref::sysref_lookup_class;
using sysref::sysref_sysid;
using sysref::sysref_foreach;
using sysref::sysref_set_parent;
using sysref::sysref_parent;
#endif
#endif
