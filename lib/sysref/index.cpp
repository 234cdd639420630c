// The sysid index: red-black trees sharded by the low bits of the sysid,
// each behind its own lock, with the tree nodes inside the objects (an
// insert allocates nothing).
//
// Why plain locks and not a reader scheme (seqlock, epochs): a lookup must
// take its reference while the object cannot be destroyed, and the shard
// lock is what keeps the dtor (index_remove) out; the lock word shares a
// cache line with the root, which the lookup reads anyway. With 1024 shards
// two threads meet on one lock once in a thousand lookups.
//
// Why a hint table in front of the trees: with 10^6 objects a tree is ten
// levels deep, and each level is another object, far away in memory: ten
// dependent cache misses per lookup (measured: 0.9-1.5 us on the 2-vCPU
// VM). Sysids are handed out densely, so a direct-mapped table of 2^20
// pointers, indexed by the low bits of the sysid, names most live objects
// outright: one miss for the slot, one for the object. The low bits of a
// slot's index are its shard's, so each slot is read and written only
// under that shard's lock, like the tree. A slot holds the object most
// recently constructed with those low bits; when it names another sysid
// the lookup walks the tree. The table is 8 MiB of address space, mapped
// when the first class is made; its pages become resident as sysids reach
// them. Without it (the mapping refused) lookups use the trees alone.
//
// Sysids come from one counter in blocks of 64 per thread, so consecutive
// constructions by one thread land in consecutive shards and threads do not
// share the counter's cache line per construction.
#include <algorithm>
#include <cerrno>
#include <cstddef>

#include "object.hpp"

