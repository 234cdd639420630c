/* frag: fragmentation. Allocate ~200 MiB of small blocks of mixed sizes
 * (16-512 B), free 90% of them at random, then allocate larger blocks
 * (600-3000 B) until live bytes are back to 60% of the first phase. An
 * allocator that can reuse the holes (coalescing, or returning emptied
 * pages) stays near the first peak; one that cannot grows past it.
 *
 *   frag [SCALE]
 *
 * Prints one line on stderr, "frag: live X MiB, rss Y MiB", just before
 * the final frees (the runner records peak RSS itself). */
#include "wl.h"

typedef struct { uint64_t size, tag; } hdr;

static hdr *make_block(size_t size)
{
	hdr *h = wl_malloc(size);
	h->size = size;
	h->tag = wl_mix(size ^ (uint64_t)(uintptr_t)h);
	((unsigned char *)h)[size - 1] = (unsigned char)h->tag;
	return h;
}

static size_t check_free(hdr *h)
{
	size_t size = h->size;
	if (size < 17 || size > 3000 || h->tag != wl_mix(size ^ (uint64_t)(uintptr_t)h) ||
	    ((unsigned char *)h)[size - 1] != (unsigned char)h->tag)
		WL_FAIL("frag: block %p corrupted", (void *)h);
	free(h);
	return size;
}

int main(int argc, char **argv)
{
	size_t target = (size_t)wl_count(200.0 * (1 << 20), wl_scale(argc, argv), 1 << 20);
	wl_rng r = { 0xd1b54a32d192ed03ULL };
	size_t cap = target / 17 + 16, n = 0, live = 0;
	hdr **blk = wl_malloc(cap * sizeof(hdr *));

	while (live < target) {
		hdr *h = make_block(wl_range(&r, 17, 512));
		live += h->size;
		blk[n++] = h;
	}
	/* Free a random 90%: shuffle, then free the front of the array. */
	for (size_t i = n - 1; i > 0; i--) {
		size_t j = wl_range(&r, 0, i);
		hdr *t = blk[i]; blk[i] = blk[j]; blk[j] = t;
	}
	size_t nfree = n / 10 * 9, kept = n - nfree;
	for (size_t i = 0; i < nfree; i++)
		live -= check_free(blk[i]);
	memmove(blk, blk + nfree, kept * sizeof(hdr *));
	n = kept;
	while (live < target / 10 * 6) {
		hdr *h = make_block(wl_range(&r, 600, 3000));
		live += h->size;
		if (n == cap)
			WL_FAIL("frag: block table full");
		blk[n++] = h;
	}
	fprintf(stderr, "frag: live %.1f MiB, rss %.1f MiB\n", live / 1048576.0, wl_rss_kib() / 1024.0);
	for (size_t i = 0; i < n; i++)
		live -= check_free(blk[i]);
	if (live != 0)
		WL_FAIL("frag: %zu bytes unaccounted for", live);
	free(blk);
	return 0;
}
