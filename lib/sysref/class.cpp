// SYSREF classes: the state behind a static struct sysref_class, made on
// first use; the objcache ctor/dtor that give and take sysids; statistics.
#include <cerrno>
#include <cstring>

#include "object.hpp"

namespace sysref::objects {
namespace {

constinit slab::lazy_zone g_states{{}, "sysref.classes", sizeof(class_state), 64};
constinit os::lock g_classes_lock;  // the registry; making a class
constinit class_state *g_first = nullptr, *g_last = nullptr;
constinit std::atomic<long> g_unknown_slot{-1};  // per-CPU: lookups, misses of unknown sysids

// objcache ctor: the class's ctor first (it may initialise the whole
// object), then the sysid, then the index.
int construct(void *obj, void *priv, int flags) {
  auto *st = static_cast<class_state *>(priv);
  sysref_class *cls = st->cls;
  if (cls->ctor)
    if (int err = cls->ctor(obj, cls->priv, flags)) return err;
  struct sysref *sr = sysref_at(obj, cls);
  sr->state = 0;
  sr->srclass = cls;
  sr->parent = nullptr;
  sr->sysid = new_sysid();
  count(sr).store(cached, std::memory_order_relaxed);
  index_insert(sr);
  st->constructions.fetch_add(1, std::memory_order_relaxed);
  return 0;
}

// objcache dtor: out of the index (no lookup can reach it afterwards),
// then the class's dtor.
void destruct(void *obj, void *priv) {
  auto *st = static_cast<class_state *>(priv);
  index_remove(sysref_at(obj, st->cls));
  st->destructions.fetch_add(1, std::memory_order_relaxed);
  if (st->cls->dtor) st->cls->dtor(obj, st->cls->priv);
}

const char *invalid(const sysref_class *cls) {
  if (!cls->name || !*cls->name) return "the class has no name";
  if (cls->objsize == 0) return "objsize is 0";
  if (cls->offset % alignof(struct sysref)) return "offset is not a multiple of 8";
  if (cls->offset > cls->objsize || cls->objsize - cls->offset < sizeof(struct sysref))
    return "the struct sysref at offset does not fit in objsize";
  if (cls->flags) return "unknown flags";
  return nullptr;
}

void complain(const char *fn, const sysref_class *cls, const char *why) {
  const char *parts[] = {"sysref: ", fn, ": class ", cls && cls->name ? cls->name : "(unnamed)", ": ", why, "\n"};
  char buf[256];
  size_t n = 0;
  for (const char *p : parts)
    for (; *p && n < sizeof buf - 1; ++p) buf[n++] = *p;
  buf[n] = 0;
  os::write_stderr(buf);
}

long unknown_slot() {
  long s = g_unknown_slot.load(std::memory_order_acquire);
  if (s >= 0) return s;
  os::guard g(g_classes_lock);
  s = g_unknown_slot.load(std::memory_order_relaxed);
  if (s < 0 && (s = percpu::slot_alloc()) >= 0) g_unknown_slot.store(s, std::memory_order_release);
  return s;
}

size_t counter_offset(size_t slot, unsigned i) { return slot + percpu::payload_offset + 8 * i; }

int64_t difference(uint64_t a, uint64_t b) { return static_cast<int64_t>(a - b); }

void add_class(const class_state *st, struct sysref_stats *out) {
  uint64_t c[n_counters];
  for (unsigned i = 0; i < n_counters; ++i) c[i] = counter_sum(st, static_cast<counter>(i));
  // The sums are read one CPU word at a time while others count: clamp.
  auto at_least_0 = [](int64_t v) { return v > 0 ? static_cast<uint64_t>(v) : 0; };
  uint64_t creating = at_least_0(difference(c[c_allocs], c[c_activations] + c[c_aborts]));
  uint64_t active = at_least_0(difference(c[c_activations], c[c_terminations]));
  uint64_t terminating = at_least_0(difference(c[c_terminations], c[c_releases]));
  struct objcache_stats oc{};
  objcache::stats(st->cache, &oc);
  out->creating += creating;
  out->active += active;
  out->terminating += terminating;
  out->live += creating + active + terminating;
  out->cached += oc.cached;
  out->allocs += c[c_allocs];
  out->lookups += c[c_lookups];
  out->lookup_misses += c[c_misses];
  out->retired += st->retired.load(std::memory_order_relaxed);
  out->constructions += st->constructions.load(std::memory_order_relaxed);
  out->destructions += st->destructions.load(std::memory_order_relaxed);
}

}  // namespace

bool check_class(const char *fn, const sysref_class *cls) {
  const char *why = cls ? invalid(cls) : "NULL";
  if (why) complain(fn, cls, why);
  return !why;
}

class_state *ensure_state(sysref_class *cls) {
  if (!check_class("sysref_alloc", cls)) {
    errno = EINVAL;
    return nullptr;
  }
  if (unknown_slot() < 0) return nullptr;
  index_prepare();
  os::guard g(g_classes_lock);
  if (class_state *st = state_of(cls)) return st;  // made meanwhile
  slab::zone *z = g_states.get();
  auto *st = z ? static_cast<class_state *>(slab::alloc(z, 0)) : nullptr;
  if (!st) return nullptr;
  std::memset(static_cast<void *>(st), 0, sizeof *st);
  st->cls = cls;
  long slot = percpu::slot_alloc();
  st->cache = slot < 0 ? nullptr
                       : objcache::create({cls->name, cls->objsize, alignof(struct sysref), construct, destruct, st, 0, false});
  if (!st->cache) {
    int err = errno;
    if (slot >= 0) percpu::slot_free(static_cast<size_t>(slot));
    slab::free(z, st);
    errno = err;
    return nullptr;
  }
  st->counters = static_cast<size_t>(slot);
  std::atomic_ref<class_state *>(g_last ? g_last->next : g_first).store(st, std::memory_order_release);
  g_last = st;
  std::atomic_ref<void *>(cls->sr_state).store(st, std::memory_order_release);
  return st;
}

void count_event(const class_state *st, counter c) { percpu::add(counter_offset(st->counters, c), 1); }
uint64_t counter_sum(const class_state *st, counter c) { return percpu::sum(counter_offset(st->counters, c)); }

void count_unknown_lookup() {
  long s = unknown_slot();
  if (s < 0) return;
  percpu::add(counter_offset(static_cast<size_t>(s), 0), 1);
}

uint64_t unknown_lookups() {
  long s = g_unknown_slot.load(std::memory_order_acquire);
  return s < 0 ? 0 : percpu::sum(counter_offset(static_cast<size_t>(s), 0));
}

int for_each_class(int (*fn)(sysref_class *cls, void *arg), void *arg) {
  // Classes are never removed: the list can be walked without the lock
  // once its head was read under it.
  class_state *st;
  {
    os::guard g(g_classes_lock);
    st = g_first;
  }
  for (; st; st = std::atomic_ref<class_state *>(st->next).load(std::memory_order_acquire))
    if (int r = fn(st->cls, arg)) return r;
  return 0;
}

void prefork() {
  g_classes_lock.acquire();
  index_prefork();
}

void postfork_parent() {
  index_postfork();
  g_classes_lock.release();
}

void postfork_child() { postfork_parent(); }

int stats(sysref_class *cls, struct sysref_stats *out) {
  if (!out) return -EINVAL;
  *out = {};
  if (cls) {
    if (const class_state *st = state_of(cls)) add_class(st, out);
    return 0;
  }
  for_each_class([](sysref_class *c, void *o) { return add_class(state_of(c), static_cast<struct sysref_stats *>(o)), 0; }, out);
  uint64_t unknown = unknown_lookups();
  out->lookups += unknown;
  out->lookup_misses += unknown;
  return 0;
}

}  // namespace sysref::objects
