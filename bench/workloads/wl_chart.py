"""SVG chart for workloads.py: grouped bars per workload, one bar per
allocator, in two panels (wall time and peak RSS, each as a ratio to
glibc). Hand-written SVG, no plotting library needed. The y axis is log2:
ratios are multiplicative, so 0.5x and 2x sit the same distance from 1x."""
import math
from xml.sax.saxutils import escape

COLORS = ["#7f7f7f", "#1f77b4", "#2ca02c", "#ff7f0e", "#d62728", "#9467bd", "#8c564b"]
W, PANEL_H, TOP, LEFT, RIGHT = 960, 300, 60, 60, 20


def _panel(parts, y0, title, ratios, works, allocs):
    """Draw one panel at vertical offset y0; ratios[(w, a)] -> float or None."""
    vals = [v for v in ratios.values() if v and v > 0]
    lo = math.floor(math.log2(min(vals + [1.0]))) if vals else -1
    hi = math.ceil(math.log2(max(vals + [1.0]))) if vals else 1
    lo, hi = min(lo, -1), max(hi, 1)
    plot_h = PANEL_H - 70
    y_of = lambda r: y0 + 30 + plot_h * (hi - math.log2(r)) / (hi - lo)
    x0, x1 = LEFT, W - RIGHT
    parts.append(f'<text x="{x0}" y="{y0 + 18}" font-size="14" font-weight="bold">{escape(title)}</text>')
    for e in range(lo, hi + 1):  # grid line per power of two
        y = y_of(2.0 ** e)
        parts.append(f'<line x1="{x0}" y1="{y:.1f}" x2="{x1}" y2="{y:.1f}" stroke="{"#000" if e == 0 else "#ddd"}"/>')
        label = f"{2.0 ** e:g}x"
        parts.append(f'<text x="{x0 - 6}" y="{y + 4:.1f}" font-size="11" text-anchor="end">{label}</text>')
    group_w = (x1 - x0) / len(works)
    bar_w = group_w * 0.8 / len(allocs)
    base = y_of(1.0)
    for i, w in enumerate(works):
        gx = x0 + i * group_w + group_w * 0.1
        for j, a in enumerate(allocs):
            r = ratios.get((w, a))
            x = gx + j * bar_w
            if not r or r <= 0:  # failed run: a cross instead of a bar
                parts.append(f'<text x="{x + bar_w / 2:.1f}" y="{base - 4:.1f}" font-size="10" '
                             f'text-anchor="middle" fill="{COLORS[j % len(COLORS)]}">x</text>')
                continue
            y = y_of(r)
            top, h = min(y, base), max(abs(base - y), 1.0)
            parts.append(f'<rect x="{x:.1f}" y="{top:.1f}" width="{bar_w - 1:.1f}" height="{h:.1f}" '
                         f'fill="{COLORS[j % len(COLORS)]}"><title>{escape(f"{w} {a}: {r:.2f}x")}</title></rect>')
        parts.append(f'<text x="{x0 + (i + 0.5) * group_w:.1f}" y="{y0 + PANEL_H - 22}" font-size="12" '
                     f'text-anchor="middle">{escape(w)}</text>')


def svg(ratios, works, allocs, reps):
    """ratios[metric][(workload, allocator)] -> ratio to glibc or None, for
    metric "time_s" and "maxrss_kib"; returns SVG text."""
    height = TOP + 2 * PANEL_H + 10
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{height}" '
             f'viewBox="0 0 {W} {height}" font-family="sans-serif">',
             f'<rect width="{W}" height="{height}" fill="#fff"/>',
             f'<text x="{LEFT}" y="22" font-size="16" font-weight="bold">'
             f'Allocator workloads: ratio to glibc (log scale; median of {reps} per-round ratios; lower is better)</text>']
    for j, a in enumerate(allocs):  # legend
        x = LEFT + j * 130
        parts.append(f'<rect x="{x}" y="34" width="12" height="12" fill="{COLORS[j % len(COLORS)]}"/>')
        parts.append(f'<text x="{x + 16}" y="45" font-size="12">{escape(a)}</text>')
    for k, (metric, title) in enumerate((("time_s", "Wall time"), ("maxrss_kib", "Peak RSS"))):
        _panel(parts, TOP + k * PANEL_H, title, ratios[metric], works, allocs)
    parts.append("</svg>")
    return "\n".join(parts) + "\n"
