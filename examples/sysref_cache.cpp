// The C++ layer (<sysref/sysref.hpp>): sessions that embed a sysref, held
// by sysref::ref<session>, found again by sysid with sysref::lookup, and a
// typed object cache of buffers.
//
// It shows what the wrappers promise: a copied ref is one more reference
// and a moved one is the same reference; a lookup of a stale sysid, or of a
// sysid of another type, comes back empty (and leaves nothing held); a
// session or buffer is constructed once and handed out again and again; a
// constructor that throws is a failed make/get with an errno, never an
// exception through the C library. Exits 0 only if every check held.
#include <sysref/sysref.hpp>

#include <cerrno>
#include <cstdio>
#include <new>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

namespace {

struct session : sysref::object<session> {
  static constexpr const char *sysref_name = "session";
  static inline long constructed, destroyed, terminated;

  std::string user;
  long requests = 0;

  session() {
    user.reserve(64);  // done once per construction, not once per make
    ++constructed;
  }
  ~session() { ++destroyed; }
  // The last active reference went: back to the constructed state.
  void on_terminate() noexcept {
    user.clear();
    requests = 0;
    ++terminated;
  }
};

// Another type: its sysids must not pass for sessions.
struct printer : sysref::object<printer> {
  static constexpr const char *sysref_name = "printer";
  static inline long terminated;
  std::string model;
  void on_terminate() noexcept { ++terminated; }
};

// A type whose constructor may throw.
struct fragile : sysref::object<fragile> {
  static constexpr const char *sysref_name = "fragile";
  static inline bool fail_next;
  fragile() {
    if (std::exchange(fail_next, false)) throw std::runtime_error("no device");
  }
};

// Not a sysref type: a plain object in a sysref::cache.
struct buffer {
  static inline long constructed, destroyed;
  static inline bool fail_next;
  std::vector<char> bytes;
  buffer() {
    if (std::exchange(fail_next, false)) throw std::bad_alloc();
    bytes.reserve(4096);
    ++constructed;
  }
  ~buffer() { ++destroyed; }
};

int failures;

bool check(bool ok, const char *what) {
  std::printf("%-66s %s\n", what, ok ? "ok" : "FAILED");
  failures += !ok;
  return ok;
}

// A new active session for user.
sysref::ref<session> open_session(const char *user) {
  sysref::ref<session> s = sysref::make<session>();
  if (s) {
    s->user = user;
    s.activate();
  }
  return s;  // moved out: no count traffic
}

void refs() {
  std::printf("-- ref<T>: copy, move, lookup\n");
  sysref::ref<session> s = open_session("ann");
  if (!check(bool(s), "make<session>() gives a session"))
    return;
  sysid_t id = s.id();
  std::printf("session of %s has sysid %llu\n", s->user.c_str(), static_cast<unsigned long long>(id));

  sysref::ref<session> copy = s;  // sysref_get
  check(copy == s, "a copy refers to the same session");
  s.reset();
  check(session::terminated == 0, "dropping the original: the copy keeps it active");
  sysref::ref<session> found = sysref::lookup<session>(id);
  check(found && found->user == "ann", "lookup<session>(its sysid) finds it");
  found->requests++;

  sysref::ref<session> moved = std::move(copy);  // no count traffic
  check(!copy && moved == found, "a move leaves the source empty");
  sysref::ref<session> &alias = moved;
  moved = alias;  // self-assignment changes nothing
  found.reset();
  check(session::terminated == 0 && moved->requests == 1, "one reference left: the moved one");
  moved.reset();
  check(session::terminated == 1, "dropping the moved ref was the last put: terminated");
  check(!sysref::lookup<session>(id), "lookup of the stale sysid: empty");
  check(session::destroyed == 1, "its sysid was seen: destroyed, not cached");

  // A sysid of another type: refused, and its reference given back.
  sysref::ref<printer> p = sysref::make<printer>();
  if (!check(bool(p), "make<printer>() gives a printer"))
    return;
  p->model = "lp0";
  p.activate();
  check(!sysref::lookup<session>(p.id()), "lookup<session>(a printer's sysid): empty");
  check(bool(sysref::lookup<printer>(p.id())), "lookup<printer>(the same sysid) finds it");
  p.reset();
  check(printer::terminated == 1, "the refused lookup held nothing: the printer terminated");

  // Parent links: a printer that keeps its session alive.
  sysref::ref<session> owner = open_session("bob");
  sysref::ref<printer> lp = sysref::make<printer>();
  if (!owner || !lp)
    return;
  lp.set_parent(owner);
  lp.activate();
  sysref::ref<session> back = lp.parent<session>();
  check(back == owner && !lp.parent<printer>(), "parent<session>() of the printer is its owner");
  back.reset();
  long before = session::terminated;
  owner.reset();
  check(session::terminated == before, "the printer holds its owner");
  lp.reset();
  check(session::terminated == before + 1, "the printer gone, the owner goes too");

  // share_if_active: a reference only on an active object.
  sysref::ref<session> pending = sysref::make<session>();
  if (!pending)
    return;
  check(!sysref::ref<session>::share_if_active(*pending), "share_if_active on a creating session: empty");
  pending.activate();
  check(bool(sysref::ref<session>::share_if_active(*pending)), "share_if_active on an active one: a ref");
}

void reuse() {
  std::printf("-- constructed once, handed out again\n");
  long built = session::constructed, bad = 0;
  constexpr int rounds = 10000, batch = 8;
  for (int r = 0; r < rounds / batch; ++r) {
    sysref::ref<session> held[batch];
    for (auto &h : held) {
      h = sysref::make<session>();
      if (!h || !h->user.empty() || h->requests != 0 || h->user.capacity() < 64)
        ++bad;  // not as the constructor (or on_terminate) left it
      if (h) {
        h->user = "worker";
        h.activate();
      }
    }
  }  // every ref dropped: terminate, back to the cache with its sysid
  struct sysref_stats st = sysref::stats<session>();
  std::printf("%d sessions made, %ld constructed; class: allocs %llu, constructions %llu, "
              "retired %llu, cached %llu\n",
              rounds, session::constructed - built, static_cast<unsigned long long>(st.allocs),
              static_cast<unsigned long long>(st.constructions), static_cast<unsigned long long>(st.retired),
              static_cast<unsigned long long>(st.cached));
  check(bad == 0, "every session came back in its constructed state");
  check((session::constructed - built) * 10 < rounds, "constructions far below makes (sysids unseen)");

  // for_each: every active session, in sysid order.
  sysref::ref<session> a = open_session("cy"), b = open_session("di");
  int seen = 0;
  sysref::for_each<session>([&](session &s) { seen += s.user == "cy" || s.user == "di"; });
  check(seen == 2, "for_each<session> visits both active sessions");
  int first = sysref::for_each<session>([](session &) { return 7; });
  check(first == 7, "for_each stops at the first non-zero return");
  bool caught = false;
  try {
    sysref::for_each<session>([](session &) { throw std::runtime_error("stop"); });
  } catch (const std::runtime_error &) {
    caught = true;
  }
  check(caught && a && b, "an exception from fn comes out of for_each, after the C walk");
}

void throwing_constructors() {
  std::printf("-- a constructor that throws\n");
  fragile::fail_next = true;
  errno = 0;
  sysref::ref<fragile> f = sysref::make<fragile>();
  int error = errno;
  check(!f && error == ECANCELED, "make<fragile>() with a throwing constructor: empty, ECANCELED");
  f = sysref::make<fragile>();
  check(bool(f), "the next make<fragile>() constructs");
}

void buffers() {
  std::printf("-- cache<T>: a typed object cache\n");
  {
    sysref::cache<buffer> cache("buffers");
    if (!check(bool(cache), "cache<buffer> made"))
      return;
    constexpr int rounds = 1000, batch = 50;
    long bad = 0, bytes = 0;
    for (int r = 0; r < rounds; ++r) {
      std::vector<sysref::cache<buffer>::handle> held;
      held.reserve(batch);
      for (int i = 0; i < batch; ++i) {
        sysref::cache<buffer>::handle b = cache.get();
        if (!b || !b->bytes.empty() || b->bytes.capacity() < 4096) {
          ++bad;
          continue;
        }
        b->bytes.assign(static_cast<std::size_t>(i + r % 7), 'x');
        bytes += static_cast<long>(b->bytes.size());
        held.push_back(std::move(b));
      }
      for (auto &b : held)
        b->bytes.clear();  // back to the constructed state before the put
    }  // the handles put every buffer back
    std::printf("%d gets, %ld bytes written, %ld buffers constructed\n", rounds * batch, bytes,
                buffer::constructed);
    check(bad == 0, "every buffer came back constructed (empty, capacity kept)");
    check(buffer::constructed * 10 < rounds * batch, "constructions far below gets");

    // Empty the cache, so that the next get has to construct.
    long before = buffer::destroyed;
    std::size_t given = cache.reclaim();
    std::printf("reclaim gave back %zu bytes, %ld buffers destructed\n", given, buffer::destroyed - before);
    buffer::fail_next = true;
    errno = 0;
    sysref::cache<buffer>::handle none = cache.get();
    int error = errno;
    check(!none && error == ENOMEM, "a constructor that throws bad_alloc: empty handle, ENOMEM");

    sysref::cache<buffer>::handle spoilt = cache.get();
    if (spoilt) {
      spoilt->bytes.shrink_to_fit();  // no longer as constructed: destroy it
      long gone = buffer::destroyed;
      cache.discard(std::move(spoilt));
      check(buffer::destroyed == gone + 1, "discard() destroys instead of caching");
    }
    struct objcache_stats st = cache.stats();
    std::printf("objcache: gets %llu puts %llu live %llu cached %llu ctor_calls %llu "
                "(failed %llu) dtor_calls %llu\n",
                static_cast<unsigned long long>(st.gets), static_cast<unsigned long long>(st.puts),
                static_cast<unsigned long long>(st.live), static_cast<unsigned long long>(st.cached),
                static_cast<unsigned long long>(st.ctor_calls),
                static_cast<unsigned long long>(st.ctor_failures),
                static_cast<unsigned long long>(st.dtor_calls));
    check(st.live == 0 && st.ctor_failures == 1, "nothing live, one failed construction");
  }  // the cache goes: every cached buffer destructed
  check(buffer::destroyed == buffer::constructed, "after the cache: every buffer destructed");
}

}  // namespace

int main() {
  refs();
  reuse();
  throwing_constructors();
  buffers();
  std::printf("%s\n", failures ? "FAILED" : "every check held");
  return failures ? 1 : 0;
}
