// The JSON printer: one object on one line, schema "sysref-report/1". The
// keys are fixed (man/man3/sysref_report.3 lists them); every section is
// always present, empty arrays included, so consumers need no guessing.
#include "report.hpp"

namespace sysref::report {
namespace {

// Writes `"key":` with the separating comma when needed.
struct object {
  buffer &b;
  bool first = true;
  explicit object(buffer &bb) : b(bb) { b.put_char('{'); }
  void key(const char *k) {
    if (!first) b.put_char(',');
    first = false;
    b.put_json_string(k);
    b.put_char(':');
  }
  void u(const char *k, uint64_t v) { key(k), b.put_u64(v); }
  void i(const char *k, int64_t v) { key(k), b.put_i64(v); }
  void f(const char *k, double v, unsigned decimals) { key(k), b.put_fixed(v, decimals); }
  void s(const char *k, const char *v) { key(k), b.put_json_string(v); }
  void boolean(const char *k, bool v) { key(k), b.put(v ? "true" : "false"); }
  void end() { b.put_char('}'); }
};

// Arrays of objects: a comma between elements.
struct array {
  buffer &b;
  unsigned n = 0;
  array(object &o, const char *k) : b(o.b) {
    o.key(k);
    b.put_char('[');
  }
  object element() {
    if (n++) b.put_char(',');
    return object(b);
  }
  void end() { b.put_char(']'); }
};

void put_header(const model &m, object &o, const char *kind) {
  o.s("schema", "sysref-report/1");
  o.s("kind", kind);
  o.s("program", m.program);
  o.i("pid", m.pid);
  o.s("reason", reason_text(m.why));
  o.u("time_ms", m.time_ms);
}

void put_totals(const totals &t, object &o) {
  o.key("totals");
  object x(o.b);
  x.u("requested_bytes", t.requested_bytes);
  x.u("allocated_bytes", t.allocated_bytes);
  x.u("internal_fragmentation_bytes", t.internal_fragmentation_bytes);
  x.u("live_bytes", t.live_bytes);
  x.u("peak_live_bytes", t.peak_live_bytes);
  x.u("freed_bytes", t.freed_bytes);
  x.u("allocations", t.allocations);
  x.u("frees", t.frees);
  x.u("live_objects", t.live_objects);
  x.u("metadata_bytes", t.metadata_bytes);
  x.u("mapped_bytes", t.mapped_bytes);
  x.u("peak_mapped_bytes", t.peak_mapped_bytes);
  x.u("resident_bytes", t.resident_bytes);
  x.u("released_bytes", t.released_bytes);
  x.u("idle_bytes", t.idle_bytes);
  x.u("decayed_bytes", t.decayed_bytes);
  x.u("minor_faults", t.minor_faults);
  x.u("foreign_frees", t.foreign_frees);
  x.end();
}

void put_rows(const model &m, object &o) {
  array classes(o, "size_classes");
  for (unsigned i = 0; i < m.nclasses; ++i) {
    const class_row &r = m.classes[i];
    object e = classes.element();
    e.u("size", r.size);
    e.u("allocations", r.allocations);
    e.u("frees", r.frees);
    e.u("live", r.live);
    e.u("peak", r.peak);
    e.u("live_bytes", r.live * r.size);
    e.f("magazine_hit_rate", r.hit_rate, 4);
    e.u("depot_exchanges", r.depot_exchanges);
    e.u("slabs", r.slabs);
    e.u("contention", r.contention);
    e.end();
  }
  classes.end();

  o.key("large");
  object l(o.b);
  l.u("allocations", m.large_allocations);
  l.u("frees", m.large_frees);
  l.u("live", m.large_live);
  l.u("live_bytes", m.large_live_bytes);
  l.end();

  // The last bucket has no upper bound: "le" is null there.
  array hist(o, "histogram");
  for (unsigned i = 0; i < hist_buckets; ++i) {
    object e = hist.element();
    if (i + 1 < hist_buckets) e.u("le", hist_bound(i));
    else e.key("le"), o.b.put("null");
    e.u("count", m.histogram[i]);
    e.end();
  }
  hist.end();

  array caches(o, "caches");
  for (unsigned i = 0; i < m.ncaches; ++i) {
    const cache_row &r = m.caches[i];
    object e = caches.element();
    e.s("name", r.name);
    e.u("gets", r.gets);
    e.f("hit_rate", r.hit_rate, 4);
    e.u("live", r.live);
    e.u("cached", r.cached);
    e.end();
  }
  caches.end();

  array zones(o, "zones");
  for (unsigned i = 0; i < m.nzones; ++i) {
    const zone_row &r = m.zones[i];
    object e = zones.element();
    e.s("name", r.name);
    e.u("allocs", r.allocs);
    e.u("frees", r.frees);
    e.u("live", r.live);
    e.u("slabs", r.slabs);
    e.end();
  }
  zones.end();

  array cls(o, "classes");
  for (unsigned i = 0; i < m.nsysref; ++i) {
    const sysref_row &r = m.sysref[i];
    object e = cls.element();
    e.s("name", r.name);
    e.u("live", r.live);
    e.u("active", r.active);
    e.u("cached", r.cached);
    e.u("retired", r.retired);
    e.u("lookups", r.lookups);
    e.end();
  }
  cls.end();
}

}  // namespace

void print_json(const model &m, buffer &b) {
  object o(b);
  put_header(m, o, "report");
  o.f("duration_s", static_cast<double>(m.time_ms) / 1000.0, 3);
  o.u("cpus", m.cpus);
  o.s("percpu_mode", m.percpu_mode);
  o.key("topology");
  object topo(b);
  topo.u("packages", m.packages);
  topo.u("cores", m.cores);
  topo.u("pus", m.pus);
  topo.u("numa_nodes", m.numa_nodes);
  topo.boolean("from_hwloc", m.from_hwloc);
  topo.end();
  o.boolean("stats_counting", m.counting);
  put_totals(m.t, o);
  o.key("calls");
  object calls(b);
  for (unsigned i = 0; i < calls_count; ++i) calls.u(call_name(static_cast<call>(i)), m.calls[i]);
  calls.end();
  put_rows(m, o);
  array v(o, "verdicts");
  for (unsigned i = 0; i < m.nverdicts; ++i) {
    if (v.n++) b.put_char(',');
    b.put_json_string(m.verdicts[i]);
  }
  v.end();
  o.end();
  b.put_char('\n');
}

void print_sample(const model &m, buffer &b) {
  object o(b);
  put_header(m, o, "sample");
  o.u("live_bytes", m.t.live_bytes);
  o.u("resident_bytes", m.t.resident_bytes);
  o.u("mapped_bytes", m.t.mapped_bytes);
  o.u("requested_bytes", m.t.requested_bytes);
  o.u("allocated_bytes", m.t.allocated_bytes);
  o.u("allocations", m.t.allocations);
  o.u("frees", m.t.frees);
  o.u("minor_faults", m.t.minor_faults);
  o.end();
  b.put_char('\n');
}

}  // namespace sysref::report
