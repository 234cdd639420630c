// bench_sysref: SYSREF objects (include/sysref/sysref.h) against what a C++
// user would write instead, in one run, side by side, so both sides share
// the machine's state. Every row is measured on both sides, repetitions
// interleaved (report.hpp/patterns.hpp's measure()), and reported as the
// median ns per operation per thread, the total throughput, the ratio
// std/sysref (how many times sysref's throughput is the baseline's) and,
// where the issue sets one, PASS/MISS against the target.
//
// The baseline ("std"): a registry, the usual shape of "objects findable by
// id" in C++ without a library:
//   struct StdObj { Registry *reg; uint64_t id, key; char payload[48]; };
//   std::shared_mutex mu; std::unordered_map<uint64_t, std::weak_ptr<StdObj>> map;
//   create  = std::make_shared (object and control block in one block) with
//             an id from an atomic counter, then insert under unique_lock
//             (the insert is the "activate");
//   put     = the last shared_ptr goes out of scope; ~StdObj erases its id
//             under unique_lock (the owner erasing the id when the object
//             dies: the registry never keeps dead entries, and it holds
//             weak_ptrs so it never keeps objects alive);
//   lookup  = shared_lock, find, weak_ptr::lock(); dropping the returned
//             shared_ptr is the "put";
//   get/put = copy a shared_ptr and drop it (atomic inc/dec, inline).
// sysref: one static struct sysref_class of objects { struct sysref sr;
// uint64_t key; char payload[48]; } (same payload); terminate is a one-store
// callback. create = sysref_alloc + sysref_activate, put = sysref_put (the
// last one runs terminate and gives the object back to the class's cache),
// lookup = sysref_lookup + sysref_put, get/put = sysref_get + sysref_put.
//
// Rows (threads 1 and 2; with 2, both threads run the same loop at once on
// the shared registry / the shared sysid index, pinned to two CPUs):
//   cycle         create + put, nothing looked up. sysref recycles: the
//                 object comes back from the cache constructed, with its
//                 sysid, still in the index (new/op ~ 0). Target: std/sysref
//                 >= 2 (at 1 and 2 threads).
//   cycle+lookup  create, look the new object up once by id (+ put), put.
//                 sysref_lookup marks the sysid seen, so the object is
//                 destroyed when it dies and the next alloc constructs a new
//                 one with a new sysid (new/op ~ 1): the price of exposing
//                 an id. No target.
//   lookup+put    N live objects (10^3, 10^6) made beforehand; each thread
//                 walks a precomputed array of 2^20 ids of live objects,
//                 drawn at random (xorshift64, fixed seed: the same index
//                 sequence on both sides), and looks each one up, checks it,
//                 drops the reference. Objects stay alive, so seen sysids do
//                 not matter here. Targets: sysref <= 30 ns at 10^6 on one
//                 thread; std/sysref >= 3 (throughput) with two threads.
//   get/put rand  (one thread, after each lookup+put pair) the floor under
//                 lookup+put: the same objects in the same random order, but
//                 reached through references held beforehand (a sequence of
//                 shared_ptr copies / object pointers), each taken and
//                 dropped: one random access to the count and two atomics.
//                 lookup+put minus this is the price of finding by id. No
//                 target.
//   get/put       take and drop a reference on one active object; with two
//                 threads the same object (a contended count on both
//                 sides). No target.
// Columns: ns/op is per thread (wall time of the repetition / operations
// per thread), Mop/s is the total over the threads, x = std ns / sysref ns,
// new/op = sysref constructions per operation over the row (warm-up
// included), spread = (max - min) / median of the noisier side.
// The targets are checked on this run's medians, as information: a MISS
// does not change the exit status (only wrong lookups do).
// Options: --reps N (default 7, ~50 ms repetitions: ~10-20 s in all on two
// cores), --quick (3 repetitions of ~5 ms: a smoke run), --only ROW (rows
// whose name starts with ROW, e.g. under perf), --json. The header names
// the per-CPU mode (sysref_percpu_mode()), so runs under SYSREF_PERCPU=lock
// or =rseq are labelled.
#include "patterns.hpp"
#include "report.hpp"

