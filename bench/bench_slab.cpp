// bench_slab: kmalloc_obj/kfree_obj pairs against peer mallocs of the same
// size, all in one run so they share the machine's state. Patterns: single
// (alloc+free), batch64 (64 allocs, then 64 frees LIFO), cross (alloc on one
// CPU, free on another through an SPSC ring) with a no-allocation floor.
#include "patterns.hpp"
#include "peers.hpp"

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

constexpr double kTargetNs = 30e6; // one repetition ~30 ms (asked: 20-50)

struct Options {
	std::size_t size = 64;
	unsigned reps = 11;
	std::uint64_t pairs = 0; // 0: calibrated per allocator and pattern
	bool json = false;
};

// ---- pseudo-allocators built here, not in peers.cpp.

// Floor: hands out slots of a static array and frees nothing, so a pattern
// run with it costs the loop, the indirect calls, the touch and (in cross)
// the ring hand-over, without any allocator work. More slots than ring
// entries so the producer never writes a slot still queued.
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

// The subject: one zone for the whole run, like the peers' caches.
void *zone_alloc(void *ctx, std::size_t)
{
	return kmalloc_obj(static_cast<kmalloc_zone_t *>(ctx), 0);
}
void zone_free(void *ctx, void *p, std::size_t)
{
	kfree_obj(p, static_cast<kmalloc_zone_t *>(ctx));
}

// ---- output

std::string json_str(const std::string &s)
{
	std::string out = "\"";
	for (const char c : s) {
		if (c == '"' || c == '\\') {
			out += '\\';
			out += c;
		} else if (static_cast<unsigned char>(c) < 0x20) {
			char buf[8];
			std::snprintf(buf, sizeof buf, "\\u%04x", c);
			out += buf;
		} else {
			out += c;
		}
	}
	return out + "\"";
}

void note(const Options &o, const char *type, const std::string &what,
          const std::string &reason)
{
	if (o.json)
		std::printf("{\"type\":\"%s\",\"name\":%s,\"reason\":%s}\n", type,
		            json_str(what).c_str(), json_str(reason).c_str());
	else
		std::printf("# %s %s: %s\n", what.c_str(), type, reason.c_str());
}

std::string fmt_ratio(double v, bool json)
{
	char buf[32];
	if (v <= 0)
		return json ? "null" : "-";
	std::snprintf(buf, sizeof buf, json ? "%.4f" : "%.2f", v);
	return buf;
}

void report(const Options &o, const char *pattern, const std::vector<Row> &rows)
{
	double mi = 0, best = 0;
	std::string best_name;
	for (const Row &r : rows) {
		if (r.a->name == "mimalloc")
			mi = r.median;
		if (r.a->kind == Kind::peer && (best == 0 || r.median < best)) {
			best = r.median;
			best_name = r.a->name;
		}
	}
	for (const Row &r : rows) {
		const bool ranked = r.a->kind != Kind::baseline;
		const double x_mi = ranked && mi > 0 ? r.median / mi : 0;
		const double x_best = ranked && best > 0 ? r.median / best : 0;
		if (o.json)
			std::printf("{\"type\":\"result\",\"pattern\":\"%s\",\"allocator\":%s,"
			            "\"kind\":\"%s\",\"size\":%zu,\"reps\":%u,\"pairs\":%" PRIu64
			            ",\"median_ns\":%.3f,\"min_ns\":%.3f,\"ratio_mimalloc\":%s,"
			            "\"ratio_best_peer\":%s,\"best_peer\":%s,\"minflt\":%ld,"
			            "\"minflt_warmup\":%ld}\n",
			            pattern, json_str(r.a->name).c_str(), kind_name(r.a->kind),
			            o.size, o.reps, r.pairs, r.median, r.min,
			            fmt_ratio(x_mi, true).c_str(), fmt_ratio(x_best, true).c_str(),
			            best_name.empty() ? "null" : json_str(best_name).c_str(),
			            r.flt, r.flt_warm);
		else
			std::printf("%-8s %-15s %11" PRIu64 " %9.2f %9.2f %8s %8s %9ld %9ld\n",
			            pattern, r.a->name.c_str(), r.pairs, r.median, r.min,
			            fmt_ratio(x_mi, false).c_str(),
			            fmt_ratio(x_best, false).c_str(), r.flt, r.flt_warm);
	}
	if (!o.json && !best_name.empty())
		std::printf("%-8s (fastest peer: %s)\n", pattern, best_name.c_str());
}

bool parse_num(const char *s, std::uint64_t &out)
{
	char *end = nullptr;
	errno = 0;
	const unsigned long long v = std::strtoull(s, &end, 10);
	if (errno || end == s || *end || *s == '-' || v == 0)
		return false;
	out = v;
	return true;
}

