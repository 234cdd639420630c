// C++ layer over the SYSREF and objcache C ABI: header-only, nothing here is
// compiled into libsysref (which stays free of the C++ runtime).
//
//   struct session : sysref::object<session> {   // embeds the struct sysref
//     static constexpr const char *sysref_name = "session";   // optional
//     std::string user;                           // constructed once
//     void on_terminate() noexcept { user.clear(); }          // optional
//   };
//   sysref::ref<session> s = sysref::make<session>();  // creating
//   s->user = "ann";
//   s.activate();                                  // findable by s.id()
//   sysref::ref<session> t = sysref::lookup<session>(id);  // empty if not
//
//   sysref::cache<buffer> c("buffers");            // objcache of buffers
//   sysref::cache<buffer>::handle b = c.get();     // objcache_put on scope exit
//
// Objects of both kinds are C++ objects constructed once, when the object
// cache makes them (T's constructor as the cache's ctor, ~T as its dtor),
// and handed out again and again: give them back in the state the
// constructor left them. A constructor that throws is a failed ctor
// (NULL/empty + errno); nothing ever unwinds through the library's C frames.
#ifndef SYSREF_SYSREF_HPP
#define SYSREF_SYSREF_HPP

#include <sysref/objcache.h>
#include <sysref/sysref.h>  // in C++ its declarations live in namespace sysref

#include <atomic>
#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <memory>
#include <new>
#include <type_traits>
#include <utility>
#if defined(__cpp_exceptions)
#include <exception>
#include <system_error>
#endif