#include <sysref/percpu.h>
#include <sysref/sysref.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cinttypes>
#include <cstdarg>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <memory>
#include <mutex>
#include <shared_mutex>
#include <string>
#include <thread>
#include <unordered_map>
#include <vector>

using namespace sysref_bench;

namespace {

using Clock = std::chrono::steady_clock;

constexpr std::size_t kPayload = 48;
constexpr std::size_t kIds = std::size_t{1} << 20; // id sequence, power of two
constexpr std::uint64_t kIdSeed = 0x51d5eed0b1ec75ULL;
constexpr std::size_t kLiveSizes[] = {1000, 1000000};
constexpr unsigned kMaxThreads = 2;

// The compiler must assume p's object was read and written: keeps a copy
// of a shared_ptr (or a store) from being folded away.
inline void escape(const void *p) { asm volatile("" : : "r"(p) : "memory"); }

inline void cpu_relax()
{
#if defined(__x86_64__) || defined(__i386__)
	__builtin_ia32_pause();
#endif
}

[[noreturn]] __attribute__((format(printf, 1, 2))) void die(const char *fmt, ...)
{
	std::fflush(stdout);
	std::va_list ap;
	va_start(ap, fmt);
	std::fputs("bench_sysref: ", stderr);
	std::vfprintf(stderr, fmt, ap);
	std::fputc('\n', stderr);
	va_end(ap);
	std::exit(2);
}

// Wrong lookups (NULL for a live id, or another object): library bugs.
std::atomic<std::uint64_t> g_wrong{0};

// ---- baseline: make_shared + unordered_map<id, weak_ptr> + shared_mutex

struct Registry;

struct StdObj {
	Registry *reg;
	std::uint64_t id;
	std::uint64_t key;
	char payload[kPayload];

	StdObj(Registry *r, std::uint64_t i, std::uint64_t k) : reg(r), id(i), key(k) {}
	~StdObj();
	StdObj(const StdObj &) = delete;
	StdObj &operator=(const StdObj &) = delete;
};

struct Registry {
	alignas(64) std::shared_mutex mu;
	std::unordered_map<std::uint64_t, std::weak_ptr<StdObj>> map;
	alignas(64) std::atomic<std::uint64_t> next{1};

	std::shared_ptr<StdObj> create(std::uint64_t key)
	{
		auto sp = std::make_shared<StdObj>(this, next.fetch_add(1, std::memory_order_relaxed), key);
		std::unique_lock lk(mu);
		map.emplace(sp->id, sp);
		return sp;
	}
	std::shared_ptr<StdObj> find(std::uint64_t id)
	{
		std::shared_lock lk(mu);
		const auto it = map.find(id);
		return it == map.end() ? nullptr : it->second.lock();
	}
	void erase(std::uint64_t id)
	{
		std::unique_lock lk(mu);
		map.erase(id);
	}
};

// Runs when the last shared_ptr goes, before the control block (which the
// map's weak_ptr keeps) is freed: erasing that weak_ptr here is safe.
StdObj::~StdObj() { reg->erase(id); }

// ---- sysref

// In C++ the header puts struct sysref in namespace sysref (a namespace and
// a global struct cannot share the name); the functions are global.
struct SrObj {
	sysref::sysref sr;
	std::uint64_t key;
	char payload[kPayload];
};

void sr_terminate(void *obj) { static_cast<SrObj *>(obj)->key = 0; }

struct sysref_class sr_class = {
	.name = "bench_sysref",
	.objsize = sizeof(SrObj),
	.offset = offsetof(SrObj, sr),
	.ctor = nullptr,
	.dtor = nullptr,
	.terminate = sr_terminate,
	.priv = nullptr,
	.flags = 0,
	.sr_state = nullptr,
	.sr_reserved = {},
};

SrObj *sr_create(std::uint64_t key)
{
	void *p = sysref_alloc(&sr_class);
	if (!p)
		die("sysref_alloc: %s", std::strerror(errno));
	auto *o = static_cast<SrObj *>(p);
	o->key = key;
	sysref_activate(&o->sr);
	return o;
}

struct sysref_stats sr_stats()
{
	struct sysref_stats st{};
	if (sysref_stats(&sr_class, &st) != 0)
		die("sysref_stats: %s", std::strerror(errno));
	return st;
}

// ---- threads: up to two pinned workers, reused for every job

// Protocol (as bench/patterns.cpp's CrossRig): gen_ counts jobs, workers
// block on it between jobs; done_ counts worker completions (every worker,
// participating or not, once per job); ready_ is a cumulative spin
// rendezvous of the participants so that no futex wake-up latency falls
// inside the timed interval. The main thread sleeps while a job runs.
class Rig {
public:
	using Job = std::function<void(unsigned tid, std::uint64_t n)>;

