/* kref: reference counts with the rules of Akaros' kref. A count that would
 * overflow saturates instead of wrapping, and a saturated count is never
 * released (a leak, never a use after free). Taking a reference on a zero
 * count, or putting one below zero, is reported (SYSREF_ON_ERROR). */
#ifndef SYSREF_KREF_H
#define SYSREF_KREF_H

#include <stdbool.h>
#include <stdint.h>
#include <sysref/flags.h>

SYSREF_EXTERN_C_BEGIN

/* What kref_refcnt reports for a saturated count. */
#define KREF_SATURATED 0xc0000000u

struct kref {
	uint32_t refcount;                  /* private: read it with kref_refcnt */
	uint32_t reserved;
	void (*release)(struct kref *kref); /* runs once, when the count drops to 0 */
};

/* The count starts at n (0 is allowed: see kref_resurrect). */
SYSREF_API void kref_init(struct kref *kref, void (*release)(struct kref *kref), unsigned int n);
/* Adds n references; the caller already holds one. A get on a zero count is
 * reported and saturates the count. */
SYSREF_API void kref_get(struct kref *kref, unsigned int n);
/* Adds n references unless the count is zero: false then, and nothing taken. */
SYSREF_API bool kref_get_not_zero(struct kref *kref, unsigned int n);
/* Drops one reference; runs release and returns true when that was the last. */
SYSREF_API bool kref_put(struct kref *kref);
/* Adds n references with no check for zero: 0 -> n, for a caller that knows
 * release has not run (or has been undone), e.g. under its own lock. */
SYSREF_API void kref_resurrect(struct kref *kref, unsigned int n);
/* The count now, or KREF_SATURATED. */
SYSREF_API unsigned int kref_refcnt(const struct kref *kref);

SYSREF_EXTERN_C_END
#endif
