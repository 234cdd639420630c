/* bench_abi: the C ABI as a linking user sees it. objcache_get/objcache_put
 * and sr_malloc/sr_free are called through libsysref.so's PLT (this file is
 * built with -fplt, like an ordinary program, and linked against the shared
 * library); glibc's malloc/free are called through libc's PLT.
 *
 * mimalloc is dlopen()ed RTLD_LOCAL (linking it would replace glibc's
 * malloc) and called two ways:
 *   - "mimalloc": through a PLT-shaped stub, a direct call to
 *     `jmp *pointer`: the same two branches as a call through the PLT,
 *     which is how a program linked with mimalloc calls mi_malloc;
 *   - "mimalloc*": through the function pointer itself, one indirect call.
 * "objcache*" calls objcache through dlsym()ed pointers likewise. The
 * target compares like with like (PLT with PLT, pointer with pointer), and
 * both comparisons are printed: on the 2-vCPU machine the shape moved a
 * row by anything from 3% to 25%, either way, from one build or run to the
 * next (code placement counts as much as the extra branch).
 *
 * Patterns, 64-byte objects: batch64 (64 gets, then the 64 puts in the same
 * order) and single (one get, one put). Every allocator runs each pattern in
 * turn, interleaved, many times; the median per pair is reported, with the
 * ratios objcache / mimalloc and a PASS line when objcache is no slower.
 *
 *   bench_abi [rounds]          (default 201 rounds of 20000 pairs each)
 *   SYSREF_PERCPU=lock bench_abi   the other per-CPU mode
 *   taskset -c 0 bench_abi         for stable numbers */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <sysref/kmalloc.h>
#include <sysref/objcache.h>

enum { OBJ = 64, BATCH = 64, PAIRS = 20000 };

/* Keeps a pointer alive as far as the compiler knows: without it, a
 * malloc/free pair whose result is unused may be removed altogether. */
#define ESCAPE(p) __asm__ volatile("" : : "r"(p) : "memory")

static objcache_t *oc;
/* used: the stubs below read them from assembly, which the compiler does
 * not see. */
__attribute__((used)) static void *(*mi_malloc_p)(size_t);
__attribute__((used)) static void (*mi_free_p)(void *);
static void *(*oc_get_p)(objcache_t *, int);
static void (*oc_put_p)(objcache_t *, void *);

/* The PLT shape, as this binary's own PLT entries are: `jmp *GOT(%rip)`,
 * each entry 16-byte aligned. */
void *mi_malloc_plt(size_t);
void mi_free_plt(void *);
__asm__(".text\n\t"
	".p2align 4\n"
	"mi_malloc_plt:\n\t"
	"jmp *mi_malloc_p(%rip)\n\t"
	".p2align 4\n"
	"mi_free_plt:\n\t"
	"jmp *mi_free_p(%rip)\n\t");

static uint64_t now_ns(void) {
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* One timed run of a pattern: ns per get+put pair. The get and put calls
 * are spelled out per allocator (no callback in between), so what is timed
 * is exactly the call a user writes. */
#define DEFINE_RUN(name, GET, PUT)                                        \
	static double name##_batch(void) {                                \
		void *p[BATCH];                                           \
		uint64_t t0 = now_ns();                                   \
		for (int r = 0; r < PAIRS / BATCH; r++) {                 \
			for (int i = 0; i < BATCH; i++) {                 \
				p[i] = GET;                               \
				ESCAPE(p[i]);                             \
			}                                                 \
			for (int i = 0; i < BATCH; i++) PUT(p[i]);        \
		}                                                         \
		return (double)(now_ns() - t0) / (PAIRS / BATCH * BATCH); \
	}                                                                 \
	static double name##_single(void) {                               \
		uint64_t t0 = now_ns();                                   \
		for (int r = 0; r < PAIRS; r++) {                         \
			void *q = GET;                                    \
			ESCAPE(q);                                        \
			PUT(q);                                           \
		}                                                         \
		return (double)(now_ns() - t0) / PAIRS;                   \
	}

#define OC_PUT(q) objcache_put(oc, q)
#define OCP_PUT(q) oc_put_p(oc, q)
#define MI_PUT(q) mi_free_plt(q)
#define MIP_PUT(q) mi_free_p(q)
#define SR_PUT(q) sr_free(q)
#define LIBC_PUT(q) free(q)
DEFINE_RUN(oc, objcache_get(oc, 0), OC_PUT)
DEFINE_RUN(ocp, oc_get_p(oc, 0), OCP_PUT)
DEFINE_RUN(mi, mi_malloc_plt(OBJ), MI_PUT)
DEFINE_RUN(mip, mi_malloc_p(OBJ), MIP_PUT)
DEFINE_RUN(sr, sr_malloc(OBJ), SR_PUT)
DEFINE_RUN(libc, malloc(OBJ), LIBC_PUT)

/* The empty loop: what the harness itself costs per pair. */
static double floor_batch(void) {
	void *p[BATCH];
	uint64_t t0 = now_ns();
	for (int r = 0; r < PAIRS / BATCH; r++) {
		for (int i = 0; i < BATCH; i++) {
			p[i] = &p[i];
			ESCAPE(p[i]);
		}
		for (int i = 0; i < BATCH; i++) ESCAPE(p[i]);
	}
	return (double)(now_ns() - t0) / (PAIRS / BATCH * BATCH);
}
static double floor_single(void) {
	uint64_t t0 = now_ns();
	for (int r = 0; r < PAIRS; r++) {
		void *q = &t0;
		ESCAPE(q);
	}
	return (double)(now_ns() - t0) / PAIRS;
}

