// preload/: the LD_PRELOAD shim's private interface. The exported malloc
// family (malloc.cpp), operator new/delete (new.cpp), pointers the shim did
// not make (foreign.cpp), fork (fork.cpp) and the report triggers
// (reporter.cpp) share these few names. Nothing here may allocate with
// malloc or need a C++ runtime.
#pragma once
#include <cstddef>

#include "../lib/kmalloc/kmalloc.hpp"
#include "../lib/report/report.hpp"
#include "../lib/slab/pagemap.hpp"

namespace sysref::preload {

// SYSREF_STATS is on: count calls and requested sizes. Cached by the
// library constructor (report::counting() once), so the fast paths pay one
// load and one predictable branch while it is off; false before the
// constructor ran (early requests are not counted).
[[gnu::visibility("hidden")]] extern bool g_counting;

inline void count(report::call c) {
  if (__builtin_expect(g_counting, 0)) report::count_call(c);
}
// A call that asked for `requested` bytes and got `block`: the call always
// counts, the request only when it made a block (a failed call allocated
// nothing, and the requested total must stay comparable with the bytes
// allocated). Returns block.
inline void *counted(report::call c, size_t requested, void *block) {
  if (__builtin_expect(g_counting, 0)) {
    report::count_call(c);
    if (block) report::count_request(requested);
  }
  return block;
}

// Whether p may be ours: the page map has an owner for its granule (a size
// class, a large block, or another of the library's zones, which kmalloc
// then reports as a bad pointer). Two loads, no lock, never reads *p.
inline bool mapped_by_us(const void *p) {
  return slab::pagemap::get(reinterpret_cast<uintptr_t>(p)) != nullptr;
}

// ---- the C library's own allocator (foreign.cpp), resolved once at load ----
void resolve_libc();  // from the library constructor; never on an allocation path
// p is not ours: the C library's free (counted as a foreign free). Before
// resolve_libc ran, the block is left alone (leaked), never touched.
void foreign_free(void *p);
// realloc of a foreign block: a block of ours, min(its usable size, size)
// bytes copied, the old one given back to the C library.
void *foreign_realloc(void *p, size_t size);
size_t foreign_usable_size(void *p);

// free and delete: the one page-map lookup of kmalloc's free tells ours
// (freed) from the C library's.
inline void release(void *p) { kmalloc::free_or(p, foreign_free); }

// ---- fork (fork.cpp) and the report triggers (reporter.cpp) -------------------
void install_fork_handlers();
void start_reporting();       // signal handler and reporter thread, if SYSREF_STATS
void restart_after_fork();    // in the child: its own reporter thread
void report_at_exit();

}  // namespace sysref::preload
