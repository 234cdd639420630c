// lib/percpu: slots, counters and lists stay exact while threads migrate
// between CPUs and are hit by signals. Run once per mode (see meson.build).
#include <criterion/criterion.h>

#include <atomic>
#include <csignal>
#include <cstdlib>
#include <cstring>
#include <pthread.h>
#include <sched.h>
#include <sysref/percpu.h>
#include <thread>
#include <unistd.h>
#include <vector>

#include "os/os.hpp"
#include "percpu/percpu.hpp"

using namespace sysref;

namespace {

const char *expected_mode() {
  const char *v = std::getenv("SYSREF_PERCPU");
  return v && !std::strcmp(v, "lock") ? "lock" : "rseq";
}

void move_to(unsigned cpu) {
  cpu_set_t set;
  CPU_ZERO(&set);
  CPU_SET(cpu % std::thread::hardware_concurrency(), &set);
  sched_setaffinity(0, sizeof set, &set);
}

size_t g_signal_counter;  // slot offset bumped from the signal handler (rseq mode)
thread_local unsigned long t_signals;
bool g_handler_counts;

void on_signal(int) {
  ++t_signals;
  // A restartable sequence inside a handler that interrupted another one: the
  // kernel aborted the interrupted section; this one must commit exactly once.
  if (g_handler_counts) percpu::add(g_signal_counter, 1);
}

// Threads that move between CPUs every few operations while a signaller
// hammers them; body(i) runs the operation under test.
template <class Body>
unsigned long stress(int nthreads, long iterations, Body body) {
  struct sigaction sa {};
  sa.sa_handler = on_signal;
  sa.sa_flags = SA_RESTART;
  sigaction(SIGUSR1, &sa, nullptr);
  std::atomic<bool> done{false};
  std::atomic<unsigned long> signals{0};
  std::vector<pthread_t> ids(nthreads);
  std::atomic<int> started{0}, finished{0};
  std::vector<std::thread> workers;
  for (int t = 0; t < nthreads; ++t)
    workers.emplace_back([&, t] {
      ids[t] = pthread_self();
      started.fetch_add(1);
      for (long i = 0; i < iterations; ++i) {
        if (i % 64 == 0) move_to(static_cast<unsigned>(t + i / 64));
        body(t, i);
      }
      // Stop taking signals before reading the count; stay alive (a valid
      // target for pthread_kill) until the signaller has stopped.
      sigset_t usr1;
      sigemptyset(&usr1);
      sigaddset(&usr1, SIGUSR1);
      pthread_sigmask(SIG_BLOCK, &usr1, nullptr);
      signals.fetch_add(t_signals);
      finished.fetch_add(1);
      while (!done.load()) sched_yield();
    });
  while (started.load() < nthreads) sched_yield();
  std::thread signaller([&] {
    while (!done.load(std::memory_order_relaxed)) {
      for (int t = 0; t < nthreads; ++t) pthread_kill(ids[t], SIGUSR1);
      if (finished.load() == nthreads) done.store(true);
    }
  });
  signaller.join();
  for (auto &w : workers) w.join();
  return signals.load();
}

// A counted stack as percpu lays it out: word, capacity, a link, the items.
template <size_t N>
struct test_stack {
  uint64_t word;
  uint32_t capacity, pad;
  uint64_t link;
  uintptr_t items[N];
};

}  // namespace

Test(percpu, mode_is_the_one_asked_for) {
  cr_assert(percpu::ensure_init());
  cr_expect_str_eq(sysref_percpu_mode(), expected_mode());
  cr_expect_geq(percpu::ncpus(), std::thread::hardware_concurrency());
}

Test(percpu, slots_are_distinct_and_recycled_zeroed) {
  cr_assert(percpu::ensure_init());
  long a = percpu::slot_alloc(), b = percpu::slot_alloc();
  cr_assert_geq(a, 0);
  cr_assert_geq(b, 0);
  cr_expect_neq(a, b);
  cr_expect_eq(a % percpu::slot_bytes, 0u);
  percpu::add(static_cast<size_t>(a) + 8, 7);
  cr_expect_eq(percpu::sum(static_cast<size_t>(a) + 8), 7u);
  percpu::slot_free(static_cast<size_t>(a));
  long c = percpu::slot_alloc();
  cr_expect_eq(c, a, "lowest free slot comes back");
  cr_expect_eq(percpu::sum(static_cast<size_t>(c) + 8), 0u, "and comes back zeroed");
  percpu::slot_free(static_cast<size_t>(b));
  percpu::slot_free(static_cast<size_t>(c));
}

