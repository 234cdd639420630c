/* small: what a compiler or interpreter does to a heap: many small,
 * short-lived blocks. Each "unit" tokenizes into a linked list of tokens
 * with strdup'd text, builds a binary search tree of symbols (node plus
 * name), concatenates strings in small steps, then tears it all down.
 *
 *   small [SCALE]
 *
 * Checks: the tree's in-order walk is sorted and its key sum and count
 * match what was inserted; token texts and joined strings read back. */
#include "wl.h"

enum { TOKENS = 3000, SYMBOLS = 2000, JOINS = 200 };

typedef struct tok { struct tok *next; char *text; uint32_t len, kind; } tok;
typedef struct node { struct node *l, *r; uint64_t key; char *name; } node;

static char *dup_text(uint32_t len, uint64_t seed)
{
	char *s = wl_malloc(len + 1);
	for (uint32_t i = 0; i < len; i++)
		s[i] = (char)('a' + (seed + i) % 26);
	s[len] = 0;
	return s;
}

static node *insert(node *t, uint64_t key, wl_rng *r, int *added)
{
	node **at = &t;
	while (*at) {
		if (key == (*at)->key)
			return t;  /* duplicate symbol: not added */
		at = key < (*at)->key ? &(*at)->l : &(*at)->r;
	}
	node *n = wl_malloc(sizeof *n);
	n->l = n->r = NULL;
	n->key = key;
	n->name = dup_text((uint32_t)wl_range(r, 3, 24), key);
	*at = n;
	*added = 1;
	return t;
}

/* In-order walk: checks order and names, frees as it goes (post-order). */
static void walk_free(node *t, uint64_t *last, uint64_t *sum, long *count)
{
	if (!t)
		return;
	walk_free(t->l, last, sum, count);
	if (*count > 0 && t->key <= *last)
		WL_FAIL("small: tree out of order");
	if (t->name[0] != (char)('a' + t->key % 26))
		WL_FAIL("small: symbol name corrupted");
	*last = t->key;
	*sum += t->key;
	++*count;
	walk_free(t->r, last, sum, count);
	free(t->name);
	free(t);
}

static void unit(wl_rng *r)
{
	/* Tokens: a list built front to back, texts 1-16 chars. */
	tok *head = NULL, **tail = &head;
	for (int i = 0; i < TOKENS; i++) {
		tok *t = wl_malloc(sizeof *t);
		t->len = (uint32_t)wl_range(r, 1, 16);
		t->kind = (uint32_t)i;
		t->text = dup_text(t->len, (uint64_t)i);
		t->next = NULL;
		*tail = t;
		tail = &t->next;
	}
	/* Symbols. */
	node *tree = NULL;
	uint64_t sum = 0;
	long count = 0;
	for (int i = 0; i < SYMBOLS; i++) {
		uint64_t key = wl_next(r) % 100000;
		int added = 0;
		tree = insert(tree, key, r, &added);
		if (added)
			sum += key, count++;
	}
	/* Joins: a string grown by small pieces, each step a new buffer. */
	for (int j = 0; j < JOINS; j++) {
		char *s = dup_text(0, 0);
		size_t len = 0;
		for (int k = 0; k < 8; k++) {
			size_t add = wl_range(r, 2, 12);
			char *t = wl_malloc(len + add + 1);
			memcpy(t, s, len);
			memset(t + len, 'A' + k, add);
			t[len + add] = 0;
			free(s);
			s = t;
			len += add;
		}
		if (s[0] != 'A' || s[len - 1] != 'H' || strlen(s) != len)
			WL_FAIL("small: joined string corrupted");
		free(s);
	}
	/* Teardown. */
	uint64_t last = 0, got = 0;
	long seen = 0;
	walk_free(tree, &last, &got, &seen);
	if (got != sum || seen != count)
		WL_FAIL("small: tree holds %ld keys (sum %llu), %ld inserted (sum %llu)", seen,
			(unsigned long long)got, count, (unsigned long long)sum);
	for (int i = 0; head; i++) {
		tok *next = head->next;
		if (head->kind != (uint32_t)i || strlen(head->text) != head->len ||
		    head->text[0] != (char)('a' + i % 26))
			WL_FAIL("small: token %d corrupted", i);
		free(head->text);
		free(head);
		head = next;
	}
}

int main(int argc, char **argv)
{
	long units = wl_count(2400, wl_scale(argc, argv), 2);
	wl_rng r = { 0x94d049bb133111ebULL };
	for (long u = 0; u < units; u++)
		unit(&r);
	return 0;
}
