/* churn: one thread, ~100k live blocks, each step frees a random one and
 * allocates a new one in its place, so lifetimes are random (geometric).
 * Sizes are skewed like a real heap: most 16-128 B, a geometric tail of
 * doubling size classes up to 8 KiB.
 *
 *   churn [SCALE]
 *
 * Each block starts with its size and a tag and ends with the tag's low
 * byte; both are checked before it is freed. */
#include "wl.h"

enum { LIVE = 100000 };

typedef struct { uint64_t size, tag; } hdr;

static size_t skewed_size(wl_rng *r)
{
	uint64_t x = wl_next(r);
	if (x % 100 < 85)
		return wl_range(r, 16, 128);
	/* Tail: class k (128 B << k, k = 1..6) with probability ~2^-k. */
	int k = 1;
	while (k < 6 && (x >> (8 + k)) & 1)
		k++;
	return wl_range(r, (size_t)128 << (k - 1), (size_t)128 << k);
}

static hdr *make_block(wl_rng *r)
{
	size_t size = skewed_size(r);
	hdr *h = wl_malloc(size);
	h->size = size;
	h->tag = wl_mix(size + (uint64_t)(uintptr_t)h);
	if (size > 16)
		((unsigned char *)h)[size - 1] = (unsigned char)h->tag;
	return h;
}

static void check_free(hdr *h)
{
	if (h->size < 16 || h->size > 8192 || h->tag != wl_mix(h->size + (uint64_t)(uintptr_t)h) ||
	    (h->size > 16 && ((unsigned char *)h)[h->size - 1] != (unsigned char)h->tag))
		WL_FAIL("churn: block %p corrupted", (void *)h);
	free(h);
}

int main(int argc, char **argv)
{
	long steps = wl_count(4.8e6, wl_scale(argc, argv), 1000);
	wl_rng r = { 0x853c49e6748fea9bULL };
	hdr **live = wl_malloc(LIVE * sizeof(hdr *));
	long n = steps < LIVE ? steps : LIVE;  /* a smoke run keeps fewer live */
	for (long i = 0; i < n; i++)
		live[i] = make_block(&r);
	for (long s = 0; s < steps; s++) {
		size_t i = wl_range(&r, 0, (size_t)n - 1);
		check_free(live[i]);
		live[i] = make_block(&r);
	}
	for (long i = 0; i < n; i++)
		check_free(live[i]);
	free(live);
	return 0;
}
