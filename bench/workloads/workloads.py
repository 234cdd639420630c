#!/usr/bin/env python3
"""Whole-program allocator workloads under five allocators, side by side.

  workloads.py SHIM [--reps N] [--only w1,w2] [--out-md FILE] [--out-svg FILE]
               [--json FILE] [--scale X] [--smoke] [--bin DIR] [--cpu N|none]

SHIM is libsysref-preload.so (build/preload/libsysref-preload.so). Each
workload (bench/workloads/*.c, built as wl_NAME in bench/workloads/ next to
this script in the build tree) runs under glibc (no preload) and under
LD_PRELOAD of jemalloc, mimalloc, tcmalloc and the shim. Rounds are
interleaved: every workload under every allocator once per round, the
workloads in a shuffled order and, within a workload, its runs under the
allocators back to back (also shuffled). Wall time, peak RSS (ru_maxrss)
and minor faults (ru_minflt) come from wait4() on the child (in wl_run, a
small launcher: wl_run.c says why). Each ratio is the median over rounds
of that round's ratio: a VM's speed drifts over minutes (below), and runs
seconds apart share the drift that runs a round apart do not. The glibc
column gives its median absolute value.
The programs check their own data and exit non-zero on a mismatch, so a
broken allocator shows as FAIL.

--cpu: the single-threaded workloads run pinned to this CPU (default: the
lowest one this process may use; "none": not pinned), under every
allocator alike. On a VM the CPUs need not be equally fast: on the 2-vCPU
machine one ran the same program 20% slower than the other for minutes at
a time, and a run that the kernel placed on either made every median a
coin toss between two levels. larson and prodcons use two threads and run
unpinned.

Tables: one per metric, ratios to glibc with glibc's absolute value, and a
geomean row (of the per-workload ratios). Targets: libsysref geomean time
<= 0.9x mimalloc's; geomean peak RSS <= 1.0x mimalloc's; no workload where
libsysref is slower than 1.25x the fastest other allocator (glibc
included); the large workload no slower than glibc.

--smoke: every workload at a tiny scale, glibc and the shim only, one line
per run; exits 1 if any run fails (meson test workloads-smoke).
"""
import argparse
import json
import math
import os
import random
import statistics
import sys
import subprocess
import tempfile
import time

import wl_chart
from peerlibs import PEERS, child_env, find_lib

WORKLOADS = ["larson", "prodcons", "churn", "realloc", "large", "frag", "small", "bigint"]
THREADED = {"larson", "prodcons"}  # never pinned (--cpu)
# CPU time (user + sys) is informational: steadier than wall time on a busy machine.
METRICS = [("time_s", "wall time"), ("maxrss_kib", "peak RSS"), ("minflt", "minor faults"),
           ("cpu_s", "CPU time (user+sys)")]
SMOKE_SCALE = 0.01


def run_once(launcher, prog, scale, preload, timeout, cpu=None):
    """One run through wl_run, which reports the child's own rusage (wl_run.c
    says why not os.wait4 here); LD_PRELOAD is set in that child only, and
    the child is pinned to cpu unless that is None."""
    env = child_env(None)
    env["WL_PRELOAD"] = preload or ""
    pin = None if cpu is None else (lambda: os.sched_setaffinity(0, {cpu}))
    with tempfile.TemporaryFile() as err:
        out = subprocess.run([launcher, str(int(timeout)), prog, str(scale)], env=env, stdin=subprocess.DEVNULL,
                             stdout=subprocess.PIPE, stderr=err, check=True, preexec_fn=pin).stdout.decode()
        err.seek(0)
        msg = err.read().decode(errors="replace").strip()
    f = dict(kv.split("=") for kv in out.split())
    code = os.waitstatus_to_exitcode(int(f["status"]))
    return {"ok": code == 0, "code": code, "time_s": int(f["wall_ns"]) / 1e9, "maxrss_kib": int(f["maxrss_kib"]),
            "minflt": int(f["minflt"]), "cpu_s": int(f["cpu_ns"]) / 1e9, "stderr": msg[-400:]}


def geomean(xs):
    xs = [x for x in xs if x and x > 0]
    return math.exp(sum(map(math.log, xs)) / len(xs)) if xs else float("nan")


def fmt_abs(metric, v):
    if metric in ("time_s", "cpu_s"):
        return f"{v:.3f} s"
    if metric == "maxrss_kib":
        return f"{v / 1024:.1f} MiB"
    return f"{v:,.0f}"


