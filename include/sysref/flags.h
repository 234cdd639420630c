/* Allocation flags shared by every libsysref interface. */
#ifndef SYSREF_FLAGS_H
#define SYSREF_FLAGS_H

#define SR_WAITOK      0x0000 /* default: may wait (map memory synchronously) */
#define SR_NOWAIT      0x0001 /* never wait: return NULL (ENOMEM) instead */
#define SR_ZERO        0x0002 /* zero the memory (kmalloc family and zones) */
#define SR_USE_RESERVE 0x0004 /* may use registered reserves when the OS refuses */

/* Marks the functions the shared library exports. */
#define SYSREF_API __attribute__((visibility("default")))

#ifdef __cplusplus
#define SYSREF_EXTERN_C_BEGIN extern "C" {
#define SYSREF_EXTERN_C_END }
#else
#define SYSREF_EXTERN_C_BEGIN
#define SYSREF_EXTERN_C_END
#endif

#endif
