// tools/render.cpp: the text and JSON renderings of the reports, and the
// number formatting they share with the plot.
#include <algorithm>
#include <cinttypes>
#include <cmath>
#include <cstring>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "stat.hpp"

namespace sysref_stat {

using json::value;

// ---- numbers ---------------------------------------------------------------------

std::string format_count(double n) {
  char buf[64];
  if (std::isfinite(n) && n == std::floor(n) && std::fabs(n) < 1e18) {
    snprintf(buf, sizeof buf, "%" PRId64, static_cast<int64_t>(n));
    std::string digits(buf), out;
    size_t first = digits[0] == '-' ? 1 : 0;
    for (size_t j = 0; j < digits.size(); j++) {
      if (j > first && (digits.size() - j) % 3 == 0) out += ',';
      out += digits[j];
    }
    return out;
  }
  snprintf(buf, sizeof buf, "%.3g", n);
  return buf;
}

std::string format_bytes(double n) {
  static const char *const units[] = {"KiB", "MiB", "GiB", "TiB", "PiB"};
  char buf[64];
  if (std::fabs(n) < 1024) {
    snprintf(buf, sizeof buf, "%.0f B", n);
    return buf;
  }
  int u = -1;
  while (std::fabs(n) >= 1024 && u < 4) {
    n /= 1024;
    u++;
  }
  int decimals = std::fabs(n) < 10 ? 2 : std::fabs(n) < 100 ? 1 : 0;
  snprintf(buf, sizeof buf, "%.*f %s", decimals, n, units[u]);
  return buf;
}

std::string format_size(double n) {
  static const char *const suffix[] = {"", "K", "M", "G", "T", "P"};
  int u = 0;
  while (n >= 1024 && u < 5) {
    n /= 1024;
    u++;
  }
  char buf[64];
  snprintf(buf, sizeof buf, "%.3g%s", n, suffix[u]);
  return buf;
}

namespace {

// ---- a table of text cells -----------------------------------------------------------

struct table {
  std::vector<std::string> head;
  std::vector<bool> left;  // column is left-aligned (text)
  std::vector<std::vector<std::string>> rows;

