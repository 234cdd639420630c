/* A malloc/free loop for bench_preload.py: run bare, under the shim with
 * statistics off and on, and under each peer, it gives the cost of one
 * malloc/free pair as a preloaded program sees it (through the PLT, with
 * whatever the shim counts). Prints the median ns per pair of 7 runs.
 * Usage: preload_loop [pairs] */
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

static double now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec * 1e9 + ts.tv_nsec;
}

static int cmp(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;
	return (x > y) - (x < y);
}

int main(int argc, char **argv)
{
	long pairs = argc > 1 ? atol(argv[1]) : 2000000;
	static const size_t sizes[8] = {16, 24, 32, 48, 64, 96, 128, 256};
	double runs[7];
	void *volatile sink;
	for (int r = 0; r < 7; r++) {
		double t0 = now_ns();
		for (long i = 0; i < pairs; i++) {
			void *p = malloc(sizes[i & 7]);
			sink = p;
			free(p);
		}
		runs[r] = (now_ns() - t0) / pairs;
	}
	(void)sink;
	qsort(runs, 7, sizeof runs[0], cmp);
	printf("%.2f\n", runs[3]);
	return 0;
}