[[noreturn]] void usage(int rc)
{
	std::fprintf(rc ? stderr : stdout,
	             "usage: bench_slab [--size N] [--reps N] [--pairs N] [--json]\n"
	             "  --size N   object size in bytes (default 64)\n"
	             "  --reps N   measured repetitions per allocator (default 11)\n"
	             "  --pairs N  alloc/free pairs per repetition (default: "
	             "calibrated to ~30 ms)\n"
	             "  --json     JSON lines instead of the table\n");
	std::exit(rc);
}

[[noreturn]] void bad_arg(const std::string &what)
{
	std::fprintf(stderr, "bench_slab: %s\n", what.c_str());
	usage(2);
}

Options parse_args(int argc, char **argv)
{
	Options o;
	for (int i = 1; i < argc; i++) {
		std::string arg = argv[i], val;
		if (arg == "--json") {
			o.json = true;
			continue;
		}
		if (arg == "-h" || arg == "--help")
			usage(0);
		if (arg != "--size" && arg.rfind("--size=", 0) &&
		    arg != "--reps" && arg.rfind("--reps=", 0) &&
		    arg != "--pairs" && arg.rfind("--pairs=", 0))
			bad_arg("unknown option " + arg);
		if (const auto eq = arg.find('='); eq != std::string::npos) {
			val = arg.substr(eq + 1);
			arg.resize(eq);
		} else if (i + 1 < argc) {
			val = argv[++i];
		}
		std::uint64_t v = 0;
		if (!parse_num(val.c_str(), v))
			bad_arg(arg + " needs a positive integer, got '" + val + "'");
		if (arg == "--size") {
			if (v > (std::uint64_t{1} << 30))
				bad_arg("--size is limited to 1 GiB");
			o.size = v;
		} else if (arg == "--reps") {
			if (v > 10000)
				bad_arg("--reps is limited to 10000");
			o.reps = static_cast<unsigned>(v);
		} else {
			o.pairs = v;
		}
	}
	return o;
}

} // namespace

int main(int argc, char **argv)
{
	const Options o = parse_args(argc, argv);

	// The first two CPUs this process may use; usually 0 and 1.
	std::vector<int> cpus;
	cpu_set_t set;
	if (sched_getaffinity(0, sizeof set, &set) == 0)
		for (int c = 0; c < CPU_SETSIZE && cpus.size() < 2; c++)
			if (CPU_ISSET(c, &set))
				cpus.push_back(c);

	std::vector<Allocator> table = load_peers();
	errno = 0;
	kmalloc_zone_t *zone = kmalloc_obj_zone_create("bench_slab", o.size, 0, 0);
	Allocator subject{"kmalloc_obj", Kind::subject, zone_alloc, zone_free, zone, {}};
	if (!zone)
		subject.unavailable = std::string("kmalloc_obj_zone_create: ") +
		                      std::strerror(errno);
	table.insert(table.begin(), subject);
	table.push_back({"floor", Kind::baseline, floor_alloc, floor_free, &floor_pool, {}});

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
			note(o, "unavailable", a.name, a.unavailable);
	}

	// Single-thread patterns run pinned too, so a migration cannot land
	// inside one allocator's repetition only.
	if (cpus.empty() || !pin_self(cpus[0]))
		note(o, "warning", "pinning", "could not pin the main thread; unpinned");
	if (!o.json)
		std::printf("%-8s %-15s %11s %9s %9s %8s %8s %9s %9s\n", "pattern",
		            "allocator", "pairs/rep", "median", "min", "x mimal",
		            "x best", "minflt", "flt warm");
	const std::size_t size = o.size;
	MeasureSpec spec{o.reps, o.pairs, 1, kTargetNs};
	report(o, "single", measure([size](const Allocator &a, std::uint64_t n) {
		return run_single(a, size, n);
	}, usable, spec));
	spec.granule = kBatch;
	report(o, "batch64", measure([size](const Allocator &a, std::uint64_t n) {
		return run_batch(a, size, n);
	}, usable, spec));
	spec.granule = 1;
	if (cpus.size() < 2) {
		note(o, "skipped", "cross",
		     "only one CPU is usable; the pattern needs two (CPU 0 and CPU 1)");
	} else {
		CrossRig rig(cpus[0], cpus[1]);
		if (!rig.pinned())
			note(o, "skipped", "cross", "sched_setaffinity to the two CPUs failed");
		else
			report(o, "cross", measure([&rig, size](const Allocator &a, std::uint64_t n) {
				return rig.run(a, size, n);
			}, usable, spec));
	}
	if (zone)
		kmalloc_obj_zone_destroy(zone);
	return 0;
}
