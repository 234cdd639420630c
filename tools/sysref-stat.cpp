// sysref-stat: runs a program under libsysref-preload.so (as heaptrack or
// perf stat do), passes its exit status through, then prints the report
// each of its processes wrote: as text, as JSON (--json), and as an SVG
// plot (--plot). See sysref-stat(1).
//
// The program gets LD_PRELOAD=<the shim>, SYSREF_STATS=json and
// SYSREF_STATS_FILE=<a private directory>/report.%p.json, so every process
// that loads the shim (children that fork and exec too) writes its own file.
#include <dirent.h>
#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <climits>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <string>
#include <string_view>
#include <vector>

#include "stat.hpp"
#include "sysref_stat_config.h"

extern char **environ;

namespace sysref_stat {

namespace {

// sysref-stat's own failures, as env(1) and timeout(1) report theirs; 126
// and 127 when the program cannot be run or found, as the shell does.
constexpr int exit_failure = 125;
constexpr int exit_cannot_run = 126;
constexpr int exit_not_found = 127;
// The sampling interval --plot asks for when --interval is not given.
constexpr long plot_interval_ms = 10;
constexpr const char *preload_name = "libsysref-preload.so";

struct options {
  bool json = false;
  const char *output = nullptr;   // nullptr: stderr
  const char *plot = nullptr;
  const char *preload = nullptr;
  long interval_ms = 0;           // 0: no samples
  char **argv = nullptr;          // the program and its arguments
};

void usage(FILE *out) {
  fprintf(out,
          "usage: sysref-stat [options] [--] program [args...]\n"
          "Runs program under libsysref-preload.so and prints the allocation report of\n"
          "each of its processes (to stderr). Exits with the program's exit status.\n"
          "\n"
          "  --json           the reports as a JSON array, one object per process\n"
          "  -o, --output FILE  write the reports to FILE instead of stderr ('-': stdout)\n"
          "  --interval MS    sample live and resident memory every MS milliseconds\n"
          "  --plot FILE.svg  draw memory over time and the request sizes as SVG\n"
          "                   (samples every %ld ms unless --interval is given)\n"
          "  --preload PATH   the shim to use (default: $SYSREF_PRELOAD, else the\n"
          "                   installed %s)\n"
          "  -h, --help       this help\n"
          "  --version        the version\n",
          plot_interval_ms, preload_name);
}

[[noreturn]] void die(const char *fmt, const char *arg) {
  fprintf(stderr, "sysref-stat: ");
  fprintf(stderr, fmt, arg);
  fprintf(stderr, "\n");
  exit(exit_failure);
}

// Parses the options up to the program name. Exits on --help, --version and errors.
options parse_options(int argc, char **argv) {
  options o;
  int i = 1;
  for (; i < argc; i++) {
    std::string_view arg = argv[i];
    if (arg == "--") {
      i++;
      break;
    }
    if (arg.size() < 2 || arg[0] != '-') break;  // the program
    std::string name(arg), inline_value;
    bool has_inline = false;
    if (size_t eq = name.find('='); arg.substr(0, 2) == "--" && eq != std::string::npos) {
      inline_value = name.substr(eq + 1);
      name.resize(eq);
      has_inline = true;
    }
    auto value = [&]() -> const char * {
      if (has_inline) return argv[i] + name.size() + 1;
      if (i + 1 >= argc) die("option %s needs a value", name.c_str());
      return argv[++i];
    };
    auto flag = [&] {
      if (has_inline) die("option %s takes no value", name.c_str());
    };
    if (name == "--json") {
      flag();
      o.json = true;
    } else if (name == "--output" || name == "-o") {
      o.output = value();
    } else if (name == "--plot") {
      o.plot = value();
    } else if (name == "--preload") {
      o.preload = value();
    } else if (name == "--interval") {
      const char *v = value();
      char *end;
      errno = 0;
      long ms = strtol(v, &end, 10);
      if (errno || end == v || *end || ms < 1 || ms > 86400000)
        die("--interval wants a number of milliseconds from 1 to 86400000, not '%s'", v);
      o.interval_ms = ms;
    } else if (name == "--help" || name == "-h") {
      flag();
      usage(stdout);
      exit(0);
    } else if (name == "--version") {
      flag();
      printf("sysref-stat (libsysref) %s\n", SYSREF_STAT_VERSION);
      exit(0);
    } else {
      fprintf(stderr, "sysref-stat: unknown option %s\n", name.c_str());
      usage(stderr);
      exit(exit_failure);
    }
  }
  if (i >= argc) {
    fprintf(stderr, "sysref-stat: no program to run\n");
    usage(stderr);
    exit(exit_failure);
  }
  o.argv = argv + i;
  if (o.plot && !o.interval_ms) o.interval_ms = plot_interval_ms;
  return o;
}

bool readable(const std::string &path) { return !path.empty() && access(path.c_str(), R_OK) == 0; }

// The shim: --preload, $SYSREF_PRELOAD, the build tree's when this is the
// build tree's sysref-stat, the installed one, and the one where it would be
// installed relative to this executable (a relocated or DESTDIR install).
std::string find_preload(const options &o) {
  namespace fs = std::filesystem;
  std::vector<std::string> tried;
  auto pick = [&](const std::string &path) {
    tried.push_back(path);
    return readable(path);
  };
  std::string found;
  if (o.preload) {
    if (!pick(o.preload)) die("--preload %s: cannot read it", o.preload);
    found = o.preload;
  } else if (const char *env = getenv("SYSREF_PRELOAD"); env && *env) {
    if (!pick(env)) die("SYSREF_PRELOAD=%s: cannot read it", env);
    found = env;
  } else {
    std::error_code ec;
    fs::path self = fs::read_symlink("/proc/self/exe", ec);
    fs::path build_dir = SYSREF_STAT_BUILD_DIR;
    if (!ec && fs::equivalent(self.parent_path(), build_dir, ec) && pick(SYSREF_STAT_BUILD_PRELOAD)) {
      found = SYSREF_STAT_BUILD_PRELOAD;
    } else if (pick(SYSREF_STAT_INSTALL_PRELOAD)) {
      found = SYSREF_STAT_INSTALL_PRELOAD;
    } else if (!self.empty()) {
      fs::path rel = fs::path(SYSREF_STAT_INSTALL_LIBDIR).lexically_relative(SYSREF_STAT_INSTALL_BINDIR);
      std::string here = (self.parent_path() / rel / preload_name).lexically_normal().string();
      if (pick(here)) found = here;
    }
    if (found.empty()) {
      std::string list;
      for (const std::string &t : tried) list += "\n  " + t;
      die("cannot find the shim; give --preload PATH or set SYSREF_PRELOAD. Looked for:%s", list.c_str());
    }
  }
  // Absolute, as the program may change directory before it runs a child.
  char *real = realpath(found.c_str(), nullptr);
  if (!real) die("%s: cannot resolve the path", found.c_str());
  found = real;
  free(real);
  if (found.find_first_of(": ") != std::string::npos)
    die("%s: LD_PRELOAD cannot name a path with a space or a colon", found.c_str());
  return found;
}

// The program's environment: ours, with the shim put first in LD_PRELOAD and
// the statistics options set. Other SYSREF_* variables pass through.
std::vector<std::string> child_environment(const options &o, const std::string &shim, const std::string &dir) {
  std::vector<std::string> env;
  std::string preload = "LD_PRELOAD=" + shim;
  for (char **e = environ; *e; e++) {
    std::string_view var = *e;
    auto is = [&](std::string_view name) { return var.substr(0, name.size() + 1) == std::string(name) + "="; };
    if (is("LD_PRELOAD")) {
      if (var.size() > 11) {  // appended piecewise: GCC 12's -Wrestrict misfires on ":" + std::string
        preload += ':';
        preload.append(var.substr(11));
      }
    } else if (!is("SYSREF_STATS") && !is("SYSREF_STATS_FILE") && !(o.interval_ms && is("SYSREF_STATS_INTERVAL_MS"))) {
      env.emplace_back(var);
    }
  }
  env.push_back(preload);
  env.push_back("SYSREF_STATS=json");
  env.push_back("SYSREF_STATS_FILE=" + dir + "/report.%p.json");
  if (o.interval_ms) env.push_back("SYSREF_STATS_INTERVAL_MS=" + std::to_string(o.interval_ms));
  return env;
}

// While the program runs: ^C and ^\ reach it from the terminal and
// sysref-stat waits to print the report; these are passed on to it.
volatile sig_atomic_t child_pid = 0;
constexpr int forwarded[] = {SIGTERM, SIGHUP, SIGUSR1, SIGUSR2};
constexpr int ignored[] = {SIGINT, SIGQUIT};

void forward(int sig) {
  if (child_pid > 0) kill(child_pid, sig);
}

// Runs the program and waits for it. Returns its wait status; exits when it
// cannot be started.
int run(const options &o, const std::vector<std::string> &env, pid_t &pid) {
  std::vector<char *> envp;
  for (const std::string &e : env) envp.push_back(const_cast<char *>(e.c_str()));
  envp.push_back(nullptr);

  // The program starts with our signal mask and dispositions, except that
  // the signals we ignore or catch while waiting go back to what they were.
  sigset_t block, old_mask, defaults;
  sigemptyset(&block);
  sigemptyset(&defaults);
  for (int s : forwarded) sigaddset(&block, s);
  for (int s : ignored) sigaddset(&block, s);
  sigprocmask(SIG_BLOCK, &block, &old_mask);
  struct sigaction ign {}, fwd {};
  ign.sa_handler = SIG_IGN;
  fwd.sa_handler = forward;
  sigemptyset(&fwd.sa_mask);
  fwd.sa_flags = SA_RESTART;
  for (int s : ignored) {
    struct sigaction was {};
    sigaction(s, &ign, &was);
    if (was.sa_handler != SIG_IGN) sigaddset(&defaults, s);  // ignored already: stays ignored
  }
  for (int s : forwarded) {
    struct sigaction was {};
    sigaction(s, &fwd, &was);
    if (was.sa_handler != SIG_IGN) sigaddset(&defaults, s);
  }
  posix_spawnattr_t attr;
  posix_spawnattr_init(&attr);
  posix_spawnattr_setsigdefault(&attr, &defaults);
  posix_spawnattr_setsigmask(&attr, &old_mask);
  posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETSIGDEF | POSIX_SPAWN_SETSIGMASK);
  int err = posix_spawnp(&pid, o.argv[0], nullptr, &attr, o.argv, envp.data());
  posix_spawnattr_destroy(&attr);
  if (err) {
    sigprocmask(SIG_SETMASK, &old_mask, nullptr);
    fprintf(stderr, "sysref-stat: %s: %s\n", o.argv[0], err == ENOENT ? "command not found" : strerror(err));
    return -(err == ENOENT ? exit_not_found : exit_cannot_run);
  }
  child_pid = pid;
  sigprocmask(SIG_SETMASK, &old_mask, nullptr);
  int status = 0;
  while (waitpid(pid, &status, 0) < 0) {
    if (errno != EINTR) {
      fprintf(stderr, "sysref-stat: waitpid: %s\n", strerror(errno));
      return -exit_failure;
    }
  }
  child_pid = 0;
  return status;
}

// The stats files in dir, parsed: the program's process first, then the
// others in the order their pids were handed out (pids wrap at pid_max).
std::vector<process> collect(const std::string &dir, pid_t parent, const char *name) {
  std::vector<process> procs;
  if (DIR *d = opendir(dir.c_str())) {
    while (dirent *e = readdir(d)) {
      long pid;
      char tail[8];
      if (sscanf(e->d_name, "report.%ld.%7s", &pid, tail) == 2 && std::string_view(tail) == "json") {
        process p;
        p.pid = pid;
        p.path = dir + "/" + e->d_name;
        procs.push_back(std::move(p));
      }
    }
    closedir(d);
  }
  if (std::none_of(procs.begin(), procs.end(), [&](const process &p) { return p.pid == parent; })) {
    process p;  // it wrote nothing: the heading says so
    p.pid = parent;
    procs.push_back(std::move(p));
  }
  long pid_max = 4194304;
  if (FILE *f = fopen("/proc/sys/kernel/pid_max", "re")) {
    if (fscanf(f, "%ld", &pid_max) != 1) pid_max = 4194304;
    fclose(f);
  }
  auto order = [&](const process &p) { return ((p.pid - parent) % pid_max + pid_max) % pid_max; };
  std::sort(procs.begin(), procs.end(), [&](const process &a, const process &b) { return order(a) < order(b); });
  for (process &p : procs) {
    p.parent = p.pid == parent;
    if (p.parent) p.name = name;
    if (!p.path.empty()) p.load();
  }
  return procs;
}

void remove_dir(const std::string &dir) {
  if (DIR *d = opendir(dir.c_str())) {
    while (dirent *e = readdir(d))
      if (strcmp(e->d_name, ".") && strcmp(e->d_name, "..")) unlink((dir + "/" + e->d_name).c_str());
    closedir(d);
  }
  rmdir(dir.c_str());
}

FILE *open_output(const char *path) {
  if (!path) return stderr;
  if (!strcmp(path, "-")) return stdout;
  FILE *f = fopen(path, "we");
  if (!f) {
    std::string what = std::string(path) + ": " + strerror(errno);
    die("%s", what.c_str());
  }
  return f;
}

bool close_output(FILE *f, const char *path) {
  bool ok = fflush(f) == 0 && !ferror(f);
  if (f != stderr && f != stdout) ok = fclose(f) == 0 && ok;
  if (!ok) fprintf(stderr, "sysref-stat: %s: write error\n", path ? path : "stderr");
  return ok;
}

}  // namespace