Test(percpu, counters_exact_under_migration_and_signals) {
  cr_assert(percpu::ensure_init());
  size_t slot = static_cast<size_t>(percpu::slot_alloc());
  g_signal_counter = slot + 16;
  g_handler_counts = percpu::current_mode() == percpu::mode::rseq;  // lock mode: handler must not lock
  const int threads = 4;
  const long iterations = 200000;
  unsigned long signals = stress(threads, iterations, [&](int, long) { percpu::add(slot + 8, 3); });
  cr_expect_eq(percpu::sum(slot + 8), 3ull * threads * iterations);
  if (g_handler_counts) cr_expect_eq(percpu::sum(slot + 16), signals);
  cr_expect_gt(signals, 0u, "the test must actually deliver signals");
  percpu::slot_free(slot);
}

// Each CPU's slot word heads a counted list of nodes inside one 64 KiB-aligned
// pool (the mask test of pop_counted). Threads pop a node, stamp it, check
// that no one else holds it, and push it back, while migrating and being
// signalled. Nothing may be lost or duplicated, and the per-CPU pop and push
// counters must equal what the threads did.
Test(percpu, counted_lists_stay_exact_under_migration_and_signals) {
  cr_assert(percpu::ensure_init());
  const unsigned ncpu = std::thread::hardware_concurrency();
  const uintptr_t pool_size = 1 << 16, mask = pool_size - 1;
  const size_t node = 64, per_cpu = 32;
  const uintptr_t tag = 0x5eed5eed;
  size_t slot = static_cast<size_t>(percpu::slot_alloc());
  const size_t pops_at = slot + 8, w_at = slot + 16, pushes_at = slot + 24;
  std::vector<uintptr_t> pools;
  for (unsigned c = 0; c < ncpu; ++c) {
    auto base = reinterpret_cast<uintptr_t>(os::map(pool_size, pool_size));
    cr_assert(base);
    pools.push_back(base);
    // Nodes from offset 64; the list ends at the pool base (W & mask == 0).
    for (size_t i = 0; i < per_cpu; ++i) {
      uintptr_t n = base + node * (i + 1);
      *reinterpret_cast<uintptr_t *>(n) = i + 1 < per_cpu ? n + node : base;
    }
    move_to(c);
    while (!percpu::compare_store(w_at, 0, base + node)) move_to(c);
  }
  g_handler_counts = false;
  std::atomic<long> misses{0}, bad{0}, pops{0}, pushes{0}, dups{0}, tagged_misses{0};
  stress(4, 100000, [&](int t, long i) {
    uintptr_t n;
    if (!percpu::pop_counted(w_at, mask, &n)) {
      misses.fetch_add(1, std::memory_order_relaxed);
      return;
    }
    pops.fetch_add(1, std::memory_order_relaxed);
    reinterpret_cast<uintptr_t *>(n)[1] = 0;  // no longer tagged as listed
    auto *owner = reinterpret_cast<std::atomic<long> *>(n + 16);
    long stamp = (long{t} << 32) | (i & 0xffffffff);
    if (owner->exchange(stamp) != 0) bad.fetch_add(1);  // someone else held it too
    owner->store(0);
    // Push back onto whatever list this CPU has: owner = that list's pool.
    for (;;) {
      uintptr_t w = percpu::peek(percpu::current_cpu(), w_at);
      auto r = percpu::push_counted(w_at, ~mask, w & ~mask, n, tag);
      if (r == percpu::duplicate) dups.fetch_add(1);
      // An aborted attempt left its tag and the list moved: the tag is ours,
      // not a sign that n is listed (the slab layer's false double free).
      if (r == percpu::not_owner_tagged) {
        tagged_misses.fetch_add(1, std::memory_order_relaxed);
        reinterpret_cast<uintptr_t *>(n)[1] = 0;
        continue;
      }
      if (r != percpu::not_owner) break;  // moved between peek and push: again
    }
    pushes.fetch_add(1, std::memory_order_relaxed);
  });
  cr_expect_eq(bad.load(), 0, "a node was handed to two threads at once");
  cr_expect_eq(dups.load(), 0, "a retry after an abort took its own tag for a duplicate");
  cr_expect_eq(percpu::sum(pops_at), static_cast<uint64_t>(pops.load()));
  cr_expect_eq(percpu::sum(pushes_at), static_cast<uint64_t>(pushes.load()));
  // Count every node on every CPU's list: none lost, none duplicated.
  size_t total = 0;
  for (unsigned c = 0; c < ncpu; ++c) {
    uintptr_t w = percpu::peek(c, w_at);
    while (w & mask) {
      ++total;
      cr_assert_leq(total, ncpu * per_cpu, "a list has a cycle");
      w = *reinterpret_cast<uintptr_t *>(w);
    }
  }
  cr_expect_eq(total, ncpu * per_cpu);
  percpu::slot_free(slot);
  for (uintptr_t p : pools) os::unmap(reinterpret_cast<void *>(p), pool_size);
}

