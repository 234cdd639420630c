/* The page provider seen from outside: fault injection and counters. */
#ifndef SYSREF_OS_H
#define SYSREF_OS_H

#include <stdint.h>
#include <sysref/flags.h>

SYSREF_EXTERN_C_BEGIN

/* Let the next n page requests through, then refuse every one with ENOMEM,
 * exactly as the kernel would. n < 0 turns refusal off. */
SYSREF_API void sysref_os_fail_after(long n);

struct sysref_os_stats {
	uint64_t page_size;
	uint64_t ncpus;            /* CPU ids that can appear (possible CPUs) */
	uint64_t mapped;           /* bytes currently mapped for the library */
	uint64_t peak_mapped;      /* high-water mark of mapped */
	uint64_t metadata;         /* part of mapped: the library's own bookkeeping */
	uint64_t released;         /* bytes unmapped over the process lifetime */
	uint64_t decommitted;      /* bytes handed back with madvise */
	uint64_t map_calls;        /* successful mmap calls */
	uint64_t unmap_calls;      /* munmap calls */
	uint64_t madvise_calls;    /* madvise calls */
	uint64_t refused;          /* page requests refused (kernel or injection) */
};

SYSREF_API int sysref_os_stats(struct sysref_os_stats *out);

SYSREF_EXTERN_C_END
#endif
