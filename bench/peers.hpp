// Allocator table shared by the libsysref benchmarks (bench_slab, and later
// objcache, sr_malloc): one entry per allocator, called through plain
// function pointers plus a context so that every entry, libsysref or peer,
// pays the same indirect-call cost in the measured loops.
#ifndef SYSREF_BENCH_PEERS_HPP
#define SYSREF_BENCH_PEERS_HPP

#include <cstddef>
#include <string>
#include <vector>

namespace sysref_bench {

using alloc_fn = void *(*)(void *ctx, std::size_t size);
using free_fn = void (*)(void *ctx, void *ptr, std::size_t size);

enum class Kind {
	subject,  // the libsysref interface under test
	peer,     // a reference allocator; ratios are taken against these
	baseline, // harness cost only (no allocation); never ranked
};

struct Allocator {
	std::string name;
	Kind kind = Kind::peer;
	alloc_fn alloc = nullptr; // alloc(ctx, size)
	free_fn free = nullptr;   // free(ctx, ptr, size): size is what was asked
	void *ctx = nullptr;      // owned by whoever built the entry
	std::string unavailable;  // empty when usable, else the reason

	bool available() const { return alloc && free && unavailable.empty(); }
};

const char *kind_name(Kind k);

// The peers, in a fixed order: glibc (the process's own malloc), jemalloc
// (mallocx/dallocx), jemalloc.malloc (jemalloc's own malloc/free), mimalloc
// (mi_malloc/mi_free), tcmalloc (tc_malloc/tc_free). The last three are dlopen()ed with RTLD_LOCAL so they
// never replace the process's malloc. A peer that cannot be loaded is still
// returned, with `unavailable` saying why, so reports can list it; callers
// skip it. Handles stay open for the life of the process: the libraries hold
// thread caches and TLS destructors that must outlive every thread.
std::vector<Allocator> load_peers();

// The no-allocation floor (Kind::baseline): hands out 64-byte slots of a
// static 256 KiB array round-robin and frees nothing, so a pattern run with
// it costs the loop, the indirect calls, the touch and (in cross) the ring
// hand-over, without any allocator work. Patterns touch only an object's
// first byte, so 64-byte slots serve any size. More slots (4096) than ring
// entries, so the cross producer never writes a slot still queued. One
// producer thread at a time.
Allocator make_floor();

} // namespace sysref_bench

#endif
