// The text printer, and the buffer both printers write into: our own
// number formatting (no snprintf, no locale, no allocation).
#include "report.hpp"

namespace sysref::report {

void buffer::put(const char *s, size_t n) {
  if (len + n > cap) {
    overflow = true;
    n = cap - len;
  }
  __builtin_memcpy(p + len, s, n);
  len += n;
}

void buffer::put(const char *s) { put(s, __builtin_strlen(s)); }
void buffer::put_char(char c) { put(&c, 1); }

void buffer::pad(size_t from_len, unsigned width) {
  while (len - from_len < width && len < cap) p[len++] = ' ';
}

void buffer::put_u64(uint64_t v, unsigned width) {
  char d[24];
  unsigned k = 0;
  do d[k++] = static_cast<char>('0' + v % 10);
  while (v /= 10);
  for (unsigned i = k; i < width; ++i) put_char(' ');
  while (k) put_char(d[--k]);
}

void buffer::put_i64(int64_t v) {
  if (v < 0) {
    put_char('-');
    put_u64(~static_cast<uint64_t>(v) + 1);
  } else {
    put_u64(static_cast<uint64_t>(v));
  }
}

void buffer::put_fixed(double v, unsigned decimals, unsigned width) {
  if (!(v == v)) v = 0;  // NaN
  bool neg = v < 0;
  if (neg) v = -v;
  uint64_t scale = 1;
  for (unsigned i = 0; i < decimals; ++i) scale *= 10;
  uint64_t all = static_cast<uint64_t>(v * static_cast<double>(scale) + 0.5);
  char tmp[48];
  buffer t{tmp, 0, sizeof tmp, false};
  if (neg) t.put_char('-');
  t.put_u64(all / scale);
  if (decimals) {
    t.put_char('.');
    uint64_t frac = all % scale;
    for (uint64_t d = scale / 10; d; d /= 10) t.put_char(static_cast<char>('0' + frac / d % 10));
  }
  for (size_t i = t.len; i < width; ++i) put_char(' ');
  put(tmp, t.len);
}

void buffer::put_json_string(const char *s) {
  static constexpr char hex[] = "0123456789abcdef";
  put_char('"');
  for (; *s; ++s) {
    unsigned char c = static_cast<unsigned char>(*s);
    if (c == '"' || c == '\\') {
      put_char('\\');
      put_char(static_cast<char>(c));
    } else if (c < 0x20) {
      char e[6] = {'\\', 'u', '0', '0', hex[c >> 4], hex[c & 15]};
      put(e, 6);
    } else {
      put_char(static_cast<char>(c));
    }
  }
  put_char('"');
}

namespace {

const char *reason_name(reason r) {
  switch (r) {
    case reason::exit: return "exit";
    case reason::signal: return "signal";
    case reason::request: return "request";
    case reason::interval: return "interval";
  }
  return "?";
}

void heading(buffer &b, const char *title) {
  b.put("\n== ");
  b.put(title);
  b.put(" ==\n");
}

void total_line(buffer &b, const char *label, uint64_t v, const char *note = nullptr) {
  size_t at = b.len;
  b.put("  ");
  b.put(label);
  b.pad(at, 32);
  b.put_u64(v, 16);
  if (note) {
    b.put("  ");
    b.put(note);
  }
  b.put_char('\n');
}

void cell(buffer &b, const char *s, unsigned width) {
  size_t at = b.len;
  b.put(s);
  b.pad(at, width);
}

void print_totals(const model &m, buffer &b) {
  const totals &t = m.t;
  heading(b, "totals");
  const char *off = m.counting ? nullptr : "(counting off: set SYSREF_STATS)";
  total_line(b, "requested bytes", t.requested_bytes, off);
  total_line(b, "allocated bytes", t.allocated_bytes, "sum of size-class and large rows");
  total_line(b, "internal fragmentation bytes", t.internal_fragmentation_bytes, "allocated - requested");
  total_line(b, "freed bytes", t.freed_bytes);
  total_line(b, "live bytes", t.live_bytes, "allocated - freed");
  total_line(b, "peak live bytes", t.peak_live_bytes, "upper bound: sum of per-class peaks");
  total_line(b, "allocations", t.allocations);
  total_line(b, "frees", t.frees);
  total_line(b, "live objects", t.live_objects);
  total_line(b, "metadata bytes", t.metadata_bytes);
  total_line(b, "mapped bytes", t.mapped_bytes);
  total_line(b, "peak mapped bytes", t.peak_mapped_bytes);
  total_line(b, "resident bytes", t.resident_bytes, "whole process");
  total_line(b, "released bytes", t.released_bytes, "given back to the OS");
  total_line(b, "idle bytes", t.idle_bytes, "free, kept mapped for reuse until the decay timer");
  total_line(b, "decayed bytes", t.decayed_bytes, "given back when the timer ran out");
  total_line(b, "minor faults", t.minor_faults, "whole process");
  total_line(b, "foreign frees", t.foreign_frees);
}

void print_calls(const model &m, buffer &b) {
  heading(b, "calls");
  if (!m.counting) {
    b.put("  (not counted: SYSREF_STATS is off)\n");
    return;
  }
  unsigned shown = 0;
  for (unsigned i = 0; i < calls_count; ++i) {
    if (!m.calls[i]) continue;
    size_t at = b.len;
    b.put("  ");
    b.put(call_name(static_cast<call>(i)));
    b.pad(at, 22);
    b.put_u64(m.calls[i], 14);
    b.put(++shown % 2 ? "   " : "\n");
  }
  if (shown % 2) b.put_char('\n');
  if (!shown) b.put("  (none counted)\n");
}

void print_classes(const model &m, buffer &b) {
  heading(b, "size classes");
  b.put("      size   allocations         frees          live          peak    live bytes  hit %"
        "     depot  slabs  contention\n");
  for (unsigned i = 0; i < m.nclasses; ++i) {
    const class_row &r = m.classes[i];
    b.put_u64(r.size, 10);
    b.put_u64(r.allocations, 14);
    b.put_u64(r.frees, 14);
    b.put_u64(r.live, 14);
    b.put_u64(r.peak, 14);
    b.put_u64(r.live * r.size, 14);
    b.put_fixed(r.hit_rate * 100, 1, 7);
    b.put_u64(r.depot_exchanges, 10);
    b.put_u64(r.slabs, 7);
    b.put_u64(r.contention, 12);
    b.put_char('\n');
  }
  if (!m.nclasses) b.put("  (none used)\n");
}

void print_large(const model &m, buffer &b) {
  heading(b, "large blocks (over 32 KiB)");
  b.put("   allocations         frees          live    live bytes\n");
  b.put_u64(m.large_allocations, 14);
  b.put_u64(m.large_frees, 14);
  b.put_u64(m.large_live, 14);
  b.put_u64(m.large_live_bytes, 14);
  b.put_char('\n');
}

void print_histogram(const model &m, buffer &b) {
  heading(b, "histogram of requested sizes");
  if (!m.counting) {
    b.put("  (not counted: SYSREF_STATS is off)\n");
    return;
  }
  uint64_t most = 1;
  for (uint64_t c : m.histogram) most = c > most ? c : most;
  for (unsigned i = 0; i < hist_buckets; ++i) {
    b.put(i + 1 < hist_buckets ? "  <= " : "   > ");
    b.put_u64(hist_bound(i < hist_buckets - 1 ? i : hist_buckets - 2), 8);
    b.put_u64(m.histogram[i], 14);
    b.put("  ");
    for (uint64_t k = 0, n = m.histogram[i] * 40 / most; k < n; ++k) b.put_char('#');
    b.put_char('\n');
  }
}

void print_rows(const model &m, buffer &b) {
  heading(b, "object caches");
  if (!m.ncaches) b.put("  (none)\n");
  else b.put("  name                                   gets  hit %          live        cached\n");
  for (unsigned i = 0; i < m.ncaches; ++i) {
    const cache_row &r = m.caches[i];
    b.put("  ");
    cell(b, r.name, 32);
    b.put_u64(r.gets, 12);
    b.put_fixed(r.hit_rate * 100, 1, 7);
    b.put_u64(r.live, 14);
    b.put_u64(r.cached, 14);
    b.put_char('\n');
  }
  heading(b, "zones");
  if (!m.nzones) b.put("  (none)\n");
  else b.put("  name                                 allocs         frees          live   slabs\n");
  for (unsigned i = 0; i < m.nzones; ++i) {
    const zone_row &r = m.zones[i];
    b.put("  ");
    cell(b, r.name, 32);
    b.put_u64(r.allocs, 12);
    b.put_u64(r.frees, 14);
    b.put_u64(r.live, 14);
    b.put_u64(r.slabs, 8);
    b.put_char('\n');
  }
  heading(b, "sysref classes");
  if (!m.nsysref) b.put("  (none)\n");
  else b.put("  name                                   live        active        cached       retired       lookups\n");
  for (unsigned i = 0; i < m.nsysref; ++i) {
    const sysref_row &r = m.sysref[i];
    b.put("  ");
    cell(b, r.name, 32);
    b.put_u64(r.live, 12);
    b.put_u64(r.active, 14);
    b.put_u64(r.cached, 14);
    b.put_u64(r.retired, 14);
    b.put_u64(r.lookups, 14);
    b.put_char('\n');
  }
}

}  // namespace

void print_text(const model &m, buffer &b) {
  b.put("sysref report: ");
  b.put(m.program);
  b.put(", pid ");
  b.put_i64(m.pid);
  b.put(", reason ");
  b.put(reason_name(m.why));
  b.put(", after ");
  b.put_fixed(static_cast<double>(m.time_ms) / 1000.0, 3);
  b.put(" s\n  ");
  b.put_u64(m.cpus);
  b.put(" CPUs, per-CPU mode ");
  b.put(m.percpu_mode);
  if (m.pus) {
    b.put("; topology: packages ");
    b.put_u64(m.packages);
    b.put(", cores ");
    b.put_u64(m.cores);
    b.put(", PUs ");
    b.put_u64(m.pus);
    b.put(", NUMA nodes ");
    b.put_u64(m.numa_nodes);
    b.put(m.from_hwloc ? " (hwloc)" : " (hwloc not found: CPU count only)");
  }
  b.put(m.counting ? "\n  statistics counting on\n" : "\n  statistics counting off\n");
  print_totals(m, b);
  print_calls(m, b);
  print_classes(m, b);
  print_large(m, b);
  print_histogram(m, b);
  print_rows(m, b);
  heading(b, "verdicts");
  if (!m.nverdicts) b.put("  nothing looks wrong\n");
  for (unsigned i = 0; i < m.nverdicts; ++i) {
    b.put("  - ");
    b.put(m.verdicts[i]);
    b.put_char('\n');
  }
}

const char *reason_text(reason r) { return reason_name(r); }

}  // namespace sysref::report
