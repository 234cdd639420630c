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

} // namespace sysref_bench

#endif
