/* Loaded by mt_program with RTLD_DEEPBIND: its own scope (this library, then
 * libc) comes before the global one, so its malloc is the C library's even
 * under the preload shim. mt_program frees what it returns with the ordinary
 * free: a foreign pointer the shim must hand back to the C library. */
#include <stdlib.h>
#include <string.h>

void *deepbind_malloc(size_t n);
void *deepbind_malloc(size_t n) {
  void *p = malloc(n);
  if (p) memset(p, 0x5a, n);
  return p;
}
