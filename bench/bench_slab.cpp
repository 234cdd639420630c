// bench_slab: kmalloc_obj/kfree_obj pairs against peer mallocs of the same
// size, all in one run so they share the machine's state. Patterns: single
// (alloc+free), batch64 (64 allocs, then 64 frees LIFO), cross (alloc on one
// CPU, free on another through an SPSC ring) with a no-allocation floor.
#include "patterns.hpp"
#include "peers.hpp"
#include "report.hpp"

#include <sysref/kmalloc_obj.h>

#include <sched.h>

#include <cerrno>
#include <cinttypes>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

using namespace sysref_bench;

namespace {

// The subject: one zone for the whole run, like the peers' caches.
void *zone_alloc(void *ctx, std::size_t)
{
	return kmalloc_obj(static_cast<kmalloc_zone_t *>(ctx), 0);
}
void zone_free(void *ctx, void *p, std::size_t)
{
	kfree_obj(p, static_cast<kmalloc_zone_t *>(ctx));
}

} // namespace

int main(int argc, char **argv)
{
	const Options o = parse_options(argc, argv, "bench_slab", true);
	const std::vector<int> cpus = usable_cpus(2);

	std::vector<Allocator> table = load_peers();
	errno = 0;
	kmalloc_zone_t *zone = kmalloc_obj_zone_create("bench_slab", o.size, 0, 0);
	Allocator subject{"kmalloc_obj", Kind::subject, zone_alloc, zone_free, zone, {}};
	if (!zone)
		subject.unavailable = std::string("kmalloc_obj_zone_create: ") +
		                      std::strerror(errno);
	table.insert(table.begin(), subject);
	table.push_back(make_floor());

	if (o.json)
		std::printf("{\"type\":\"config\",\"size\":%zu,\"reps\":%u,\"pairs\":%" PRIu64
		            ",\"target_ms\":%.0f,\"cpus\":\"%d,%d\"}\n",
		            o.size, o.reps, o.pairs, kTargetNs / 1e6,
		            cpus.empty() ? -1 : cpus[0], cpus.size() > 1 ? cpus[1] : -1);
	else
		std::printf("# bench_slab: size=%zu reps=%u pairs/rep=%s; ns per "
		            "alloc+free pair, median and min over reps\n",
		            o.size, o.reps,
		            o.pairs ? std::to_string(o.pairs).c_str() : "auto (~30 ms/rep)");
	if (!o.json)
		std::printf("# x mimal, x best: median / median of mimalloc, of the "
		            "fastest peer (kmalloc_obj and floor are not peers)\n"
		            "# minflt: minor page faults over the measured reps; "
		            "flt warm: over calibration and warm-up\n"
		            "# floor: no allocation, only loop, calls, touch and (cross) "
		            "ring hand-over\n");
	if (!o.json && cpus.size() >= 2)
		std::printf("# cross: producer on CPU %d, consumer on CPU %d; single and "
		            "batch64 on CPU %d\n", cpus[0], cpus[1], cpus[0]);
	std::vector<const Allocator *> usable;
	for (const Allocator &a : table) {
		if (a.available())
			usable.push_back(&a);
		else
			note(o.json, "unavailable", a.name, a.unavailable);
	}

	// Single-thread patterns run pinned too, so a migration cannot land
	// inside one allocator's repetition only.
	if (cpus.empty() || !pin_self(cpus[0]))
		note(o.json, "warning", "pinning", "could not pin the main thread; unpinned");
	print_columns(o.json);
	const std::size_t size = o.size;
	MeasureSpec spec{o.reps, o.pairs, 1, kTargetNs};
	report(o, "single", size, measure([size](const Allocator &a, std::uint64_t n) {
		return run_single(a, size, n);
	}, usable, spec));
	spec.granule = kBatch;
	report(o, "batch64", size, measure([size](const Allocator &a, std::uint64_t n) {
		return run_batch(a, size, n);
	}, usable, spec));
	spec.granule = 1;
	if (const char *why = with_cross_rig(cpus, [&](CrossRig &rig) {
		    report(o, "cross", size, measure([&rig, size](const Allocator &a, std::uint64_t n) {
			    return rig.run(a, size, n);
		    }, usable, spec));
	    }))
		note(o.json, "skipped", "cross", why);
	if (zone)
		kmalloc_obj_zone_destroy(zone);
	return 0;
}
