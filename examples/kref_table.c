/* kref: objects shared between a table and the threads that use them.
 *
 * A table of sessions under a mutex holds one reference on each. Readers
 * look a session up and take a reference with kref_get_not_zero, so a
 * session whose last reference is going away is simply not found; a closer
 * removes sessions from the table and drops the table's reference. Each
 * session is released exactly once, by whoever drops the last reference.
 * A released session is then brought back with kref_resurrect, as a cache
 * of constructed objects would hand it out again. */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <sysref/kref.h>

#define NSESSIONS 64
#define NREADERS 3

struct session {
	struct kref ref;
	int id;
	long uses;
};

static struct session *table[NSESSIONS];
static pthread_mutex_t table_lock = PTHREAD_MUTEX_INITIALIZER;
static int released;

static void session_release(struct kref *k)
{
	struct session *s = (struct session *)k; /* ref is the first member */
	__atomic_fetch_add(&released, 1, __ATOMIC_RELAXED);
	s->uses = -1; /* a real program would free it here */
}

/* A reference on session id, or NULL if it is gone or going. */
static struct session *lookup(int id)
{
	struct session *s;
	pthread_mutex_lock(&table_lock);
	s = table[id];
	if (s && !kref_get_not_zero(&s->ref, 1))
		s = NULL;
	pthread_mutex_unlock(&table_lock);
	return s;
}

static void *reader(void *arg)
{
	long found = 0;
	(void)arg;
	for (int round = 0; round < 2000; round++) {
		struct session *s = lookup(round % NSESSIONS);
		if (!s)
			continue;
		__atomic_fetch_add(&s->uses, 1, __ATOMIC_RELAXED);
		found++;
		kref_put(&s->ref);
	}
	return (void *)found;
}

int main(void)
{
	static struct session sessions[NSESSIONS];
	pthread_t readers[NREADERS];
	long found = 0;

	for (int i = 0; i < NSESSIONS; i++) {
		sessions[i].id = i;
		kref_init(&sessions[i].ref, session_release, 1); /* the table's */
		table[i] = &sessions[i];
	}
	kref_get(&sessions[0].ref, 1); /* main keeps session 0 a while */
	for (int i = 0; i < NREADERS; i++)
		pthread_create(&readers[i], NULL, reader, NULL);
	for (int i = 0; i < NSESSIONS; i++) { /* close every session */
		pthread_mutex_lock(&table_lock);
		struct session *s = table[i];
		table[i] = NULL;
		pthread_mutex_unlock(&table_lock);
		kref_put(&s->ref);
	}
	for (int i = 0; i < NREADERS; i++) {
		void *n;
		pthread_join(readers[i], &n);
		found += (long)n;
	}
	printf("readers found %ld sessions alive; %d of %d released so far\n", found, released,
	       NSESSIONS);
	printf("session 0 still has %u reference(s): main's\n", kref_refcnt(&sessions[0].ref));
	if (!kref_put(&sessions[0].ref) || released != NSESSIONS) {
		fprintf(stderr, "expected every session released exactly once\n");
		return 1;
	}
	/* Reuse a released session, as a cache of constructed objects would. */
	kref_resurrect(&sessions[5].ref, 1);
	printf("session 5 handed out again: %u reference(s)\n", kref_refcnt(&sessions[5].ref));
	kref_put(&sessions[5].ref);
	printf("released %d times in all\n", released);
	return released == NSESSIONS + 1 ? 0 : 1;
}