void process::load() {
  FILE *f = fopen(path.c_str(), "re");
  if (!f) {
    error = strerror(errno);
    return;
  }
  char buf[65536];
  size_t n;
  while ((n = fread(buf, 1, sizeof buf, f)) > 0) text.append(buf, n);
  fclose(f);
  docs = json::parse_all(text, error);
  for (const json::document &d : docs) {
    std::string_view kind = d.root.text("kind");
    if (kind == "sample") {
      samples.push_back(&d.root);
    } else if (kind == "report") {
      report = &d.root;
      report_doc = &d;
    }
  }
  // A process that replaced itself with execve(2) wrote samples as one
  // program and then as the next, whose clock starts again: keep the last
  // program's, which the report (if any) is about.
  size_t keep = 0;
  for (size_t j = 1; j < samples.size(); j++)
    if (samples[j]->number("time_ms") < samples[j - 1]->number("time_ms") ||
        samples[j]->text("program") != samples[j - 1]->text("program"))
      keep = j;
  // The report is the last program's too, unless that program wrote no
  // samples: then the last ones are of another program, or began later.
  if (report && keep < samples.size() &&
      (report->text("program") != samples[keep]->text("program") ||
       report->number("time_ms") < samples[keep]->number("time_ms")))
    keep = samples.size();
  earlier_samples = keep;
  samples.erase(samples.begin(), samples.begin() + static_cast<std::ptrdiff_t>(keep));
}

