/* An object cache of parsers that are dear to set up.
 *
 * A parser owns an input buffer and a token array, both from kmalloc, and a
 * 256-entry table of character classes. Its constructor does all of that
 * once; the cache then hands the same constructed parsers out again and
 * again, so 100000 gets cost about a hundred constructions. The program
 * checks what the cache promises (ctor_calls far below gets, gets == puts +
 * live, a failing constructor leaves nothing behind, the object limit, every
 * constructed object destructed by the end) and exits 0 only if all held. */
#include <errno.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sysref/kmalloc.h>
#include <sysref/objcache.h>

#define PARSER_BUF	1024	/* bytes of input a parser holds */
#define PARSER_TOKENS	128	/* tokens a parser records */
#define BATCH		100	/* parsers in use at once */
#define ROUNDS		1000	/* BATCH * ROUNDS gets in all */
#define TICKET_LIMIT	8

enum cclass { C_OTHER, C_SPACE, C_DIGIT, C_ALPHA, C_PUNCT };

struct token {
	uint16_t off;
	uint16_t len;
	uint8_t cls;
};

struct parser {
	unsigned char cls[256];	/* byte -> enum cclass, built by the ctor */
	char *buf;		/* PARSER_BUF bytes */
	struct token *tok;	/* PARSER_TOKENS entries */
	size_t len;		/* constructed state: 0 */
	size_t ntok;		/* constructed state: 0 */
};

/* What the constructor and destructor saw, kept behind the cache's priv.
 * Atomic: with SYSREF_REAP_THREAD=1 the dtor also runs on the reaper. */
struct census {
	atomic_ulong ctors;
	atomic_ulong ctor_failures;
	atomic_ulong dtors;
	atomic_int fail_next;	/* make the next construction fail */
};

static int parser_ctor(void *obj, void *priv, int flags)
{
	struct census *cs = priv;
	struct parser *p = obj;
	unsigned c;
	int error;

	atomic_fetch_add(&cs->ctors, 1);
	if (atomic_exchange(&cs->fail_next, 0)) {
		atomic_fetch_add(&cs->ctor_failures, 1);
		return ECANCELED;
	}
	p->buf = kmalloc(PARSER_BUF, flags);
	if (p->buf == NULL)
		goto fail;
	p->tok = kmalloc(PARSER_TOKENS * sizeof(*p->tok), flags | SR_ZERO);
	if (p->tok == NULL) {
		error = errno;
		kfree(p->buf);
		errno = error;
		goto fail;
	}
	for (c = 0; c < 256; c++) {
		if (c == ' ' || c == '\t' || c == '\n')
			p->cls[c] = C_SPACE;
		else if (c >= '0' && c <= '9')
			p->cls[c] = C_DIGIT;
		else if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_')
			p->cls[c] = C_ALPHA;
		else if (c >= 0x21 && c <= 0x7e)
			p->cls[c] = C_PUNCT;
		else
			p->cls[c] = C_OTHER;
	}
	p->len = 0;
	p->ntok = 0;
	return 0;
fail:
	atomic_fetch_add(&cs->ctor_failures, 1);
	return errno;
}

static void parser_dtor(void *obj, void *priv)
{
	struct census *cs = priv;
	struct parser *p = obj;

	kfree(p->tok);
	kfree(p->buf);
	atomic_fetch_add(&cs->dtors, 1);
}

/* Is p as the constructor left it? Checked on every object the cache returns. */
static int parser_is_constructed(const struct parser *p)
{
	return p->len == 0 && p->ntok == 0 && p->buf != NULL && p->tok != NULL &&
	    p->cls['7'] == C_DIGIT && p->cls['q'] == C_ALPHA && p->cls[' '] == C_SPACE;
}

/* Tokenise line: a token is a run of one class; punctuation stands alone. */
static size_t parser_run(struct parser *p, const char *line)
{
	size_t i, start, n = strlen(line);
	uint8_t k;

	if (n > PARSER_BUF)
		n = PARSER_BUF;
	memcpy(p->buf, line, n);
	p->len = n;
	for (i = 0; i < p->len && p->ntok < PARSER_TOKENS;) {
		k = p->cls[(unsigned char)p->buf[i]];
		if (k == C_SPACE) {
			i++;
			continue;
		}
		start = i++;
		if (k != C_PUNCT)
			while (i < p->len && p->cls[(unsigned char)p->buf[i]] == k)
				i++;
		p->tok[p->ntok].off = (uint16_t)start;
		p->tok[p->ntok].len = (uint16_t)(i - start);
		p->tok[p->ntok].cls = k;
		p->ntok++;
	}
	return p->ntok;
}

/* Back to the constructed state, which is what objcache_put requires. */
static void parser_reset(struct parser *p)
{
	p->len = 0;
	p->ntok = 0;
}

static void show(const char *when, const struct objcache_stats *st)
{
	printf("%s:\n"
	    "  gets %llu  puts %llu  live %llu  cached %llu\n"
	    "  ctor_calls %llu (failed %llu)  dtor_calls %llu\n"
	    "  slab_allocs %llu  slab_frees %llu  reaped %llu\n"
	    "  magazine size %llu (grew %llu times)  depot full %llu empty %llu\n"
	    "  depot exchanges %llu  contention %llu  limit %llu (waits %llu)\n",
	    when,
	    (unsigned long long)st->gets, (unsigned long long)st->puts,
	    (unsigned long long)st->live, (unsigned long long)st->cached,
	    (unsigned long long)st->ctor_calls, (unsigned long long)st->ctor_failures,
	    (unsigned long long)st->dtor_calls,
	    (unsigned long long)st->slab_allocs, (unsigned long long)st->slab_frees,
	    (unsigned long long)st->reaped,
	    (unsigned long long)st->mag_size, (unsigned long long)st->mag_resizes,
	    (unsigned long long)st->depot_full, (unsigned long long)st->depot_empty,
	    (unsigned long long)st->depot_exchanges, (unsigned long long)st->contention,
	    (unsigned long long)st->limit, (unsigned long long)st->limit_waits);
}