def paired(samples, w, a, b, metric):
    """Median over rounds of a's metric over b's in the same round (rounds
    where both ran and passed)."""
    ra, rb = samples.get((w, a), []), samples.get((w, b), [])
    xs = [x[metric] / y[metric] for x, y in zip(ra, rb) if x["ok"] and y["ok"] and y[metric]]
    return statistics.median(xs) if xs else None


def tables(med, fails, works, allocs, samples):
    """Markdown: per metric, rows workloads, columns allocators, ratio to glibc."""
    out = []
    for metric, title in METRICS:
        out.append(f"### {title} (ratio to glibc; glibc column absolute)\n")
        out.append("| workload | " + " | ".join(allocs) + " |")
        out.append("|---|" + "---:|" * len(allocs))
        ratios = {a: [] for a in allocs}
        for w in works:
            base = med.get((w, "glibc"), {}).get(metric)
            cells = []
            for a in allocs:
                v = med.get((w, a), {}).get(metric)
                if (w, a) in fails or v is None:
                    cells.append("FAIL")
                elif a == "glibc":
                    cells.append(fmt_abs(metric, v))
                elif base and (r := paired(samples, w, a, "glibc", metric)):
                    ratios[a].append(r)
                    cells.append(f"{r:.2f}x")
                else:
                    cells.append(fmt_abs(metric, v))
            out.append(f"| {w} | " + " | ".join(cells) + " |")
        out.append("| **geomean** | 1.00x | " + " | ".join(f"{geomean(ratios[a]):.2f}x" for a in allocs[1:]) + " |")
        out.append("")
    return "\n".join(out)


def fastest_peer_ratios(samples, w, sr, peers):
    """Per round: libsysref's time over the fastest peer's in that round."""
    rounds = zip(*[samples[(w, a)] for a in [sr] + peers])
    return [r[0]["time_s"] / min(x["time_s"] for x in r[1:]) for r in rounds
            if all(x["ok"] for x in r) and min(x["time_s"] for x in r[1:]) > 0]


def targets(med, fails, works, allocs, samples):
    """PASS/MISS lines for the targets in the docstring."""
    def gm(a, metric):
        return geomean([paired(samples, w, a, "glibc", metric) for w in works
                        if (w, a) in med and (w, "glibc") in med and (w, a) not in fails])
    out = ["### targets\n"]
    sr = "libsysref"
    if any(w_a[1] == sr for w_a in fails):
        out.append(f"- MISS: libsysref failed on {', '.join(sorted(w for w, a in fails if a == sr))}")
    if "mimalloc" in allocs:
        for metric, lim, what in (("time_s", 0.9, "geomean time"), ("maxrss_kib", 1.0, "geomean peak RSS")):
            r = gm(sr, metric) / gm("mimalloc", metric)
            out.append(f"- {'PASS' if r <= lim else 'MISS'}: libsysref {what} {r:.2f}x mimalloc (target <= {lim}x)")
    slow = []
    for w in works:
        peers = [a for a in allocs if a != sr and (w, a) in samples and (w, a) not in fails]
        xs = fastest_peer_ratios(samples, w, sr, peers) if (w, sr) in med and peers else []
        if xs and statistics.median(xs) > 1.25:
            slow.append(f"{w} {statistics.median(xs):.2f}x")
    out.append(f"- {'MISS' if slow else 'PASS'}: no workload slower than 1.25x the fastest other allocator"
               + (f" (offenders: {', '.join(slow)})" if slow else ""))
    if "large" in works and (("large", sr) in med and ("large", "glibc") in med):
        r = paired(samples, "large", sr, "glibc", "time_s")
        if r is not None:  # None: no round where both ran and passed
            out.append(f"- {'PASS' if r <= 1.0 else 'MISS'}: large workload time {r:.2f}x glibc (target <= 1.0x)")
    return "\n".join(out) + "\n"


