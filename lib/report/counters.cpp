// Counting for the preload shim: calls per function, requested bytes and a
// histogram of requested sizes, in per-CPU counters (percpu::add: one
// restartable add, no shared cache line written). Nothing is counted unless
// SYSREF_STATS is set; the slots are taken on the first count.
#include <bit>

#include "../os/os.hpp"
#include "../percpu/percpu.hpp"
#include "report.hpp"

namespace sysref::report {
namespace {

// calls, then requested bytes, then the histogram: 7 counters per slot
// (bytes [8, 64) of each; the first word is the lock-mode slot lock).
constexpr unsigned n_counters = calls_count + 1 + hist_buckets;
constexpr unsigned per_slot = (percpu::slot_bytes - percpu::payload_offset) / 8;
constexpr unsigned n_slots = (n_counters + per_slot - 1) / per_slot;
constexpr unsigned requested_index = calls_count, hist_index = calls_count + 1;

constinit size_t g_slots[n_slots] = {};
constinit std::atomic<int> g_ready{0};     // 0 not yet, 1 ready, -1 failed for good
constinit std::atomic<int> g_counting{-1};  // -1 not read yet
constinit os::lock g_init_lock;

size_t offset_of(unsigned i) { return g_slots[i / per_slot] + percpu::payload_offset + 8 * (i % per_slot); }

// The slots, taken once. From a handler that interrupted the taking (or a
// thread that finds another taking them) the count is dropped, never waited for.
bool ready() {
  int r = g_ready.load(std::memory_order_acquire);
  if (__builtin_expect(r == 1, 1)) return true;
  if (r < 0 || !g_init_lock.try_acquire()) return false;
  if (g_ready.load(std::memory_order_relaxed) == 0) {
    bool ok = true;
    for (unsigned i = 0; i < n_slots && ok; ++i) {
      long s = percpu::slot_alloc();
      ok = s >= 0;
      g_slots[i] = ok ? static_cast<size_t>(s) : 0;
    }
    g_ready.store(ok ? 1 : -1, std::memory_order_release);
  }
  g_init_lock.release();
  return g_ready.load(std::memory_order_acquire) == 1;
}

unsigned bucket_of(size_t n) {
  if (n <= 8) return 0;
  unsigned b = static_cast<unsigned>(std::bit_width(n - 1)) - 3;  // n <= 8 << b
  return b < hist_buckets - 1 ? b : hist_buckets - 1;
}

}  // namespace

bool counting() {
  int c = g_counting.load(std::memory_order_relaxed);
  if (__builtin_expect(c < 0, 0)) {
    c = os::opts().stats != os::options::stats_format::off;
    g_counting.store(c, std::memory_order_relaxed);
  }
  return c;
}

void count_call(call c) {
  if (!counting() || !ready()) return;
  percpu::add(offset_of(static_cast<unsigned>(c)), 1);
}

void count_request(size_t requested) {
  if (!counting() || !ready()) return;
  percpu::add(offset_of(requested_index), requested);
  percpu::add(offset_of(hist_index + bucket_of(requested)), 1);
}

void read_counters(uint64_t calls[calls_count], uint64_t *requested, uint64_t hist[hist_buckets]) {
  bool on = g_ready.load(std::memory_order_acquire) == 1;
  for (unsigned i = 0; i < calls_count; ++i) calls[i] = on ? percpu::sum(offset_of(i)) : 0;
  *requested = on ? percpu::sum(offset_of(requested_index)) : 0;
  for (unsigned i = 0; i < hist_buckets; ++i) hist[i] = on ? percpu::sum(offset_of(hist_index + i)) : 0;
}

void counters_postfork_child() {
  // Another thread may have been taking the slots when the process forked:
  // in the child nobody is, so let the next count try again.
  if (g_ready.load(std::memory_order_relaxed) != 1) g_init_lock.reset();
}

const char *call_name(call c) {
  static constexpr const char *names[calls_count] = {
      "malloc",  "calloc",    "realloc", "reallocarray", "free",         "posix_memalign",
      "aligned_alloc", "memalign", "valloc", "pvalloc", "malloc_usable_size", "new",
      "new_array", "delete", "delete_array", "foreign_free"};
  unsigned i = static_cast<unsigned>(c);
  return i < calls_count ? names[i] : "?";
}

}  // namespace sysref::report