	explicit Rig(const std::vector<int> &cpus)
	{
		nw_ = static_cast<unsigned>(std::clamp<std::size_t>(cpus.size(), 1, kMaxThreads));
		for (unsigned t = 0; t < nw_; t++) {
			const int cpu = t < cpus.size() ? cpus[t] : -1;
			th_.emplace_back([this, t, cpu] { worker(t, cpu); });
		}
		done_target_ = nw_;
		wait_done();
	}
	~Rig()
	{
		stop_ = true;
		gen_.fetch_add(1, std::memory_order_release);
		gen_.notify_all();
		for (std::thread &t : th_)
			t.join();
	}
	Rig(const Rig &) = delete;
	Rig &operator=(const Rig &) = delete;

	unsigned workers() const { return nw_; }
	bool pinned() const { return pin_ok_.load() == nw_; }

	// job(tid, n) on workers 0..threads-1 at once; ns from the first
	// start to the last end.
	double run(unsigned threads, const Job &job, std::uint64_t n)
	{
		threads_ = std::min(threads, nw_);
		job_ = &job;
		n_ = n;
		ready_target_ += threads_;
		done_target_ += nw_;
		gen_.fetch_add(1, std::memory_order_release);
		gen_.notify_all();
		wait_done();
		Clock::time_point t0 = t0_[0], t1 = t1_[0];
		for (unsigned t = 1; t < threads_; t++) {
			t0 = std::min(t0, t0_[t]);
			t1 = std::max(t1, t1_[t]);
		}
		return std::chrono::duration<double, std::nano>(t1 - t0).count();
	}

private:
	void wait_done()
	{
		for (std::uint32_t d; (d = done_.load(std::memory_order_acquire)) < done_target_;)
			done_.wait(d);
	}
	void finish()
	{
		done_.fetch_add(1, std::memory_order_release);
		done_.notify_all();
	}
	void worker(unsigned tid, int cpu)
	{
		if (cpu >= 0 && pin_self(cpu))
			pin_ok_.fetch_add(1);
		finish();
		for (std::uint32_t seen = 0;;) {
			gen_.wait(seen, std::memory_order_acquire);
			seen = gen_.load(std::memory_order_acquire);
			if (stop_)
				return;
			if (tid < threads_) {
				ready_.fetch_add(1, std::memory_order_acq_rel);
				while (ready_.load(std::memory_order_acquire) < ready_target_)
					cpu_relax();
				t0_[tid] = Clock::now();
				(*job_)(tid, n_);
				t1_[tid] = Clock::now();
			}
			finish();
		}
	}

	unsigned nw_ = 1;
	std::atomic<std::uint32_t> gen_{0}, done_{0}, ready_{0};
	std::atomic<unsigned> pin_ok_{0};
	// Written by the main thread before gen_'s release, read after it.
	std::uint32_t ready_target_ = 0, done_target_ = 0;
	unsigned threads_ = 0;
	bool stop_ = false;
	const Job *job_ = nullptr;
	std::uint64_t n_ = 0;
	Clock::time_point t0_[kMaxThreads], t1_[kMaxThreads];
	std::vector<std::thread> th_;
};

// ---- options

struct Config {
	unsigned reps = 7;
	bool quick = false;
	bool json = false;
	double target_ns = 50e6; // one repetition of one side
	std::string only;        // run only the rows whose name starts with this

