/* realloc: NSTR strings grown round robin by small appends (8-40 B, one
 * realloc each, sized exactly, as a naive string builder does) until each
 * holds MAXLEN bytes, ~40 MiB live at the end; then checked and freed.
 * Interleaved growth is what defeats in-place growth at the heap's top:
 * each string's neighbour is another string, so an allocator either
 * grows into slack it left (size classes) or moves the block.
 *
 *   realloc [SCALE]
 *
 * SCALE < 1 grows fewer strings; above 1 repeats the whole build. */
#include "wl.h"

enum { NSTR = 10000, MAXLEN = 4096 };

static char pat(size_t s, size_t i) { return (char)('a' + (s * 7 + i * 13) % 26); }

int main(int argc, char **argv)
{
	double scale = wl_scale(argc, argv);
	long total = wl_count(NSTR * 1.0, scale, 10);
	size_t nstr = total < NSTR ? (size_t)total : NSTR;
	long rounds = total / (long)nstr;
	wl_rng r = { 0x4f1bbcdcbfa53e0bULL };
	char **str = wl_malloc(nstr * sizeof(char *));
	size_t *len = wl_malloc(nstr * sizeof(size_t));

	for (long round = 0; round < rounds; round++) {
		size_t done = 0;
		for (size_t s = 0; s < nstr; s++)
			str[s] = NULL, len[s] = 0;
		while (done < nstr) {
			for (size_t s = 0; s < nstr; s++) {
				if (len[s] == MAXLEN)
					continue;
				size_t add = wl_range(&r, 8, 40);
				if (len[s] + add > MAXLEN)
					add = MAXLEN - len[s];
				str[s] = wl_realloc(str[s], len[s] + add);
				for (size_t i = len[s]; i < len[s] + add; i++)
					str[s][i] = pat(s, i);
				len[s] += add;
				if (len[s] == MAXLEN)
					done++;
			}
		}
		/* Every byte: a realloc that copied too little shows here. */
		for (size_t s = 0; s < nstr; s++) {
			for (size_t i = 0; i < MAXLEN; i++)
				if (str[s][i] != pat(s, i))
					WL_FAIL("realloc: string %zu byte %zu is %d", s, i, str[s][i]);
			free(str[s]);
		}
	}
	free(str);
	free(len);
	return 0;
}