// Counted stacks (magazines) as the objcache uses them: each CPU's slot holds
// {loaded, prev}. Threads pop a token (swapping in prev when loaded is empty),
// hold it exclusively, and push it back (swapping when loaded is full), while
// migrating and being signalled. Tokens are never lost or duplicated, and the
// pop and push counts folded into the commits are exact.
Test(percpu, counted_stacks_stay_exact_under_migration_and_signals) {
  cr_assert(percpu::ensure_init());
  const unsigned ncpu = std::thread::hardware_concurrency();
  constexpr uint32_t rounds = 31;
  constexpr size_t tokens_per_cpu = 20;  // 2 stacks per CPU hold all tokens of every CPU
  cr_assert_leq(tokens_per_cpu * ncpu, 2 * rounds, "the test needs room for every token");
  size_t slot = static_cast<size_t>(percpu::slot_alloc());
  const size_t pair_at = slot + 16;
  using stack = test_stack<rounds>;
  std::vector<stack> stacks(2 * ncpu);
  std::vector<std::atomic<int>> held(tokens_per_cpu * ncpu);
  for (auto &h : held) h.store(0);
  for (unsigned c = 0; c < ncpu; ++c) {
    stack &a = stacks[2 * c], &b = stacks[2 * c + 1];
    a = {};
    b = {};
    a.capacity = b.capacity = rounds;
    for (size_t i = 0; i < tokens_per_cpu; ++i) a.items[i] = c * tokens_per_cpu + i + 1;
    a.word = tokens_per_cpu;
    move_to(c);
    while (!percpu::compare_store_pair(pair_at, 0, 0, reinterpret_cast<uintptr_t>(&a),
                                       reinterpret_cast<uintptr_t>(&b)))
      move_to(c);
  }
  g_handler_counts = false;
  std::atomic<long> pops{0}, pushes{0}, bad{0}, lost{0};
  stress(4, 100000, [&](int, long) {
    uintptr_t token = percpu::stack_pop(pair_at);
    if (!token && percpu::stack_swap_if(pair_at, true)) token = percpu::stack_pop(pair_at);
    if (!token) return;  // this CPU's stacks are empty right now
    pops.fetch_add(1, std::memory_order_relaxed);
    if (held[token - 1].exchange(1) != 0) bad.fetch_add(1);
    held[token - 1].store(0);
    for (int tries = 0;; ++tries) {
      if (percpu::stack_push(pair_at, token)) break;
      if (!percpu::stack_swap_if(pair_at, false) && tries > 1000) {
        lost.fetch_add(1);
        return;
      }
    }
    pushes.fetch_add(1, std::memory_order_relaxed);
  });
  cr_expect_eq(bad.load(), 0, "a token was held by two threads at once");
  cr_expect_eq(lost.load(), 0, "a push found no room where there had to be some");
  std::vector<int> seen(tokens_per_cpu * ncpu, 0);
  uint64_t counted_pops = 0, counted_pushes = 0;
  for (stack &s : stacks) {
    uint32_t n = static_cast<uint32_t>(s.word & percpu::stack_count_mask);
    counted_pops += s.word >> percpu::stack_hi_shift;
    counted_pushes += (s.word >> percpu::stack_lo_shift) & percpu::stack_counter_mask;
    for (uint32_t i = 0; i < n; ++i) ++seen[s.items[i] - 1];
  }
  for (size_t t = 0; t < seen.size(); ++t) cr_expect_eq(seen[t], 1, "token %zu seen %d times", t + 1, seen[t]);
  cr_expect_eq(counted_pops, static_cast<uint64_t>(pops.load()));
  cr_expect_eq(counted_pushes, static_cast<uint64_t>(pushes.load()));
  percpu::slot_free(slot);
}

