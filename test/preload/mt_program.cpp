// A multi-threaded program of our own for the preload tests: run bare and
// under libsysref-preload.so, it must print the same and exit 0. It does not
// link libsysref; everything it allocates goes through whichever malloc the
// process has. Covers: cross-thread frees (producer/consumer), realloc
// growth, the aligned family, every operator new/delete form, the failure
// paths (ENOMEM, EINVAL, bad_alloc, the new-handler), thread exit with TLS
// destructors that free, fork while other threads allocate, and pointers
// from the C library's own malloc freed through the ordinary free.
//
// Usage: mt_program [path/to/deepbind-lib.so]
#include <dlfcn.h>
#include <malloc.h>
#include <pthread.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <mutex>
#include <new>
#include <string>
#include <thread>
#include <vector>

namespace {

int failures = 0;

#define CHECK(cond)                                                                       \
  do {                                                                                    \
    if (!(cond)) {                                                                        \
      std::fprintf(stderr, "mt_program: %s:%d: check failed: %s\n", __FILE__, __LINE__, \
                   #cond);                                                                \
      ++failures;                                                                         \
    }                                                                                     \
  } while (0)

// Reads the address only (GCC -O0 would warn that it reads *p, uninitialized).
[[gnu::access(none, 1)]] bool aligned_to(const void *p, size_t a) {
  return (reinterpret_cast<uintptr_t>(p) & (a - 1)) == 0;
}

void fill(void *p, size_t n, unsigned seed) {
  auto *b = static_cast<unsigned char *>(p);
  for (size_t i = 0; i < n; ++i) b[i] = static_cast<unsigned char>(seed + i * 31);
}

bool verify(const void *p, size_t n, unsigned seed) {
  auto *b = static_cast<const unsigned char *>(p);
  for (size_t i = 0; i < n; ++i)
    if (b[i] != static_cast<unsigned char>(seed + i * 31)) return false;
  return true;
}

// Sizes the compiler cannot see through (no -Walloc-size-larger-than).
size_t opaque(size_t n) {
  volatile size_t v = n;
  return v;
}

// ---- the C family, its corner cases ------------------------------------------
void basics() {
  void *p = std::malloc(100);
  CHECK(p && aligned_to(p, alignof(std::max_align_t)));
  fill(p, 100, 1);
  CHECK(malloc_usable_size(p) >= 100);
  fill(p, malloc_usable_size(p), 2);  // the whole usable size is ours to write
  CHECK(verify(p, malloc_usable_size(p), 2));
  errno = EEXIST;
  std::free(p);
  CHECK(errno == EEXIST);  // free preserves errno
  std::free(nullptr);
  CHECK(malloc_usable_size(nullptr) == 0);

  auto *z = static_cast<unsigned char *>(std::calloc(1000, 7));
  CHECK(z);
  bool zero = true;
  for (size_t i = 0; i < 7000; ++i) zero = zero && z[i] == 0;
  CHECK(zero);
  std::free(z);
  // Reuse: a block that was dirty must come back zeroed from calloc.
  for (int round = 0; round < 50; ++round) {
    auto *d = static_cast<unsigned char *>(std::malloc(4096));
    std::memset(d, 0xff, 4096);
    std::free(d);
    auto *c = static_cast<unsigned char *>(std::calloc(4096, 1));
    for (size_t i = 0; i < 4096; ++i) zero = zero && c[i] == 0;
    std::free(c);
  }
  CHECK(zero);

  errno = 0;
  CHECK(std::malloc(opaque(SIZE_MAX - 4096)) == nullptr && errno == ENOMEM);
  errno = 0;
  CHECK(std::calloc(opaque(SIZE_MAX / 2), 3) == nullptr && errno == ENOMEM);
  errno = 0;
  CHECK(reallocarray(nullptr, opaque(SIZE_MAX / 2), 3) == nullptr && errno == ENOMEM);
  void *q = reallocarray(nullptr, 10, 10);
  CHECK(q);
  std::free(q);
  void *m0 = std::malloc(0);  // NULL or a unique pointer; either may be freed
  std::free(m0);

  // The glibc extras exist and answer; their values are not compared.
  struct mallinfo2 mi = mallinfo2();
  (void)mi;
  (void)malloc_trim(0);
  (void)mallopt(M_MMAP_THRESHOLD, 1 << 20);
  std::printf("basics: done\n");
}

// ---- aligned allocation ----------------------------------------------------------
void aligned() {
  unsigned n = 0;
  const size_t page = static_cast<size_t>(sysconf(_SC_PAGESIZE));
  for (size_t a = sizeof(void *); a <= (size_t{1} << 16); a <<= 1) {
    for (size_t size : {size_t{1}, a / 2 + 1, a, 3 * a + 5, size_t{70000}}) {
      void *p = nullptr;
      CHECK(posix_memalign(&p, a, size) == 0 && p && aligned_to(p, a));
      fill(p, size, static_cast<unsigned>(a));
      void *q = aligned_alloc(a, (size + a - 1) / a * a);
      CHECK(q && aligned_to(q, a));
      fill(q, size, 7);
      void *r = memalign(a, size);
      CHECK(r && aligned_to(r, a) && malloc_usable_size(r) >= size);
      fill(r, size, 9);
      CHECK(verify(p, size, static_cast<unsigned>(a)) && verify(q, size, 7) && verify(r, size, 9));
      std::free(p);
      std::free(q);
      std::free(r);
      n += 3;
    }
  }
  void *bad = nullptr;
  CHECK(posix_memalign(&bad, 24, 100) == EINVAL);
  CHECK(posix_memalign(&bad, 2, 100) == EINVAL);  // not a multiple of sizeof(void *)
  errno = 0;
  CHECK(posix_memalign(&bad, 64, opaque(SIZE_MAX - 4096)) == ENOMEM);
  void *v = valloc(100);
  CHECK(v && aligned_to(v, page));
  fill(v, 100, 3);
  void *pv = pvalloc(page + 1);
  CHECK(pv && aligned_to(pv, page) && malloc_usable_size(pv) >= 2 * page);
  fill(pv, 2 * page, 4);  // pvalloc rounds the size up to whole pages
  CHECK(verify(v, 100, 3) && verify(pv, 2 * page, 4));
  std::free(v);
  std::free(pv);
  std::printf("aligned: %u blocks, alignments 8..65536\n", n + 2);
}

// ---- every operator new/delete form -----------------------------------------------
struct alignas(256) over_aligned {
  unsigned char bytes[300];
};

int handler_calls = 0;
void new_handler() {
  ++handler_calls;
  std::set_new_handler(nullptr);  // the next failure throws
}

void new_delete() {
  unsigned forms = 0;
  const std::align_val_t al{128};
  void *p;

  p = ::operator new(40); fill(p, 40, 1); ::operator delete(p); ++forms;
  p = ::operator new[](400); fill(p, 400, 1); ::operator delete[](p); ++forms;
  p = ::operator new(40, std::nothrow); CHECK(p); ::operator delete(p, std::nothrow); ++forms;
  p = ::operator new[](400, std::nothrow); CHECK(p); ::operator delete[](p, std::nothrow); ++forms;
  p = ::operator new(48); ::operator delete(p, size_t{48}); ++forms;
  p = ::operator new[](480); ::operator delete[](p, size_t{480}); ++forms;
  p = ::operator new(200, al); CHECK(aligned_to(p, 128)); fill(p, 200, 2);
  ::operator delete(p, al); ++forms;
  p = ::operator new[](2000, al); CHECK(aligned_to(p, 128)); ::operator delete[](p, al); ++forms;
  p = ::operator new(200, al); CHECK(aligned_to(p, 128)); ::operator delete(p, size_t{200}, al);
  ++forms;
  p = ::operator new[](2000, al); CHECK(aligned_to(p, 128));
  ::operator delete[](p, size_t{2000}, al); ++forms;
  p = ::operator new(300, al, std::nothrow); CHECK(p && aligned_to(p, 128));
  ::operator delete(p, al, std::nothrow); ++forms;
  p = ::operator new[](3000, al, std::nothrow); CHECK(p && aligned_to(p, 128));
  ::operator delete[](p, al, std::nothrow); ++forms;
  p = ::operator new(size_t{1} << 22, std::align_val_t{4096}); CHECK(aligned_to(p, 4096));
  fill(p, size_t{1} << 22, 3); ::operator delete(p, std::align_val_t{4096}); ++forms;

  // new-expressions: the compiler picks the sized and aligned forms.
  auto *o = new over_aligned;
  CHECK(aligned_to(o, 256));
  delete o;
  auto *oa = new over_aligned[5];
  CHECK(aligned_to(oa, 256));
  delete[] oa;
  auto *s = new std::string(1000, 'x');
  delete s;
  auto *ints = new int[1000]();
  delete[] ints;
  forms += 4;

  // Failure: nothrow forms give null; throwing forms throw bad_alloc.
  const size_t huge = opaque(SIZE_MAX / 4);
  CHECK(::operator new(huge, std::nothrow) == nullptr);
  CHECK(::operator new[](huge, std::nothrow) == nullptr);
  CHECK(::operator new(huge, al, std::nothrow) == nullptr);
  int thrown = 0;
  try { p = ::operator new(huge); ::operator delete(p); } catch (const std::bad_alloc &) { ++thrown; }
  try { p = ::operator new[](huge); ::operator delete[](p); } catch (const std::bad_alloc &) { ++thrown; }
  try { p = ::operator new(huge, al); ::operator delete(p, al); } catch (const std::bad_alloc &) { ++thrown; }
  // The new-handler is called before bad_alloc is thrown.
  std::set_new_handler(new_handler);
  try { p = ::operator new(huge); ::operator delete(p); } catch (const std::bad_alloc &) { ++thrown; }
  CHECK(handler_calls == 1 && std::get_new_handler() == nullptr);
  std::printf("new/delete: %u forms, %d bad_alloc, new-handler called %d\n", forms, thrown,
              handler_calls);
}

// ---- realloc growth ---------------------------------------------------------------
unsigned long realloc_growth(unsigned seed) {
  unsigned long moves = 0, checks = 0;
  char *buf = nullptr;
  size_t size = 0;
  // Grow by small steps through the size classes, then by doubling into large blocks.
  for (size_t next = 1; next <= (size_t{8} << 20); next = next < 4096 ? next + 1 + next / 8 : next * 2) {
    char *nb = static_cast<char *>(std::realloc(buf, next));
    CHECK(nb);
    if (nb != buf) ++moves;
    for (size_t i = 0; i < size; i += (i < 4096 ? 1 : 4093)) {
      if (nb[i] != static_cast<char>(seed + i)) { CHECK(!"realloc lost data"); break; }
      ++checks;
    }
    for (size_t i = size; i < next; ++i) nb[i] = static_cast<char>(seed + i);
    buf = nb;
    size = next;
  }
  // Shrink back down, keeping the prefix.
  for (size_t next = size / 3; next > 16; next /= 3) {
    buf = static_cast<char *>(std::realloc(buf, next));
    CHECK(buf && buf[next - 1] == static_cast<char>(seed + next - 1) && buf[0] == static_cast<char>(seed));
  }
  std::free(buf);
  (void)moves;
  return checks;
}

// ---- producer/consumer: frees on another thread than the allocation -----------------
struct item {
  void *p;
  size_t size;
  unsigned seed;
  bool array;  // from new[], else from malloc
};

std::mutex q_lock;
std::condition_variable q_cv;
std::deque<item> queue_items;
int producers_left;

void producer(unsigned id, unsigned count) {
  for (unsigned i = 0; i < count; ++i) {
    size_t size = (i % 1000 == 999) ? 200000 + i : (i * 13u + id * 7u) % 2048 + 1;
    unsigned seed = id * 1000003u + i;
    const bool array = i % 5 == 0;
    void *p = array ? static_cast<void *>(new char[size]) : std::malloc(size);
    fill(p, size < 64 ? size : 64, seed);
    std::lock_guard<std::mutex> g(q_lock);
    queue_items.push_back({p, size, seed, array});
    q_cv.notify_one();
  }
  std::lock_guard<std::mutex> g(q_lock);
  --producers_left;
  q_cv.notify_all();
}

// Out of line: GCC's -Wmismatched-dealloc cannot tell this branch from the realloc one.
[[gnu::noinline]] void delete_array(void *p) { delete[] static_cast<char *>(p); }

std::atomic<unsigned long> consumed_bytes{0};
std::atomic<unsigned> consumed_items{0};
std::atomic<unsigned> bad_items{0};

void consumer() {
  for (;;) {
    item it;
    {
      std::unique_lock<std::mutex> g(q_lock);
      q_cv.wait(g, [] { return !queue_items.empty() || producers_left == 0; });
      if (queue_items.empty()) return;
      it = queue_items.front();
      queue_items.pop_front();
    }
    if (!verify(it.p, it.size < 64 ? it.size : 64, it.seed)) bad_items++;
    consumed_bytes += it.size;
    consumed_items++;
    if (it.array) {
      delete_array(it.p);
    } else if (it.seed % 7 == 0) {
      // Grow it here first: realloc of a block another thread made.
      void *g = std::realloc(it.p, it.size * 2 + 8);
      if (!g || !verify(g, it.size < 64 ? it.size : 64, it.seed)) bad_items++;
      std::free(g);
    } else {
      std::free(it.p);
    }
  }
}

void producer_consumer() {
  const unsigned nprod = 3, ncons = 3, per = 20000;
  producers_left = nprod;
  std::vector<std::thread> ts;
  for (unsigned c = 0; c < ncons; ++c) ts.emplace_back(consumer);
  for (unsigned p = 0; p < nprod; ++p) ts.emplace_back(producer, p, per);
  for (auto &t : ts) t.join();
  CHECK(bad_items == 0);
  std::printf("producer/consumer: %u producers, %u consumers, %u items, %lu bytes, %u bad\n",
              nprod, ncons, consumed_items.load(), consumed_bytes.load(), bad_items.load());
}

// ---- thread exit: TLS destructors that free ---------------------------------------
pthread_key_t key;
std::atomic<unsigned> key_dtors{0};
std::atomic<unsigned> tls_dtors{0};

struct tls_owner {
  std::vector<std::string> strings;
  ~tls_owner() {
    // Runs at thread exit, after or around the shim's own per-thread teardown.
    void *late = std::malloc(333);
    fill(late, 333, 5);
    std::free(late);
    strings.clear();
    tls_dtors++;
  }
};
thread_local tls_owner owner;

void key_dtor(void *p) {
  std::free(p);
  void *late = std::malloc(77);  // and allocate in the key destructor too
  std::free(late);
  key_dtors++;
}

void thread_exit() {
  pthread_key_create(&key, key_dtor);
  unsigned long checks = 0;
  std::mutex m;
  for (int round = 0; round < 4; ++round) {
    std::vector<std::thread> ts;
    for (unsigned t = 0; t < 4; ++t)
      ts.emplace_back([&m, &checks, t] {
        for (int i = 0; i < 200; ++i) owner.strings.emplace_back(50 + i, static_cast<char>('a' + t));
        pthread_setspecific(key, std::malloc(1000));
        unsigned long c = realloc_growth(t);
        std::lock_guard<std::mutex> g(m);
        checks += c;
      });
    for (auto &t : ts) t.join();
  }
  pthread_key_delete(key);
  std::printf("thread exit: 16 threads, %u key dtors, %u tls dtors, %lu realloc checks\n",
              key_dtors.load(), tls_dtors.load(), checks);
}

// ---- fork while other threads allocate ----------------------------------------------
std::atomic<bool> churn_stop{false};

void churn(unsigned id) {
  std::vector<void *> live(256, nullptr);
  unsigned x = id * 2654435761u + 1;
  while (!churn_stop.load(std::memory_order_relaxed)) {
    x = x * 1103515245u + 12345u;
    unsigned slot = (x >> 8) % live.size();
    if (live[slot]) {
      std::free(live[slot]);
      live[slot] = nullptr;
    } else {
      size_t size = (x >> 16) % 8 == 0 ? 70000 + (x >> 20) % 5000 : (x >> 16) % 1500 + 1;
      live[slot] = (x & 1) ? std::malloc(size) : std::calloc(1, size);
      if ((x & 6) == 0) {
        void *a = nullptr;
        if (posix_memalign(&a, 64, size) == 0) std::free(a);
      }
    }
  }
  for (void *p : live) std::free(p);
}

int child_work(int n) {
  alarm(30);  // a deadlock after fork shows as SIGALRM, not a hung test
  std::vector<void *> ptrs;
  for (int i = 0; i < 2000; ++i) {
    size_t size = static_cast<size_t>(i * 37 % 3000 + 1);
    void *p = std::malloc(size);
    if (!p) return 2;
    fill(p, size, static_cast<unsigned>(i));
    ptrs.push_back(p);
  }
  auto *s = new std::string(5000, 'c');
  void *a = ::operator new(512, std::align_val_t{256});
  // A thread in the child allocates too.
  std::thread t([] {
    for (int i = 0; i < 1000; ++i) std::free(std::malloc(static_cast<size_t>(i) + 1));
  });
  t.join();
  for (size_t i = 0; i < ptrs.size(); ++i)
    if (!verify(ptrs[i], static_cast<size_t>(i * 37 % 3000 + 1), static_cast<unsigned>(i))) return 3;
  for (void *p : ptrs) std::free(p);
  ::operator delete(a, std::align_val_t{256});
  delete s;
  (void)n;
  return 0;
}

void fork_while_allocating() {
  churn_stop = false;
  std::vector<std::thread> ts;
  for (unsigned i = 0; i < 4; ++i) ts.emplace_back(churn, i);
  const int forks = 12;
  int ok = 0;
  for (int n = 0; n < forks; ++n) {
    usleep(2000);
    std::fflush(stdout);
    pid_t pid = fork();
    if (pid == 0) {
      int rc = child_work(n);
      if (n % 2) _exit(rc);  // half exit without atexit handlers
      std::exit(rc);
    }
    CHECK(pid > 0);
    int status = 0;
    CHECK(waitpid(pid, &status, 0) == pid);
    if (WIFEXITED(status) && WEXITSTATUS(status) == 0) {
      ++ok;
    } else {
      std::fprintf(stderr, "mt_program: fork child %d: %s %d\n", n,
                   WIFSIGNALED(status) ? "signal" : "exit status",
                   WIFSIGNALED(status) ? WTERMSIG(status) : WEXITSTATUS(status));
      ++failures;
    }
  }
  churn_stop = true;
  for (auto &t : ts) t.join();
  std::printf("fork: %d of %d children exited 0 while 4 threads allocated\n", ok, forks);
}

// ---- foreign pointers ----------------------------------------------------------------
// The C library's own malloc: dlsym on libc's handle looks in libc itself, so
// it finds glibc's malloc even when a preloaded library interposes the name
// (dlsym(RTLD_NEXT, ...) from the program would find the shim, which comes
// right after the executable in the search order).
void foreign(const char *deepbind_path) {
  int freed = 0;
  void *libc = dlopen("libc.so.6", RTLD_NOW | RTLD_NOLOAD);
  CHECK(libc);
  using malloc_fn = void *(*)(size_t);
  auto libc_malloc = reinterpret_cast<malloc_fn>(dlsym(libc, "malloc"));
  CHECK(libc_malloc);
  if (libc_malloc) {
    for (size_t size : {size_t{16}, size_t{100}, size_t{5000}, size_t{300000}}) {
      void *p = libc_malloc(size);
      CHECK(p);
      fill(p, size, 11);
      errno = ERANGE;
      std::free(p);  // through the ordinary free: the shim's, under it
      CHECK(errno == ERANGE);
      ++freed;
    }
    // realloc and malloc_usable_size of a foreign pointer: kept intact.
    void *p = libc_malloc(200);
    fill(p, 200, 12);
    CHECK(malloc_usable_size(p) >= 200);
    void *g = std::realloc(p, 100000);
    CHECK(g && verify(g, 200, 12));
    std::free(g);
    void *h = libc_malloc(300);
    fill(h, 300, 13);
    void *s = std::realloc(h, 40);
    CHECK(s && verify(s, 40, 13));
    std::free(s);
  }
  if (libc) dlclose(libc);

  int deep = 0;
  if (deepbind_path) {
    void *lib = dlopen(deepbind_path, RTLD_NOW | RTLD_LOCAL | RTLD_DEEPBIND);
    if (!lib) std::fprintf(stderr, "mt_program: dlopen %s: %s\n", deepbind_path, dlerror());
    CHECK(lib);
    auto db_malloc = lib ? reinterpret_cast<malloc_fn>(dlsym(lib, "deepbind_malloc")) : nullptr;
    CHECK(!lib || db_malloc);
    if (db_malloc) {
      for (size_t size : {size_t{24}, size_t{4000}, size_t{250000}}) {
        auto *p = static_cast<unsigned char *>(db_malloc(size));
        CHECK(p && p[0] == 0x5a && p[size - 1] == 0x5a);
        std::free(p);
        ++deep;
      }
    }
    // The library stays loaded (its pointers are gone; dlclose is fine too).
    if (lib) dlclose(lib);
  }
  std::printf("foreign: freed %d\n", freed + deep);
}

}  // namespace

int main(int argc, char **argv) {
  std::setvbuf(stdout, nullptr, _IOLBF, 0);
  basics();
  aligned();
  new_delete();
  std::printf("realloc: %lu bytes checked\n", realloc_growth(42));
  producer_consumer();
  thread_exit();
  fork_while_allocating();
  foreign(argc > 1 ? argv[1] : nullptr);
  if (failures) {
    std::printf("FAILED: %d checks\n", failures);
    return 1;
  }
  std::printf("ok\n");
  return 0;
}
