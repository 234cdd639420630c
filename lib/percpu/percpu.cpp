// The per-CPU region, the slot allocator, the mode choice and the lock-mode
// fallbacks of the per-CPU operations.
#include "percpu.hpp"

#include <atomic>
#include <cerrno>
#include <cstring>
#include <sched.h>
#if SYSREF_HAVE_RSEQ
#include <sys/rseq.h>
#endif

#include "../os/os.hpp"

namespace sysref::percpu {

constinit region g_region{0, 0, mode::unset};
#if SYSREF_HAVE_RSEQ
constinit ptrdiff_t rseq_x86::cached_rseq_offset = 0;
#endif

namespace {

constinit std::atomic<int> g_state{0};  // 0 new, 1 initialising, 2 ready, 3 failed
constinit bool g_fence = false;          // membarrier rseq fences registered
constinit os::lock g_slot_lock;
constinit uint64_t g_slot_used[slots_per_cpu / 64] = {1};  // slot 0 stays reserved

bool rseq_usable() {
#if SYSREF_HAVE_RSEQ
  if (__rseq_size < 20) return false;  // glibc did not register (or was told not to)
  auto *rs = reinterpret_cast<const volatile struct rseq *>(
      static_cast<char *>(__builtin_thread_pointer()) + __rseq_offset);
  return static_cast<int32_t>(rs->cpu_id) >= 0;
#else
  return false;
#endif
}

mode choose() {
  auto want = os::opts().percpu;
  if (want == os::percpu_choice::lock) return mode::lock;
  if (rseq_usable()) return mode::rseq;
  if (want == os::percpu_choice::rseq)
    os::write_stderr("sysref: SYSREF_PERCPU=rseq, but rseq is not available: using locks\n");
  return mode::lock;
}

os::lock &slot_lock_of(unsigned cpu, size_t offset) {
  return *reinterpret_cast<os::lock *>(address(cpu, offset & ~(slot_bytes - 1)));
}

uintptr_t &word(unsigned cpu, size_t offset) {
  return *reinterpret_cast<uintptr_t *>(address(cpu, offset));
}

// The current CPU in lock mode: os::current_cpu() (sched_getcpu(), which
// glibc reads from its rseq area where it registered one), with its clamp
// below the CPU count (g_region.ncpus is os::cpu_count()) costing no
// division unless the kernel reports a CPU beyond it.
unsigned lock_mode_cpu() {
  int c = ::sched_getcpu();
  if (__builtin_expect(static_cast<unsigned>(c) < g_region.ncpus, 1)) return static_cast<unsigned>(c);
  return c < 0 ? 0 : static_cast<unsigned>(c) % g_region.ncpus;
}

// A CPU's slot lock for offset (by default the current CPU's), taken as w
// allows: false when not taken. The guard releases it.
struct slot_guard {
  os::lock *l = nullptr;
  unsigned cpu;
  slot_guard(size_t offset, os::wait w, unsigned on_cpu = lock_mode_cpu()) : cpu(on_cpu) {
    os::lock &candidate = slot_lock_of(cpu, offset);
    if (candidate.acquire(w)) l = &candidate;
  }
  ~slot_guard() {
    if (l) l->release();
  }
  explicit operator bool() const { return l != nullptr; }
  slot_guard(const slot_guard &) = delete;
  slot_guard &operator=(const slot_guard &) = delete;
};

}  // namespace

bool ensure_init() {
  int s = g_state.load(std::memory_order_acquire);
  if (s == 2) return true;
  for (;;) {
    s = 0;
    if (g_state.compare_exchange_strong(s, 1, std::memory_order_acq_rel)) break;
    if (s == 2) return true;
    if (s == 1) {
      sched_yield();
      continue;
    }
    // 3: an earlier attempt could not map; try again below.
    if (g_state.compare_exchange_strong(s, 1, std::memory_order_acq_rel)) break;
  }
#if SYSREF_HAVE_RSEQ
  // Fast paths keep __rseq_offset in 32 bits (fast_path_rseq_off) and run
  // their section in either mode: a larger offset must not be truncated. It
  // lies within the thread's static TLS, so this never happens in practice.
  if (__rseq_offset != static_cast<int32_t>(__rseq_offset)) {
    g_state.store(3, std::memory_order_release);
    errno = ENOTSUP;
    return false;
  }
#endif
  unsigned n = os::cpu_count();
  void *base = os::map(size_t{n} << cpu_shift, os::page_size(), os::use::bootstrap);
  if (!base) {
    g_state.store(3, std::memory_order_release);
    errno = ENOMEM;
    return false;
  }
  g_region.base = reinterpret_cast<uintptr_t>(base);
#if SYSREF_HAVE_RSEQ
  rseq_x86::cached_rseq_offset = __rseq_offset;
#endif
  g_region.ncpus = n;
  g_region.m = choose();
  if (g_region.m == mode::rseq) g_fence = os::rseq_fence_register();
  g_state.store(2, std::memory_order_release);
  return true;
}

mode current_mode() {
  ensure_init();
  return g_region.m;
}

const char *mode_name() {
  switch (current_mode()) {
    case mode::rseq: return "rseq";
    case mode::lock: return "lock";
    default: return "unset";
  }
}

unsigned ncpus() { return g_region.ncpus; }

unsigned current_cpu() {
#if SYSREF_HAVE_RSEQ
  if (g_region.m == mode::rseq) {
    auto *rs = reinterpret_cast<const volatile struct rseq *>(
        static_cast<char *>(__builtin_thread_pointer()) + __rseq_offset);
    return rs->cpu_id;
  }
#endif
  return os::current_cpu();
}

long slot_alloc() {
  if (!ensure_init()) return -1;
  os::guard g(g_slot_lock);
  for (size_t i = 0; i < slots_per_cpu / 64; ++i) {
    if (~g_slot_used[i] == 0) continue;
    int bit = __builtin_ctzll(~g_slot_used[i]);
    g_slot_used[i] |= uint64_t{1} << bit;
    return static_cast<long>((i * 64 + static_cast<size_t>(bit)) * slot_bytes);
  }
  errno = ENOMEM;
  return -1;
}

void slot_free(size_t offset) {
  size_t index = offset / slot_bytes;
  for (unsigned c = 0; c < g_region.ncpus; ++c)
    std::memset(reinterpret_cast<void *>(address(c, index * slot_bytes)), 0, slot_bytes);
  os::guard g(g_slot_lock);
  g_slot_used[index / 64] &= ~(uint64_t{1} << (index % 64));
}

namespace {
template <class F>
void each_used_slot_lock(F f) {
  if (g_region.m != mode::lock) return;
  for (size_t i = 1; i < slots_per_cpu; ++i)
    if (g_slot_used[i / 64] & (uint64_t{1} << (i % 64)))
      for (unsigned c = 0; c < g_region.ncpus; ++c) f(slot_lock_of(c, i * slot_bytes));
}
}  // namespace

void prefork() {
  // A set-up under way in another thread (it takes no lock) ends first: the
  // child would wait for it forever.
  ensure_init();
  g_slot_lock.acquire();
  each_used_slot_lock([](os::lock &l) { l.acquire(); });
}

void postfork_parent() {
  each_used_slot_lock([](os::lock &l) { l.release(); });
  g_slot_lock.release();
}

// The child's one thread took every lock: releasing them also brings its
// count of held locks (os::reentered) back to zero.
void postfork_child() { postfork_parent(); }

#if SYSREF_HAVE_RSEQ
namespace {
bool cas16(uintptr_t *p, uintptr_t e0, uintptr_t e1, uintptr_t n0, uintptr_t n1) {
  __extension__ using u128 = unsigned __int128;
  bool ok;
  asm volatile("lock cmpxchg16b %1"
               : "=@ccz"(ok), "+m"(*reinterpret_cast<u128 *>(p)), "+a"(e0), "+d"(e1)
               : "b"(n0), "c"(n1)
               : "memory");
  return ok;
}
}  // namespace
#endif

bool take_pair(unsigned cpu, size_t offset, uintptr_t out[2], os::wait wt) {
  auto *w = reinterpret_cast<uintptr_t *>(address(cpu, offset));
#if SYSREF_HAVE_RSEQ
  if (g_region.m == mode::rseq) {
    if (!g_fence) return false;
    for (;;) {
      uintptr_t a = peek(cpu, offset), b = peek(cpu, offset + 8);
      if (!a && !b) return false;
      if (!cas16(w, a, b, 0, 0)) continue;
      // A section that read {a, b} before the swap may still commit; the
      // fence waits for it or restarts it. A swap that committed after our
      // exchange put the same two values back: take them again.
      os::rseq_fence(cpu);
      if (peek(cpu, offset) || peek(cpu, offset + 8)) continue;
      out[0] = a;
      out[1] = b;
      return true;
    }
  }
#endif
  slot_guard g(offset, wt, cpu);
  if (!g) return false;
  out[0] = w[0];
  out[1] = w[1];
  __atomic_store_n(&w[0], uintptr_t{0}, __ATOMIC_RELAXED);
  __atomic_store_n(&w[1], uintptr_t{0}, __ATOMIC_RELAXED);
  return out[0] || out[1];
}

uintptr_t take_word(unsigned cpu, size_t offset, os::wait wt) {
  auto *w = reinterpret_cast<uintptr_t *>(address(cpu, offset));
#if SYSREF_HAVE_RSEQ
  if (g_region.m == mode::rseq) {
    if (!g_fence) return 0;
    for (;;) {
      uintptr_t v = peek(cpu, offset);
      if (!v) return 0;
      if (!__atomic_compare_exchange_n(w, &v, uintptr_t{0}, false, __ATOMIC_ACQ_REL, __ATOMIC_RELAXED)) continue;
      // A section that read v has committed (the word is not 0 any more:
      // take the newer value) or restarts. Without the fence, v goes back.
      if (!os::rseq_fence(cpu)) {
        uintptr_t zero = 0;
        __atomic_compare_exchange_n(w, &zero, v, false, __ATOMIC_ACQ_REL, __ATOMIC_RELAXED);
        return 0;
      }
      if (peek(cpu, offset) == 0) return v;
    }
  }
#endif
  slot_guard g(offset, wt, cpu);
  if (!g) return 0;
  uintptr_t v = w[0];
  __atomic_store_n(&w[0], uintptr_t{0}, __ATOMIC_RELAXED);
  return v;
}

uint64_t sum(size_t offset) {
  uint64_t total = 0;
  for (unsigned c = 0; c < g_region.ncpus; ++c) total += peek(c, offset);
  return total;
}

// In lock mode the words are written with relaxed atomic stores: statistics
// readers on other CPUs peek at them without the lock. Counters are added
// with atomic read-modify-writes, since add() takes no lock.
namespace {

void count(uintptr_t &counter, uint64_t n) { __atomic_fetch_add(&counter, n, __ATOMIC_RELAXED); }

}  // namespace

bool locked_pop_counted(size_t w_offset, uintptr_t mask, uintptr_t *out, os::wait wt) {
  slot_guard g(w_offset, wt);
  if (!g) return false;
  uintptr_t &w = word(g.cpu, w_offset);
  if ((w & mask) == 0) return false;
  *out = w;
  __atomic_store_n(&w, *reinterpret_cast<uintptr_t *>(w), __ATOMIC_RELAXED);
  count(word(g.cpu, w_offset - 8), 1);
  return true;
}

int locked_push_counted(size_t w_offset, uintptr_t notmask, uintptr_t owner, uintptr_t obj,
                        uintptr_t tag, os::wait wt) {
  slot_guard g(w_offset, wt);
  if (!g) return not_owner;  // nothing written: the caller's slow path checks
  uintptr_t &w = word(g.cpu, w_offset);
  if ((w & notmask) != owner) return not_owner;
  auto *o = reinterpret_cast<uintptr_t *>(obj);
  if (o[1] == tag) return duplicate;
  o[1] = tag;
  o[0] = w;
  __atomic_store_n(&w, obj, __ATOMIC_RELAXED);
  count(word(g.cpu, w_offset + 8), 1);
  return pushed;
}

bool locked_compare_store(size_t offset, uintptr_t expect, uintptr_t desired, os::wait wt) {
  slot_guard g(offset, wt);
  if (!g) return false;
  uintptr_t &w = word(g.cpu, offset);
  if (w != expect) return false;
  __atomic_store_n(&w, desired, __ATOMIC_RELAXED);
  return true;
}

void locked_add(size_t offset, uint64_t n) { count(word(lock_mode_cpu(), offset), n); }

// Counted stacks in lock mode. Stack words are read by statistics on other
// CPUs, so they are stored whole (relaxed atomics).
namespace {
uint64_t &stack_word(uintptr_t stack) { return *reinterpret_cast<uint64_t *>(stack); }
uint32_t stack_capacity(uintptr_t stack) { return *reinterpret_cast<uint32_t *>(stack + 8); }
uintptr_t *stack_items(uintptr_t stack) { return reinterpret_cast<uintptr_t *>(stack + 24); }
}  // namespace

bool locked_stack_pop(size_t offset, uint64_t limit, uint64_t delta, uintptr_t *out, os::wait wt) {
  slot_guard g(offset, wt);
  if (!g) return false;
  uintptr_t stack = word(g.cpu, offset);
  if (!stack) return false;
  uint64_t w = stack_word(stack);
  uint64_t n = w & stack_count_mask;
  if (n == 0) return false;
  if (w >= limit) {
    *out = stack_fold_due;
    return true;
  }
  *out = stack_items(stack)[n - 1];
  __atomic_store_n(&stack_word(stack), w + delta, __ATOMIC_RELAXED);
  return true;
}

bool locked_stack_push(size_t offset, uint64_t delta, uintptr_t obj, os::wait wt) {
  slot_guard g(offset, wt);
  if (!g) return false;
  uintptr_t stack = word(g.cpu, offset);
  if (!stack) return false;
  uint64_t w = stack_word(stack);
  uint64_t n = w & stack_count_mask;
  if (n >= stack_capacity(stack)) return false;
  stack_items(stack)[n] = obj;
  __atomic_store_n(&stack_word(stack), w + delta, __ATOMIC_RELAXED);
  return true;
}

bool locked_compare_store_pair(size_t offset, uintptr_t e0, uintptr_t e1, uintptr_t n0, uintptr_t n1,
                               os::wait wt) {
  slot_guard g(offset, wt);
  if (!g) return false;
  uintptr_t &w0 = word(g.cpu, offset), &w1 = word(g.cpu, offset + 8);
  if (w0 != e0 || w1 != e1) return false;
  __atomic_store_n(&w0, n0, __ATOMIC_RELAXED);
  __atomic_store_n(&w1, n1, __ATOMIC_RELAXED);
  return true;
}

bool locked_stack_swap_if(size_t offset, bool want_rounds, os::wait wt) {
  slot_guard g(offset, wt);
  if (!g) return false;
  uintptr_t &loaded = word(g.cpu, offset), &prev = word(g.cpu, offset + 8);
  if (!prev) return false;
  uint64_t n = stack_word(prev) & stack_count_mask;
  if (want_rounds ? n == 0 : n >= stack_capacity(prev)) return false;
  uintptr_t l = loaded;
  __atomic_store_n(&loaded, prev, __ATOMIC_RELAXED);
  __atomic_store_n(&prev, l, __ATOMIC_RELAXED);
  return true;
}

bool locked_stack_take_counts(size_t offset, uint64_t limit, uint64_t *out, os::wait wt) {
  slot_guard g(offset, wt);
  if (!g) return false;
  uintptr_t stack = word(g.cpu, offset);
  if (!stack || stack_word(stack) < limit) return false;
  *out = stack_word(stack);
  // Release: a reader that sees the counters gone also sees why (objcache's
  // folds_begun, counted before this).
  __atomic_store_n(&stack_word(stack), *out & stack_count_mask, __ATOMIC_RELEASE);
  return true;
}

}  // namespace sysref::percpu
