// Size classes: the table's invariants, checked at compile time, and the
// lazy, thread-safe creation of each class's objcache.
#include "size_class.hpp"

#include <cerrno>

#include "../os/os.hpp"

namespace sysref::kmalloc {

constinit size_class g_classes[num_classes] = {};
constinit std::atomic<uintptr_t> g_small_words[small_table.size()] = {};

namespace {

// Every size maps to the smallest class that holds it, and no class wastes
// more than 1/8 above 128 bytes: the promise made in kmalloc(3).
constexpr bool table_is_sound() {
  if (class_size_of(num_classes - 1) != max_small) return false;
  for (size_t s = 1; s <= max_small; ++s) {
    unsigned i = class_index_arith(s);
    if (i >= num_classes || class_size_of(i) < s) return false;
    if (i > 0 && class_size_of(i - 1) >= s) return false;
    if (s > 128 && class_size_of(i) * 8 > s * 9) return false;
  }
  for (unsigned i = 0; i < num_classes; ++i)
    if (class_size_of(i) % 16 != 0) return false;  // what the table relies on
  return true;
}
static_assert(table_is_sound());

// One lock for all creations: they happen once per class, and a lock lets a
// losing thread wait instead of building a cache it would have to destroy.
constinit os::lock g_create;

// "kmalloc-<size>" without snprintf (nothing here may allocate).
void format_name(char *out, size_t cap, size_t size) {
  const char prefix[] = "kmalloc-";
  size_t n = 0;
  for (const char *p = prefix; *p && n + 1 < cap; ++p) out[n++] = *p;
  char digits[24];
  size_t d = 0;
  do {
    digits[d++] = static_cast<char>('0' + size % 10);
    size /= 10;
  } while (size);
  while (d && n + 1 < cap) out[n++] = digits[--d];
  out[n] = '\0';
}

// The double-free key, one per process, made with the first class (before
// any block exists) and never changed. Even: the slab layer's free markers
// are odd (its secrets come from os::random_seed, which sets bit 0, and
// objects are 16-byte aligned), so the two marks never meet. Bit 63 set: key
// ^ address is never 0 (a fresh block's word 1) nor a user-space address.
uint64_t free_key() {
  static constinit uint64_t key = 0;  // under g_create
  if (!key) key = (os::random_seed() & ~uint64_t{15}) | (uint64_t{1} << 63);
  return key;
}

}  // namespace

void prefork_classes() { g_create.acquire(); }
void postfork_classes() { g_create.release(); }

objcache::cache *create_class(unsigned index, int flags) {
  size_class &c = g_classes[index];
  // Making a class takes the registry and zone locks, waiting for them: not
  // from a handler that interrupted library code holding one (SR_NOWAIT).
  if ((flags & SR_NOWAIT) && os::reentered()) {
    errno = ENOMEM;
    return nullptr;
  }
  // SR_NOWAIT never waits for another thread making a class: it fails.
  if (!g_create.acquire(flags & SR_NOWAIT ? os::wait::no : os::wait::yes)) {
    errno = ENOMEM;
    return nullptr;
  }
  struct unlock {
    ~unlock() { g_create.release(); }
  } release_at_return;
  if (objcache::cache *existing = c.cache.load(std::memory_order_relaxed)) return existing;
  const size_t size = class_size_of(index), page = os::page_size();
  // Power-of-two classes are naturally aligned (up to a page): aligned
  // requests are served from them.
  const size_t align = (size & (size - 1)) == 0 ? (size < page ? size : page) : 16;
  format_name(c.name, sizeof c.name, size);
  objcache::params p{};
  p.name = c.name;
  p.size = size;
  p.align = align;
  p.internal = true;
  objcache::cache *oc = objcache::create(p);
  if (!oc) return nullptr;  // errno from create; the next allocation retries
  c.size = static_cast<uint32_t>(size);
  c.align = static_cast<uint32_t>(align);
  c.zone = objcache::zone_of(oc);
  // The fast word: malloc's by size (the pop needs no line of the class or
  // of its cache), free's in the zone's first line, where free finds it from
  // any of the class's pointers (page map -> zone) beside the tag, cache
  // and key and the zone's own (odd) free marker secret. The pop and push it
  // leads to find a magazine only where a get of this cache (through
  // c.cache) loaded one: the word needs no ordering.
  uintptr_t word = objcache::fast_word_of(oc);
  slab::set_tag(c.zone, static_cast<uint16_t>(index + 1), oc, free_key(), word);
  c.cache.store(oc, std::memory_order_release);
  c.fast_word.store(word, std::memory_order_relaxed);
  for (size_t step = 0; step < small_table.size(); ++step)
    if (small_table[step] == index) g_small_words[step].store(word, std::memory_order_relaxed);
  return oc;
}

}  // namespace sysref::kmalloc
