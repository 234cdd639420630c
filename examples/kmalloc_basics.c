/* The kmalloc family in one tour: the k* functions with their flags, then
 * every sr_ function (the malloc family under a prefix, callable side by
 * side with the C library's). Prints what each call did; exits 0 only if
 * every check held. */
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sysref/kmalloc.h>
#include <unistd.h>

static int failures;

static void check(int ok, const char *what)
{
	printf("  %-4s %s\n", ok ? "ok" : "FAIL", what);
	if (!ok)
		failures++;
}

static int aligned(const void *p, size_t align)
{
	return ((uintptr_t)p & (align - 1)) == 0;
}

static int zeroed(const void *p, size_t n)
{
	const unsigned char *b = p;

	for (size_t i = 0; i < n; i++)
		if (b[i])
			return 0;
	return 1;
}

static void kmalloc_family(void)
{
	char *s, *t;
	void *a;

	printf("kmalloc family:\n");
	s = kmalloc(100, SR_ZERO);
	check(s != NULL && zeroed(s, 100), "kmalloc(100, SR_ZERO) gives 100 zero bytes");
	printf("       usable size of that block: %zu bytes\n", kmalloc_usable_size(s));
	check(kmalloc_usable_size(s) >= 100, "kmalloc_usable_size() >= 100");
	strcpy(s, "contents survive krealloc");
	t = krealloc(s, 100000, 0);
	check(t != NULL && strcmp(t, "contents survive krealloc") == 0,
	    "krealloc() to 100000 bytes (a large mapping) keeps the contents");
	kfree(t);
	a = kmalloc_aligned(3000, 4096, 0);
	check(a != NULL && aligned(a, 4096), "kmalloc_aligned(3000, 4096) is 4096-byte aligned");
	kfree(a);
	errno = 0;
	check(kmalloc_aligned(64, 24, 0) == NULL && errno == EINVAL,
	    "kmalloc_aligned() with alignment 24 fails with EINVAL");
	/* The freed blocks sit in the size classes' caches: low memory takes
	 * them back. A second call finds nothing left to give. */
	size_t given = kmalloc_reclaim();
	printf("       kmalloc_reclaim() gave back %zu bytes\n", given);
	check(given > 0 && kmalloc_reclaim() == 0, "kmalloc_reclaim() empties the caches once");
}

static void sr_family(void)
{
	void *p, *q, *m;
	int *v;
	char *r;
	int rc, saved;
	size_t page = (size_t)sysconf(_SC_PAGESIZE);

	printf("sr_ family:\n");
	p = sr_malloc(0);
	check(p != NULL, "sr_malloc(0) returns a unique pointer");
	saved = errno = 1234;
	sr_free(p);
	check(errno == saved, "sr_free() leaves errno alone");

	v = sr_calloc(1000, sizeof(*v));
	check(v != NULL && zeroed(v, 1000 * sizeof(*v)), "sr_calloc(1000, sizeof(int)) is zeroed");
	for (int i = 0; i < 1000; i++)
		v[i] = i;
	v = sr_reallocarray(v, 50000, sizeof(*v));
	check(v != NULL && v[999] == 999, "sr_reallocarray() to 50000 ints keeps the first 1000");
	errno = 0;
	check(sr_reallocarray(v, SIZE_MAX, 2) == NULL && errno == ENOMEM,
	    "sr_reallocarray() with an overflowing size fails with ENOMEM");

	r = sr_realloc(NULL, 10);
	check(r != NULL, "sr_realloc(NULL, 10) is sr_malloc(10)");
	strcpy(r, "grow me");
	r = sr_realloc(r, 5000);
	check(r != NULL && strcmp(r, "grow me") == 0, "sr_realloc() to 5000 bytes keeps the contents");
	printf("       sr_malloc_usable_size() of that block: %zu bytes\n", sr_malloc_usable_size(r));
	check(sr_malloc_usable_size(r) >= 5000, "sr_malloc_usable_size() >= 5000");
	check(sr_realloc(r, 0) == NULL, "sr_realloc(p, 0) frees p and returns NULL");
	sr_free(v);

	rc = sr_posix_memalign(&q, 256, 1000);
	check(rc == 0 && aligned(q, 256), "sr_posix_memalign(256, 1000) is 256-byte aligned");
	sr_free(q);
	m = sr_aligned_alloc(64, 100);
	check(m != NULL && aligned(m, 64), "sr_aligned_alloc(64, 100) is 64-byte aligned");
	sr_free(m);
	m = sr_memalign(48, 100);
	check(m != NULL && aligned(m, 64), "sr_memalign(48, 100) rounds the alignment up to 64");
	sr_free(m);
	m = sr_valloc(100);
	check(m != NULL && aligned(m, page), "sr_valloc(100) is page aligned");
	sr_free(m);
	m = sr_pvalloc(0);
	check(m != NULL && aligned(m, page) && sr_malloc_usable_size(m) >= page,
	    "sr_pvalloc(0) gives one whole page");
	sr_free(m);
}

int main(void)
{
	kmalloc_family();
	sr_family();
	printf("%s\n", failures ? "some checks failed" : "all checks passed");
	return failures ? 1 : 0;
}
