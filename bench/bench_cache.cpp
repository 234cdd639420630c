// bench_cache: objcache get/put and sr_malloc/sr_free against the peers'
// malloc/free, all in one run so they share the machine's state. Patterns:
// single and batch64 at 64 bytes (objcache, sr_malloc, peers), mixed sizes
// 8..4096 freed in shuffled order (sr_malloc, peers), cross (alloc on one
// CPU, free on another through an SPSC ring; objcache, sr_malloc, peers).
// A no-allocation floor runs in every pattern.
#include "patterns.hpp"
#include "peers.hpp"
#include "report.hpp"

#include <sysref/objcache.h>
#include <sysref/percpu.h>

// sr_malloc/sr_free rows: set -DBENCH_CACHE_SR=0 to build without lib/kmalloc
// (the rows are then listed as unavailable).
#ifndef BENCH_CACHE_SR
#define BENCH_CACHE_SR 1
#endif
#if BENCH_CACHE_SR
#include <sysref/kmalloc.h>
#endif

#include <cerrno>
#include <cinttypes>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

using namespace sysref_bench;

namespace {

constexpr std::size_t kObjSize = 64; // objcache's object size, and single/batch64/cross

// ---- subjects

void *oc_get(void *ctx, std::size_t)
{
	return objcache_get(static_cast<objcache_t *>(ctx), 0);
}
void oc_put(void *ctx, void *p, std::size_t)
{
	objcache_put(static_cast<objcache_t *>(ctx), p);
}

Allocator make_objcache(objcache_t *&oc)
{
	errno = 0;
	oc = objcache_create("bench", kObjSize, 0, nullptr, nullptr, nullptr, 0, 0);
	Allocator a{"objcache", Kind::subject, oc_get, oc_put, oc, {}};
	if (!oc)
		a.unavailable = std::string("objcache_create: ") + std::strerror(errno);
	return a;
}

#if BENCH_CACHE_SR
void *sr_alloc_cb(void *, std::size_t n) { return sr_malloc(n); }
void sr_free_cb(void *, void *p, std::size_t) { sr_free(p); }

Allocator make_sr()
{
	return {"sr_malloc", Kind::subject, sr_alloc_cb, sr_free_cb, nullptr, {}};
}
#else
Allocator make_sr()
{
	Allocator a{"sr_malloc", Kind::subject, nullptr, nullptr, nullptr, {}};
	a.unavailable = "built with BENCH_CACHE_SR=0 (lib/kmalloc not linked)";
	return a;
}
#endif

// ---- issue targets, checked on this run's medians

struct Target {
	const char *pattern;
	const char *subject;
	const char *against; // "mimalloc", or "best" for the fastest peer
	double limit;        // subject median / reference median must be <= this
};

constexpr Target kTargets[] = {
	{"single", "objcache", "mimalloc", 0.6},
	{"batch64", "objcache", "mimalloc", 0.6},
	{"single", "sr_malloc", "best", 1.0},
	{"batch64", "sr_malloc", "best", 1.0},
	{"mixed", "sr_malloc", "best", 1.0},
	{"cross", "sr_malloc", "mimalloc", 0.8},
};

void check_targets(const Options &o, const char *pattern, const std::vector<Row> &rows)
{
	for (const Target &t : kTargets) {
		if (std::strcmp(t.pattern, pattern) != 0)
			continue;
		const double subj = median_of(rows, t.subject);
		const bool best = std::strcmp(t.against, "best") == 0;
		const double ref = best ? best_peer_median(rows) : median_of(rows, t.against);
		if (subj <= 0 || ref <= 0) {
			note(o.json, "target", std::string(pattern) + "/" + t.subject,
			     std::string("not evaluated: no ") + (subj <= 0 ? t.subject : t.against) +
			         " row");
			continue;
		}
		const double x = subj / ref;
		const bool ok = x <= t.limit;
		if (o.json)
			std::printf("{\"type\":\"target\",\"pattern\":\"%s\",\"subject\":\"%s\","
			            "\"against\":\"%s\",\"limit\":%.2f,\"ratio\":%.4f,\"met\":%s}\n",
			            pattern, t.subject, best ? "best_peer" : t.against, t.limit,
			            x, ok ? "true" : "false");
		else
			std::printf("%-8s target %s <= %.2fx %s: %.2fx, %s (this run)\n", pattern,
			            t.subject, t.limit, best ? "fastest peer" : t.against, x,
			            ok ? "met" : "NOT met");
	}
}

void section(const Options &o, const char *pattern, std::size_t size,
             const std::vector<Row> &rows)
{
	report(o, pattern, size, rows);
	check_targets(o, pattern, rows);
}

void print_header(const Options &o, const std::vector<int> &cpus, const MixedPlan &plan)
{
	const int c0 = cpus.empty() ? -1 : cpus[0];
	const int c1 = cpus.size() > 1 ? cpus[1] : -1;
	if (o.json) {
		std::printf("{\"type\":\"config\",\"bench\":\"bench_cache\",\"size\":%zu,"
		            "\"reps\":%u,\"pairs\":%" PRIu64 ",\"target_ms\":%.0f,"
		            "\"cpus\":\"%d,%d\",\"percpu\":%s,\"mixed\":{\"seed\":%" PRIu64
		            ",\"sizes\":%zu,\"min\":8,\"max\":4096,\"mean\":%.1f,"
		            "\"share_le_256\":%.4f,\"batch\":%" PRIu64 "}}\n",
		            kObjSize, o.reps, o.pairs, kTargetNs / 1e6, c0, c1,
		            json_str(sysref_percpu_mode()).c_str(), kMixedSeed,
		            plan.sizes.size(), plan.mean_size(), plan.share_at_most(256),
		            kBatch);
		return;
	}
	std::printf("# bench_cache: size=%zu reps=%u pairs/rep=%s; ns per "
	            "alloc+free pair, median and min over reps; per-CPU mode %s\n",
	            kObjSize, o.reps,
	            o.pairs ? std::to_string(o.pairs).c_str() : "auto (~30 ms/rep)",
	            sysref_percpu_mode());
	std::printf("# objcache: objcache_get+objcache_put on one cache of %zu-byte "
	            "objects, no ctor; sr_malloc: sr_malloc+sr_free\n"
	            "# x mimal, x best: median / median of mimalloc, of the fastest "
	            "peer (objcache, sr_malloc and floor are not peers)\n"
	            "# minflt: minor page faults over the measured reps; flt warm: "
	            "over calibration and warm-up\n"
	            "# floor: no allocation, only loop, calls, touch and (cross) "
	            "ring hand-over\n",
	            kObjSize);
	std::printf("# mixed: %zu sizes 8..4096 B (seed %#" PRIx64 ", mean %.0f B, "
	            "%.1f%% <= 256 B), %" PRIu64 " allocs then frees in a shuffled "
	            "order, same sequence for every allocator\n",
	            plan.sizes.size(), kMixedSeed, plan.mean_size(),
	            100 * plan.share_at_most(256), kBatch);
	if (cpus.size() >= 2)
		std::printf("# cross: producer on CPU %d, consumer on CPU %d; single, "
		            "batch64 and mixed on CPU %d\n", c0, c1, c0);
}

} // namespace

