// The span heap of large blocks. Two lists of address ranges, each sorted
// by address with no two entries adjacent (neighbours merge):
//   kept    committed pages of freed blocks, waiting to be reused;
//   vacant  address space reserved by the heap, inaccessible, no memory.
// A request is served, in this order, by the smallest kept range that
// holds it; by the largest kept range grown into the vacant space beside
// it; by vacant space (fresh pages); by a new reservation; and last by a
// mapping of its own. Reuse at the same address is the point: pages
// touched where they were cost nothing, while a fresh page costs a fault
// (11-15 us on these machines) and a page moved by mremap costs nearly as
// much on its next touch in a shadow-paged guest.
//
// Kept and live bytes together stay within the most bytes live at once in
// the last two decay periods (what the recent past needed): a free keeps
// only what fits under that peak, and new memory is committed only after
// the kept bytes that would overshoot it were released. A kept range
// nobody reused for SYSREF_DECAY_MS is released too. Released ranges
// become vacant space (their pages go back to the OS); vacant space is
// address space only, given back when its list has no room.
//
// One lock, a leaf; the system calls under it (mprotect, mmap over a range
// the heap owns) wait for no other lock of this library.
#include "span_heap.hpp"

#include <atomic>
#include <cerrno>

#include "../slab/pagemap.hpp"

namespace sysref::kmalloc::span_heap {
namespace {

namespace pagemap = slab::pagemap;
constexpr size_t granule = pagemap::granule;
// Address space reserved at a time: enough that a program's large blocks
// sit side by side, so its free ranges merge. Reservations cost no memory.
constexpr size_t reservation_min = size_t{1} << 30;
constexpr size_t reservation_max_block = size_t{1} << 36;  // larger: a mapping of its own

struct span {
  uintptr_t start;
  size_t len;
  uint64_t since;  // kept: coarse ns of the newest free merged into it
  uintptr_t end() const { return start + len; }
};

// Ranges are whole granules; a list of max entries, by address.
struct span_list {
  static constexpr int max = 64;
  span v[max];
  int n;
  size_t bytes;