namespace sysref {

template <class T> class ref;
template <class T> class object;

namespace detail {

// Runs T's constructor inside the cache's C ctor. Why an errno and not the
// exception: the library is C (and -fno-exceptions); an exception leaving
// this frame would unwind through it. bad_alloc is ENOMEM, a system_error
// of the generic or system category keeps its errno, anything else is
// ECANCELED.
template <class T> int construct(void *obj) noexcept {
#if defined(__cpp_exceptions)
  try {
    ::new (obj) T();
    return 0;
  } catch (const std::bad_alloc &) {
    return ENOMEM;
  } catch (const std::system_error &e) {
    const std::error_code &c = e.code();
    bool is_errno = c.category() == std::generic_category() || c.category() == std::system_category();
    return is_errno && c.value() > 0 ? c.value() : ECANCELED;
  } catch (...) {
    return ECANCELED;
  }
#else
  ::new (obj) T();
  return 0;
#endif
}

template <class T> int ctor(void *obj, void *, int) noexcept { return construct<T>(obj); }
template <class T> void dtor(void *obj, void *) noexcept { std::launder(static_cast<T *>(obj))->~T(); }

template <class T> void terminate(void *obj) noexcept {
  if constexpr (requires(T &t) { t.on_terminate(); })
    std::launder(static_cast<T *>(obj))->on_terminate();  // noexcept frame: throws end the program
}

template <class T> const char *class_name() noexcept {
  if constexpr (requires { T::sysref_name; })
    return T::sysref_name;
  else
    return "sysref::object";
}

// The offset of object<T> (and so of its struct sysref, its only member) in
// T. Why the made-up pointer: C++ offers no constant expression for a base
// class's offset; the derived-to-base conversion is a fixed adjustment for
// a non-virtual base, and no memory is touched.
template <class T> std::size_t header_offset() noexcept {
  T *fake = reinterpret_cast<T *>(std::uintptr_t{4096} * alignof(T));
  return static_cast<std::size_t>(reinterpret_cast<char *>(static_cast<object<T> *>(fake)) -
                                  reinterpret_cast<char *>(fake));
}

// T's class, made once (thread-safe: a function-local static).
template <class T> struct sysref_class *class_of() noexcept {
  static struct sysref_class cls{.name = class_name<T>(),
                                 .objsize = sizeof(T),
                                 .offset = header_offset<T>(),
                                 .ctor = &ctor<T>,
                                 .dtor = &dtor<T>,
                                 // none: the library skips the terminating state
                                 .terminate = requires(T &t) { t.on_terminate(); } ? &terminate<T> : nullptr,
                                 .priv = nullptr,
                                 .flags = 0,
                                 .sr_state = nullptr,
                                 .sr_reserved = {}};
  return &cls;
}

}  // namespace detail

// Base for a type that embeds a struct sysref: class T : public
// sysref::object<T> (public, non-virtual, best as the first base). T must be
// default-constructible; its constructor runs once per construction by the
// class's cache, not per make<T>. Optional members: static constexpr const
// char *sysref_name (the class name in stats and reports) and void
// on_terminate() noexcept (runs once when the last active reference goes:
// take the object out of your structures and reset it for reuse there).
template <class T> class object {
 public:
  // The object's sysid. Why it is not free: it marks the sysid seen, so
  // this object is destroyed, not recycled, once its references are gone.
  sysid_t id() noexcept { return sysref_sysid(&header_); }
  struct sysref *header() noexcept { return &header_; }
  static struct sysref_class *sysref_class_of() noexcept { return detail::class_of<T>(); }

 protected:
  // Leaves the header alone: the library fills it in after T's constructor.
  object() noexcept {}
  ~object() = default;
  // Identity objects: a copy would be a second object with the same header.
  object(const object &) = delete;
  object &operator=(const object &) = delete;

 private:
  struct sysref header_;
};

// An owning reference to an object of T: copy = sysref_get, destruction =
// sysref_put, move = no count traffic. Empty refs cost nothing.
template <class T> class ref {
  static_assert(std::is_base_of_v<object<T>, T>, "T must derive from sysref::object<T>");

 public:
  constexpr ref() noexcept = default;
  constexpr ref(std::nullptr_t) noexcept {}
  ref(const ref &o) noexcept : p_(o.p_) {
    if (p_) sysref_get(hdr(p_));
  }
  ref(ref &&o) noexcept : p_(std::exchange(o.p_, nullptr)) {}
  // By value: one body for copy and move assignment, safe on self-assignment.
  ref &operator=(ref o) noexcept {
    std::swap(p_, o.p_);
    return *this;
  }
  ~ref() { reset(); }

  // Takes over a reference the caller holds (from sysref_alloc, sysref_lookup, release()).
  [[nodiscard]] static ref adopt(T *p) noexcept {
    ref r;
    r.p_ = p;
    return r;
  }
  // A new reference on an object the caller already holds one on (or that is
  // creating or terminating, where temporary references are legal).
  [[nodiscard]] static ref share(T &o) noexcept {
    sysref_get(hdr(&o));
    return adopt(&o);
  }
  // A new reference only if the object is active (sysref_get_not_zero): for
  // pointers your structure keeps without a reference, under the lock that
  // on_terminate takes to remove them.
  [[nodiscard]] static ref share_if_active(T &o) noexcept {
    return sysref_get_not_zero(hdr(&o)) ? adopt(&o) : ref();
  }

  void reset() noexcept {
    if (T *p = std::exchange(p_, nullptr)) sysref_put(hdr(p));
  }
  // Gives up ownership without a put: the caller now holds the reference.
  [[nodiscard]] T *release() noexcept { return std::exchange(p_, nullptr); }

  T *get() const noexcept { return p_; }
  T &operator*() const noexcept { return *p_; }
  T *operator->() const noexcept { return p_; }
  explicit operator bool() const noexcept { return p_ != nullptr; }
  friend bool operator==(const ref &, const ref &) noexcept = default;

  // Creating -> active (once, on a ref from make<T>): findable from now on.
  void activate() const noexcept { sysref_activate(hdr(p_)); }
  sysid_t id() const noexcept { return p_->id(); }  // marks the sysid seen
  // Links this object to a parent it keeps a reference on until it is given back.
  template <class U> void set_parent(const ref<U> &parent) const noexcept {
    sysref_set_parent(hdr(p_), parent ? parent->header() : nullptr);
  }
  // The parent, if it is a U (else empty), with a reference of its own.
  template <class U> ref<U> parent() const noexcept {
    struct sysref *h = sysref_parent(hdr(p_));
    if (!h || h->srclass != detail::class_of<U>()) return {};
    sysref_get(h);  // the child's reference keeps it: a get is legal
    return ref<U>::adopt(std::launder(
        reinterpret_cast<U *>(reinterpret_cast<char *>(h) - detail::class_of<U>()->offset)));
  }

 private:
  static struct sysref *hdr(T *p) noexcept { return p->object<T>::header(); }
  T *p_ = nullptr;
};

// A new T in the creating state (not findable yet): set it up, then
// activate(). Dropping the ref before activate() aborts the creation and the
// object goes back to the cache (terminate does not run). Empty + errno on
// failure (ENOMEM, the constructor's error).
template <class T> [[nodiscard]] ref<T> make() noexcept {
  static_assert(std::is_base_of_v<object<T>, T>, "T must derive from sysref::object<T>");
  static_assert(alignof(T) <= alignof(struct sysref), "a class has no alignment: objects are 8-aligned");
  void *obj = sysref_alloc(detail::class_of<T>());
  return obj ? ref<T>::adopt(std::launder(static_cast<T *>(obj))) : ref<T>();
}

// The active T with that sysid, or empty: unknown, stale (never reused: a
// sysid that was seen is retired), not active yet or any more, or an
// object of another class (sysids of every class share one space).
template <class T> [[nodiscard]] ref<T> lookup(sysid_t id) noexcept {
  void *obj = sysref_lookup_class(detail::class_of<T>(), id);
  return obj ? ref<T>::adopt(std::launder(static_cast<T *>(obj))) : ref<T>();
}

// Calls fn(T &) on every active T in sysid order (sysref_foreach), a
// reference held during each call. fn returns void, or int: non-zero stops
// the walk and is returned. An exception from fn stops the walk, leaves the
// C frames by return, and is rethrown here. -1 + errno on error.
template <class T, class F> int for_each(F &&fn) {
  struct sysref_class *cls = detail::class_of<T>();
  struct state {
    explicit state(F &f) noexcept : fn(f) {}
    F &fn;
#if defined(__cpp_exceptions)
    std::exception_ptr error;
#endif
  } st(fn);
  auto visit = [](void *obj, void *arg) noexcept -> int {
    auto &s = *static_cast<state *>(arg);
    T &t = *std::launder(static_cast<T *>(obj));
#if defined(__cpp_exceptions)
    try {
#endif
      if constexpr (std::is_void_v<std::invoke_result_t<F &, T &>>) {
        s.fn(t);
        return 0;
      } else {
        return static_cast<int>(s.fn(t));
      }
#if defined(__cpp_exceptions)
    } catch (...) {
      s.error = std::current_exception();
      return -2;
    }
#endif
  };
  int r = sysref_foreach(cls, visit, &st);
#if defined(__cpp_exceptions)
  if (st.error) std::rethrow_exception(st.error);
#endif
  return r;
}

// T's class statistics (zero before the first make<T>).
template <class T> [[nodiscard]] struct sysref_stats stats() noexcept {
  struct sysref_stats st{};
  sysref_stats(detail::class_of<T>(), &st);
  return st;
}

// A typed object cache: an objcache of T whose ctor is T's default
// constructor and whose dtor is ~T. get() hands out a unique handle that
// gives the object back (objcache_put) when it goes: put it back in its
// constructed state, or discard() it. Every handle must be gone before the
// cache is.
template <class T> class cache {
 public:
  struct putter {
    objcache_t *oc;
    void operator()(T *p) const noexcept { objcache_put(oc, p); }
  };
  using handle = std::unique_ptr<T, putter>;

  // limit 0 = unlimited. If objcache_create fails the cache is empty
  // (operator bool false, errno set) and every get() fails with EINVAL.
  explicit cache(const char *name, std::size_t limit = 0) noexcept
      : oc_(objcache_create(name, sizeof(T), alignof(T), &detail::ctor<T>, &detail::dtor<T>, nullptr,
                            limit, 0)) {}
  ~cache() {
    if (oc_) objcache_destroy(oc_);
  }
  // One owner of the objcache: not copyable; a move hands it over.
  cache(const cache &) = delete;
  cache &operator=(const cache &) = delete;
  cache(cache &&o) noexcept : oc_(std::exchange(o.oc_, nullptr)) {}
  cache &operator=(cache &&o) noexcept {
    std::swap(oc_, o.oc_);
    return *this;
  }
  explicit operator bool() const noexcept { return oc_ != nullptr; }

  // A constructed T, or an empty handle + errno (ENOMEM, the constructor's error).
  [[nodiscard]] handle get(int flags = SR_WAITOK) noexcept {
    if (!oc_) {
      errno = EINVAL;
      return handle(nullptr, putter{oc_});
    }
    void *p = objcache_get(oc_, flags);
    return handle(p ? std::launder(static_cast<T *>(p)) : nullptr, putter{oc_});
  }
  // The object is not in its constructed state: destroy it (~T) instead.
  void discard(handle h) noexcept {
    if (T *p = h.release()) objcache_dtor(oc_, p);
  }
  std::size_t reclaim() noexcept { return oc_ ? objcache_reclaim(oc_) : 0; }
  [[nodiscard]] struct objcache_stats stats() const noexcept {
    struct objcache_stats st{};
    if (oc_) objcache_stats(oc_, &st);
    return st;
  }
  objcache_t *native() const noexcept { return oc_; }

 private:
  objcache_t *oc_;
};

}  // namespace sysref

#endif
