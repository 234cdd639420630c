/* prodcons: producer threads malloc messages of varied sizes and push them,
 * in batches, onto a bounded queue; consumer threads pop, check and free
 * them. Every message is freed by a thread other than the one that made it.
 *
 *   prodcons [SCALE]
 *
 * A message holds its length and seed up front and a byte pattern from the
 * seed after; the consumer checks the header and the payload's both ends
 * and middle, and adds the seeds up to match the producers' total. */
#include <pthread.h>
#include "wl.h"

enum { PRODUCERS = 2, CONSUMERS = 2, BATCH = 32, QCAP = 64 };

typedef struct { uint32_t len, seed; } msg;

static struct {
	pthread_mutex_t lock;
	pthread_cond_t not_empty, not_full;
	msg **q[QCAP];  /* each entry a malloc'd batch of BATCH messages */
	int head, n, producers_left;
} Q = { PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, PTHREAD_COND_INITIALIZER, {0}, 0, 0, PRODUCERS };

static long batches_per_producer;
static uint64_t produced_sum[PRODUCERS], consumed_sum[CONSUMERS];

/* Sizes: mostly 32-256 B, some up to 4 KiB (log-uniform-ish). */
static uint32_t msg_size(wl_rng *r)
{
	uint64_t x = wl_next(r);
	if ((x & 3) != 0)
		return (uint32_t)wl_range(r, 32, 256);
	return (uint32_t)wl_range(r, 257, 257 + (4096u >> (x >> 62)));
}

static unsigned char pat(uint32_t seed, uint32_t i) { return (unsigned char)(seed + i * 131u); }

static void *producer(void *arg)
{
	int self = (int)(intptr_t)arg;
	wl_rng r = { 0xa0761d6478bd642fULL * (uint64_t)(self + 1) };
	uint64_t sum = 0;  /* local: no false sharing between threads */
	for (long b = 0; b < batches_per_producer; b++) {
		msg **batch = wl_malloc(BATCH * sizeof(msg *));
		for (int i = 0; i < BATCH; i++) {
			uint32_t len = msg_size(&r);
			msg *m = wl_malloc(len);
			unsigned char *p = (unsigned char *)m;
			m->len = len;
			m->seed = (uint32_t)wl_next(&r);
			/* Pattern at the ends and middle: a realistic amount of writing. */
			for (uint32_t k = sizeof(msg); k < len; k += 64)
				p[k] = pat(m->seed, k);
			p[len - 1] = pat(m->seed, len - 1);
			sum += m->seed;
			batch[i] = m;
		}
		pthread_mutex_lock(&Q.lock);
		while (Q.n == QCAP)
			pthread_cond_wait(&Q.not_full, &Q.lock);
		Q.q[(Q.head + Q.n++) % QCAP] = batch;
		pthread_cond_signal(&Q.not_empty);
		pthread_mutex_unlock(&Q.lock);
	}
	produced_sum[self] = sum;
	pthread_mutex_lock(&Q.lock);
	Q.producers_left--;
	pthread_cond_broadcast(&Q.not_empty);
	pthread_mutex_unlock(&Q.lock);
	return NULL;
}

static void *consumer(void *arg)
{
	int self = (int)(intptr_t)arg;
	uint64_t sum = 0;
	for (;;) {
		msg **batch;
		pthread_mutex_lock(&Q.lock);
		while (Q.n == 0 && Q.producers_left > 0)
			pthread_cond_wait(&Q.not_empty, &Q.lock);
		if (Q.n == 0) {
			pthread_mutex_unlock(&Q.lock);
			consumed_sum[self] = sum;
			return NULL;
		}
		batch = Q.q[Q.head];
		Q.head = (Q.head + 1) % QCAP;
		Q.n--;
		pthread_cond_signal(&Q.not_full);
		pthread_mutex_unlock(&Q.lock);
		for (int i = 0; i < BATCH; i++) {
			msg *m = batch[i];
			unsigned char *p = (unsigned char *)m;
			if (m->len < 32 || m->len > 257 + 4096)
				WL_FAIL("prodcons: bad length %u", m->len);
			for (uint32_t k = sizeof(msg); k < m->len; k += 64)
				if (p[k] != pat(m->seed, k))
					WL_FAIL("prodcons: message %p byte %u corrupted", (void *)m, k);
			if (p[m->len - 1] != pat(m->seed, m->len - 1))
				WL_FAIL("prodcons: message %p tail corrupted", (void *)m);
			sum += m->seed;
			free(m);
		}
		free(batch);
	}
}

int main(int argc, char **argv)
{
	pthread_t p[PRODUCERS], c[CONSUMERS];
	uint64_t made = 0, eaten = 0;
	batches_per_producer = wl_count(3.6e4, wl_scale(argc, argv), 10);
	for (int i = 0; i < CONSUMERS; i++)
		if (pthread_create(&c[i], NULL, consumer, (void *)(intptr_t)i))
			WL_FAIL("pthread_create");
	for (int i = 0; i < PRODUCERS; i++)
		if (pthread_create(&p[i], NULL, producer, (void *)(intptr_t)i))
			WL_FAIL("pthread_create");
	for (int i = 0; i < PRODUCERS; i++)
		pthread_join(p[i], NULL);
	for (int i = 0; i < CONSUMERS; i++)
		pthread_join(c[i], NULL);
	for (int i = 0; i < PRODUCERS; i++)
		made += produced_sum[i];
	for (int i = 0; i < CONSUMERS; i++)
		eaten += consumed_sum[i];
	if (made != eaten)
		WL_FAIL("prodcons: %llu made, %llu consumed (seed sums)", (unsigned long long)made,
			(unsigned long long)eaten);
	return 0;
}