	bool wants(const char *row) const { return only.empty() || std::string(row).rfind(only, 0) == 0; }
};

[[noreturn]] void usage(int rc)
{
	std::FILE *f = rc ? stderr : stdout;
	std::fprintf(f,
	             "usage: bench_sysref [--reps N] [--quick] [--only ROW] [--json]\n"
	             "  --reps N    measured repetitions per side and row (default 7; "
	             "3 with --quick)\n"
	             "  --quick     smoke run: ~5 ms repetitions, 3 of them\n"
	             "  --only ROW  only the rows whose name starts with ROW (cycle, "
	             "cycle+lookup, lookup, get), e.g. under perf\n"
	             "  --json      JSON lines instead of the table\n");
	std::exit(rc);
}

Config parse(int argc, char **argv)
{
	Config c;
	bool reps_given = false;
	for (int i = 1; i < argc; i++) {
		std::string arg = argv[i], val;
		if (arg == "-h" || arg == "--help")
			usage(0);
		if (arg == "--quick") {
			c.quick = true;
			continue;
		}
		if (arg == "--json") {
			c.json = true;
			continue;
		}
		if (arg == "--only" && i + 1 < argc) {
			c.only = argv[++i];
			continue;
		}
		if (arg.rfind("--only=", 0) == 0) {
			c.only = arg.substr(7);
			continue;
		}
		if (arg == "--reps" && i + 1 < argc) {
			val = argv[++i];
		} else if (arg.rfind("--reps=", 0) == 0) {
			val = arg.substr(7);
		} else {
			std::fprintf(stderr, "bench_sysref: unknown option %s\n", arg.c_str());
			usage(2);
		}
		char *end = nullptr;
		errno = 0;
		const unsigned long v = std::strtoul(val.c_str(), &end, 10);
		if (errno || end == val.c_str() || *end || val[0] == '-' || v == 0 || v > 1000) {
			std::fprintf(stderr, "bench_sysref: --reps needs 1..1000, got '%s'\n",
			             val.c_str());
			usage(2);
		}
		c.reps = static_cast<unsigned>(v);
		reps_given = true;
	}
	if (c.quick) {
		c.target_ns = 5e6;
		if (!reps_given)
			c.reps = 3;
	}
	return c;
}

// ---- rows

enum class Goal { none, max_ns, min_ratio };

struct Result {
	std::string row;
	unsigned threads = 1;
	std::size_t live = 0; // 0: not a lookup row
	Row std_row, sr_row;
	double new_per_op = 0;
	Goal goal = Goal::none;
	double limit = 0;
};

double spread(const Row &r)
{
	if (r.ns.empty() || r.median <= 0)
		return 0;
	const auto [lo, hi] = std::minmax_element(r.ns.begin(), r.ns.end());
	return (*hi - *lo) / r.median;
}

std::string goal_text(const Result &r)
{
	char buf[48];
	switch (r.goal) {
	case Goal::none: return "-";
	case Goal::max_ns: std::snprintf(buf, sizeof buf, "sysref <= %.0f ns", r.limit); return buf;
	case Goal::min_ratio: std::snprintf(buf, sizeof buf, "x >= %.1f", r.limit); return buf;
	}
	return "-";
}

// "PASS", "MISS", or "-" when the row has no target.
const char *verdict(const Result &r)
{
	const double sr = r.sr_row.median, st = r.std_row.median;
	switch (r.goal) {
	case Goal::none: return "-";
	case Goal::max_ns: return sr > 0 && sr <= r.limit ? "PASS" : "MISS";
	case Goal::min_ratio: return sr > 0 && st / sr >= r.limit ? "PASS" : "MISS";
	}
	return "-";
}

void print_columns(const Config &c)
{
	if (c.json)
		return;
	std::printf("%-13s %3s %8s %10s %10s %9s %9s %7s %6s %6s  %-17s %s\n", "row", "thr",
	            "live", "std ns/op", "sr ns/op", "std Mop/s", "sr Mop/s", "x", "new/op",
	            "spread", "target", "result");
}

void print_result(const Config &c, const Result &r)
{
	const double st = r.std_row.median, sr = r.sr_row.median;
	const double x = sr > 0 ? st / sr : 0;
	const double st_mops = st > 0 ? r.threads * 1e3 / st : 0;
	const double sr_mops = sr > 0 ? r.threads * 1e3 / sr : 0;
	const double spr = std::max(spread(r.std_row), spread(r.sr_row));
	const std::string live = r.live ? std::to_string(r.live) : "-";
	if (c.json) {
		std::printf("{\"type\":\"result\",\"row\":%s,\"threads\":%u,\"live\":%s,"
		            "\"reps\":%u,\"ops_per_rep\":{\"std\":%" PRIu64 ",\"sysref\":%" PRIu64
		            "},\"median_ns\":{\"std\":%.3f,\"sysref\":%.3f},"
		            "\"min_ns\":{\"std\":%.3f,\"sysref\":%.3f},"
		            "\"mops\":{\"std\":%.3f,\"sysref\":%.3f},\"ratio\":%.4f,"
		            "\"new_per_op\":%.4f,\"spread\":%.4f,\"target\":%s,\"result\":%s}\n",
		            json_str(r.row).c_str(), r.threads,
		            r.live ? live.c_str() : "null", c.reps, r.std_row.pairs,
		            r.sr_row.pairs, st, sr, r.std_row.min, r.sr_row.min, st_mops,
		            sr_mops, x, r.new_per_op, spr,
		            r.goal == Goal::none ? "null" : json_str(goal_text(r)).c_str(),
		            r.goal == Goal::none ? "null" : json_str(verdict(r)).c_str());
	} else {
		std::printf("%-13s %3u %8s %10.2f %10.2f %9.2f %9.2f %7.2f %6.2f %5.0f%%  %-17s %s\n",
		            r.row.c_str(), r.threads, live.c_str(), st, sr, st_mops, sr_mops, x,
		            r.new_per_op, 100 * spr, goal_text(r).c_str(), verdict(r));
	}
	std::fflush(stdout);
}

// Measures one row: the two jobs, interleaved repetitions, medians.
struct Bench {
	const Config &cfg;
	Rig &rig;
	std::vector<Result> results;
	const Allocator std_side{"std", Kind::peer, nullptr, nullptr, nullptr, {}};
	const Allocator sr_side{"sysref", Kind::subject, nullptr, nullptr, nullptr, {}};

