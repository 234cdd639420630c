// lib/percpu: CPU identity, per-CPU slots and per-CPU counters.
//
// One region holds a 64 KiB area per possible CPU. A layer allocates a slot
// (64 bytes, one cache line) and gets the same offset in every CPU's area.
// The first word of each slot is reserved for the lock of the fallback mode;
// layers use bytes [8, 64).
//
// Operations act on the calling thread's current CPU and come in two modes,
// fixed for the process:
//   rseq: restartable sequences on glibc's rseq area: no lock, no atomic
//         read-modify-write; preemption, migration or a signal restarts the
//         section before its single committing store.
//   lock: the slot's lock word guards it, the CPU comes from sched_getcpu().
//         Used where rseq is not registered (valgrind, the glibc tunable
//         glibc.pthread.rseq=0), under ThreadSanitizer (which cannot see the
//         ordering the kernel gives rseq), off x86-64, or by SYSREF_PERCPU=lock.
#pragma once
#include <cstddef>
#include <cstdint>

#include "../os/os.hpp"

#if defined(__x86_64__) && !defined(__SANITIZE_THREAD__)
#define SYSREF_HAVE_RSEQ 1
#include "rseq_x86_64.hpp"
#else
#define SYSREF_HAVE_RSEQ 0
#define SR_RSEQ_FN static inline __attribute__((always_inline))
#endif

// The out-of-line functions a fast path is inlined into (objcache_get and
// _put, kmalloc's malloc and free): each starts a cache line, so that its
// ~100-byte fast path spans two 64-byte fetch windows, not three. Where the
// linker happened to place objcache_get moved its cost by 8% (bench_abi).
#define SR_FAST_ENTRY [[gnu::aligned(64)]]

