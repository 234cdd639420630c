// The shim's start and end. The allocator itself needs no initialisation
// (every layer sets itself up on first use without malloc), so requests
// that come before this constructor, inside dlsym or while a new thread's
// TLS is set up are served as usual; the constructor only looks up the C
// library's free (foreign pointers), caches the statistics switch,
// registers the fork handlers and starts the report triggers.
#include "shim.hpp"

namespace sysref::preload {

constinit bool g_counting = false;

namespace {

__attribute__((constructor)) void start() {
  resolve_libc();
  g_counting = report::counting();
  install_fork_handlers();
  start_reporting();
}

// At exit (or dlclose): the report, when SYSREF_STATS is set. Libraries
// loaded after the shim end first, so it sees what they left live.
__attribute__((destructor)) void end() { report_at_exit(); }

}  // namespace
}  // namespace sysref::preload