  void print(FILE *out, const char *indent) const {
    std::vector<size_t> width(head.size(), 0);
    for (size_t c = 0; c < head.size(); c++) width[c] = head[c].size();
    for (const auto &r : rows)
      for (size_t c = 0; c < r.size() && c < width.size(); c++) width[c] = std::max(width[c], r[c].size());
    auto line = [&](const std::vector<std::string> &cells) {
      std::string s = indent;
      for (size_t c = 0; c < head.size(); c++) {
        const std::string &cell = c < cells.size() ? cells[c] : std::string();
        std::string pad(width[c] - std::min(width[c], cell.size()), ' ');
        if (c) s += "  ";
        s += left[c] ? cell + (c + 1 < head.size() ? pad : std::string()) : pad + cell;
      }
      while (!s.empty() && s.back() == ' ') s.pop_back();
      fprintf(out, "%s\n", s.c_str());
    };
    if (!head.empty()) line(head);
    for (const auto &r : rows) line(r);
  }
};

// Column headings for the keys the report layer writes; other keys are shown
// with their underscores as spaces.
std::string label_of(std::string_view key) {
  static const std::pair<const char *, const char *> labels[] = {
      {"size", "size (B)"},
      {"allocations", "allocs"},
      {"live_bytes", "live bytes"},
      {"magazine_hit_rate", "mag hit"},
      {"depot_exchanges", "depot xchg"},
      {"hit_rate", "hit rate"},
      {"le", "<= bytes"},
  };
  for (const auto &[k, l] : labels)
    if (key == k) return l;
  std::string s(key);
  std::replace(s.begin(), s.end(), '_', ' ');
  return s;
}

bool ends_with(std::string_view s, std::string_view tail) {
  return s.size() >= tail.size() && s.substr(s.size() - tail.size()) == tail;
}

bool is_rate(std::string_view key) { return ends_with(key, "rate") || ends_with(key, "ratio"); }

// One cell: rates as percentages, *_bytes in binary units, counts grouped.
std::string cell(std::string_view key, const value &v) {
  switch (v.k) {
    case value::kind::null: return "-";
    case value::kind::boolean: return v.b ? "yes" : "no";
    case value::kind::string: return v.str;
    case value::kind::number: {
      if (is_rate(key)) {
        char buf[32];
        snprintf(buf, sizeof buf, "%.1f%%", v.num * 100);  // rates are fractions
        return buf;
      }
      if (ends_with(key, "_bytes")) return format_bytes(v.num);
      return format_count(v.num);
    }
    case value::kind::array: return "[" + std::to_string(v.items.size()) + " items]";
    case value::kind::object: return "{...}";
  }
  return "";
}

// An array of objects as a table; columns are the keys in order of first use.
void print_rows(FILE *out, const char *title, const value &arr) {
  if (!arr.is_array() || arr.items.empty()) return;
  std::vector<std::string> keys;
  for (const value &row : arr.items)
    for (const json::member &m : row.members)
      if (std::find(keys.begin(), keys.end(), m.key) == keys.end()) keys.push_back(m.key);
  table t;
  for (const std::string &k : keys) {
    t.head.push_back(label_of(k));
    const value *first = nullptr;
    for (const value &row : arr.items)
      if ((first = row.get(k))) break;
    t.left.push_back(first && first->is_string());
  }
  for (const value &row : arr.items) {
    std::vector<std::string> r;
    for (const std::string &k : keys) {
      const value *v = row.get(k);
      r.push_back(v ? cell(k, *v) : "");
    }
    t.rows.push_back(std::move(r));
  }
  fprintf(out, "\n%s\n", title);
  t.print(out, "  ");
}

// A row label for a list: "released_bytes" reads "released to the OS";
// "_bytes" is dropped where the value says it, unless another key would
// then read the same ("live" and "live_bytes").
std::string pair_label(const value &obj, std::string_view key) {
  static const std::pair<const char *, const char *> labels[] = {
      {"live_bytes", "live"},           {"mapped_bytes", "mapped from the OS"},
      {"released_bytes", "released to the OS"}, {"metadata_bytes", "metadata (the allocator's own)"},
      {"foreign_frees", "foreign frees"},
  };
  std::string label(key);
  if (ends_with(key, "_bytes")) {
    std::string bare(key.substr(0, key.size() - 6));
    if (!obj.get(bare)) label = bare;
  }
  for (const auto &[k, l] : labels)
    if (key == k && label != key) label = l;
  std::replace(label.begin(), label.end(), '_', ' ');
  return label;
}

// An object of name -> value pairs as a list: the label, the value, and for
// byte counts of 1 KiB or more the exact number.
void print_pairs(FILE *out, const char *title, const value &obj) {
  if (!obj.is_object() || obj.members.empty()) return;
  std::vector<std::vector<std::string>> rows;
  std::vector<size_t> width(3, 0);
  for (const json::member &m : obj.members) {
    std::string exact;
    if (m.val.is_number() && ends_with(m.key, "_bytes") && std::fabs(m.val.num) >= 1024)
      exact = format_count(m.val.num) + " B";
    std::string label = pair_label(obj, m.key);
    rows.push_back({label, cell(m.key, m.val), exact});
    for (size_t c = 0; c < 3; c++) width[c] = std::max(width[c], rows.back()[c].size());
  }
  fprintf(out, "\n%s\n", title);
  for (const auto &r : rows) {
    fprintf(out, "  %-*s  %*s", static_cast<int>(width[0]), r[0].c_str(), static_cast<int>(width[1]),
            r[1].c_str());
    if (!r[2].empty()) fprintf(out, "  %*s", static_cast<int>(width[2]), r[2].c_str());
    fprintf(out, "\n");
  }
}

// Calls per function: only the functions called, in columns of name and count.
void print_calls(FILE *out, const value &calls) {
  if (!calls.is_object()) return;
  std::vector<std::pair<std::string, std::string>> used;
  for (const json::member &m : calls.members)
    if (!m.val.is_number() || m.val.num != 0) used.emplace_back(m.key, cell(m.key, m.val));
  fprintf(out, "\nCalls\n");
  if (used.empty()) {
    fprintf(out, "  none counted\n");
    return;
  }
  constexpr size_t per_line = 3;
  size_t wn = 0, wc = 0;
  for (const auto &[n, c] : used) {
    wn = std::max(wn, n.size());
    wc = std::max(wc, c.size());
  }
  for (size_t j = 0; j < used.size(); j++) {
    fprintf(out, "%s%-*s %*s", j % per_line ? "    " : "  ", static_cast<int>(wn), used[j].first.c_str(),
            static_cast<int>(wc), used[j].second.c_str());
    if (j % per_line == per_line - 1 || j + 1 == used.size()) fprintf(out, "\n");
  }
}

}  // namespace

// A histogram bucket's bound: "512" for le 512, "1K"; "> 1M" for the last,
// open bucket (le null).
std::string bucket_label(const value &hist, size_t j) {
  const value *le = hist.items[j].get("le");
  if (le && le->is_number()) return format_size(le->num);
  if (le && le->is_string()) return le->str;
  if (j > 0)
    if (const value *prev = hist.items[j - 1].get("le"); prev && prev->is_number()) return "> " + format_size(prev->num);
  return "more";
}

namespace {

// The request size histogram with a bar per bucket.
void print_histogram(FILE *out, const value &hist) {
  if (!hist.is_array() || hist.items.empty()) return;
  double top = 0;
  for (const value &b : hist.items) top = std::max(top, b.number("count"));
  fprintf(out, "\nRequest sizes\n");
  if (top == 0) {
    fprintf(out, "  none counted\n");
    return;
  }
  // Only the buckets from the first used to the last used.
  size_t lo = hist.items.size(), hi = 0;
  for (size_t j = 0; j < hist.items.size(); j++)
    if (hist.items[j].number("count") > 0) {
      lo = std::min(lo, j);
      hi = j;
    }
  table t;
  t.head = {"<= bytes", "count", ""};
  t.left = {false, false, true};
  for (size_t j = lo; j <= hi; j++) {
    const value &b = hist.items[j];
    double count = b.number("count");
    int len = static_cast<int>(std::lround(count / top * 40));
    if (count > 0 && len == 0) len = 1;
    std::string bound = bucket_label(hist, j);
    t.rows.push_back({bound, format_count(count), std::string(static_cast<size_t>(len), '#')});
  }
  t.print(out, "  ");
}

std::string plural(double n, const char *one, const char *many) {
  return format_count(n) + " " + (n == 1 ? one : many);
}

void print_heading(FILE *out, const process &p, const outcome &how) {
  std::string status;
  if (p.parent) {
    char buf[96];
    if (how.exited) {
      snprintf(buf, sizeof buf, ", the program; exit status %d", how.code);
    } else {
      const char *name = sigabbrev_np(how.code);
      snprintf(buf, sizeof buf, ", the program; killed by signal %d (SIG%s)", how.code, name ? name : "?");
    }
    status = buf;
  }
  fprintf(out, "== pid %ld: %s%s ==\n", p.pid, p.program().c_str(), status.c_str());
  if (!p.error.empty()) fprintf(out, "warning: %s: %s\n", p.path.c_str(), p.error.c_str());
  const value *r = p.report;
  if (!r && p.parent && !how.exited) {
    fprintf(out, "no report: a signal ended the program before it could write one\n");
    return;
  }
  if (!r) {
    fprintf(out, "no report: the process did not load the shim (static or set-user-ID program?),\n"
                 "or ended without running its exit handlers (_exit, exec, a fatal signal)\n");
    return;
  }
  std::string line = "report ";
  std::string_view reason = r->text("reason", "?");
  line += reason == "exit" ? "at exit" : reason == "signal" ? "on a signal" : reason == "request" ? "on request" : std::string(reason);
  char buf[160];
  snprintf(buf, sizeof buf, ", %.3f s after start", r->number("duration_s", r->number("time_ms") / 1000));
  line += buf;
  if (const value *c = r->get("cpus"); c && c->is_number()) line += "; " + plural(c->num, "CPU", "CPUs");
  if (std::string_view mode = r->text("percpu_mode"); !mode.empty()) line += ", per-CPU mode " + std::string(mode);
  if (const value *sc = r->get("stats_counting"); sc && sc->k == value::kind::boolean)
    line += sc->b ? ", counting on" : ", counting off (calls and sizes not counted)";
  fprintf(out, "%s\n", line.c_str());
  if (const value *t = r->get("topology"); t && t->is_object()) {
    std::string topo = "topology: " + plural(t->number("packages"), "package", "packages") + ", " +
                       plural(t->number("cores"), "core", "cores") + ", " + plural(t->number("pus"), "PU", "PUs") +
                       ", " + plural(t->number("numa_nodes"), "NUMA node", "NUMA nodes");
    if (const value *h = t->get("from_hwloc"); h && h->k == value::kind::boolean)
      topo += h->b ? " (hwloc)" : " (without hwloc)";
    fprintf(out, "%s\n", topo.c_str());
  }
}

void print_samples(FILE *out, const process &p) {
  if (p.samples.empty() && !p.earlier_samples) return;
  fprintf(out, "\nSamples\n");
  if (!p.samples.empty()) {
    double t0 = p.samples.front()->number("time_ms"), t1 = p.samples.back()->number("time_ms");
    double live_peak = 0, rss_peak = 0, live_last = p.samples.back()->number("live_bytes");
    for (const value *s : p.samples) {
      live_peak = std::max(live_peak, s->number("live_bytes"));
      rss_peak = std::max(rss_peak, s->number("resident_bytes"));
    }
    fprintf(out, "  %s from %s ms to %s ms; live heap peak %s (last %s), resident peak %s\n",
            plural(static_cast<double>(p.samples.size()), "sample", "samples").c_str(), format_count(t0).c_str(),
            format_count(t1).c_str(), format_bytes(live_peak).c_str(), format_bytes(live_last).c_str(),
            format_bytes(rss_peak).c_str());
  }
  if (p.earlier_samples)
    fprintf(out, "  %zu earlier samples, of a program this process ran before execve, not shown\n",
            p.earlier_samples);
}

void print_report(FILE *out, const process &p) {
  const value &r = *p.report;
  if (const value *v = r.get("totals")) print_pairs(out, "Totals", *v);
  if (const value *v = r.get("calls")) print_calls(out, *v);
  if (const value *v = r.get("size_classes")) {
    if (v->is_array() && v->items.empty()) fprintf(out, "\nSize classes\n  none used\n");
    print_rows(out, "Size classes", *v);
  }
  if (const value *v = r.get("large")) print_pairs(out, "Large allocations", *v);
  if (const value *v = r.get("histogram")) print_histogram(out, *v);
  if (const value *v = r.get("caches")) print_rows(out, "Object caches", *v);
  if (const value *v = r.get("zones")) print_rows(out, "Zones", *v);
  if (const value *v = r.get("classes")) print_rows(out, "SYSREF classes", *v);
  // Sections this version does not know yet, shown as they come.
  static const char *const known[] = {"schema",       "kind",       "program",   "pid",      "reason",
                                      "time_ms",      "duration_s", "cpus",      "percpu_mode", "topology",
                                      "stats_counting", "totals",   "calls",     "size_classes", "large",
                                      "histogram",    "caches",     "zones",     "classes",  "verdicts"};
  for (const json::member &m : r.members) {
    if (std::find_if(std::begin(known), std::end(known), [&](const char *k) { return m.key == k; }) != std::end(known))
      continue;
    std::string title = label_of(m.key);
    if (!title.empty()) title[0] = static_cast<char>(toupper(static_cast<unsigned char>(title[0])));
    if (m.val.is_object()) {
      print_pairs(out, title.c_str(), m.val);
    } else if (m.val.is_array() && !m.val.items.empty() && m.val.items[0].is_object()) {
      print_rows(out, title.c_str(), m.val);
    } else {
      fprintf(out, "\n%s: %s\n", title.c_str(), cell(m.key, m.val).c_str());
    }
  }
  print_samples(out, p);
  fprintf(out, "\nVerdicts\n");
  const value *v = r.get("verdicts");
  if (!v || !v->is_array() || v->items.empty()) {
    fprintf(out, "  nothing looks wrong\n");
  } else {
    for (const value &item : v->items) fprintf(out, "  - %s\n", cell("", item).c_str());
  }
}

}  // namespace

// With several processes, one line each before the reports.
static void print_summary(FILE *out, const std::vector<process> &procs) {
  table t;
  t.head = {"pid", "program", "allocations", "peak live", "live at end", "resident", "time (s)"};
  t.left = {false, true, false, false, false, false, false};
  for (const process &p : procs) {
    std::vector<std::string> row = {std::to_string(p.pid), p.program() + (p.parent ? " (the program)" : "")};
    const value *tot = p.report ? p.report->get("totals") : nullptr;
    if (tot) {
      char secs[32];
      snprintf(secs, sizeof secs, "%.3f", p.report->number("duration_s"));
      row.insert(row.end(), {format_count(tot->number("allocations")), format_bytes(tot->number("peak_live_bytes")),
                             format_bytes(tot->number("live_bytes")), format_bytes(tot->number("resident_bytes")),
                             secs});
    } else {
      row.push_back("no report");
    }
    t.rows.push_back(std::move(row));
  }
  fprintf(out, "sysref-stat: %zu processes, each with its report below\n", procs.size());
  t.print(out, "  ");
  fprintf(out, "\n");
}

void print_text(FILE *out, const std::vector<process> &procs, const outcome &how) {
  if (procs.size() > 1) print_summary(out, procs);
  for (size_t j = 0; j < procs.size(); j++) {
    if (j) fprintf(out, "\n");
    print_heading(out, procs[j], how);
    if (procs[j].report) {
      print_report(out, procs[j]);
    } else {
      print_samples(out, procs[j]);
    }
  }
}

void print_json(FILE *out, const std::vector<process> &procs) {
  fprintf(out, "[");
  for (size_t j = 0; j < procs.size(); j++) {
    const process &p = procs[j];
    fprintf(out, j ? ",\n" : "\n");
    std::string samples;
    for (const json::document &d : p.docs)
      if (std::find(p.samples.begin(), p.samples.end(), &d.root) != p.samples.end()) {
        samples += samples.empty() ? "" : ",";
        samples.append(p.text, d.begin, d.end - d.begin);
      }
    if (p.report_doc) {
      std::string raw = p.text.substr(p.report_doc->begin, p.report_doc->end - p.report_doc->begin);
      if (!samples.empty()) {
        raw.pop_back();  // the closing '}'
        raw += (p.report->members.empty() ? "\"samples\":[" : ",\"samples\":[") + samples + "]}";
      }
      fprintf(out, "%s", raw.c_str());
    } else {
      // No report (see print_heading): say so, keeping what samples there are.
      fprintf(out, "{\"schema\":\"sysref-report/1\",\"kind\":\"none\",\"pid\":%ld,\"samples\":[%s]}", p.pid,
              samples.c_str());
    }
  }
  fprintf(out, "\n]\n");
}

}  // namespace sysref_stat
