/* Allocation statistics: the report the preload shim writes at exit, on a
 * signal or on demand, as text or JSON (schema "sysref-report/1"). See
 * sysref_report(3). */
#ifndef SYSREF_REPORT_H
#define SYSREF_REPORT_H

#include <sysref/flags.h>

SYSREF_EXTERN_C_BEGIN

#define SYSREF_REPORT_JSON 1u /* JSON (one line) instead of the text tables */

/* Gathers the statistics now and writes one report to fd. 0, or -1 with
 * errno: EINVAL for unknown flags, EBADF, ENOMEM, or write(2)'s error. Not
 * async-signal-safe. */
SYSREF_API int sysref_report(int fd, unsigned flags);
/* The same, appended to path ("%p" is replaced by the process id), created
 * with mode 0644 if it does not exist. */
SYSREF_API int sysref_report_path(const char *path, unsigned flags);

SYSREF_EXTERN_C_END
#endif