namespace sysref::objects {
namespace {

inline constexpr unsigned shard_bits = 10;
inline constexpr unsigned nshards = 1u << shard_bits;
inline constexpr uint64_t sysid_block = 64;
inline constexpr unsigned hint_bits = 20;
inline constexpr size_t hint_bytes = (size_t{1} << hint_bits) * sizeof(void *);
static_assert(hint_bits >= shard_bits, "a hint slot must belong to one shard");

struct key_of {
  uint64_t operator()(const rb::node *n) const;
};
using tree = rb::tree<key_of>;

struct alignas(64) shard {
  os::lock lock;
  tree t;
};

constinit shard g_shards[nshards];
constinit std::atomic<uint64_t> g_next_sysid{1};  // 0 is never a sysid
constinit std::atomic<struct sysref **> g_hints{nullptr};
constinit thread_local uint64_t t_next [[gnu::tls_model("initial-exec")]] = 0;
constinit thread_local uint64_t t_end [[gnu::tls_model("initial-exec")]] = 0;

static_assert(sizeof(rb::node) == sizeof(((struct sysref *)nullptr)->node));

struct sysref *sysref_of(const rb::node *n) {
  return reinterpret_cast<struct sysref *>(reinterpret_cast<uintptr_t>(n) - offsetof(struct sysref, node));
}
rb::node *node_of(struct sysref *sr) { return reinterpret_cast<rb::node *>(sr->node); }

shard &shard_of(sysid_t id) { return g_shards[id & (nshards - 1)]; }
struct sysref **hint_slot(struct sysref **hints, sysid_t id) { return &hints[id & ((size_t{1} << hint_bits) - 1)]; }

// Within sh (locked): the first object of cls with a sysid >= from that is
// active now, or NULL.
struct sysref *first_active(shard &sh, const sysref_class *cls, sysid_t from) {
  for (rb::node *n = sh.t.lower_bound(from); n; n = tree::next(n)) {
    struct sysref *sr = sysref_of(n);
    if (sr->srclass == cls && count(sr).load(std::memory_order_relaxed) > 0) return sr;
  }
  return nullptr;
}

}  // namespace

uint64_t key_of::operator()(const rb::node *n) const { return sysref_of(n)->sysid; }

sysid_t new_sysid() {
  if (__builtin_expect(t_next == t_end, 0)) {
    t_next = g_next_sysid.fetch_add(sysid_block, std::memory_order_relaxed);
    t_end = t_next + sysid_block;
  }
  return t_next++;
}

void index_prepare() {
  if (g_hints.load(std::memory_order_acquire)) return;
  void *m = os::map(hint_bytes, os::page_size(), os::use::metadata);
  struct sysref **expect = nullptr;
  if (m && !g_hints.compare_exchange_strong(expect, static_cast<struct sysref **>(m), std::memory_order_acq_rel))
    os::unmap(m, hint_bytes, os::use::metadata);
}

void index_insert(struct sysref *sr) {
  shard &sh = shard_of(sr->sysid);
  struct sysref **hints = g_hints.load(std::memory_order_acquire);
  os::guard g(sh.lock);
  sh.t.insert(node_of(sr));
  if (hints) *hint_slot(hints, sr->sysid) = sr;
}

void index_remove(struct sysref *sr) {
  shard &sh = shard_of(sr->sysid);
  struct sysref **hints = g_hints.load(std::memory_order_acquire);
  os::guard g(sh.lock);
  sh.t.erase(node_of(sr));
  if (hints && *hint_slot(hints, sr->sysid) == sr) *hint_slot(hints, sr->sysid) = nullptr;
}

struct sysref *index_lookup(sysid_t id, const sysref_class *only) {
  shard &sh = shard_of(id);
  struct sysref **hints = g_hints.load(std::memory_order_acquire);
  sh.lock.acquire();
  struct sysref *sr = hints ? *hint_slot(hints, id) : nullptr;
  if (!sr || sr->sysid != id) {
    rb::node *n = sh.t.find(id);
    sr = n ? sysref_of(n) : nullptr;
  }
  if (sr && only && sr->srclass != only) sr = nullptr;
  bool taken = sr && take_for_lookup(sr);
  // Without a reference the object may be gone once unlocked; its class
  // stays (classes are never destroyed).
  class_state *st = sr ? state_of(sr->srclass) : nullptr;
  sh.lock.release();
  if (!st) {
    count_unknown_lookup();
    return nullptr;
  }
  count_event(st, c_lookups);
  if (!taken) count_event(st, c_misses);
  return taken ? sr : nullptr;
}

void index_prefork() {
  for (shard &sh : g_shards) sh.lock.acquire();
}

void index_postfork() {
  for (shard &sh : g_shards) sh.lock.release();
}

// A k-way merge of the shards in sysid order. The heap holds, per shard, a
// lower bound of its next sysid to visit; no node pointer is kept while no
// lock is held, so objects may come and go between steps. The smallest
// bound is searched for its first active object: if that lies beyond the
// next bound in the heap it goes back with the better bound, otherwise it
// is visited with a reference taken under the shard lock.
int index_foreach(class_state *st, int (*fn)(void *obj, void *arg), void *arg) {
  struct cursor {
    sysid_t from;
    unsigned shard;
  };
  auto later = [](const cursor &a, const cursor &b) { return a.from > b.from; };
  cursor heap[nshards];
  unsigned n = 0;
  for (unsigned s = 0; s < nshards; ++s) heap[n++] = cursor{0, s};
  std::make_heap(heap, heap + n, later);
  while (n) {
    std::pop_heap(heap, heap + n, later);
    cursor c = heap[n - 1];
    shard &sh = g_shards[c.shard];
    struct sysref *sr = nullptr;
    sysid_t id = 0;  // sr's: without a reference, sr may be gone once unlocked
    bool visit = false;
    sh.lock.acquire();
    for (sysid_t from = c.from;;) {
      sr = first_active(sh, st->cls, from);
      if (!sr) break;
      id = sr->sysid;
      if (n > 1 && id > heap[0].from) break;  // another shard comes first
      if ((visit = get_not_zero(sr))) break;
      from = id + 1;  // went inactive just now
    }
    sh.lock.release();
    if (!sr) {
      --n;  // this shard has nothing more
      continue;
    }
    heap[n - 1] = cursor{visit ? id + 1 : id, c.shard};
    std::push_heap(heap, heap + n, later);
    if (!visit) continue;
    int r = fn(object_of(sr), arg);
    put(sr);
    if (r) return r;
  }
  return 0;
}

}  // namespace sysref::objects
