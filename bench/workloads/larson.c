/* larson: a larson-style server. NTHREADS threads (more than CPUs on
 * purpose) each own SLOTS random-size blocks (16-1000 B) and replace random
 * ones; every HANDOFF-th replacement the old block goes to the next thread's
 * mailbox instead, and that thread frees it: cross-thread frees, the case a
 * per-thread cache must get right.
 *
 *   larson [SCALE]
 *
 * Blocks carry their size and a tag in the first 16 bytes and the tag's low
 * byte in the last; every free checks both. */
#include <pthread.h>
#include "wl.h"

enum { NTHREADS = 4, SLOTS = 2000, HANDOFF = 16, MAILBOX = 4096 };

typedef struct { uint64_t size, tag; } hdr;

typedef struct {
	pthread_mutex_t lock;
	void *blocks[MAILBOX];
	int n;
} mailbox;

static mailbox boxes[NTHREADS];
static long ops_per_thread;

static void *make_block(wl_rng *r)
{
	size_t size = wl_range(r, 16, 1000);
	hdr *h = wl_malloc(size);
	h->size = size;
	h->tag = wl_mix((uint64_t)size ^ (uint64_t)(uintptr_t)h);
	if (size > 16)  /* at 16 the last byte is the tag's own */
		((unsigned char *)h)[size - 1] = (unsigned char)(h->tag ^ 0x5a);
	return h;
}

static void check_free(void *p)
{
	hdr *h = p;
	if (h->size < 16 || h->size > 1000)
		WL_FAIL("larson: bad size %llu", (unsigned long long)h->size);
	if (h->tag != wl_mix(h->size ^ (uint64_t)(uintptr_t)h) ||
	    (h->size > 16 && ((unsigned char *)h)[h->size - 1] != (unsigned char)(h->tag ^ 0x5a)))
		WL_FAIL("larson: block %p of %llu B corrupted", p, (unsigned long long)h->size);
	free(p);
}

/* Free what others sent us; taken under the lock, freed outside it. */
static void drain(int self)
{
	void *local[MAILBOX];
	int n;
	pthread_mutex_lock(&boxes[self].lock);
	n = boxes[self].n;
	memcpy(local, boxes[self].blocks, (size_t)n * sizeof(void *));
	boxes[self].n = 0;
	pthread_mutex_unlock(&boxes[self].lock);
	for (int i = 0; i < n; i++)
		check_free(local[i]);
}

static void send_block(int to, void *p)
{
	int full;
	pthread_mutex_lock(&boxes[to].lock);
	full = boxes[to].n == MAILBOX;
	if (!full)
		boxes[to].blocks[boxes[to].n++] = p;
	pthread_mutex_unlock(&boxes[to].lock);
	if (full)  /* receiver is slow: free it here rather than wait */
		check_free(p);
}

static void *worker(void *arg)
{
	int self = (int)(intptr_t)arg;
	wl_rng r = { 0x9e3779b97f4a7c15ULL * (uint64_t)(self + 1) };
	void **slots = wl_malloc(SLOTS * sizeof(void *));
	for (int i = 0; i < SLOTS; i++)
		slots[i] = make_block(&r);
	for (long op = 1; op <= ops_per_thread; op++) {
		size_t i = wl_range(&r, 0, SLOTS - 1);
		if (op % HANDOFF == 0)
			send_block((self + 1) % NTHREADS, slots[i]);
		else
			check_free(slots[i]);
		slots[i] = make_block(&r);
		if (op % 256 == 0)
			drain(self);
	}
	for (int i = 0; i < SLOTS; i++)
		check_free(slots[i]);
	free(slots);
	return NULL;
}

int main(int argc, char **argv)
{
	pthread_t t[NTHREADS];
	ops_per_thread = wl_count(2.5e6, wl_scale(argc, argv), 1000);
	for (int i = 0; i < NTHREADS; i++)
		pthread_mutex_init(&boxes[i].lock, NULL);
	for (int i = 0; i < NTHREADS; i++)
		if (pthread_create(&t[i], NULL, worker, (void *)(intptr_t)i))
			WL_FAIL("pthread_create");
	for (int i = 0; i < NTHREADS; i++)
		pthread_join(t[i], NULL);
	for (int i = 0; i < NTHREADS; i++)  /* blocks sent after the owner's last drain */
		drain(i);
	return 0;
}
