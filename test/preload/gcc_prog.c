/* Compiled by gcc under the preload shim; its binary runs bare and prints the
 * same as one compiled without the shim. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct node { struct node *next; unsigned key; char name[24]; };

static unsigned hash(const char *s) {
  unsigned h = 2166136261u;
  while (*s) h = (h ^ (unsigned char)*s++) * 16777619u;
  return h;
}

static int cmp(const void *a, const void *b) {
  unsigned x = *(const unsigned *)a, y = *(const unsigned *)b;
  return (x > y) - (x < y);
}

int main(void) {
  enum { N = 10000, B = 257 };
  struct node *buckets[B] = {0};
  unsigned *keys = malloc(N * sizeof *keys);
  if (!keys) return 1;
  for (unsigned i = 0; i < N; i++) {
    struct node *n = malloc(sizeof *n);
    if (!n) return 1;
    snprintf(n->name, sizeof n->name, "node-%u", i * 31u);
    n->key = keys[i] = hash(n->name);
    n->next = buckets[n->key % B];
    buckets[n->key % B] = n;
  }
  qsort(keys, N, sizeof *keys, cmp);
  unsigned longest = 0, total = 0;
  for (unsigned b = 0; b < B; b++) {
    unsigned len = 0;
    for (struct node *n = buckets[b], *next; n; n = next, len++) {
      next = n->next;
      total += (unsigned)strlen(n->name);
      free(n);
    }
    if (len > longest) longest = len;
  }
  printf("min=%u max=%u median=%u longest=%u chars=%u\n", keys[0], keys[N - 1], keys[N / 2],
         longest, total);
  free(keys);
  return 0;
}