  void remove(int i) {
    bytes -= v[i].len;
    for (int k = i; k + 1 < n; ++k) v[k] = v[k + 1];
    --n;
  }
  // Adds a range, merged with the neighbours it touches; false if it
  // needed an entry of its own and none was free.
  bool insert(uintptr_t start, size_t len, uint64_t since) {
    if (!len) return true;
    int i = 0;
    while (i < n && v[i].start < start) ++i;  // the first range above
    bool with_prev = i > 0 && v[i - 1].end() == start;
    bool with_next = i < n && start + len == v[i].start;
    if (with_prev) {
      span &p = v[i - 1];
      p.len += len;
      if (since > p.since) p.since = since;
      if (with_next) {  // the new range joined two: one entry goes
        p.len += v[i].len;
        if (v[i].since > p.since) p.since = v[i].since;
        for (int k = i; k + 1 < n; ++k) v[k] = v[k + 1];
        --n;
      }
    } else if (with_next) {
      v[i].start = start;
      v[i].len += len;
      if (since > v[i].since) v[i].since = since;
    } else {
      if (n == max) return false;
      for (int k = n; k > i; --k) v[k] = v[k - 1];
      v[i] = {start, len, since};
      ++n;
    }
    bytes += len;
    return true;
  }
  int oldest() const {
    int o = 0;
    for (int i = 1; i < n; ++i)
      if (v[i].since < v[o].since) o = i;
    return o;
  }
  int containing(uintptr_t a) const {
    for (int i = 0; i < n; ++i)
      if (v[i].start <= a && a < v[i].end()) return i;
    return -1;
  }
  int ending_at(uintptr_t a) const {
    for (int i = 0; i < n; ++i)
      if (v[i].end() == a) return i;
    return -1;
  }
  int starting_at(uintptr_t a) const {
    for (int i = 0; i < n; ++i)
      if (v[i].start == a) return i;
    return -1;
  }
};

struct heap_state {
  os::lock lock;
  span_list kept, vacant;
  // Most live bytes in the current and the previous decay period.
  uint64_t window_peak[2], window_start;
  std::atomic<uint64_t> live, live_peak_now;
  std::atomic<uint64_t> reused, decayed;
};
constinit heap_state g{};

void vacate(uintptr_t start, size_t len);

// Releases a committed range: its pages go back, its address space becomes
// vacant (lock held).
void release(uintptr_t start, size_t len) {
  os::release(reinterpret_cast<void *>(start), len);
  vacate(start, len);
}

void vacate(uintptr_t start, size_t len) {
  if (!g.vacant.insert(start, len, 0)) os::unreserve(reinterpret_cast<void *>(start), len);
}

// Removes [at, at + len) from entry i of l; what is left on either side
// stays listed, or, with no entry free for it, goes to spill (lock held).
void cut(span_list &l, int i, uintptr_t at, size_t len, void (*spill)(uintptr_t, size_t)) {
  span s = l.v[i];
  l.remove(i);
  if (!l.insert(s.start, at - s.start, s.since)) spill(s.start, at - s.start);
  if (!l.insert(at + len, s.end() - (at + len), s.since)) spill(at + len, s.end() - (at + len));
}

void unreserve_range(uintptr_t s, size_t l) { os::unreserve(reinterpret_cast<void *>(s), l); }

uintptr_t align_up(uintptr_t a, size_t align) { return (a + align - 1) & ~(uintptr_t)(align - 1); }

bool ours_live(uintptr_t a) {  // a live large block is registered under a tagged record
  return reinterpret_cast<uintptr_t>(pagemap::get(a)) & pagemap::foreign_owner_bit;
}

// Where a block of len goes in s, low or high end. Freed blocks should
// merge, so what is left of a kept range stays beside a live block of ours
// (it merges when that block is freed), and a block from vacant space goes
// beside one (it merges with it then).
uintptr_t place(const span &s, size_t len, size_t align, bool vacant) {
  uintptr_t low = align_up(s.start, align), high = (s.end() - len) & ~(uintptr_t)(align - 1);
  bool live_below = ours_live(s.start - 1), live_above = ours_live(s.end());
  if (vacant) return live_above && !live_below ? high : low;
  return live_below && !live_above ? high : low;
}

// Ends the decay period if due, and releases ranges kept for a whole one.
void age(uint64_t now) {
  uint64_t delay = uint64_t{os::opts().decay_ms} * 1000000u;
  if (now - g.window_start >= delay) {
    g.window_peak[1] = g.window_peak[0];
    g.window_peak[0] = g.live_peak_now.exchange(g.live.load(std::memory_order_relaxed), std::memory_order_relaxed);
    g.window_start = now;
  }
  for (int i = g.kept.n - 1; i >= 0; --i)
    if (now - g.kept.v[i].since >= delay) {
      span s = g.kept.v[i];
      g.kept.remove(i);
      g.decayed.fetch_add(s.len, std::memory_order_relaxed);
      release(s.start, s.len);
    }
}

uint64_t budget() {
  uint64_t b = g.window_peak[0] > g.window_peak[1] ? g.window_peak[0] : g.window_peak[1];
  uint64_t now_peak = g.live_peak_now.load(std::memory_order_relaxed);
  return now_peak > b ? now_peak : b;
}

// The kept bytes that fit under the budget beside the live bytes and
// `extra` more.
uint64_t room_beside(size_t extra) {
  uint64_t used = g.live.load(std::memory_order_relaxed) + extra, b = budget();
  return b > used ? b - used : 0;
}

// Releases kept bytes beyond limit, the oldest ranges' top ends first.
void trim_to(uint64_t limit) {
  while (g.kept.n > 0 && g.kept.bytes > limit) {
    int o = g.kept.oldest();
    span &s = g.kept.v[o];
    size_t excess = (g.kept.bytes - limit + granule - 1) & ~(granule - 1);
    if (excess >= s.len) {
      span gone = s;
      g.kept.remove(o);
      release(gone.start, gone.len);
    } else {
      s.len -= excess;
      g.kept.bytes -= excess;
      release(s.end(), excess);
    }
  }
}

// The block from kept memory: the smallest range that holds it, or else the
// largest that can grow into the vacant space beside it.
// *refused: the OS (or fault injection) refused to commit the growth.
uintptr_t take_kept(size_t len, size_t align, span *old, bool *refused) {
  int best = -1;
  for (int i = 0; i < g.kept.n; ++i) {
    const span &k = g.kept.v[i];
    if (align_up(k.start, align) + len <= k.end() && (best < 0 || k.len < g.kept.v[best].len)) best = i;
  }
  if (best >= 0) {
    uintptr_t at = place(g.kept.v[best], len, align, false);
    cut(g.kept, best, at, len, release);
    *old = {at, len, 0};
    return at;
  }
  int grown = -1, from = -1;
  uintptr_t at = 0, fresh = 0;
  for (int i = 0; i < g.kept.n; ++i) {
    const span &k = g.kept.v[i];
    if (k.len >= len || (grown >= 0 && k.len <= g.kept.v[grown].len)) continue;
    size_t grow = len - k.len;
    int above = g.vacant.starting_at(k.end()), below = g.vacant.ending_at(k.start);
    if (above >= 0 && g.vacant.v[above].len >= grow && k.start % align == 0) {
      grown = i, from = above, at = k.start, fresh = k.end();
    } else if (below >= 0 && g.vacant.v[below].len >= grow && (k.start - grow) % align == 0) {
      grown = i, from = below, at = fresh = k.start - grow;
    }
  }
  if (grown < 0) return 0;
  span k = g.kept.v[grown];
  if (!os::commit(reinterpret_cast<void *>(fresh), len - k.len)) {
    *refused = true;
    return 0;
  }
  cut(g.vacant, from, fresh, len - k.len, unreserve_range);
  g.kept.remove(grown);
  *old = k;
  return at;
}

// The block from vacant space (fresh pages), reserving more if none holds
// it. 0 with *refused: a commit was refused; without: no address space.
uintptr_t take_vacant(size_t len, size_t align, bool *refused) {
  int best = -1;
  for (int i = 0; i < g.vacant.n; ++i) {
    const span &s = g.vacant.v[i];
    if (align_up(s.start, align) + len <= s.end() && (best < 0 || s.len < g.vacant.v[best].len)) best = i;
  }
  if (best < 0) {
    if (len > reservation_max_block) return 0;
    size_t size = len * 4 > reservation_min ? len * 4 : reservation_min;
    auto r = reinterpret_cast<uintptr_t>(os::reserve(size, align));
    if (!r) return 0;
    if (!g.vacant.insert(r, size, 0)) {  // no room to list it: the block alone
      if (size > len) os::unreserve(reinterpret_cast<void *>(r + len), size - len);
      if (!os::commit(reinterpret_cast<void *>(r), len)) {
        os::unreserve(reinterpret_cast<void *>(r), len);
        *refused = true;
        return 0;
      }
      return r;
    }
    best = g.vacant.containing(r);  // it may have merged with an earlier reservation
  }
  uintptr_t at = place(g.vacant.v[best], len, align, true);
  if (!os::commit(reinterpret_cast<void *>(at), len)) {
    *refused = true;
    return 0;
  }
  cut(g.vacant, best, at, len, unreserve_range);
  return at;
}

void note_alloc(size_t len) {
  uint64_t live = g.live.fetch_add(len, std::memory_order_relaxed) + len;
  os::raise_peak(g.live_peak_now, live);
}

}  // namespace

void *take(size_t len, size_t align, os::wait w, uintptr_t *old_start, size_t *old_len) {
  span old{0, 0, 0};
  uintptr_t at = 0;
  bool refused = false;
  if (g.lock.acquire(w)) {
    age(os::coarse_now_ns());
    // A refused commit is the answer (as a refused map would be); only a
    // heap out of address space falls back to a mapping of its own.
    at = take_kept(len, align, &old, &refused);
    if (!at && !refused) {
      // New memory: kept bytes beyond what the recent peak leaves room for
      // next to it go first, so the heap's memory stays within that peak.
      trim_to(room_beside(len));
      at = take_vacant(len, align, &refused);
    }
    g.lock.release();
  }
  if (!at && !refused) at = reinterpret_cast<uintptr_t>(os::map(len, align, os::use::data));
  if (!at) {
    errno = ENOMEM;
    return nullptr;
  }
  if (old.len) g.reused.fetch_add(1, std::memory_order_relaxed);
  note_alloc(len);
  *old_start = old.start;
  *old_len = old.len;
  return reinterpret_cast<void *>(at);
}

bool grow(uintptr_t start, size_t len, size_t new_len, os::wait w, uintptr_t *old_start, size_t *old_len) {
  const uintptr_t end = start + len;
  const size_t extra = new_len - len;
  bool grown = false;
  *old_start = end;
  *old_len = 0;
  if (!g.lock.acquire(w)) return false;
  // Kept bytes right after the block first, then vacant space after those.
  int k = g.kept.starting_at(end);
  size_t from_kept = k < 0 ? 0 : g.kept.v[k].len < extra ? g.kept.v[k].len : extra;
  uintptr_t fresh = end + from_kept;
  int v = from_kept < extra ? g.vacant.starting_at(fresh) : -1;
  if (from_kept == extra ||
      (v >= 0 && g.vacant.v[v].len >= extra - from_kept && os::commit(reinterpret_cast<void *>(fresh), extra - from_kept))) {
    if (v >= 0) cut(g.vacant, v, fresh, extra - from_kept, unreserve_range);
    if (from_kept) cut(g.kept, k, end, from_kept, release);
    *old_len = from_kept;
    grown = true;
  }
  g.lock.release();
  if (grown) note_alloc(extra);
  return grown;
}

void give(uintptr_t start, size_t len) {
  g.live.fetch_sub(len, std::memory_order_relaxed);
  // From a signal handler that interrupted the heap, the lock is out of
  // reach: the block is unmapped (a hole in the heap's space, never reused).
  if (!os::opts().decay_ms || !g.lock.acquire(os::wait::unless_reentered)) {
    os::unmap(reinterpret_cast<void *>(start), len, os::use::data);
    return;
  }
  age(os::coarse_now_ns());
  if (!g.kept.insert(start, len, os::coarse_now_ns())) {  // no entry free: the oldest range makes one
    int o = g.kept.oldest();
    span gone = g.kept.v[o];
    g.kept.remove(o);
    release(gone.start, gone.len);
    g.kept.insert(start, len, os::coarse_now_ns());
  }
  trim_to(room_beside(0));
  g.lock.release();
}

size_t flush() {
  os::guard lk(g.lock);
  size_t bytes = g.kept.bytes;
  trim_to(0);
  return bytes;
}

void decay() {
  if (!g.lock.acquire(os::wait::unless_reentered)) return;
  age(os::coarse_now_ns());
  g.lock.release();
}

counters snapshot() {
  uint64_t kept;
  {
    os::guard lk(g.lock);
    kept = g.kept.bytes;
  }
  return {g.reused.load(std::memory_order_relaxed), kept, g.decayed.load(std::memory_order_relaxed)};
}

void prefork() { g.lock.acquire(); }
void postfork() { g.lock.release(); }

}  // namespace sysref::kmalloc::span_heap
