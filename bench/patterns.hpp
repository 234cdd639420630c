// Allocation patterns and the measurement loop shared by the libsysref
// benchmarks. Everything runs through the Allocator table of peers.hpp, so a
// benchmark only builds its subject entry and picks patterns.
#ifndef SYSREF_BENCH_PATTERNS_HPP
#define SYSREF_BENCH_PATTERNS_HPP

#include "peers.hpp"

#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <thread>
#include <vector>

namespace sysref_bench {

inline constexpr std::uint64_t kBatch = 64; // objects per batch64 round

// Pins the calling thread to one CPU (sched_setaffinity on tid 0).
bool pin_self(int cpu);
// Minor page faults of the whole process so far (worker threads included).
long minflt_now();

// Each returns the wall time in ns of n alloc/free pairs of `size` bytes.
// single: alloc, touch, free. batch: n/kBatch rounds of kBatch allocs then
// kBatch frees, LIFO (n must be a multiple of kBatch).
double run_single(const Allocator &a, std::size_t size, std::uint64_t n);
double run_batch(const Allocator &a, std::size_t size, std::uint64_t n);

// mixed pattern: a fixed pseudo-random sequence of sizes, replayed
// identically for every allocator. Sizes are drawn from four bands, uniform
// within each: 50% 8..64, 30% 65..256, 15% 257..1024, 5% 1025..4096 (80% of
// them <= 256 B). Each round allocates kBatch objects, then frees them in
// that round's own shuffled order. The plan is generated once, with
// splitmix64 from a fixed seed, so it does not depend on the standard
// library's distributions either.
inline constexpr std::uint64_t kMixedSeed = 0x5eed0f5172e5ULL;
inline constexpr std::uint64_t kMixedRounds = 256; // rounds before it repeats

struct MixedPlan {
	std::vector<std::uint32_t> sizes; // kMixedRounds * kBatch, round-major
	std::vector<std::uint8_t> order;  // per round, a permutation of 0..kBatch-1
	double mean_size() const;
	double share_at_most(std::uint32_t bytes) const; // fraction of sizes <= bytes
};
MixedPlan make_mixed_plan(std::uint64_t seed = kMixedSeed);

// n pairs (a multiple of kBatch) of the plan, cycling through its rounds;
// each object is allocated, touched, and freed with the size it was asked.
double run_mixed(const Allocator &a, const MixedPlan &plan, std::uint64_t n);

// Bounded single-producer single-consumer ring of pointers. Each side keeps
// a private copy of the other's index and rereads the shared one only when
// the copy says full/empty, so the index lines bounce once per burst.
class SpscRing {
public:
	void push(void *p);
	void *pop();
	void flush();

private:
	static constexpr std::size_t kSlots = 1024; // power of two
	alignas(64) std::atomic<std::size_t> head_{0}; // producer's line
	std::size_t tail_seen_ = 0;
	std::size_t head_local_ = 0;
	alignas(64) std::atomic<std::size_t> tail_{0}; // consumer's line
	std::size_t head_seen_ = 0;
	std::size_t tail_local_ = 0;
	alignas(64) void *slots_[kSlots] = {};
};

// cross pattern: a producer thread on one CPU allocates, touches and pushes;
// a consumer thread on another pops and frees. The two threads are pinned
// once and reused for every job, so the per-thread allocator caches warmed
// by the warm-up are the ones measured (a thread per repetition would time
// cache creation and teardown instead).
class CrossRig {
public:
	CrossRig(int cpu_producer, int cpu_consumer);
	~CrossRig();
	CrossRig(const CrossRig &) = delete;
	CrossRig &operator=(const CrossRig &) = delete;
	bool pinned() const { return pin_ok_.load() == 2; }
	// ns from the producer's first alloc to the consumer's last free.
	double run(const Allocator &a, std::size_t size, std::uint64_t n);

private:
	using Clock = std::chrono::steady_clock;
	void start_job();
	void wait_done(std::uint32_t target);
	void finish();
	void worker(bool producer, int cpu);

	SpscRing ring_;
	std::atomic<std::uint32_t> gen_{0}, done_{0}, ready_{0};
	std::atomic<int> pin_ok_{0};
	bool stop_ = false; // published by gen_'s release/acquire
	const Allocator *job_ = nullptr;
	std::size_t size_ = 0;
	std::uint64_t n_ = 0;
	Clock::time_point t0_, t1_;
	std::thread prod_, cons_;
};

// Runs fn(rig) when CPUs 0 and 1 of `cpus` can be pinned; otherwise returns
// why the cross pattern was skipped (nullptr when it ran).
template <class Fn>
const char *with_cross_rig(const std::vector<int> &cpus, Fn fn)
{
	if (cpus.size() < 2)
		return "only one CPU is usable; the pattern needs two (CPU 0 and CPU 1)";
	CrossRig rig(cpus[0], cpus[1]);
	if (!rig.pinned())
		return "sched_setaffinity to the two CPUs failed";
	fn(rig);
	return nullptr;
}

// One allocator's results for one pattern.
struct Row {
	const Allocator *a = nullptr;
	std::uint64_t pairs = 0;       // pairs per repetition
	std::vector<double> ns;        // ns per pair, one per repetition
	long flt = 0, flt_warm = 0;    // minor faults: measured reps, warm-up
	double median = 0, min = 0;
};

// Runs n pairs of one allocator, returns ns.
using Runner = std::function<double(const Allocator &, std::uint64_t n)>;

struct MeasureSpec {
	unsigned reps = 11;
	std::uint64_t pairs = 0;     // per repetition; 0: calibrate per allocator
	std::uint64_t granule = 1;   // pairs are rounded up to a multiple
	double target_ns = 30e6;     // calibration aims one repetition at this
};

// Warms up (calibrating when spec.pairs is 0) each allocator, then takes
// spec.reps repetitions interleaved across allocators.
std::vector<Row> measure(const Runner &run,
                         const std::vector<const Allocator *> &allocs,
                         const MeasureSpec &spec);

} // namespace sysref_bench

#endif