int main(int argc, char **argv)
{
	const Options o = parse_options(argc, argv, "bench_cache", false);
	const std::vector<int> cpus = usable_cpus(2);
	const MixedPlan plan = make_mixed_plan();

	// Table order: subjects, peers, floor.
	objcache_t *oc = nullptr;
	std::vector<Allocator> table = load_peers();
	table.insert(table.begin(), make_sr());
	table.insert(table.begin(), make_objcache(oc));
	table.push_back(make_floor());

	print_header(o, cpus, plan);
	// objcache has one object size: it sits out the mixed pattern.
	std::vector<const Allocator *> usable, usable_mixed;
	for (const Allocator &a : table) {
		if (!a.available()) {
			note(o.json, "unavailable", a.name, a.unavailable);
			continue;
		}
		usable.push_back(&a);
		if (a.name != "objcache")
			usable_mixed.push_back(&a);
	}

	// Single-thread patterns run pinned too, so a migration cannot land
	// inside one allocator's repetition only.
	if (cpus.empty() || !pin_self(cpus[0]))
		note(o.json, "warning", "pinning", "could not pin the main thread; unpinned");
	print_columns(o.json);
	MeasureSpec spec{o.reps, o.pairs, 1, kTargetNs};
	section(o, "single", kObjSize, measure([](const Allocator &a, std::uint64_t n) {
		return run_single(a, kObjSize, n);
	}, usable, spec));
	spec.granule = kBatch;
	section(o, "batch64", kObjSize, measure([](const Allocator &a, std::uint64_t n) {
		return run_batch(a, kObjSize, n);
	}, usable, spec));
	section(o, "mixed", 0, measure([&plan](const Allocator &a, std::uint64_t n) {
		return run_mixed(a, plan, n);
	}, usable_mixed, spec));
	spec.granule = 1;
	if (const char *why = with_cross_rig(cpus, [&](CrossRig &rig) {
		    section(o, "cross", kObjSize, measure([&rig](const Allocator &a, std::uint64_t n) {
			    return rig.run(a, kObjSize, n);
		    }, usable, spec));
	    }))
		note(o.json, "skipped", "cross", why);
	if (oc)
		objcache_destroy(oc);
	return 0;
}
