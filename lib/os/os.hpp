// lib/os: the only layer that talks to the kernel. Everything above asks
// here for address space, CPU identity, futexes and the option table.
#pragma once
#include <atomic>
#include <cstddef>
#include <cstdint>

namespace sysref::os {

// Raises a high-water mark to v (relaxed: statistics and budgets).
inline void raise_peak(std::atomic<uint64_t> &peak, uint64_t v) {
  uint64_t p = peak.load(std::memory_order_relaxed);
  while (v > p && !peak.compare_exchange_weak(p, v, std::memory_order_relaxed)) {
  }
}

// ---- memory: aligned address space, counted -------------------------------
// map() reserves and commits size bytes aligned to align (a power of two, at
// least the page size). One call is one "page request": fault injection may
// refuse it, and then it returns nullptr with errno = ENOMEM, as mmap would.
// `use` only splits the counters: the library's own bookkeeping (per-CPU
// region, page map, internal zones) is metadata, everything else is data.
// `bootstrap` is metadata that fault injection never refuses: the library's
// own one-time structures (the per-CPU region, page-map leaves), so that a
// zone with a reserve works before the page provider ever said yes.
enum class use : uint8_t { data, metadata, bootstrap };
void *map(size_t size, size_t align, use u = use::data);
void unmap(void *p, size_t size, use u = use::data);
// Give the physical pages back but keep the range mapped (reads as zero).
void decommit(void *p, size_t size);
// Make the pages of a mapped range resident and writable now, in one call
// instead of one fault per page (MADV_POPULATE_WRITE). Best effort: a kernel
// without it (before 5.14) or short of memory leaves them to fault later.
void populate(void *p, size_t size);
// Address space without memory, for a heap that places its own blocks:
// reserve() takes size bytes aligned to align, inaccessible and not counted
// as mapped; commit() makes a page-aligned part of it usable data (one page
// request, like map(); false if refused); release() gives a committed part's
// pages back and makes it inaccessible again, still reserved; unreserve()
// gives reserved, uncommitted address space back for good.
void *reserve(size_t size, size_t align);
bool commit(void *p, size_t size);
void release(void *p, size_t size);
void unreserve(void *p, size_t size);

void fail_after(long n);  // n < 0: never refuse

struct memory_stats {
  uint64_t mapped, peak_mapped, metadata, released, decommitted;
  uint64_t map_calls, unmap_calls, madvise_calls, refused;
};
memory_stats memory_snapshot();

// ---- machine ---------------------------------------------------------------
size_t page_size();
unsigned cpu_count();  // possible CPU ids: every id rseq or getcpu can report
unsigned current_cpu();  // sched_getcpu(), clamped below cpu_count()
uint64_t random_seed();  // from the kernel, for secrets
// CLOCK_MONOTONIC_COARSE: millisecond resolution at a tenth of the cost
// (26 ns vs 3 ns measured here under kvm-clock), for interval timers.
uint64_t coarse_now_ns();
void sleep_ms(unsigned ms);
void yield_cpu();  // sched_yield()

struct topology_info { unsigned packages, cores, pus, numa_nodes; bool from_hwloc; };
// Loads hwloc with dlopen on first call. Never call it from an allocation
// path: hwloc allocates, and the preload shim would recurse.
topology_info topology();

// ---- the process (the report layer) ------------------------------------------
// Resident set size from /proc/self/statm (open/read, no allocation); 0 if
// unreadable. Minor page faults so far (getrusage).
uint64_t resident_bytes();
uint64_t minor_faults();
// CLOCK_MONOTONIC now, and when the library first mapped memory (its first
// use in this process; 0 before that).
uint64_t now_ns();
uint64_t started_ns();
void mark_started();  // called by map(); the first call wins
int process_id();
const char *program_name();  // argv[0]'s last component, from the C library
// Files for reports: a descriptor or -errno (O_WRONLY|O_CREAT|O_APPEND|O_CLOEXEC).
int open_append(const char *path);
int write_all(int fd, const void *buf, size_t len);  // 0 or -errno (EINTR retried)
void close_fd(int fd);

// ---- restartable-sequence fences (membarrier) --------------------------------
// Registers the process for rseq fences; false if the kernel cannot.
bool rseq_fence_register();
// Restarts every restartable sequence running on cpu now, and returns once
// they have been restarted or have committed.
bool rseq_fence(unsigned cpu);

// ---- futex-backed lock (no allocation, fork-safe to re-init) ---------------
void futex_wait(std::atomic<uint32_t> *word, uint32_t expected);
void futex_wake(std::atomic<uint32_t> *word, int n);
// futex_wait with a timeout in milliseconds.
void futex_wait_for(std::atomic<uint32_t> *word, uint32_t expected, unsigned ms);

// Library locks this thread holds or is acquiring. Non-zero inside a signal
// handler means the handler interrupted library code that may hold the very
// lock the handler would wait for: there, frees and SR_NOWAIT gets must not
// wait (the signal promise in objcache(3)). Counted before the lock word is
// taken and after it is given back, so a handler never sees zero while the
// interrupted frame holds a lock.
extern constinit thread_local unsigned t_locks_held [[gnu::tls_model("initial-exec")]];
inline bool reentered() { return t_locks_held != 0; }

// How a caller may wait for a lock:
//   yes:              as long as it takes;
//   unless_reentered: as long as it takes, unless this thread already holds a
//                     library lock (a handler that interrupted one): then only
//                     if it is free at once;
//   no:               only if it is free at once (SR_NOWAIT).
enum class wait : uint8_t { yes, unless_reentered, no };

class lock {
 public:
  void acquire() {
    enter();
    uint32_t c = 0;
    if (!word_.compare_exchange_strong(c, 1, std::memory_order_acquire)) slow_acquire();
  }
  bool try_acquire() {
    enter();
    uint32_t c = 0;
    if (word_.compare_exchange_strong(c, 1, std::memory_order_acquire)) return true;
    leave();
    return false;
  }
  // False: not taken, because w did not allow waiting for it.
  bool acquire(wait w) {
    if (w == wait::no || (w == wait::unless_reentered && reentered())) return try_acquire();
    acquire();
    return true;
  }
  void release() {
    if (word_.exchange(0, std::memory_order_release) == 2) futex_wake(&word_, 1);
    leave();
  }
  void reset() { word_.store(0, std::memory_order_relaxed); }  // after fork, in the child
  bool held() const { return word_.load(std::memory_order_relaxed) != 0; }

