// tools/plot.cpp: sysref-stat --plot, a hand-written SVG. Per process, a
// line chart of live heap bytes and resident bytes over time (ms on x, MiB
// on y) from the samples and the final report, and a bar chart of the
// request size histogram (bucket bound in bytes on x, count on y).
#include <algorithm>
#include <cerrno>
#include <cmath>
#include <string>
#include <string_view>
#include <vector>

#include "stat.hpp"

namespace sysref_stat {

namespace {

using json::value;

constexpr double page_w = 900;
constexpr double block_h = 630;  // one process: line chart and histogram
constexpr double top_h = 50;     // the page title
constexpr size_t max_drawn = 4;  // processes drawn: the program and the 3 largest others
constexpr const char *live_color = "#1f77b4";
constexpr const char *rss_color = "#e6550d";
constexpr const char *bar_color = "#4c72b0";

std::string esc(std::string_view s) {
  std::string out;
  for (char c : s) {
    switch (c) {
      case '&': out += "&amp;"; break;
      case '<': out += "&lt;"; break;
      case '>': out += "&gt;"; break;
      case '"': out += "&quot;"; break;
      default:
        // Control characters are not allowed in XML 1.0.
        if (static_cast<unsigned char>(c) >= 0x20 || c == '\t' || c == '\n') out += c;
    }
  }
  return out;
}

std::string num(double v) {
  char buf[32];
  snprintf(buf, sizeof buf, "%.1f", v);
  return buf;
}

// Round axis steps: 1, 2, 2.5 or 5 times a power of ten, about n ticks over [0, top].
double nice_step(double top, int n) {
  if (!(top > 0)) return 1;
  double raw = top / n, p = std::pow(10, std::floor(std::log10(raw)));
  for (double m : {1.0, 2.0, 2.5, 5.0, 10.0})
    if (m * p >= raw) return m * p;
  return 10 * p;
}

// A tick label with as many decimals as the step needs.
std::string tick_label(double v, double step) {
  int decimals = step >= 1 ? 0 : static_cast<int>(std::ceil(-std::log10(step) - 1e-9));
  if (step < 1 && std::fabs(step * std::pow(10, decimals) - std::round(step * std::pow(10, decimals))) > 1e-6)
    decimals++;  // 0.25
  char buf[48];
  if (decimals == 0) return format_count(std::round(v));
  snprintf(buf, sizeof buf, "%.*f", decimals, v);
  return buf;
}

struct svg {
  std::string s;
  void text(double x, double y, std::string_view t, const char *extra = "") {
    s += "<text x=\"" + num(x) + "\" y=\"" + num(y) + "\" " + extra + ">" + esc(t) + "</text>\n";
  }
  void line(double x1, double y1, double x2, double y2, const char *style) {
    s += "<line x1=\"" + num(x1) + "\" y1=\"" + num(y1) + "\" x2=\"" + num(x2) + "\" y2=\"" + num(y2) + "\" " +
         style + "/>\n";
  }
  void rect(double x, double y, double w, double h, const char *style) {
    s += "<rect x=\"" + num(x) + "\" y=\"" + num(y) + "\" width=\"" + num(w) + "\" height=\"" + num(h) + "\" " +
         style + "/>\n";
  }
};

// A plot area with a y axis from 0 to top (rounded up to a whole tick).
struct frame {
  double x0, y0, w, h;  // the plot area, top left corner and size
  double y_top = 1, y_step = 1;
  double y(double v) const { return y0 + h - v / y_top * h; }
};

void y_axis(svg &g, frame &f, double top, const std::string &label) {
  f.y_step = nice_step(top > 0 ? top : 1, 5);
  f.y_top = std::ceil((top > 0 ? top : 1) / f.y_step - 1e-9) * f.y_step;
  for (double v = 0; v <= f.y_top + f.y_step / 2; v += f.y_step) {
    double y = f.y(v);
    g.line(f.x0, y, f.x0 + f.w, y, "stroke=\"#dddddd\" stroke-width=\"1\"");
    g.line(f.x0 - 5, y, f.x0, y, "stroke=\"#333333\"");
    g.text(f.x0 - 8, y + 4, tick_label(v, f.y_step), "text-anchor=\"end\"");
  }
  g.line(f.x0, f.y0, f.x0, f.y0 + f.h, "stroke=\"#333333\" stroke-width=\"1.5\"");
  g.line(f.x0, f.y0 + f.h, f.x0 + f.w, f.y0 + f.h, "stroke=\"#333333\" stroke-width=\"1.5\"");
  double cx = f.x0 - 62, cy = f.y0 + f.h / 2;
  g.text(cx, cy, label,
         ("text-anchor=\"middle\" font-weight=\"bold\" transform=\"rotate(-90 " + num(cx) + " " + num(cy) + ")\"")
             .c_str());
}

struct point {
  double t, live, rss;
};

// Live heap and resident memory over time.
void memory_chart(svg &g, const process &p, double top) {
  std::vector<point> pts;
  for (const value *s : p.samples)
    pts.push_back({s->number("time_ms"), s->number("live_bytes"), s->number("resident_bytes")});
  if (p.report) {
    const value *tot = p.report->get("totals");
    double t = p.report->number("time_ms", p.report->number("duration_s") * 1000);
    if (tot && (pts.empty() || t >= pts.back().t))
      pts.push_back({t, tot->number("live_bytes"), tot->number("resident_bytes")});
  }
  constexpr double mib = 1024.0 * 1024.0;
  frame f{90, top + 70, 640, 240};
  g.text(20, top + 48, "Live heap and resident memory over time",
         "font-size=\"15\" font-weight=\"bold\"");
  double y_max = 0, t_max = 0;
  for (const point &q : pts) {
    y_max = std::max({y_max, q.live / mib, q.rss / mib});
    t_max = std::max(t_max, q.t);
  }
  y_axis(g, f, y_max, "memory (MiB)");
  double x_step = nice_step(t_max > 0 ? t_max : 1, 8);
  double x_top = std::ceil((t_max > 0 ? t_max : 1) / x_step - 1e-9) * x_step;
  auto x = [&](double t) { return f.x0 + t / x_top * f.w; };
  for (double t = 0; t <= x_top + x_step / 2; t += x_step) {
    g.line(x(t), f.y0 + f.h, x(t), f.y0 + f.h + 5, "stroke=\"#333333\"");
    g.text(x(t), f.y0 + f.h + 19, tick_label(t, x_step), "text-anchor=\"middle\"");
  }
  g.text(f.x0 + f.w / 2, f.y0 + f.h + 40, "time since start (ms)", "text-anchor=\"middle\" font-weight=\"bold\"");

  auto series = [&](const char *color, const char *dash, auto pick) {
    std::string poly;
    for (const point &q : pts) poly += num(x(q.t)) + "," + num(f.y(pick(q) / mib)) + " ";
    if (pts.size() > 1)
      g.s += "<polyline fill=\"none\" stroke=\"" + std::string(color) + "\" stroke-width=\"2.5\" " + dash +
             " points=\"" + poly + "\"/>\n";
    if (pts.size() <= 60)
      for (const point &q : pts)
        g.s += "<circle cx=\"" + num(x(q.t)) + "\" cy=\"" + num(f.y(pick(q) / mib)) + "\" r=\"3.5\" fill=\"" +
               color + "\"/>\n";
  };
  series(rss_color, "stroke-dasharray=\"7 4\"", [](const point &q) { return q.rss; });
  series(live_color, "", [](const point &q) { return q.live; });

  // Legend, right of the plot area.
  double lx = f.x0 + f.w + 15, ly = f.y0 + 10;
  g.line(lx, ly, lx + 26, ly, ("stroke=\"" + std::string(live_color) + "\" stroke-width=\"2.5\"").c_str());
  g.text(lx + 32, ly + 4, "live heap");
  g.line(lx, ly + 22, lx + 26, ly + 22,
         ("stroke=\"" + std::string(rss_color) + "\" stroke-width=\"2.5\" stroke-dasharray=\"7 4\"").c_str());
  g.text(lx + 32, ly + 26, "resident");
  if (!pts.empty()) {
    const point &last = pts.back();
    g.text(lx, ly + 56, p.report ? "at the end:" : "last sample:", "fill=\"#555555\"");
    g.text(lx, ly + 74, "live " + format_bytes(last.live), "fill=\"#555555\"");
    g.text(lx, ly + 92, "resident " + format_bytes(last.rss), "fill=\"#555555\"");
  }
  if (pts.size() < 2)
    g.text(f.x0 + f.w / 2, f.y0 + 24,
           pts.empty() ? "no data: the process wrote neither samples nor a report"
                       : "one point only: the process ended before the first sample (see --interval)",
           "text-anchor=\"middle\" fill=\"#777777\"");
}

// Request size histogram as bars.
void histogram_chart(svg &g, const process &p, double top) {
  g.text(20, top + 390, "Request sizes (histogram of requested bytes)", "font-size=\"15\" font-weight=\"bold\"");
  frame f{90, top + 410, 740, 150};
  const value *hist = p.report ? p.report->get("histogram") : nullptr;
  std::vector<const value *> buckets;
  size_t first = 0;  // index in hist of buckets[0]
  if (hist && hist->is_array()) {
    size_t lo = hist->items.size(), hi = 0;
    for (size_t j = 0; j < hist->items.size(); j++)
      if (hist->items[j].number("count") > 0) {
        lo = std::min(lo, j);
        hi = j;
      }
    for (size_t j = lo; j <= hi && j < hist->items.size(); j++) buckets.push_back(&hist->items[j]);
    first = lo;
  }
  double c_max = 0;
  for (const value *b : buckets) c_max = std::max(c_max, b->number("count"));
  y_axis(g, f, c_max, "requests (count)");
  g.text(f.x0 + f.w / 2, f.y0 + f.h + 40, "request size (bytes, upper bound of the bucket)",
         "text-anchor=\"middle\" font-weight=\"bold\"");
  if (buckets.empty()) {
    g.text(f.x0 + f.w / 2, f.y0 + f.h / 2,
           p.report ? "no requests counted" : "no report: the process ended without its exit handlers",
           "text-anchor=\"middle\" fill=\"#777777\"");
    return;
  }
  double slot = f.w / static_cast<double>(buckets.size()), bar = std::min(slot * 0.8, 60.0);
  for (size_t j = 0; j < buckets.size(); j++) {
    double count = buckets[j]->number("count");
    double cx = f.x0 + slot * (static_cast<double>(j) + 0.5), y = f.y(count);
    g.rect(cx - bar / 2, y, bar, f.y0 + f.h - y, ("fill=\"" + std::string(bar_color) + "\"").c_str());
    std::string bound = bucket_label(*hist, first + j);
    g.text(cx, f.y0 + f.h + 18, bound, "text-anchor=\"middle\" font-size=\"11\"");
    if (count > 0 && slot >= 26) {
      std::string c = format_count(count);
      char buf[32];
      if (count >= 1e6) {  // 1.23M, 45.6k: decimal, as counts are
        snprintf(buf, sizeof buf, "%.3gM", count / 1e6);
        c = buf;
      } else if (count >= 1e4) {
        snprintf(buf, sizeof buf, "%.3gk", count / 1e3);
        c = buf;
      }
      g.text(cx, y - 4, c, "text-anchor=\"middle\" font-size=\"10\" fill=\"#333333\"");
    }
  }
}

}  // namespace

bool plot_svg(FILE *out, const std::vector<process> &procs) {
  // The program's process, then the others that held the most memory.
  std::vector<const process *> drawn;
  for (const process &p : procs) drawn.push_back(&p);
  auto peak = [](const process *p) {
    const value *tot = p->report ? p->report->get("totals") : nullptr;
    return tot ? tot->number("peak_live_bytes") : 0.0;
  };
  if (drawn.size() > 1)
    std::stable_sort(drawn.begin() + 1, drawn.end(), [&](const process *a, const process *b) { return peak(a) > peak(b); });
  if (drawn.size() > max_drawn) drawn.resize(max_drawn);

  double h = top_h + block_h * static_cast<double>(std::max<size_t>(drawn.size(), 1));
  svg g;
  g.s += "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n";
  g.s += "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"" + num(page_w) + "\" height=\"" + num(h) +
         "\" viewBox=\"0 0 " + num(page_w) + " " + num(h) +
         "\" font-family=\"DejaVu Sans, Helvetica, Arial, sans-serif\" font-size=\"12\">\n";
  g.s += "<title>sysref-stat: memory of the program over time</title>\n";
  g.rect(0, 0, page_w, h, "fill=\"white\"");
  std::string title = "sysref-stat";
  if (!procs.empty()) title += ": " + procs.front().program();
  if (procs.size() > 1) {
    title += " and " + std::to_string(procs.size() - 1) + (procs.size() == 2 ? " more process" : " more processes");
    if (procs.size() > drawn.size()) title += " (" + std::to_string(procs.size() - drawn.size()) + " not drawn)";
  }
  g.text(20, 30, title, "font-size=\"18\" font-weight=\"bold\"");
  for (size_t j = 0; j < drawn.size(); j++) {
    const process &p = *drawn[j];
    double top = top_h + block_h * static_cast<double>(j);
    if (j) g.line(20, top - 5, page_w - 20, top - 5, "stroke=\"#999999\"");
    g.text(20, top + 20, "pid " + std::to_string(p.pid) + ": " + p.program() + (p.parent ? " (the program)" : ""),
           "font-size=\"14\" fill=\"#333333\"");
    memory_chart(g, p, top);
    histogram_chart(g, p, top);
  }
  g.s += "</svg>\n";
  return fwrite(g.s.data(), 1, g.s.size(), out) == g.s.size();
}

}  // namespace sysref_stat