def main():
    here = os.path.dirname(os.path.abspath(sys.argv[0]))
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("shim")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--only", help="comma-separated workloads")
    ap.add_argument("--out-md")
    ap.add_argument("--out-svg")
    ap.add_argument("--json")
    ap.add_argument("--scale", type=float, default=1.0, help="work multiplier for every workload")
    ap.add_argument("--smoke", action="store_true")
    ap.add_argument("--bin", default=os.path.join(here, "workloads"), help="where the wl_* programs are")
    ap.add_argument("--timeout", type=float, default=120.0, help="seconds per run before it is killed")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--cpu", default="auto", help="CPU for the single-threaded workloads, or none")
    a = ap.parse_args()
    works = a.only.split(",") if a.only else WORKLOADS
    for w in works:
        if w not in WORKLOADS:
            ap.error(f"unknown workload {w} (have {', '.join(WORKLOADS)})")
    shim = os.path.abspath(a.shim)
    if not os.path.exists(shim):
        ap.error(f"{shim}: no such file")
    allocs = [("glibc", None)]
    if not a.smoke:
        for name, lib in PEERS:
            p = find_lib(lib)
            if p:
                allocs.append((name, p))
            else:
                print(f"# {name}: {lib} not installed, skipped", file=sys.stderr)
    allocs.append(("libsysref", shim))
    scale = SMOKE_SCALE if a.smoke else a.scale
    names = [n for n, _ in allocs]
    if a.cpu == "none":
        cpu = None
    elif a.cpu == "auto":
        cpu = min(os.sched_getaffinity(0))
    elif a.cpu.isdigit() and int(a.cpu) in os.sched_getaffinity(0):
        cpu = int(a.cpu)
    else:
        ap.error(f"--cpu {a.cpu}: not a CPU this process may use ({sorted(os.sched_getaffinity(0))}), auto or none")

    load0 = os.getloadavg()[0]  # wall times mean little on a busy machine: say how busy
    samples = {}  # (workload, allocator) -> list of run results
    fails = {}
    t_start = time.perf_counter()
    rng = random.Random(a.seed)
    for rnd in range(a.reps):
        order = []
        for w in rng.sample(works, len(works)):  # a workload's runs back to back: they share the drift
            order += [(w, al) for al in rng.sample(allocs, len(allocs))]
        for w, (name, lib) in order:
            r = run_once(os.path.join(a.bin, "wl_run"), os.path.join(a.bin, "wl_" + w), scale, lib, a.timeout,
                         None if w in THREADED else cpu)
            samples.setdefault((w, name), []).append(r)
            if not r["ok"]:
                fails[(w, name)] = r
                print(f"# FAIL {w} under {name}: exit {r['code']}: {r['stderr']}", file=sys.stderr)
            if a.smoke:
                print(f"{w:<9} {name:<10} exit {r['code']:>3} {r['time_s']:7.3f} s {r['maxrss_kib'] / 1024:8.1f} MiB")
        if not a.smoke:
            print(f"# round {rnd + 1}/{a.reps} done, {time.perf_counter() - t_start:.0f} s", file=sys.stderr)
    if a.smoke:
        sys.exit(1 if fails else 0)

    med = {}
    for key, runs in samples.items():
        ok = [r for r in runs if r["ok"]]
        if ok:
            med[key] = {m: statistics.median(r[m] for r in ok) for m, _ in METRICS}
    load = (load0, os.getloadavg()[0])
    md = (f"## allocator workloads: {a.reps} interleaved rounds, scale {scale}; ratios are medians of per-round ratios\n\n"
          f"Load average (1 min) {load[0]:.1f} at the start, {load[1]:.1f} at the end, on {os.cpu_count()} CPUs.\n"
          + ("Single-threaded workloads pinned to CPU %d (--cpu).\n\n" % cpu if cpu is not None else "Not pinned.\n\n")
          + tables(med, fails, works, names, samples) + "\n" + targets(med, fails, works, names, samples))
    frag = [(n, samples[("frag", n)][-1]["stderr"]) for n in names if ("frag", n) in samples]
    if frag:  # what frag prints: live bytes vs RSS before its final frees
        md += "\nfrag, last round:\n\n" + "\n".join(f"- {n}: {m}" for n, m in frag) + "\n"
    md += f"\n(run took {time.perf_counter() - t_start:.0f} s)\n"
    print(md)
    if a.out_md:
        with open(a.out_md, "w") as f:
            f.write(md)
    if a.out_svg:
        with open(a.out_svg, "w") as f:
            ratios = {m: {(w, n): paired(samples, w, n, "glibc", m) for w in works for n in names}
                      for m in ("time_s", "maxrss_kib")}
            f.write(wl_chart.svg(ratios, works, names, a.reps))
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"reps": a.reps, "scale": scale, "allocators": dict(allocs), "loadavg": load, "cpu": cpu,
                       "medians": {f"{w}/{n}": v for (w, n), v in med.items()},
                       "failures": {f"{w}/{n}": {"code": r["code"], "stderr": r["stderr"]} for (w, n), r in fails.items()},
                       "samples": {f"{w}/{n}": [{k: r[k] for k in ("time_s", "maxrss_kib", "minflt", "cpu_s", "code")}
                                                for r in runs] for (w, n), runs in samples.items()}}, f, indent=1)
    sys.exit(1 if fails else 0)


if __name__ == "__main__":
    main()