 private:
  static void enter() {
    ++t_locks_held;
    std::atomic_signal_fence(std::memory_order_seq_cst);
  }
  static void leave() {
    std::atomic_signal_fence(std::memory_order_seq_cst);
    --t_locks_held;
  }
  void slow_acquire();
  std::atomic<uint32_t> word_{0};  // 0 free, 1 held, 2 held with waiters
};

class guard {
 public:
  explicit guard(lock &l) : l_(l) { l_.acquire(); }
  ~guard() { l_.release(); }
  guard(const guard &) = delete;
  guard &operator=(const guard &) = delete;

 private:
  lock &l_;
};

// ---- diagnostics: write(2) only, never allocates ----------------------------
void write_stderr(const char *msg);
// "sysref: <what>: <detail> <hex>" then abort, or count, per SYSREF_ON_ERROR.
// Returns only in count mode.
void report_error(const char *what, const char *detail, const void *ptr);
[[noreturn]] void fatal(const char *what, const char *detail, const void *ptr);

// ---- options: the one table of SYSREF_* variables ---------------------------
enum class on_error { abort_process, count };
enum class percpu_choice { automatic, rseq, lock };
struct options {
  on_error error_mode = on_error::abort_process;
  percpu_choice percpu = percpu_choice::automatic;
  long fault_after = -1;
  unsigned spare_low = 1, spare_high = 2;
  unsigned reap_interval_ms = 1000;  // objcache working-set interval
  bool reap_thread = false;          // reap from a background thread too
  unsigned mag_contention = 3;       // depot waits per interval that grow magazines
  // Memory nobody used for this long goes back (empty slabs in the pool,
  // idle caches' depots, the kept pages of freed large blocks); 0: as soon as
  // it is free.
  unsigned decay_ms = 100;
  // Statistics (the report layer and the preload shim).
  enum class stats_format : uint8_t { off, text, json };
  stats_format stats = stats_format::off;  // SYSREF_STATS: count, and report at exit
  char stats_file[256] = {};              // SYSREF_STATS_FILE ("%p" = pid); empty: stderr
  int stats_signal = 12;                  // SYSREF_STATS_SIGNAL (SIGUSR2); 0: none
  unsigned stats_interval_ms = 0;         // SYSREF_STATS_INTERVAL_MS: samples; 0: none
};
// Read once from the environment (first call); later calls see the same.
const options &opts();

}  // namespace sysref::os