namespace sysref::percpu {

inline constexpr size_t slot_bytes = 64;
inline constexpr int cpu_shift = 16;
inline constexpr size_t area_bytes = size_t{1} << cpu_shift;
inline constexpr size_t slots_per_cpu = area_bytes / slot_bytes;
inline constexpr size_t payload_offset = 8;  // bytes [0, 8) hold the slot lock

enum class mode : uint8_t { unset, rseq, lock };

struct region {
  uintptr_t base;
  unsigned ncpus;
  mode m;
};
[[gnu::visibility("hidden")]] extern region g_region;  // written once, by ensure_init()

// Maps the region and picks the mode. False (errno ENOMEM) if it cannot map
// (ENOTSUP: __rseq_offset does not fit in 32 bits; see fast_path_rseq_off).
bool ensure_init();
mode current_mode();
const char *mode_name();
unsigned ncpus();
unsigned current_cpu();  // a hint: the thread may move right after

// Slot offsets are the same on every CPU. slot_free() zeroes every copy; the
// caller guarantees nobody uses the slot any more.
long slot_alloc();
void slot_free(size_t offset);

// fork (the preload shim's atfork handlers; the layer's locks are the
// innermost): the slot-allocation lock, then in lock mode every allocated
// slot's lock on every CPU. Released in the parent and in the child.
void prefork();
void postfork_parent();
void postfork_child();

inline uintptr_t address(unsigned cpu, size_t offset) {
  return g_region.base + (uintptr_t{cpu} << cpu_shift) + offset;
}
// Racy read of another CPU's word (statistics, hints).
inline uint64_t peek(unsigned cpu, size_t offset) {
  return __atomic_load_n(reinterpret_cast<uint64_t *>(address(cpu, offset)), __ATOMIC_RELAXED);
}
uint64_t sum(size_t offset);  // a counter summed over every CPU

// Takes the two words at offset (16-byte aligned) from another CPU's slot,
// leaving zeros: after it returns true, no critical section on that CPU uses
// the old values any more (rseq: a 16-byte compare-and-swap, then a
// membarrier fence of that CPU; lock mode: the slot lock). The caller must
// make sure nothing but swaps of the two words can race with it. False when
// the pair was already empty or the kernel offers no fence.
bool take_pair(unsigned cpu, size_t offset, uintptr_t out[2], os::wait w = os::wait::yes);
// The same for one word, which that CPU's sections may also pop from or
// push to: a section that read the word before the exchange and committed
// after it put a newer value back, and the loop takes that one instead, so
// what it returns is what no section on that CPU still holds. 0 when the
// word was 0, the lock was out of reach, or the kernel offers no fence.
uintptr_t take_word(unsigned cpu, size_t offset, os::wait w);

// Fallback implementations (lock mode). Each takes the slot lock as w
// allows; when it may not wait and the lock is busy, it reports what the
// caller treats as "not now" (empty, full, mismatch, not_owner), so every
// caller already has a way forward. Counters are added with atomic
// read-modify-writes, so add() needs no lock at all.
bool locked_pop_counted(size_t w_offset, uintptr_t mask, uintptr_t *out, os::wait w);
int locked_push_counted(size_t w_offset, uintptr_t notmask, uintptr_t owner, uintptr_t obj,
                        uintptr_t tag, os::wait w);
bool locked_compare_store(size_t offset, uintptr_t expect, uintptr_t desired, os::wait w);
void locked_add(size_t offset, uint64_t n);
bool locked_stack_pop(size_t offset, uint64_t limit, uint64_t delta, uintptr_t *out, os::wait w);
bool locked_stack_push(size_t offset, uint64_t delta, uintptr_t obj, os::wait w);
bool locked_compare_store_pair(size_t offset, uintptr_t e0, uintptr_t e1, uintptr_t n0, uintptr_t n1,
                               os::wait w);
bool locked_stack_swap_if(size_t offset, bool want_rounds, os::wait w);
bool locked_stack_take_counts(size_t offset, uint64_t limit, uint64_t *out, os::wait w);

// ---- operations on the current CPU's copy of a slot word -------------------
// Every operation takes an os::wait: it matters only in lock mode (rseq
// sections never wait). Frees pass unless_reentered, SR_NOWAIT gets pass no.
//
// Counted lists: three words [pops][W][pushes], w_offset 16-byte aligned minus
// 8 (so slot + 16 is the usual place for W). W heads a list of elements linked
// through their first word; W & mask == 0 means empty. Every pop and push
// counts itself in the same committing store, so the counters are exact.
//
// Pop: on success *out is the popped element and W became its first word.
SR_RSEQ_FN bool pop_counted(size_t w_offset, uintptr_t mask, uintptr_t *out, os::wait w = os::wait::yes) {
#if SYSREF_HAVE_RSEQ
  if (__builtin_expect(g_region.m == mode::rseq, 1)) {
    for (;;) {
      auto r = rseq_x86::pop_counted(g_region.base + w_offset, mask, out);
      if (r != rseq_x86::aborted) return r == rseq_x86::ok;
    }
  }
#endif
  return locked_pop_counted(w_offset, mask, out, w);
}

// not_owner_tagged: not pushed, and obj[1] may hold tag because an aborted
// attempt stored it after the duplicate check had passed (so the caller must
// not read that tag as a sign of a double free).
enum push_result { pushed = 0, not_owner = 1, duplicate = 2, not_owner_tagged = 3 };

// Push obj if the list belongs to owner (W & notmask == owner), storing tag in
// obj's second word; `duplicate` (nothing written) if that word already held
// tag. An attempt that aborts after its check passed is retried without the
// check (the tag it may have stored is its own); one that aborts before is
// retried with it, so a real double free is never pushed twice.
SR_RSEQ_FN push_result push_counted(size_t w_offset, uintptr_t notmask, uintptr_t owner,
                                    uintptr_t obj, uintptr_t tag, os::wait w = os::wait::yes) {
#if SYSREF_HAVE_RSEQ
  if (__builtin_expect(g_region.m == mode::rseq, 1)) {
    uintptr_t base = g_region.base + w_offset, checked = 0;
    int r = rseq_x86::push_counted<true>(base, notmask, owner, obj, tag, &checked);
    while (r == rseq_x86::aborted)
      r = checked ? rseq_x86::push_counted<false>(base, notmask, owner, obj, tag, &checked)
                  : rseq_x86::push_counted<true>(base, notmask, owner, obj, tag, &checked);
    if (r == not_owner && checked) return not_owner_tagged;
    return static_cast<push_result>(r);
  }
#endif
  return static_cast<push_result>(locked_push_counted(w_offset, notmask, owner, obj, tag, w));
}

SR_RSEQ_FN bool compare_store(size_t offset, uintptr_t expect, uintptr_t desired,
                              os::wait w = os::wait::yes) {
#if SYSREF_HAVE_RSEQ
  if (__builtin_expect(g_region.m == mode::rseq, 1)) {
    for (;;) {
      auto r = rseq_x86::compare_store(g_region.base + offset, expect, desired);
      if (r != rseq_x86::aborted) return r == rseq_x86::ok;
    }
  }
#endif
  return locked_compare_store(offset, expect, desired, w);
}

// Never waits, in either mode.
SR_RSEQ_FN void add(size_t offset, uint64_t n) {
#if SYSREF_HAVE_RSEQ
  if (__builtin_expect(g_region.m == mode::rseq, 1)) {
    while (rseq_x86::add(g_region.base + offset, n) == rseq_x86::aborted) {
    }
    return;
  }
#endif
  locked_add(offset, n);
}

// ---- counted stacks (magazines) -------------------------------------------
// The slot word at offset points to a stack: word 0 packs
// [hi:24 | lo:24 | count:16], the capacity (uint32) sits at +8, the items
// from +24. Pops count in hi, pushes in lo, in the committing store itself.
// The count is a whole 16 bits so that a section reads it with one movzwl.
inline constexpr uint64_t stack_count_mask = 0xffff;
inline constexpr int stack_lo_shift = 16, stack_hi_shift = 40, stack_counter_bits = 24;
inline constexpr uint64_t stack_counter_mask = (uint64_t{1} << stack_counter_bits) - 1;
inline constexpr uint64_t stack_pop_delta = (uint64_t{1} << stack_hi_shift) - 1;
inline constexpr uint64_t stack_push_delta = (uint64_t{1} << stack_lo_shift) + 1;
// Pops refuse from here on, leaving the slow path to fold the counters: a
// pop that would set the word's top bit (hi reaching 2^23). lo may run
// ahead of hi by at most the capacity since the last fold, so it stops
// below 2^23 + 2^16, far from overflowing its 24 bits.
inline constexpr uint64_t stack_fold_limit = ((uint64_t{1} << (stack_counter_bits - 1)) - 1) << stack_hi_shift;
static_assert(stack_fold_limit + 1 + stack_pop_delta == uint64_t{1} << 63,
              "a pop from a word at the limit sets the top bit: the fast pop's sign test is the limit");

// What stack_pop returns, besides an item, when the counters must be folded
// (stack_take_counts) before the next pop: no item is ever at address 1.
inline constexpr uintptr_t stack_fold_due = 1;

// The popped item; 0 when there is no stack or it is empty (or, in lock
// mode, its lock was out of reach); stack_fold_due.
SR_RSEQ_FN uintptr_t stack_pop(size_t offset, os::wait w = os::wait::yes) {
#if SYSREF_HAVE_RSEQ
  if (__builtin_expect(g_region.m == mode::rseq, 1))
    return rseq_x86::stack_pop(rseq_x86::rseq_offset(), g_region.base + offset, stack_fold_limit,
                               stack_pop_delta);
#endif
  uintptr_t out;
  return locked_stack_pop(offset, stack_fold_limit, stack_pop_delta, &out, w) ? out : 0;
}

SR_RSEQ_FN bool stack_push(size_t offset, uintptr_t obj, os::wait w = os::wait::yes) {
#if SYSREF_HAVE_RSEQ
  if (__builtin_expect(g_region.m == mode::rseq, 1))
    return rseq_x86::stack_push(rseq_x86::rseq_offset(), g_region.base + offset, stack_push_delta, obj);
#endif
  return locked_stack_push(offset, stack_push_delta, obj, w);
}

// For fast paths that keep the lock mode out of line (objcache's get and
// put), with no mode test of their own: they run the two sections below
// on fast_path_word(offset) in either mode. In rseq mode that is CPU 0's
// copy of the slot word (the section adds the CPU's area); in lock mode it
// is a word of slot 0, which is reserved and stays zero on every CPU, so
// the section finds no stack and refuses, and the caller's out-of-line path
// takes the slot lock. Every refusal (no stack, empty or full, counters to
// fold) is false: the out-of-line path then calls stack_pop or stack_push,
// which tell them apart. The sections read the CPU from cpu_id_start, which
// is a possible CPU number even in a thread that has no rseq registered
// (then the rseq_cs store is ignored and the section simply runs).
SR_RSEQ_FN bool rseq_mode() {
#if SYSREF_HAVE_RSEQ
  return __builtin_expect(g_region.m == mode::rseq, 1);
#else
  return false;
#endif
}

inline uintptr_t refusing_word() { return g_region.base + payload_offset; }
inline uintptr_t fast_path_word(size_t offset) { return rseq_mode() ? g_region.base + offset : refusing_word(); }
// glibc's __rseq_offset (ensure_init made sure that it fits). Read from
// its global, not from the caller's cache: the load depends on nothing, so
// the CPU number's load can start at once.
#if SYSREF_HAVE_RSEQ
inline int32_t fast_path_rseq_off() { return static_cast<int32_t>(rseq_x86::rseq_offset()); }
#endif

SR_RSEQ_FN bool stack_pop_rseq(uintptr_t word, uintptr_t &item) {
#if SYSREF_HAVE_RSEQ
  return rseq_x86::stack_pop_or_refuse(fast_path_rseq_off(), word, stack_pop_delta, item);
#else
  (void)word, (void)item;
  return false;
#endif
}

SR_RSEQ_FN bool stack_push_rseq(uintptr_t word, uintptr_t obj) {
#if SYSREF_HAVE_RSEQ
  return rseq_x86::stack_push(fast_path_rseq_off(), word, stack_push_delta, obj);
#else
  (void)word, (void)obj;
  return false;
#endif
}

// If the two words at offset are {e0, e1}, store {n0, n1}, as one commit.
SR_RSEQ_FN bool compare_store_pair(size_t offset, uintptr_t e0, uintptr_t e1, uintptr_t n0,
                                   uintptr_t n1, os::wait w = os::wait::yes) {
#if SYSREF_HAVE_RSEQ
  if (__builtin_expect(g_region.m == mode::rseq, 1)) {
    for (;;) {
      auto r = rseq_x86::compare_store_pair(g_region.base + offset, e0, e1, n0, n1);
      if (r != rseq_x86::aborted) return r == rseq_x86::ok;
    }
  }
#endif
  return locked_compare_store_pair(offset, e0, e1, n0, n1, w);
}

// Slot words {loaded, prev} at offset: swap them if prev has rounds
// (want_rounds) or room (!want_rounds). Prev is examined only inside the
// critical section, where it cannot leave the slot.
SR_RSEQ_FN bool stack_swap_if(size_t offset, bool want_rounds, os::wait w = os::wait::yes) {
#if SYSREF_HAVE_RSEQ
  if (__builtin_expect(g_region.m == mode::rseq, 1)) {
    for (;;) {
      auto r = want_rounds ? rseq_x86::stack_swap_if<true>(g_region.base + offset)
                           : rseq_x86::stack_swap_if<false>(g_region.base + offset);
      if (r != rseq_x86::aborted) return r == rseq_x86::ok;
    }
  }
#endif
  return locked_stack_swap_if(offset, want_rounds, w);
}

// If the loaded stack's counters have reached stack_fold_limit, move them out:
// *out gets the old word, the stack keeps only its count.
SR_RSEQ_FN bool stack_take_counts(size_t offset, uint64_t *out, os::wait w = os::wait::yes) {
#if SYSREF_HAVE_RSEQ
  if (__builtin_expect(g_region.m == mode::rseq, 1)) {
    for (;;) {
      auto r = rseq_x86::stack_take_counts(g_region.base + offset, stack_fold_limit, out);
      if (r != rseq_x86::aborted) return r == rseq_x86::ok;
    }
  }
#endif
  return locked_stack_take_counts(offset, stack_fold_limit, out, w);
}

}  // namespace sysref::percpu
