// lib/report: the data model adds up, both printers carry every section,
// the JSON parses (python3's json module), the C ABI checks its flags and
// expands %p, and counting (SYSREF_STATS) fills the calls, the requested
// bytes and the histogram. The shim is not here: the tests call the
// counting hooks themselves. Run once per per-CPU mode (see meson.build).
#include <criterion/criterion.h>

#include <algorithm>
#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fcntl.h>
#include <string>
#include <sys/stat.h>
#include <sysref/kmalloc.h>
#include <sysref/kmalloc_obj.h>
#include <sysref/objcache.h>
#include <sysref/report.h>
#include <sysref/sysref.h>
#include <unistd.h>
#include <vector>

#include "kmalloc/kmalloc.hpp"
#include "report/report.hpp"

namespace rp = sysref::report;
namespace km = sysref::kmalloc;

namespace {

constexpr size_t KiB = 1024, MiB = 1024 * KiB;

void stats_json() { setenv("SYSREF_STATS", "json", 1); }  // before the first library call

std::string temp_path(const char *tag) {
  char buf[128];
  std::snprintf(buf, sizeof buf, "/tmp/test_report.%d.%s", static_cast<int>(getpid()), tag);
  unlink(buf);
  return buf;
}

std::string slurp(const std::string &path) {
  std::string out;
  FILE *f = std::fopen(path.c_str(), "r");
  if (!f) return out;
  char buf[4096];
  size_t n;
  while ((n = std::fread(buf, 1, sizeof buf, f)) > 0) out.append(buf, n);
  std::fclose(f);
  return out;
}

// Runs a python3 check on the file; true if it exits 0.
bool python_check(const char *code, const std::string &file) {
  std::string script = temp_path("check.py");
  FILE *f = std::fopen(script.c_str(), "w");
  if (!f) return false;
  std::fputs(code, f);
  std::fclose(f);
  std::string cmd = "python3 " + script + " " + file;
  int rc = std::system(cmd.c_str());
  unlink(script.c_str());
  return rc == 0;
}

// Every section and key of schema sysref-report/1, and the sums.
const char *full_check = R"PY(
import json, sys
r = json.load(open(sys.argv[1]))
top = ["schema", "kind", "program", "pid", "reason", "time_ms", "duration_s", "cpus",
       "percpu_mode", "topology", "stats_counting", "totals", "calls", "size_classes", "large",
       "histogram", "caches", "zones", "classes", "verdicts"]
for k in top: assert k in r, k
assert r["schema"] == "sysref-report/1" and r["kind"] == "report"
for k in ["packages", "cores", "pus", "numa_nodes", "from_hwloc"]: assert k in r["topology"], k
t = r["totals"]
for k in ["requested_bytes", "allocated_bytes", "internal_fragmentation_bytes", "live_bytes",
          "peak_live_bytes", "freed_bytes", "allocations", "frees", "live_objects",
          "metadata_bytes", "mapped_bytes", "peak_mapped_bytes", "resident_bytes",
          "released_bytes", "minor_faults", "foreign_frees"]:
    assert k in t, k
for k in ["malloc", "calloc", "realloc", "free", "posix_memalign", "aligned_alloc", "new",
          "delete", "foreign_free"]:
    assert k in r["calls"], k
for c in r["size_classes"]:
    for k in ["size", "allocations", "frees", "live", "peak", "live_bytes", "magazine_hit_rate",
              "depot_exchanges", "slabs", "contention"]:
        assert k in c, k
    assert c["live"] == c["allocations"] - c["frees"]
    assert c["live_bytes"] == c["live"] * c["size"]
    assert c["peak"] >= c["live"]
L = r["large"]
for k in ["allocations", "frees", "live", "live_bytes"]: assert k in L, k
sc = r["size_classes"]
assert t["live_bytes"] == t["allocated_bytes"] - t["freed_bytes"], t
assert t["allocations"] == sum(c["allocations"] for c in sc) + L["allocations"], t
assert t["frees"] == sum(c["frees"] for c in sc) + L["frees"], t
assert t["live_objects"] == sum(c["live"] for c in sc) + L["live"], t
assert t["live_bytes"] == sum(c["live_bytes"] for c in sc) + L["live_bytes"], t
assert t["peak_live_bytes"] >= t["live_bytes"]
assert len(r["histogram"]) == 19 and r["histogram"][0]["le"] == 8
assert r["histogram"][-1]["le"] is None and r["histogram"][-2]["le"] == 1 << 20
for k in ["caches", "zones", "classes", "verdicts"]: assert isinstance(r[k], list), k
)PY";

