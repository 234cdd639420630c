// Peer allocators resolved at run time. Linking jemalloc, mimalloc or
// tcmalloc would make one of them the process's malloc and falsify the glibc
// row, so each is dlopen()ed RTLD_LOCAL and called only through its own
// prefixed entry points.
#include "peers.hpp"

#include <dlfcn.h>

#include <cstdint>
#include <cstdlib>
#include <cstring>

namespace sysref_bench {

const char *kind_name(Kind k)
{
	switch (k) {
	case Kind::subject: return "subject";
	case Kind::peer: return "peer";
	case Kind::baseline: return "baseline";
	}
	return "?";
}

namespace {

// Contexts live in static storage: the handles are never closed, so the
// function pointers stay valid for the whole process.
struct PlainFns {
	void *(*alloc)(std::size_t);
	void (*free)(void *);
};
struct JeFns {
	void *(*mallocx)(std::size_t, int);
	void (*dallocx)(void *, int);
};
PlainFns mi_fns, tc_fns, je_plain_fns;
JeFns je_fns;

void *libc_alloc(void *, std::size_t n) { return std::malloc(n); }
void libc_free(void *, void *p, std::size_t) { std::free(p); }

void *plain_alloc(void *ctx, std::size_t n)
{
	return static_cast<PlainFns *>(ctx)->alloc(n);
}
void plain_free(void *ctx, void *p, std::size_t)
{
	static_cast<PlainFns *>(ctx)->free(p);
}

// flags 0: default alignment, default arena, tcache on: malloc() semantics.
void *je_alloc(void *ctx, std::size_t n)
{
	return static_cast<JeFns *>(ctx)->mallocx(n, 0);
}
void je_free(void *ctx, void *p, std::size_t)
{
	static_cast<JeFns *>(ctx)->dallocx(p, 0);
}

// Turns a dlopen() failure into the reason printed in the report. Static TLS
// exhaustion gets its own wording: it is a property of glibc's dlopen (the
// library was built with initial-exec TLS larger than the surplus glibc
// reserves), not a missing package.
std::string dlopen_reason(const char *err)
{
	std::string e = err ? err : "unknown dlopen error";
	if (e.find("static TLS") != std::string::npos)
		return "static TLS block exhausted, skipped (" + e +
		       "); glibc's tunable can raise the reserve: "
		       "GLIBC_TUNABLES=glibc.rtld.optional_static_tls=4096";
	return "dlopen failed: " + e;
}

// Resolves one entry point of lib into a function-pointer slot; on failure
// fills a.unavailable so the row is reported and skipped. A symbol that
// resolves outside lib (dlsym also searches lib's dependencies, libc among
// them) is refused: it would time the wrong allocator under a right name.
template <typename Fn>
bool resolve(void *handle, const char *lib, const char *sym, Fn *slot,
             Allocator &a)
{
	dlerror();
	void *p = dlsym(handle, sym);
	if (!p) {
		const char *err = dlerror();
		a.unavailable = std::string("dlsym(") + sym + ") failed: " +
		                (err ? err : "null symbol");
		return false;
	}
	Dl_info info{};
	if (!dladdr(p, &info) || !info.dli_fname ||
	    !std::strstr(info.dli_fname, lib)) {
		a.unavailable = std::string(sym) + " resolves outside " + lib;
		return false;
	}
	*slot = reinterpret_cast<Fn>(p);
	return true;
}

void *open_lib(const char *lib, Allocator &a)
{
	void *h = dlopen(lib, RTLD_NOW | RTLD_LOCAL);
	if (!h)
		a.unavailable = dlopen_reason(dlerror());
	return h;
}

Allocator make_libc()
{
	Allocator a{"glibc", Kind::peer, libc_alloc, libc_free, nullptr, {}};
	// Under an LD_PRELOADed allocator "glibc" would be a lie: name the row
	// after the object that really provides malloc.
	Dl_info info{};
	void *sym = dlsym(RTLD_DEFAULT, "malloc");
	if (sym && dladdr(sym, &info) && info.dli_fname &&
	    !std::strstr(info.dli_fname, "/libc.so")) {
		const char *base = std::strrchr(info.dli_fname, '/');
		a.name = std::string("malloc:") + (base ? base + 1 : info.dli_fname);
	}
	return a;
}

Allocator make_jemalloc()
{
	Allocator a{"jemalloc", Kind::peer, je_alloc, je_free, &je_fns, {}};
	if (void *h = open_lib("libjemalloc.so.2", a))
		if (resolve(h, "libjemalloc.so.2", "mallocx", &je_fns.mallocx, a))
			resolve(h, "libjemalloc.so.2", "dallocx", &je_fns.dallocx, a);
	return a;
}

Allocator make_plain(const char *name, const char *lib, const char *alloc_sym,
                     const char *free_sym, PlainFns *fns)
{
	Allocator a{name, Kind::peer, plain_alloc, plain_free, fns, {}};
	if (void *h = open_lib(lib, a))
		if (resolve(h, lib, alloc_sym, &fns->alloc, a))
			resolve(h, lib, free_sym, &fns->free, a);
	return a;
}

struct FloorPool {
	alignas(64) unsigned char slot[4096][64];
	std::uint64_t next;
};
FloorPool floor_pool;

void *floor_alloc(void *ctx, std::size_t)
{
	auto *f = static_cast<FloorPool *>(ctx);
	return f->slot[f->next++ % 4096];
}
void floor_free(void *, void *, std::size_t) {}

} // namespace

Allocator make_floor()
{
	return {"floor", Kind::baseline, floor_alloc, floor_free, &floor_pool, {}};
}

std::vector<Allocator> load_peers()
{
	std::vector<Allocator> v;
	v.push_back(make_libc());
	// jemalloc first: it needs the most static TLS, and a later, smaller
	// library must not eat the surplus it could have fitted in.
	v.push_back(make_jemalloc());
	// jemalloc 5.3's malloc/free take a dedicated fast path that its
	// mallocx/dallocx do not (about 2x apart at 64 bytes), so its malloc
	// and free, looked up in its own handle, get a row of their own.
	v.push_back(make_plain("jemalloc.malloc", "libjemalloc.so.2", "malloc",
	                       "free", &je_plain_fns));
	v.push_back(make_plain("mimalloc", "libmimalloc.so.2", "mi_malloc",
	                       "mi_free", &mi_fns));
	v.push_back(make_plain("tcmalloc", "libtcmalloc_minimal.so.4",
	                       "tc_malloc", "tc_free", &tc_fns));
	return v;
}

} // namespace sysref_bench