std::string process::program() const {
  if (report && !report->text("program").empty()) return std::string(report->text("program"));
  for (auto s = samples.rbegin(); s != samples.rend(); ++s)
    if (!(*s)->text("program").empty()) return std::string((*s)->text("program"));
  return name.empty() ? "?" : name;
}

}  // namespace sysref_stat

int main(int argc, char **argv) {
  using namespace sysref_stat;
  options o = parse_options(argc, argv);
  std::string shim = find_preload(o);
  // Open the outputs first: a bad path should not cost a whole run.
  FILE *out = open_output(o.output);
  FILE *plot = o.plot ? open_output(o.plot) : nullptr;

  const char *tmp = getenv("TMPDIR");
  std::string dir = std::string(tmp && *tmp ? tmp : "/tmp") + "/sysref-stat.XXXXXX";
  if (!mkdtemp(dir.data())) die("cannot make a directory for the reports: %s", strerror(errno));

  pid_t pid = 0;
  int status = run(o, child_environment(o, shim, dir), pid);
  if (status < 0) {
    remove_dir(dir);
    return -status;
  }
  outcome how;
  how.exited = !WIFSIGNALED(status);
  how.code = WIFSIGNALED(status) ? WTERMSIG(status) : WEXITSTATUS(status);

  std::vector<process> procs = collect(dir, pid, o.argv[0]);
  remove_dir(dir);
  if (o.json) {
    print_json(out, procs);
  } else {
    print_text(out, procs, how);
  }
  close_output(out, o.output);
  if (plot) {
    if (!plot_svg(plot, procs)) fprintf(stderr, "sysref-stat: %s: %s\n", o.plot, strerror(errno));
    close_output(plot, o.plot);
  }
  return how.exited ? how.code : 128 + how.code;
}