Test(percpu, take_counts_moves_only_the_counters) {
  cr_assert(percpu::ensure_init());
  size_t slot = static_cast<size_t>(percpu::slot_alloc());
  test_stack<4> s = {};
  s.capacity = 4;
  uint64_t out = 0;
  for (;;) {  // install on whatever CPU we are on when the commit happens
    uintptr_t cur = percpu::peek(percpu::current_cpu(), slot + 16);
    if (percpu::compare_store_pair(slot + 16, cur, 0, reinterpret_cast<uintptr_t>(&s), 0)) break;
  }
  s.word = 3;  // far below the limit: nothing to take
  cr_expect_not(percpu::stack_take_counts(slot + 16, &out));
  s.word = percpu::stack_fold_limit + (uint64_t{7} << percpu::stack_lo_shift) + 3;
  // The slot may be on another CPU's copy if we moved: then it reports no.
  bool took = percpu::stack_take_counts(slot + 16, &out);
  if (took) {
    cr_expect_eq(out, percpu::stack_fold_limit + (uint64_t{7} << percpu::stack_lo_shift) + 3);
    cr_expect_eq(s.word, 3u, "the count stays, the counters leave");
  }
  percpu::slot_free(slot);
}

// take_pair from another CPU while a thread there pops, pushes and swaps the
// pair all the time: the taker gets both stacks, the CPU's slot is left
// empty, and once take_pair returns no critical section touches them again.
Test(percpu, take_pair_from_a_busy_cpu) {
  if (std::thread::hardware_concurrency() < 2) cr_skip_test("needs two CPUs");
  cr_assert(percpu::ensure_init());
  size_t slot = static_cast<size_t>(percpu::slot_alloc());
  const size_t pair_at = slot + 16;
  test_stack<8> a{}, b{};
  a.capacity = b.capacity = 8;
  for (uintptr_t i = 0; i < 4; ++i) a.items[i] = b.items[i] = 0x100 + i;
  a.word = b.word = 4;
  std::atomic<bool> installed{false}, stop{false};
  std::atomic<long> ops{0};
  std::thread busy([&] {
    move_to(1);
    while (!percpu::compare_store_pair(pair_at, 0, 0, reinterpret_cast<uintptr_t>(&a),
                                       reinterpret_cast<uintptr_t>(&b)))
      move_to(1);
    installed.store(true);
    while (!stop.load(std::memory_order_relaxed)) {
      if (uintptr_t t = percpu::stack_pop(pair_at)) {
        while (!percpu::stack_push(pair_at, t) && !stop.load(std::memory_order_relaxed)) {
          if (percpu::peek(1, pair_at) == 0) break;  // taken: the token stays with us
        }
      }
      percpu::stack_swap_if(pair_at, true);
      ops.fetch_add(1, std::memory_order_relaxed);
    }
  });
  while (!installed.load()) sched_yield();
  while (ops.load() < 100000) sched_yield();
  move_to(0);
  uintptr_t pair[2] = {};
  cr_assert(percpu::take_pair(1, pair_at, pair), "the busy CPU's pair is taken");
  auto as_set = [&](uintptr_t x) { return x == reinterpret_cast<uintptr_t>(&a) || x == reinterpret_cast<uintptr_t>(&b); };
  cr_expect(as_set(pair[0]) && as_set(pair[1]) && pair[0] != pair[1], "both stacks, once each");
  cr_expect_eq(percpu::peek(1, pair_at), 0u);
  cr_expect_eq(percpu::peek(1, pair_at + 8), 0u);
  uint64_t wa = __atomic_load_n(&a.word, __ATOMIC_RELAXED), wb = __atomic_load_n(&b.word, __ATOMIC_RELAXED);
  usleep(20000);  // the busy thread keeps trying; it must not reach them
  cr_expect_eq(__atomic_load_n(&a.word, __ATOMIC_RELAXED), wa);
  cr_expect_eq(__atomic_load_n(&b.word, __ATOMIC_RELAXED), wb);
  stop.store(true);
  busy.join();
  percpu::slot_free(slot);
}
