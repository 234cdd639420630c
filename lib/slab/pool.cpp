// The empty-slab pool and the decay timer.
//
// A zone keeps up to spare_high empty slabs for itself; the ones beyond, and
// the spares of a zone that bound no slab for SYSREF_DECAY_MS, come here.
// They stay mapped, out of the page map, for any zone whose slabs have the
// same size: memory a size class no longer needs becomes another class's
// next slab without a system call or a page fault. A slab that sat in the
// pool for SYSREF_DECAY_MS is unmapped. The delay is the hysteresis: a
// program that frees and allocates again within it never maps anew, one
// that goes idle gives its memory back.
//
// Lists are LIFO at the head (the most recently used slab is the warmest)
// and age at the tail, so the timer looks only at the tail. The pool lock is
// a leaf: nothing is taken under it, unmapping happens after it is dropped.
#include "zone.hpp"

namespace sysref::slab {
namespace {

constexpr int min_shift = 16;  // min_slab
constexpr int size_lists = 8;  // 64 KiB .. 8 MiB; larger slabs are never pooled

// Lives in the pooled slab's own first bytes (it is out of every zone).
struct pooled {
  pooled *prev, *next;
  uint64_t since;  // coarse ns when pooled
};

struct pool_list {
  pooled *head = nullptr, *tail = nullptr;
};

constinit os::lock g_lock;
constinit pool_list g_lists[2][size_lists];  // [metadata][log2(slab size) - 16]
constinit uint64_t g_bytes = 0, g_reused = 0, g_decayed = 0;
constinit std::atomic<uint64_t> g_next_tick{0};

int list_index(size_t slab_size) {
  int shift = __builtin_ctzll(slab_size);
  return shift - min_shift < size_lists ? shift - min_shift : -1;
}

pool_list &list_for(os::use u, int index) {
  return g_lists[u == os::use::data ? 0 : 1][index];
}

void unlink(pool_list &l, pooled *p) {
  (p->prev ? p->prev->next : l.head) = p->next;
  (p->next ? p->next->prev : l.tail) = p->prev;
}

// Takes off every slab pooled before `before` (lock held), oldest first,
// into a chain linked by next; bytes in *bytes.
pooled *take_aged(uint64_t before, size_t *bytes, os::use *uses, size_t *sizes, int *n, int max) {
  pooled *chain = nullptr;
  for (int m = 0; m < 2; ++m)
    for (int i = 0; i < size_lists; ++i) {
      pool_list &l = g_lists[m][i];
      while (l.tail && l.tail->since <= before && *n < max) {
        pooled *p = l.tail;
        unlink(l, p);
        p->next = chain;
        chain = p;
        uses[*n] = m ? os::use::metadata : os::use::data;
        sizes[(*n)++] = size_t{1} << (i + min_shift);
        *bytes += size_t{1} << (i + min_shift);
      }
    }
  return chain;
}

// Unmaps up to a batch of slabs pooled at or before `before`; bytes.
size_t unmap_aged(uint64_t before) {
  constexpr int batch = 64;
  size_t total = 0;
  for (;;) {
    os::use uses[batch];
    size_t sizes[batch], bytes = 0;
    int n = 0;
    pooled *chain;
    {
      os::guard g(g_lock);
      chain = take_aged(before, &bytes, uses, sizes, &n, batch);
      g_bytes -= bytes;
    }
    // take_aged prepended: the chain runs in reverse order of the arrays.
    for (int i = n - 1; i >= 0; --i) {
      pooled *next = chain->next;
      os::unmap(chain, sizes[i], uses[i]);
      chain = next;
    }
    total += bytes;
    if (n < batch) return total;
  }
}

}  // namespace

slab *pool_take(size_t slab_size, os::use u, os::wait w) {
  int i = list_index(slab_size);
  if (i < 0 || !g_lock.acquire(w)) return nullptr;
  pool_list &l = list_for(u, i);
  pooled *p = l.head;
  if (p) {
    unlink(l, p);
    g_bytes -= slab_size;
    ++g_reused;
  }
  g_lock.release();
  return reinterpret_cast<slab *>(p);
}

bool pool_give(slab *s, size_t slab_size, os::use u, os::wait w) {
  int i = list_index(slab_size);
  if (i < 0 || os::opts().decay_ms == 0 || !g_lock.acquire(w)) return false;
  auto *p = reinterpret_cast<pooled *>(s);
  pool_list &l = list_for(u, i);
  p->since = os::coarse_now_ns();  // under the lock: the tail stays oldest
  p->prev = nullptr;
  p->next = l.head;
  (l.head ? l.head->prev : l.tail) = p;
  l.head = p;
  g_bytes += slab_size;
  g_lock.release();
  return true;
}

void decay_tick() {
  if (os::reentered()) return;  // a handler, or under a lock: the walk takes locks
  uint64_t now = os::coarse_now_ns(), due = g_next_tick.load(std::memory_order_relaxed);
  if (now < due) return;
  uint64_t delay = uint64_t{os::opts().decay_ms} * 1000000u;
  uint64_t step = delay / 4 > 1000000u ? delay / 4 : 1000000u;
  if (!g_next_tick.compare_exchange_strong(due, now + step, std::memory_order_relaxed)) return;  // another thread ticks
  trim_idle_zones(now, delay);
  size_t bytes = now >= delay ? unmap_aged(now - delay) : 0;
  os::guard g(g_lock);
  g_decayed += bytes;
}

size_t flush_pool() { return unmap_aged(UINT64_MAX); }

void pool_prefork() { g_lock.acquire(); }
void pool_postfork() { g_lock.release(); }

pool_stats pool_snapshot() {
  os::guard g(g_lock);
  return {g_bytes, g_reused, g_decayed};
}

}  // namespace sysref::slab
