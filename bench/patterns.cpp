// Pattern loops and the measurement driver; see patterns.hpp.
#include "patterns.hpp"

#include <sched.h>
#include <sys/resource.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <utility>

namespace sysref_bench {

namespace {

using Clock = std::chrono::steady_clock;

constexpr double kCalibMinNs = 5e6; // shortest run trusted for calibration

inline void cpu_relax()
{
#if defined(__x86_64__) || defined(__i386__)
	__builtin_ia32_pause();
#endif
}

// One written byte per object: the allocator must hand out real, writable
// memory, and lazily mapped memory pays its page faults inside the loop.
inline void touch(void *p, std::uint64_t i)
{
	*static_cast<volatile unsigned char *>(p) = static_cast<unsigned char>(i);
}

inline void *checked(void *p, const Allocator &a)
{
	if (!p) {
		std::fprintf(stderr, "bench: %s returned NULL\n", a.name.c_str());
		std::exit(2);
	}
	return p;
}

double ns_between(Clock::time_point t0, Clock::time_point t1)
{
	return std::chrono::duration<double, std::nano>(t1 - t0).count();
}

std::uint64_t round_up(std::uint64_t n, std::uint64_t g)
{
	return std::max<std::uint64_t>(g, (n + g - 1) / g * g);
}

// Grows n until a run lasts kCalibMinNs, then scales it to the target.
// These runs double as warm-up.
std::uint64_t calibrate(const Runner &run, const Allocator &a,
                        const MeasureSpec &s)
{
	std::uint64_t n = round_up(4096, s.granule);
	double t = run(a, n);
	while (t < kCalibMinNs && n < (std::uint64_t{1} << 34)) {
		n = round_up(n * 4, s.granule);
		t = run(a, n);
	}
	const double scaled = static_cast<double>(n) * s.target_ns / std::max(t, 1.0);
	return round_up(static_cast<std::uint64_t>(scaled), s.granule);
}

} // namespace

bool pin_self(int cpu)
{
	cpu_set_t set;
	CPU_ZERO(&set);
	CPU_SET(cpu, &set);
	return sched_setaffinity(0, sizeof set, &set) == 0;
}

long minflt_now()
{
	rusage ru{};
	getrusage(RUSAGE_SELF, &ru);
	return ru.ru_minflt;
}

// Function pointers are copied to locals so the loops do not reload them
// from the table after every opaque call.
double run_single(const Allocator &a, std::size_t size, std::uint64_t n)
{
	const alloc_fn af = a.alloc;
	const free_fn ff = a.free;
	void *const ctx = a.ctx;
	const auto t0 = Clock::now();
	for (std::uint64_t i = 0; i < n; i++) {
		void *p = checked(af(ctx, size), a);
		touch(p, i);
		ff(ctx, p, size);
	}
	return ns_between(t0, Clock::now());
}

double run_batch(const Allocator &a, std::size_t size, std::uint64_t n)
{
	const alloc_fn af = a.alloc;
	const free_fn ff = a.free;
	void *const ctx = a.ctx;
	void *ptrs[kBatch];
	const auto t0 = Clock::now();
	for (std::uint64_t b = 0; b < n / kBatch; b++) {
		for (std::uint64_t j = 0; j < kBatch; j++) {
			ptrs[j] = checked(af(ctx, size), a);
			touch(ptrs[j], j);
		}
		for (std::uint64_t j = kBatch; j-- > 0;) // LIFO
			ff(ctx, ptrs[j], size);
	}
	return ns_between(t0, Clock::now());
}

namespace {

std::uint64_t splitmix64(std::uint64_t &state)
{
	std::uint64_t z = (state += 0x9e3779b97f4a7c15ULL);
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
	return z ^ (z >> 31);
}

// Uniform in [lo, hi]; the modulo bias (< 2^-50 here) does not matter.
std::uint32_t draw(std::uint64_t &state, std::uint32_t lo, std::uint32_t hi)
{
	return lo + static_cast<std::uint32_t>(splitmix64(state) % (hi - lo + 1));
}

} // namespace

MixedPlan make_mixed_plan(std::uint64_t seed)
{
	struct Band {
		unsigned percent;
		std::uint32_t lo, hi;
	};
	static constexpr Band bands[] = {
		{50, 8, 64}, {30, 65, 256}, {15, 257, 1024}, {5, 1025, 4096}};
	MixedPlan plan;
	std::uint64_t st = seed;
	for (std::uint64_t i = 0; i < kMixedRounds * kBatch; i++) {
		unsigned pick = draw(st, 0, 99);
		const Band *b = bands;
		while (pick >= b->percent) {
			pick -= b->percent;
			b++;
		}
		plan.sizes.push_back(draw(st, b->lo, b->hi));
	}
	for (std::uint64_t r = 0; r < kMixedRounds; r++) {
		std::uint8_t perm[kBatch];
		for (std::uint64_t j = 0; j < kBatch; j++)
			perm[j] = static_cast<std::uint8_t>(j);
		for (std::uint64_t j = kBatch - 1; j > 0; j--) // Fisher-Yates
			std::swap(perm[j], perm[draw(st, 0, static_cast<std::uint32_t>(j))]);
		plan.order.insert(plan.order.end(), perm, perm + kBatch);
	}
	return plan;
}

double MixedPlan::mean_size() const
{
	double sum = 0;
	for (const std::uint32_t s : sizes)
		sum += s;
	return sizes.empty() ? 0 : sum / static_cast<double>(sizes.size());
}

double MixedPlan::share_at_most(std::uint32_t bytes) const
{
	const auto k = std::count_if(sizes.begin(), sizes.end(),
	                             [bytes](std::uint32_t s) { return s <= bytes; });
	return sizes.empty() ? 0 : static_cast<double>(k) / static_cast<double>(sizes.size());
}

double run_mixed(const Allocator &a, const MixedPlan &plan, std::uint64_t n)
{
	const alloc_fn af = a.alloc;
	const free_fn ff = a.free;
	void *const ctx = a.ctx;
	const std::uint32_t *const sizes = plan.sizes.data();
	const std::uint8_t *const order = plan.order.data();
	const std::uint64_t rounds = plan.sizes.size() / kBatch;
	void *ptrs[kBatch];
	std::uint64_t r = 0;
	const auto t0 = Clock::now();
	for (std::uint64_t b = 0; b < n / kBatch; b++) {
		const std::uint32_t *sz = sizes + r * kBatch;
		const std::uint8_t *ord = order + r * kBatch;
		for (std::uint64_t j = 0; j < kBatch; j++) {
			ptrs[j] = checked(af(ctx, sz[j]), a);
			touch(ptrs[j], j);
		}
		for (std::uint64_t j = 0; j < kBatch; j++) {
			const std::uint8_t k = ord[j];
			ff(ctx, ptrs[k], sz[k]);
		}
		if (++r == rounds)
			r = 0;
	}
	return ns_between(t0, Clock::now());
}

constexpr std::size_t kPublish = 32;
void SpscRing::push(void *p)
{
	const std::size_t h = head_local_;
	while (h - tail_seen_ >= kSlots) {
		tail_seen_ = tail_.load(std::memory_order_acquire);
		if (h - tail_seen_ >= kSlots)
			cpu_relax();
	}
	slots_[h & (kSlots - 1)] = p;
	head_local_ = h + 1;
	if (head_local_ % kPublish == 0)
		head_.store(head_local_, std::memory_order_release);
}
void SpscRing::flush() { head_.store(head_local_, std::memory_order_release); }

void *SpscRing::pop()
{
	const std::size_t t = tail_local_;
	while (t == head_seen_) {
		head_seen_ = head_.load(std::memory_order_acquire);
		if (t == head_seen_)
			cpu_relax();
	}
	void *p = slots_[t & (kSlots - 1)];
	tail_local_ = t + 1;
	if (tail_local_ % kPublish == 0)
		tail_.store(tail_local_, std::memory_order_release);
	return p;
}

// Protocol: gen_ counts jobs (main bumps it, workers block on it between
// jobs); done_ counts worker completions (2 for start-up, then 2 per job);
// ready_ is a cumulative spin rendezvous (2 per job) so that neither
// thread's futex wake-up latency falls inside the timed interval.
CrossRig::CrossRig(int cpu_producer, int cpu_consumer)
{
	prod_ = std::thread([this, cpu_producer] { worker(true, cpu_producer); });
	cons_ = std::thread([this, cpu_consumer] { worker(false, cpu_consumer); });
	wait_done(2); // both have tried to pin
}

CrossRig::~CrossRig()
{
	stop_ = true;
	start_job();
	prod_.join();
	cons_.join();
}

double CrossRig::run(const Allocator &a, std::size_t size, std::uint64_t n)
{
	job_ = &a;
	size_ = size;
	n_ = n;
	start_job();
	wait_done(2 + 2 * gen_.load());
	return ns_between(t0_, t1_);
}

void CrossRig::start_job()
{
	gen_.fetch_add(1, std::memory_order_release);
	gen_.notify_all();
}

void CrossRig::wait_done(std::uint32_t target)
{
	for (std::uint32_t d; (d = done_.load(std::memory_order_acquire)) < target;)
		done_.wait(d);
}

void CrossRig::finish()
{
	done_.fetch_add(1, std::memory_order_release);
	done_.notify_all();
}

void CrossRig::worker(bool producer, int cpu)
{
	if (pin_self(cpu))
		pin_ok_.fetch_add(1);
	finish();
	for (std::uint32_t seen = 0;;) {
		gen_.wait(seen, std::memory_order_acquire);
		seen = gen_.load(std::memory_order_acquire);
		if (stop_)
			return;
		ready_.fetch_add(1, std::memory_order_acq_rel);
		while (ready_.load(std::memory_order_acquire) < 2 * seen)
			cpu_relax();
		const Allocator &a = *job_;
		const alloc_fn af = a.alloc;
		const free_fn ff = a.free;
		void *const ctx = a.ctx;
		if (producer) {
			t0_ = Clock::now();
			for (std::uint64_t i = 0; i < n_; i++) {
				void *p = checked(af(ctx, size_), a);
				touch(p, i);
				ring_.push(p);
			}
			ring_.flush();
		} else {
			for (std::uint64_t i = 0; i < n_; i++)
				ff(ctx, ring_.pop(), size_);
			t1_ = Clock::now();
		}
		finish();
	}
}

std::vector<Row> measure(const Runner &run,
                         const std::vector<const Allocator *> &allocs,
                         const MeasureSpec &spec)
{
	std::vector<Row> rows(allocs.size());
	for (std::size_t k = 0; k < allocs.size(); k++) {
		Row &r = rows[k];
		r.a = allocs[k];
		const long f0 = minflt_now();
		r.pairs = spec.pairs ? round_up(spec.pairs, spec.granule)
		                     : calibrate(run, *r.a, spec);
		run(*r.a, r.pairs); // warm-up at the measured size
		r.flt_warm = minflt_now() - f0;
	}
	// Repetition i of every allocator before repetition i+1, so slow
	// phases of the machine hit all alike; the starting allocator rotates
	// so none always runs right after the same neighbour.
	for (unsigned i = 0; i < spec.reps; i++)
		for (std::size_t k = 0; k < rows.size(); k++) {
			Row &r = rows[(i + k) % rows.size()];
			const long f0 = minflt_now();
			const double t = run(*r.a, r.pairs);
			r.flt += minflt_now() - f0;
			r.ns.push_back(t / static_cast<double>(r.pairs));
		}
	for (Row &r : rows) {
		if (r.ns.empty())
			continue;
		std::vector<double> s = r.ns;
		std::sort(s.begin(), s.end());
		const std::size_t m = s.size() / 2;
		r.median = s.size() % 2 ? s[m] : (s[m - 1] + s[m]) / 2;
		r.min = s.front();
	}
	return rows;
}

} // namespace sysref_bench
