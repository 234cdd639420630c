// fork: the prepare handler takes every allocator lock, so that no other
// thread is inside a critical section when the address space is copied;
// the parent and child handlers release them (the child's one thread is
// the thread that took them, so a release, not a reset, also brings its
// count of held locks back to zero).
//
// Lock order (outermost first; the same order every path of the library
// already takes them in, so prepare cannot deadlock against a thread that
// holds some of them). Also in sysref(7), "Fork".
//   1. report lock                       (report::prefork; a report holds it
//                                         while it reads every layer's stats)
//   2. sysref class lock                 (held while a class makes its cache)
//   3. sysref index shard locks          (leaves; in shard order)
//   4. kmalloc class-creation lock       (held while a size class makes its cache)
//   5. objcache registry lock            (held through 6: no cache comes or goes)
//   6. every registered cache's depot lock
//   7. kmalloc large-block kept-mappings lock (a leaf)
//   8. slab lazy-zone making lock, zone-of-zones init lock
//   9. slab public-zone list lock, zone registry lock (held through 10)
//  10. every zone's refill lock, then its zone lock
//  11. page-map grow lock
//  12. percpu slot-allocation lock
//  13. (lock mode) every allocated per-CPU slot lock, CPU by CPU
// The parent and child handlers release them in the reverse order.
//
// pthread_atfork runs prepare handlers in reverse order of registration and
// the others in order: the shim registers from its constructor, before the
// program's own, so its prepare runs last (after handlers that may still
// allocate) and its parent/child handlers first.
#include <pthread.h>

#include "../lib/objcache/objcache.hpp"
#include "../lib/percpu/percpu.hpp"
#include "../lib/slab/slab.hpp"
#include "../lib/sysref/sysref.hpp"
#include "shim.hpp"

namespace sysref::preload {
namespace {

void prepare() {
  report::prefork();
  objects::prefork();
  kmalloc::prefork_classes();
  objcache::prefork();
  kmalloc::prefork_large();
  slab::prefork();
  percpu::prefork();
}

void parent() {
  percpu::postfork_parent();
  slab::postfork_parent();
  kmalloc::postfork_large();
  objcache::postfork_parent();
  kmalloc::postfork_classes();
  objects::postfork_parent();
  report::postfork_parent();
}

void child() {
  percpu::postfork_child();
  slab::postfork_child();
  kmalloc::postfork_large();
  objcache::postfork_child();
  kmalloc::postfork_classes();
  objects::postfork_child();
  report::postfork_child();
  restart_after_fork();
}

}  // namespace

void install_fork_handlers() { pthread_atfork(prepare, parent, child); }

}  // namespace sysref::preload