static int check(int ok, const char *what)
{
	printf("%-58s %s\n", what, ok ? "ok" : "FAILED");
	return ok;
}

/* The object limit, on a second cache with no ctor or dtor: TICKET_LIMIT
 * objects may exist; one more fails at once with SR_NOWAIT. */
static int ticket_limit(void)
{
	struct objcache_stats st;
	void *t[TICKET_LIMIT], *extra;
	objcache_t *oc;
	int error, i, ok = 1;

	oc = objcache_create("ticket", 64, 0, NULL, NULL, NULL, TICKET_LIMIT, 0);
	if (oc == NULL) {
		perror("objcache_create ticket");
		return 0;
	}
	for (i = 0; i < TICKET_LIMIT; i++) {
		t[i] = objcache_get(oc, SR_WAITOK);
		if (t[i] == NULL) {
			perror("objcache_get ticket");
			return 0;
		}
	}
	extra = objcache_get(oc, SR_NOWAIT);
	error = errno;
	ok &= check(extra == NULL && error == ENOMEM, "one past the limit with SR_NOWAIT: NULL, ENOMEM");
	if (extra != NULL)
		objcache_put(oc, extra);
	for (i = 0; i < TICKET_LIMIT; i++)
		objcache_put(oc, t[i]);
	if (objcache_stats(oc, &st) != 0) {
		perror("objcache_stats ticket");
		return 0;
	}
	ok &= check(st.limit == TICKET_LIMIT && st.limit_waits == 0, "limit reported, no get waited");
	objcache_destroy(oc);
	return ok;
}

int main(void)
{
	struct parser *batch[BATCH], *p;
	static struct census cs;
	struct objcache_stats st;
	unsigned long tokens = 0, bad = 0;
	char line[96];
	objcache_t *oc;
	size_t bytes, all;
	unsigned r, i;
	int ok = 1;

	oc = objcache_create("parser", sizeof(struct parser), 0, parser_ctor,
	    parser_dtor, &cs, 0, 0);
	if (oc == NULL) {
		perror("objcache_create");
		return 1;
	}

	/* A constructor that fails: NULL with its errno, nothing kept. */
	atomic_store(&cs.fail_next, 1);
	p = objcache_get(oc, SR_WAITOK);
	ok &= check(p == NULL && errno == ECANCELED, "failing ctor: objcache_get gives NULL, ECANCELED");
	if (p != NULL)
		objcache_put(oc, p);

	/* The workload: BATCH parsers at a time, ROUNDS times over. */
	for (r = 0; r < ROUNDS; r++) {
		for (i = 0; i < BATCH; i++) {
			batch[i] = objcache_get(oc, SR_WAITOK);
			if (batch[i] == NULL) {
				perror("objcache_get");
				return 1;
			}
			if (!parser_is_constructed(batch[i]))
				bad++;
			snprintf(line, sizeof(line), "item_%u = %u * (x + %u); # round %u",
			    i, r, i * r, r);
			tokens += parser_run(batch[i], line);
		}
		for (i = 0; i < BATCH; i++) {
			parser_reset(batch[i]);
			objcache_put(oc, batch[i]);
		}
	}
	printf("%u gets, %lu tokens parsed\n", BATCH * ROUNDS, tokens);

	/* One parser damaged beyond what the ctor would undo: destroy it. */
	p = objcache_get(oc, SR_WAITOK);
	if (p == NULL) {
		perror("objcache_get");
		return 1;
	}
	memset(p->cls, C_OTHER, sizeof(p->cls));
	objcache_dtor(oc, p);

	if (objcache_stats(oc, &st) != 0) {
		perror("objcache_stats");
		return 1;
	}
	show("after the workload", &st);
	ok &= check(bad == 0, "every object came back in its constructed state");
	ok &= check(st.gets >= (uint64_t)BATCH * ROUNDS + 1, "every get counted");
	ok &= check(st.ctor_calls * 10 < st.gets, "ctor_calls far below gets");
	ok &= check(st.gets == st.puts + st.live, "gets == puts + live");
	ok &= check(st.live == 0, "nothing live");
	ok &= check(st.ctor_calls == atomic_load(&cs.ctors) &&
	    st.dtor_calls == atomic_load(&cs.dtors), "ctor/dtor counts match the calls seen");
	ok &= check(st.ctor_failures == 1 && atomic_load(&cs.ctor_failures) == 1,
	    "one ctor failure counted");
	ok &= check(atomic_load(&cs.dtors) >= 1, "the damaged parser was destructed");

	/* Low memory: give everything cached back to the slab layer. */
	bytes = objcache_reclaim(oc);
	all = objcache_reclaim_all();
	if (objcache_stats(oc, &st) != 0) {
		perror("objcache_stats");
		return 1;
	}
	printf("objcache_reclaim gave back %zu bytes, objcache_reclaim_all %zu more\n",
	    bytes, all);
	show("after reclaim", &st);
	ok &= check(bytes > 0, "reclaim gave memory back");

	ok &= ticket_limit();

	objcache_destroy(oc);
	printf("constructed %lu, failed %lu, destructed %lu\n", atomic_load(&cs.ctors),
	    atomic_load(&cs.ctor_failures), atomic_load(&cs.dtors));
	ok &= check(atomic_load(&cs.ctors) - atomic_load(&cs.ctor_failures) ==
	    atomic_load(&cs.dtors), "after destroy every constructed parser was destructed");
	return ok ? 0 : 1;
}
