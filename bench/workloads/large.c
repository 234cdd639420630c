/* large: blocks of 5-25 MiB allocated, every page written, a few pages
 * read back, and freed, in a loop; two are live at a time (a decoder's
 * input and output buffers). Measures the large-block path: mmap/munmap
 * or reuse, page faults, and whether freed memory goes back to the OS.
 *
 *   large [SCALE]
 */
#include "wl.h"

enum { MIB = 1 << 20 };

int main(int argc, char **argv)
{
	long iters = wl_count(80, wl_scale(argc, argv), 3);
	long page = sysconf(_SC_PAGESIZE);
	wl_rng r = { 0x2d358dccaa6c78a5ULL };
	unsigned char *held = NULL;
	size_t held_size = 0;

	for (long it = 0; it < iters; it++) {
		size_t size = wl_range(&r, 5 * MIB, 25 * MIB);
		unsigned char *p = wl_malloc(size);
		unsigned char tag = (unsigned char)it;
		for (size_t off = 0; off < size; off += (size_t)page)
			p[off] = (unsigned char)(tag + off / (size_t)page);
		p[size - 1] = tag;
		/* Spot checks: first, last, and a random page. */
		size_t pg = wl_range(&r, 0, (size - 1) / (size_t)page);
		if (p[0] != tag || p[size - 1] != tag ||
		    p[pg * (size_t)page] != (unsigned char)(tag + pg))
			WL_FAIL("large: block %ld of %zu B reads back wrong", it, size);
		if (held) {
			if (held[held_size - 1] != (unsigned char)(it - 1))
				WL_FAIL("large: held block corrupted");
			free(held);
		}
		held = p;
		held_size = size;
	}
	free(held);
	return 0;
}