	void row(const char *name, unsigned threads, std::size_t live, Goal goal, double limit,
	         const Rig::Job &std_job, const Rig::Job &sr_job)
	{
		if (!cfg.wants(name))
			return;
		if (threads > rig.workers()) {
			note(cfg.json, "skipped", std::string(name) + "/" + std::to_string(threads) + "T",
			     "needs " + std::to_string(threads) + " usable CPUs");
			return;
		}
		std::uint64_t sr_ops = 0;
		const std::uint64_t constr0 = sr_stats().constructions;
		const Runner run = [&](const Allocator &a, std::uint64_t n) {
			if (&a == &sr_side) {
				sr_ops += n * threads;
				return rig.run(threads, sr_job, n);
			}
			return rig.run(threads, std_job, n);
		};
		const MeasureSpec spec{cfg.reps, 0, 1, cfg.target_ns};
		const std::vector<Row> rows = measure(run, {&std_side, &sr_side}, spec);
		Result r;
		r.row = name;
		r.threads = threads;
		r.live = live;
		r.std_row = rows[0];
		r.sr_row = rows[1];
		r.new_per_op = sr_ops ? static_cast<double>(sr_stats().constructions - constr0) /
		                            static_cast<double>(sr_ops)
		                      : 0;
		r.goal = goal;
		r.limit = limit;
		print_result(cfg, r);
		results.push_back(std::move(r));
	}
};

void life_cycle_rows(Bench &b)
{
	Registry reg;
	const Rig::Job std_cycle = [&reg](unsigned, std::uint64_t n) {
		for (std::uint64_t i = 0; i < n; i++) {
			std::shared_ptr<StdObj> sp = reg.create(i);
			escape(sp.get());
		} // put: ~StdObj erases the id
	};
	const Rig::Job sr_cycle = [](unsigned, std::uint64_t n) {
		for (std::uint64_t i = 0; i < n; i++) {
			SrObj *o = sr_create(i);
			sysref_put(&o->sr); // terminate, back to the cache
		}
	};
	const Rig::Job std_cycle_lookup = [&reg](unsigned, std::uint64_t n) {
		std::uint64_t wrong = 0;
		for (std::uint64_t i = 0; i < n; i++) {
			std::shared_ptr<StdObj> sp = reg.create(i);
			{
				const std::shared_ptr<StdObj> q = reg.find(sp->id);
				wrong += q != sp;
			}
		}
		if (wrong)
			g_wrong.fetch_add(wrong);
	};
	const Rig::Job sr_cycle_lookup = [](unsigned, std::uint64_t n) {
		std::uint64_t wrong = 0;
		for (std::uint64_t i = 0; i < n; i++) {
			SrObj *o = sr_create(i);
			void *q = sysref_lookup(sysref_sysid(&o->sr));
			wrong += q != o;
			if (q)
				sysref_put(&static_cast<SrObj *>(q)->sr);
			sysref_put(&o->sr); // seen: destroyed
		}
		if (wrong)
			g_wrong.fetch_add(wrong);
	};
	for (unsigned t = 1; t <= kMaxThreads; t++)
		b.row("cycle", t, 0, Goal::min_ratio, 2.0, std_cycle, sr_cycle);
	for (unsigned t = 1; t <= kMaxThreads; t++)
		b.row("cycle+lookup", t, 0, Goal::none, 0, std_cycle_lookup, sr_cycle_lookup);
	if (!reg.map.empty())
		die("baseline registry kept %zu entries after the life-cycle rows", reg.map.size());
}

std::uint64_t xorshift64(std::uint64_t &s)
{
	s ^= s << 13;
	s ^= s >> 7;
	s ^= s << 17;
	return s;
}

// The live objects of both sides and each side's id sequence: entry i of
// both sequences names the same (by creation order) object.
void lookup_rows(Bench &b, std::size_t live)
{
	Registry reg;
	std::vector<std::shared_ptr<StdObj>> std_objs;
	std::vector<SrObj *> sr_objs;
	std_objs.reserve(live);
	sr_objs.reserve(live);
	for (std::size_t i = 0; i < live; i++) {
		std_objs.push_back(reg.create(i));
		SrObj *o = sr_create(0);
		o->key = sysref_sysid(&o->sr); // seen: fine, it stays alive
		sr_objs.push_back(o);
	}
	std::vector<std::uint32_t> pick(kIds); // which live object, by creation order
	std::vector<std::uint64_t> std_ids(kIds), sr_ids(kIds);
	std::uint64_t s = kIdSeed;
	for (std::size_t i = 0; i < kIds; i++) {
		pick[i] = static_cast<std::uint32_t>((xorshift64(s) >> 11) % live);
		std_ids[i] = std_objs[pick[i]]->id;
		sr_ids[i] = sr_objs[pick[i]]->key;
	}

	// Each thread keeps its place in the sequence from one run to the
	// next; thread 1 starts half-way, so the two walk different ids.
	std::uint64_t std_cur[kMaxThreads], sr_cur[kMaxThreads];
	for (unsigned t = 0; t < kMaxThreads; t++)
		std_cur[t] = sr_cur[t] = t * (kIds / kMaxThreads);
	const Rig::Job std_lookup = [&](unsigned tid, std::uint64_t n) {
		const std::uint64_t *const ids = std_ids.data();
		std::uint64_t cur = std_cur[tid], wrong = 0;
		for (std::uint64_t i = 0; i < n; i++) {
			const std::uint64_t id = ids[cur++ & (kIds - 1)];
			const std::shared_ptr<StdObj> sp = reg.find(id);
			wrong += !sp || sp->id != id;
		} // put: sp dropped
		std_cur[tid] = cur;
		if (wrong)
			g_wrong.fetch_add(wrong);
	};
	const Rig::Job sr_lookup = [&](unsigned tid, std::uint64_t n) {
		const std::uint64_t *const ids = sr_ids.data();
		std::uint64_t cur = sr_cur[tid], wrong = 0;
		for (std::uint64_t i = 0; i < n; i++) {
			const std::uint64_t id = ids[cur++ & (kIds - 1)];
			auto *o = static_cast<SrObj *>(sysref_lookup(id));
			if (!o) {
				wrong++;
				continue;
			}
			wrong += o->key != id;
			sysref_put(&o->sr);
		}
		sr_cur[tid] = cur;
		if (wrong)
			g_wrong.fetch_add(wrong);
	};
	const bool big = live >= 1000000;
	for (unsigned t = 1; t <= kMaxThreads; t++) {
		Goal g = Goal::none;
		double limit = 0;
		if (t == 1 && big) {
			g = Goal::max_ns;
			limit = 30;
		} else if (t == 2) {
			g = Goal::min_ratio;
			limit = 3.0;
		}
		b.row("lookup+put", t, live, g, limit, std_lookup, sr_lookup);
	}

	// The floor under lookup+put: the same objects in the same order,
	// reached through references held beforehand (a sequence of shared_ptr
	// copies; of object pointers) instead of by id, so each op is one
	// random access to the count plus its atomic inc/dec. lookup+put minus
	// this is what finding by id costs.
	if (b.cfg.wants("get/put rand")) {
		std::vector<std::shared_ptr<StdObj>> std_seq(kIds);
		std::vector<SrObj *> sr_seq(kIds);
		for (std::size_t i = 0; i < kIds; i++) {
			std_seq[i] = std_objs[pick[i]];
			sr_seq[i] = sr_objs[pick[i]];
		}
		std::uint64_t std_gcur = 0, sr_gcur = 0;
		const Rig::Job std_gp = [&](unsigned, std::uint64_t n) {
			const std::shared_ptr<StdObj> *const seq = std_seq.data();
			std::uint64_t cur = std_gcur;
			for (std::uint64_t i = 0; i < n; i++) {
				const std::shared_ptr<StdObj> c = seq[cur++ & (kIds - 1)];
				escape(c.get());
			}
			std_gcur = cur;
		};
		const Rig::Job sr_gp = [&](unsigned, std::uint64_t n) {
			SrObj *const *const seq = sr_seq.data();
			std::uint64_t cur = sr_gcur;
			for (std::uint64_t i = 0; i < n; i++) {
				SrObj *const o = seq[cur++ & (kIds - 1)];
				sysref_get(&o->sr);
				sysref_put(&o->sr);
			}
			sr_gcur = cur;
		};
		b.row("get/put rand", 1, live, Goal::none, 0, std_gp, sr_gp);
	}
	for (SrObj *o : sr_objs)
		sysref_put(&o->sr); // seen: destroyed
	std_objs.clear();
	if (!reg.map.empty())
		die("baseline registry kept %zu entries after the lookup rows", reg.map.size());
}

void get_put_rows(Bench &b)
{
	Registry reg;
	const std::shared_ptr<StdObj> sp = reg.create(0);
	SrObj *const o = sr_create(0);
	const Rig::Job std_gp = [&sp](unsigned, std::uint64_t n) {
		for (std::uint64_t i = 0; i < n; i++) {
			const std::shared_ptr<StdObj> c = sp;
			escape(c.get());
		}
	};
	const Rig::Job sr_gp = [o](unsigned, std::uint64_t n) {
		for (std::uint64_t i = 0; i < n; i++) {
			sysref_get(&o->sr);
			sysref_put(&o->sr);
		}
	};
	for (unsigned t = 1; t <= kMaxThreads; t++)
		b.row("get/put", t, 0, Goal::none, 0, std_gp, sr_gp);
	sysref_put(&o->sr);
}

void print_header(const Config &c, const std::vector<int> &cpus, const Rig &rig)
{
	std::string cpu_list;
	for (unsigned t = 0; t < rig.workers() && t < cpus.size(); t++) {
		if (t)
			cpu_list += ',';
		cpu_list += std::to_string(cpus[t]);
	}
	if (cpu_list.empty())
		cpu_list = "unpinned";
	if (c.json) {
		std::printf("{\"type\":\"config\",\"bench\":\"bench_sysref\",\"reps\":%u,"
		            "\"quick\":%s,\"only\":%s,\"target_ms\":%.0f,\"cpus\":%s,\"percpu\":%s,"
		            "\"payload\":%zu,\"std_obj\":%zu,\"sysref_obj\":%zu,\"ids\":%zu,"
		            "\"id_seed\":%" PRIu64 "}\n",
		            c.reps, c.quick ? "true" : "false",
		            c.only.empty() ? "null" : json_str(c.only).c_str(), c.target_ns / 1e6,
		            json_str(cpu_list).c_str(), json_str(sysref_percpu_mode()).c_str(),
		            kPayload, sizeof(StdObj), sizeof(SrObj), kIds, kIdSeed);
		return;
	}
	std::printf("# bench_sysref: reps=%u, ~%.0f ms per repetition and side%s; "
	            "per-CPU mode %s; CPUs %s\n",
	            c.reps, c.target_ns / 1e6, c.quick ? " (--quick)" : "",
	            sysref_percpu_mode(), cpu_list.c_str());
	std::printf("# std: make_shared<StdObj> (%zu B + control block) + unordered_map<id, "
	            "weak_ptr> under shared_mutex; ~StdObj erases its id\n"
	            "# sysref: one class of %zu-B objects (struct sysref + the same %zu-B "
	            "payload + key); lookups walk %zu random ids (xorshift64, seed %#" PRIx64
	            "), the same sequence on both sides\n"
	            "# ns/op: median per thread; Mop/s: total; x: std ns / sysref ns "
	            "(>1: sysref faster); new/op: sysref constructions per op; "
	            "spread: (max-min)/median, noisier side\n",
	            sizeof(StdObj), sizeof(SrObj), kPayload, kIds, kIdSeed);
}

} // namespace