// A mix of sizes, some freed: small classes and large blocks.
std::vector<void *> churn() {
  std::vector<void *> kept;
  kept.reserve(4096);
  const size_t sizes[] = {1, 8, 16, 24, 100, 128, 500, 1000, 4000, 20000, 32 * KiB, 40 * KiB, 300 * KiB, 2 * MiB};
  for (int round = 0; round < 40; ++round)
    for (size_t s : sizes) {
      void *a = sr_malloc(s + static_cast<size_t>(round));
      void *b = sr_malloc(s);
      cr_assert(a && b);
      sr_free(a);
      kept.push_back(b);
    }
  return kept;
}

struct rows_sum {
  uint64_t allocs = 0, frees = 0, live = 0, bytes = 0, freed = 0;
};
rows_sum sum_rows(const rp::model &m) {
  rows_sum s;
  for (unsigned i = 0; i < m.nclasses; ++i) {
    const rp::class_row &r = m.classes[i];
    s.allocs += r.allocations;
    s.frees += r.frees;
    s.live += r.live;
    s.bytes += r.allocations * r.size;
    s.freed += r.frees * r.size;
  }
  return s;
}

rp::model &model_storage() {
  static rp::model m;  // about 20 KiB: not on the test's stack
  return m;
}

}  // namespace

Test(report, totals_add_up_after_a_mix_of_sizes) {
  rp::model &m = model_storage();
  rp::gather(m, rp::reason::request, false);
  uint64_t live_before = m.t.live_objects;
  std::vector<void *> kept = churn();
  rp::gather(m, rp::reason::request, false);
  const rp::totals &t = m.t;
  km::stats k = km::snapshot();
  rows_sum s = sum_rows(m);
  cr_expect_eq(t.live_bytes, t.allocated_bytes - t.freed_bytes);
  cr_expect_eq(t.allocations, s.allocs + m.large_allocations);
  cr_expect_eq(t.frees, s.frees + m.large_frees);
  cr_expect_eq(t.live_objects, t.allocations - t.frees);
  cr_expect_eq(t.live_objects, s.live + m.large_live);
  cr_expect_eq(t.allocated_bytes, s.bytes + k.large_bytes_mapped);
  cr_expect_eq(t.freed_bytes, s.freed + k.large_bytes_unmapped);
  cr_expect_eq(m.large_live_bytes, k.large_bytes_mapped - k.large_bytes_unmapped);
  cr_expect_eq(t.live_objects - live_before, kept.size(), "live objects grew by what the test holds");
  cr_expect_geq(t.peak_live_bytes, t.live_bytes);
  cr_expect_gt(m.large_allocations, 0u);
  cr_expect_gt(t.mapped_bytes, 0u);
  cr_expect_gt(t.resident_bytes, 0u);
  cr_expect_gt(t.minor_faults, 0u);
  for (unsigned i = 0; i < m.nclasses; ++i) {
    cr_expect_geq(m.classes[i].peak, m.classes[i].live);
    cr_expect(m.classes[i].hit_rate >= 0 && m.classes[i].hit_rate <= 1);
  }
  for (void *p : kept) sr_free(p);
  rp::gather(m, rp::reason::request, false);
  cr_expect_eq(m.t.live_objects, live_before, "everything freed: live objects as before");
}

Test(report, json_parses_with_every_section_and_sums) {
  std::vector<void *> kept = churn();
  std::string path = temp_path("json");
  int fd = open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0600);
  cr_assert_geq(fd, 0);
  cr_assert_eq(sysref_report(fd, SYSREF_REPORT_JSON), 0);
  close(fd);
  std::string text = slurp(path);
  cr_expect_eq(std::count(text.begin(), text.end(), '\n'), 1, "one line");
  cr_expect(python_check(full_check, path), "the JSON parses and adds up: %s", text.c_str());
  unlink(path.c_str());
  for (void *p : kept) sr_free(p);
}

