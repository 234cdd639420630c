/* Per-CPU machinery seen from outside: which mode is in use. */
#ifndef SYSREF_PERCPU_H
#define SYSREF_PERCPU_H

#include <sysref/flags.h>

SYSREF_EXTERN_C_BEGIN

/* "rseq" when per-CPU slots run on restartable sequences (glibc's area),
 * "lock" when they fall back to a lock per slot (rseq unavailable, or
 * SYSREF_PERCPU=lock). Fixed for the life of the process. */
SYSREF_API const char *sysref_percpu_mode(void);

SYSREF_EXTERN_C_END
#endif