int main(int argc, char **argv)
{
	const Config cfg = parse(argc, argv);
	const std::vector<int> cpus = usable_cpus(kMaxThreads);
	Rig rig(cpus);
	print_header(cfg, cpus, rig);
	if (!rig.pinned())
		note(cfg.json, "warning", "pinning", "could not pin the worker threads; unpinned");
	if (rig.workers() < 2)
		note(cfg.json, "warning", "threads", "one usable CPU: the two-thread rows are skipped");
	print_columns(cfg);

	Bench b{cfg, rig, {}};
	if (cfg.wants("cycle") || cfg.wants("cycle+lookup"))
		life_cycle_rows(b);
	if (cfg.wants("lookup+put") || cfg.wants("get/put rand"))
		for (const std::size_t live : kLiveSizes)
			lookup_rows(b, live);
	if (cfg.wants("get/put"))
		get_put_rows(b);

	unsigned pass = 0, miss = 0;
	for (const Result &r : b.results) {
		if (r.goal == Goal::none)
			continue;
		(std::strcmp(verdict(r), "PASS") == 0 ? pass : miss)++;
	}
	const struct sysref_stats st = sr_stats();
	if (cfg.json)
		std::printf("{\"type\":\"summary\",\"targets_met\":%u,\"targets_missed\":%u,"
		            "\"wrong_lookups\":%" PRIu64 ",\"sysref\":{\"live\":%" PRIu64
		            ",\"cached\":%" PRIu64 ",\"allocs\":%" PRIu64 ",\"lookups\":%" PRIu64
		            ",\"lookup_misses\":%" PRIu64 ",\"retired\":%" PRIu64
		            ",\"constructions\":%" PRIu64 ",\"destructions\":%" PRIu64 "}}\n",
		            pass, miss, g_wrong.load(), st.live, st.cached, st.allocs, st.lookups,
		            st.lookup_misses, st.retired, st.constructions, st.destructions);
	else
		std::printf("# targets: %u met, %u missed (this run; information, not a test)\n"
		            "# sysref class at exit: live %" PRIu64 ", cached %" PRIu64
		            ", allocs %" PRIu64 ", lookups %" PRIu64 " (misses %" PRIu64
		            "), retired %" PRIu64 ", constructions %" PRIu64
		            ", destructions %" PRIu64 "\n",
		            pass, miss, st.live, st.cached, st.allocs, st.lookups,
		            st.lookup_misses, st.retired, st.constructions, st.destructions);
	if (g_wrong.load()) {
		std::fprintf(stderr, "bench_sysref: %" PRIu64 " lookups returned NULL or the "
		                     "wrong object for a live id\n", g_wrong.load());
		return 1;
	}
	if (st.live != 0) {
		std::fprintf(stderr, "bench_sysref: %" PRIu64 " sysref objects still live at exit\n",
		             st.live);
		return 1;
	}
	return 0;
}