Test(report, rows_for_the_programs_own_caches_zones_and_classes) {
  static sysref_class cls{};
  cls.name = "report-test-class";
  cls.objsize = 64;
  cls.offset = 0;
  objcache_t *oc = objcache_create("report-test-cache", 100, 0, nullptr, nullptr, nullptr, 0, 0);
  kmalloc_zone_t *z = kmalloc_obj_zone_create("report-test-zone", 40, 0, 0);
  cr_assert(oc && z);
  void *o = objcache_get(oc, 0), *zo = kmalloc_obj(z, 0);
  void *so = sysref_alloc(&cls);
  cr_assert(o && zo && so);
  sysref_activate(static_cast<sysref::sysref *>(so));
  rp::model &m = model_storage();
  rp::gather(m, rp::reason::request, false);
  bool cache = false, zone = false, klass = false;
  for (unsigned i = 0; i < m.ncaches; ++i)
    if (!std::strcmp(m.caches[i].name, "report-test-cache")) cache = m.caches[i].live == 1;
  for (unsigned i = 0; i < m.nzones; ++i)
    if (!std::strcmp(m.zones[i].name, "report-test-zone")) zone = m.zones[i].live == 1;
  for (unsigned i = 0; i < m.nsysref; ++i)
    if (!std::strcmp(m.sysref[i].name, "report-test-class")) klass = m.sysref[i].active == 1;
  cr_expect(cache, "the cache's row, one live");
  cr_expect(zone, "the zone's row, one live");
  cr_expect(klass, "the class's row, one active");
  for (unsigned i = 0; i < m.ncaches; ++i)
    cr_expect(std::strncmp(m.caches[i].name, "kmalloc-", 8), "size classes are not listed as caches");
  kmalloc_obj_zone_destroy(z);  // a destroyed zone leaves the list
  rp::gather(m, rp::reason::request, false);
  for (unsigned i = 0; i < m.nzones; ++i) cr_expect(std::strcmp(m.zones[i].name, "report-test-zone"));
  sysref_put(static_cast<sysref::sysref *>(so));
  objcache_put(oc, o);
  objcache_destroy(oc);
}

Test(report, text_report_has_every_section) {
  std::vector<void *> kept = churn();
  std::string path = temp_path("text");
  cr_assert_eq(sysref_report_path(path.c_str(), 0), 0);
  std::string text = slurp(path);
  const char *headings[] = {"sysref report: ", "per-CPU mode", "topology", "== totals ==",
                            "== calls ==", "== size classes ==", "== large blocks",
                            "== histogram", "== object caches ==", "== zones ==",
                            "== sysref classes ==", "== verdicts ==", "live bytes",
                            "allocated bytes", "internal fragmentation bytes", "resident bytes"};
  for (const char *h : headings) cr_expect(text.find(h) != std::string::npos, "text has \"%s\"", h);
  unlink(path.c_str());
  for (void *p : kept) sr_free(p);
}

Test(report, path_expands_percent_p_and_appends) {
  std::string pattern = "/tmp/test_report.%p.pid";
  std::string expect = temp_path("pid");
  cr_assert_eq(sysref_report_path(pattern.c_str(), SYSREF_REPORT_JSON), 0);
  cr_assert_eq(sysref_report_path(pattern.c_str(), SYSREF_REPORT_JSON), 0);
  std::string text = slurp(expect);
  cr_expect_eq(std::count(text.begin(), text.end(), '\n'), 2, "appended: two reports, one per line");
  char pid[32];
  std::snprintf(pid, sizeof pid, "\"pid\":%d,", static_cast<int>(getpid()));
  cr_expect(text.find(pid) != std::string::npos);
  unlink(expect.c_str());
}

