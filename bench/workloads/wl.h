/* Shared bits of the workload programs (bench/workloads/): the scale
 * argument, a small fast PRNG, and failing loudly. Each program links no
 * allocator: the one under test is chosen by LD_PRELOAD (workloads.py). */
#ifndef WL_H
#define WL_H

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* argv[1]: work multiplier, 1.0 = the full-run size (~0.3-2 s under glibc). */
static inline double wl_scale(int argc, char **argv)
{
	double s = argc > 1 ? strtod(argv[1], NULL) : 1.0;
	if (!(s > 0.0)) {
		fprintf(stderr, "usage: %s [SCALE>0]\n", argv[0]);
		exit(2);
	}
	return s;
}

/* Scaled count, never below lo (so a smoke run still does something). */
static inline long wl_count(double base, double scale, long lo)
{
	long n = (long)(base * scale);
	return n < lo ? lo : n;
}

/* xorshift64*: cheap enough not to show next to malloc. */
typedef struct { uint64_t s; } wl_rng;

static inline uint64_t wl_next(wl_rng *r)
{
	r->s ^= r->s >> 12;
	r->s ^= r->s << 25;
	r->s ^= r->s >> 27;
	return r->s * 0x2545F4914F6CDD1DULL;
}

/* Uniform in [lo, hi]. */
static inline size_t wl_range(wl_rng *r, size_t lo, size_t hi)
{
	return lo + (size_t)(wl_next(r) % (hi - lo + 1));
}

/* Mix for per-block tags: a value a corrupted block is unlikely to hold. */
static inline uint64_t wl_mix(uint64_t x)
{
	x ^= x >> 33;
	x *= 0xff51afd7ed558ccdULL;
	x ^= x >> 33;
	return x;
}

#define WL_FAIL(...) do { \
	fprintf(stderr, "%s:%d: verify failed: ", __FILE__, __LINE__); \
	fprintf(stderr, __VA_ARGS__); \
	fputc('\n', stderr); \
	exit(1); \
} while (0)

/* malloc that treats NULL as a failure of the allocator under test. */
static inline void *wl_malloc(size_t n)
{
	void *p = malloc(n);
	if (!p)
		WL_FAIL("malloc(%zu) returned NULL", n);
	return p;
}

static inline void *wl_realloc(void *q, size_t n)
{
	void *p = realloc(q, n);
	if (!p)
		WL_FAIL("realloc(%zu) returned NULL", n);
	return p;
}

/* Resident set now, in KiB (from /proc/self/statm), for the frag report. */
static inline long wl_rss_kib(void)
{
	long pages = 0, rss = 0;
	FILE *f = fopen("/proc/self/statm", "r");
	if (f) {
		if (fscanf(f, "%ld %ld", &pages, &rss) != 2)
			rss = 0;
		fclose(f);
	}
	return rss * (sysconf(_SC_PAGESIZE) / 1024);
}

#endif