struct row {
	const char *name, *how;
	double (*run[2])(void);
	double *samples[2];
};

static int cmp_double(const void *a, const void *b) {
	double x = *(const double *)a, y = *(const double *)b;
	return x < y ? -1 : x > y;
}

static double median(double *v, int n) {
	qsort(v, (size_t)n, sizeof *v, cmp_double);
	return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

int main(int argc, char **argv) {
	int rounds = argc > 1 ? atoi(argv[1]) : 201;
	if (rounds < 1) rounds = 1;

	oc = objcache_create("bench_abi", OBJ, 0, NULL, NULL, NULL, 0, 0);
	if (!oc) {
		perror("objcache_create");
		return 1;
	}
	void *mi = dlopen("libmimalloc.so.2", RTLD_NOW | RTLD_LOCAL);
	if (mi) {
		*(void **)&mi_malloc_p = dlsym(mi, "mi_malloc");
		*(void **)&mi_free_p = dlsym(mi, "mi_free");
	}
	if (!mi_malloc_p || !mi_free_p) {
		fprintf(stderr, "bench_abi: mimalloc unavailable: %s\n", mi ? "no mi_malloc/mi_free" : dlerror());
		return 77;  /* skipped */
	}
	*(void **)&oc_get_p = dlsym(RTLD_DEFAULT, "objcache_get");
	*(void **)&oc_put_p = dlsym(RTLD_DEFAULT, "objcache_put");
	if (!oc_get_p || !oc_put_p) {
		fprintf(stderr, "bench_abi: objcache_get/objcache_put not found: %s\n", dlerror());
		return 1;
	}

	struct row rows[] = {
		{"objcache", "objcache_get/put via libsysref.so PLT", {oc_batch, oc_single}, {0}},
		{"mimalloc", "mi_malloc/mi_free via a PLT-shaped stub", {mi_batch, mi_single}, {0}},
		{"objcache*", "objcache_get/put via dlsym fn pointer", {ocp_batch, ocp_single}, {0}},
		{"mimalloc*", "mi_malloc/mi_free via dlsym fn pointer", {mip_batch, mip_single}, {0}},
		{"sr_malloc", "sr_malloc/sr_free via libsysref.so PLT", {sr_batch, sr_single}, {0}},
		{"glibc", "malloc/free via libc PLT", {libc_batch, libc_single}, {0}},
		{"floor", "the loop alone, no call", {floor_batch, floor_single}, {0}},
	};
	enum { NROWS = sizeof rows / sizeof rows[0] };
	const char *pattern[2] = {"batch64 (64 gets, 64 puts)", "single (1 get, 1 put)"};

	for (int r = 0; r < NROWS; r++)
		for (int k = 0; k < 2; k++) {
			rows[r].samples[k] = calloc((size_t)rounds, sizeof(double));
			rows[r].run[k]();  /* warm up: magazines, thread caches, PLT binding */
		}
	/* Interleaved: each round runs every allocator once per pattern, the
	 * order rotating, so drift in the machine's state hits all alike. */
	for (int i = 0; i < rounds; i++)
		for (int k = 0; k < 2; k++)
			for (int j = 0; j < NROWS; j++) {
				int r = (i + j) % NROWS;
				rows[r].samples[k][i] = rows[r].run[k]();
			}

	const char *mode = getenv("SYSREF_PERCPU");
	printf("bench_abi: %d B objects, %d rounds x %d pairs, median ns per get+put pair; SYSREF_PERCPU=%s\n",
	       OBJ, rounds, PAIRS, mode ? mode : "(default: rseq)");
	printf("note: objcache, sr_malloc and mimalloc are called the way a linking program calls them:\n"
	       "      a direct call, then an indirect jump (the PLT; a stub of that shape for mimalloc);\n"
	       "      the starred rows call through a function pointer: one indirect call, no jump.\n");
	double med[NROWS][2];
	for (int k = 0; k < 2; k++) {
		printf("\n%s\n", pattern[k]);
		for (int r = 0; r < NROWS; r++) {
			med[r][k] = median(rows[r].samples[k], rounds);
			printf("  %-10s %7.2f ns/pair   %s\n", rows[r].name, med[r][k], rows[r].how);
		}
	}
	/* Like with like: rows 0 and 1 (PLT), rows 2 and 3 (pointers). */
	static const struct { int a, b; const char *how; } cmp[] = {
		{0, 1, "PLT"},
		{2, 3, "fn pointer"},
	};
	int pass = 1;
	printf("\n");
	for (int c = 0; c < 2; c++)
		for (int k = 0; k < 2; k++) {
			double ratio = med[cmp[c].a][k] / med[cmp[c].b][k];
			int ok = ratio <= 1.0;  /* PASS: objcache no slower than mimalloc */
			pass &= ok;
			printf("objcache/mimalloc %-11s %-27s %.3f  %s\n", cmp[c].how, pattern[k], ratio,
			       ok ? "ok" : "slower");
		}
	printf("%s\n", pass ? "PASS: objcache get+put no slower than mimalloc malloc+free, called alike, in both patterns"
	                    : "MISS: objcache get+put slower than mimalloc malloc+free, called alike, in at least one case");
	objcache_destroy(oc);
	return 0;
}