Test(report, bad_arguments) {
  errno = 0;
  cr_expect_eq(sysref_report(1, 2), -1);
  cr_expect_eq(errno, EINVAL, "unknown flags");
  errno = 0;
  cr_expect_eq(sysref_report_path("/tmp/x", ~0u), -1);
  cr_expect_eq(errno, EINVAL);
  errno = 0;
  cr_expect_eq(sysref_report_path(nullptr, 0), -1);
  cr_expect_eq(errno, EINVAL);
  errno = 0;
  cr_expect_eq(sysref_report(-1, 0), -1);
  cr_expect_eq(errno, EBADF);
  errno = 0;
  cr_expect_eq(sysref_report_path("/nonexistent-dir/report", 0), -1);
  cr_expect_eq(errno, ENOENT);
}

Test(report, counting_off_leaves_requests_and_calls_at_zero) {
  cr_expect_not(rp::counting());
  rp::count_request(100);
  rp::count_call(rp::call::malloc);
  rp::model &m = model_storage();
  rp::gather(m, rp::reason::request, false);
  cr_expect_not(m.counting);
  cr_expect_eq(m.t.requested_bytes, 0u);
  cr_expect_eq(m.t.internal_fragmentation_bytes, 0u);
  for (uint64_t c : m.calls) cr_expect_eq(c, 0u);
  for (uint64_t c : m.histogram) cr_expect_eq(c, 0u);
}

Test(report, counting_on_fills_requests_histogram_and_calls, .init = stats_json) {
  cr_assert(rp::counting());
  std::vector<void *> kept;
  const size_t sizes[] = {1, 8, 9, 100, 4096, 5000, MiB, MiB + 1, 3 * MiB};
  uint64_t want = 0;
  for (size_t s : sizes) {
    rp::count_call(rp::call::malloc);
    rp::count_request(s);
    want += s;
    kept.push_back(sr_malloc(s));
  }
  rp::count_call(rp::call::free);
  rp::count_call(rp::call::foreign_free);
  rp::model &m = model_storage();
  rp::gather(m, rp::reason::exit, false);
  cr_expect(m.counting);
  cr_expect_eq(m.t.requested_bytes, want);
  cr_expect_eq(m.calls[static_cast<unsigned>(rp::call::malloc)], std::size(sizes));
  cr_expect_eq(m.calls[static_cast<unsigned>(rp::call::free)], 1u);
  cr_expect_eq(m.t.foreign_frees, 1u);
  const uint64_t hist[rp::hist_buckets] = {2, 1, 0, 0, 1, 0, 0, 0, 0, 1, 1, 0, 0, 0, 0, 0, 0, 1, 2};
  for (unsigned i = 0; i < rp::hist_buckets; ++i)
    cr_expect_eq(m.histogram[i], hist[i], "bucket <= %lu", static_cast<unsigned long>(rp::hist_bound(i)));
  cr_expect_eq(m.t.internal_fragmentation_bytes, m.t.allocated_bytes - want);
  bool live_verdict = false, foreign_verdict = false;
  for (unsigned i = 0; i < m.nverdicts; ++i) {
    live_verdict |= std::strstr(m.verdicts[i], "still live at exit") != nullptr;
    foreign_verdict |= std::strstr(m.verdicts[i], "did not hand out") != nullptr;
  }
  cr_expect(live_verdict, "blocks held at exit are a verdict");
  cr_expect(foreign_verdict, "foreign frees are a verdict");
  std::string path = temp_path("counting");
  cr_assert_eq(sysref_report_path(path.c_str(), SYSREF_REPORT_JSON), 0);
  std::string text = slurp(path);
  cr_expect(text.find("\"stats_counting\":true") != std::string::npos);
  cr_expect(python_check(full_check, path), "%s", text.c_str());
  unlink(path.c_str());
  for (void *p : kept) sr_free(p);
}

Test(report, a_sample_is_one_json_line) {
  std::string path = temp_path("sample");
  cr_assert_eq(rp::write_sample_path(path.c_str()), 0);
  const char *check = R"PY(
import json, sys
lines = open(sys.argv[1]).read().splitlines()
assert len(lines) == 1
s = json.loads(lines[0])
assert s["schema"] == "sysref-report/1" and s["kind"] == "sample"
for k in ["time_ms", "live_bytes", "resident_bytes", "mapped_bytes", "requested_bytes"]: assert k in s, k
)PY";
  cr_expect(python_check(check, path), "%s", slurp(path).c_str());
  unlink(path.c_str());
}
