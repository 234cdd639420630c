/* bigint: arbitrary-precision arithmetic on malloc'd limb arrays, the way
 * a bignum library uses a heap: Fibonacci by repeated addition (a fresh
 * result per step, the oldest operand freed), n! by in-place multiply with
 * realloc growth, and n! again by a product tree (recursive schoolbook
 * multiplies, every temporary freed). Sizes run from one limb to ~1000.
 *
 *   bigint [SCALE]
 *
 * Checks: every result's residue mod a prime against the same computation
 * done mod that prime, and the two factorials limb for limb. */
#include "wl.h"

typedef struct { uint32_t *d; size_t n, cap; } big;  /* little-endian limbs */

static const uint64_t P = 1000000007ULL;

static big make(size_t cap)
{
	big b = { wl_malloc((cap ? cap : 1) * sizeof(uint32_t)), 0, cap ? cap : 1 };
	return b;
}

static big from_u32(uint32_t v)
{
	big b = make(1);
	b.d[0] = v;
	b.n = 1;
	return b;
}

static uint64_t mod_p(const big *b)
{
	uint64_t r = 0;
	for (size_t i = b->n; i-- > 0;)
		r = ((r << 32) | b->d[i]) % P;
	return r;
}

static big add(const big *a, const big *b)
{
	const big *x = a->n >= b->n ? a : b, *y = a->n >= b->n ? b : a;
	big c = make(x->n + 1);
	uint64_t carry = 0;
	for (size_t i = 0; i < x->n; i++) {
		carry += (uint64_t)x->d[i] + (i < y->n ? y->d[i] : 0);
		c.d[i] = (uint32_t)carry;
		carry >>= 32;
	}
	c.n = x->n;
	if (carry)
		c.d[c.n++] = (uint32_t)carry;
	return c;
}

/* a *= m in place, growing by realloc (by a few limbs at a time, as a
 * careful library would not: the point is many small reallocs). */
static void mul_small(big *a, uint32_t m)
{
	uint64_t carry = 0;
	for (size_t i = 0; i < a->n; i++) {
		carry += (uint64_t)a->d[i] * m;
		a->d[i] = (uint32_t)carry;
		carry >>= 32;
	}
	if (carry) {
		if (a->n == a->cap) {
			a->cap += 4;
			a->d = wl_realloc(a->d, a->cap * sizeof(uint32_t));
		}
		a->d[a->n++] = (uint32_t)carry;
	}
}

static big mul(const big *a, const big *b)
{
	big c = make(a->n + b->n);
	memset(c.d, 0, (a->n + b->n) * sizeof(uint32_t));
	for (size_t i = 0; i < a->n; i++) {
		uint64_t carry = 0;
		for (size_t j = 0; j < b->n; j++) {
			carry += (uint64_t)a->d[i] * b->d[j] + c.d[i + j];
			c.d[i + j] = (uint32_t)carry;
			carry >>= 32;
		}
		c.d[i + b->n] = (uint32_t)carry;
	}
	c.n = a->n + b->n;
	while (c.n > 1 && c.d[c.n - 1] == 0)
		c.n--;
	return c;
}

/* lo * (lo+1) * ... * hi, by halves. */
static big product(uint32_t lo, uint32_t hi)
{
	if (hi - lo < 4) {
		big b = from_u32(lo);
		for (uint32_t k = lo + 1; k <= hi; k++)
			mul_small(&b, k);
		return b;
	}
	uint32_t mid = lo + (hi - lo) / 2;
	big x = product(lo, mid), y = product(mid + 1, hi);
	big z = mul(&x, &y);
	free(x.d);
	free(y.d);
	return z;
}

static void fib(uint32_t n)
{
	big a = from_u32(0), b = from_u32(1);
	uint64_t fa = 0, fb = 1;
	for (uint32_t i = 0; i < n; i++) {
		big c = add(&a, &b);
		free(a.d);
		a = b;
		b = c;
		uint64_t fc = (fa + fb) % P;
		fa = fb;
		fb = fc;
	}
	if (mod_p(&a) != fa)
		WL_FAIL("bigint: F(%u) mod p is %llu, expected %llu", n,
			(unsigned long long)mod_p(&a), (unsigned long long)fa);
	free(a.d);
	free(b.d);
}

static void factorial(uint32_t n)
{
	big f = from_u32(1);
	uint64_t fm = 1;
	for (uint32_t k = 2; k <= n; k++) {
		mul_small(&f, k);
		fm = fm * k % P;
	}
	big g = product(1, n);
	if (mod_p(&f) != fm || f.n != g.n || memcmp(f.d, g.d, f.n * sizeof(uint32_t)) != 0)
		WL_FAIL("bigint: %u! disagrees (incremental vs product tree vs mod p)", n);
	free(f.d);
	free(g.d);
}

int main(int argc, char **argv)
{
	long iters = wl_count(200, wl_scale(argc, argv), 1);
	wl_rng r = { 0xbf58476d1ce4e5b9ULL };
	for (long it = 0; it < iters; it++) {
		fib((uint32_t)wl_range(&r, 10000, 30000));
		factorial((uint32_t)wl_range(&r, 1000, 4000));
	}
	return 0;
}
