#!/usr/bin/env python3
"""Whole-program costs of preloading an allocator, side by side in one run.

  bench_preload.py SHIM [--reps N] [--loop PRELOAD_LOOP]

Start-up: `true` and `ls /usr/bin`, bare and under LD_PRELOAD of the shim and
of each peer (jemalloc, mimalloc, tcmalloc), interleaved (one run of each
variant per round, so drift hits them all alike); the median wall time and
what each adds to the bare run. Targets (issue 8): the shim adds under
0.2 ms to `true`, or no more than mimalloc in the same run.

Statistics: the ns per malloc/free pair of preload_loop (built next to this
script in the build tree) bare, under the shim with SYSREF_STATS off and on,
and under each peer.

Also checks that hwloc is not mapped into a program at start-up under the
shim (it is loaded only when a report asks for the topology).
"""
import argparse
import os
import statistics
import subprocess
import sys
import time

from peerlibs import PEERS, child_env, find_lib



def run_once(cmd, preload):
    env = child_env(preload)
    t0 = time.perf_counter_ns()
    subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
    return (time.perf_counter_ns() - t0) / 1e6


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("shim")
    ap.add_argument("--reps", type=int, default=101)
    ap.add_argument("--loop", default=os.path.join(os.path.dirname(os.path.abspath(sys.argv[0])), "preload_loop"))
    a = ap.parse_args()
    shim = os.path.abspath(a.shim)
    variants = [("bare", None), ("libsysref", shim)]
    for name, lib in PEERS:
        p = find_lib(lib)
        if p:
            variants.append((name, p))
        else:
            print(f"# {name}: {lib} not installed, skipped")

    # hwloc must not be loaded at start-up.
    maps = subprocess.run(["cat", "/proc/self/maps"], env=child_env(shim), capture_output=True, text=True).stdout
    print("# hwloc mapped at start-up under the shim:", "YES (bad)" if "hwloc" in maps else "no")

    print(f"# start-up: median wall ms of {a.reps} interleaved runs; +ms = over bare")
    print(f"{'program':<14}" + "".join(f"{v[0]:>12}{'+ms':>8}" for v in variants))
    results = {}
    for cmd in (["true"], ["ls", "/usr/bin"]):
        times = {v[0]: [] for v in variants}
        for _ in range(a.reps):
            for name, lib in variants:
                times[name].append(run_once(cmd, lib))
        med = {k: statistics.median(v) for k, v in times.items()}
        results[cmd[0]] = med
        row = f"{' '.join(cmd):<14}"
        for name, _ in variants:
            row += f"{med[name]:>12.3f}{med[name] - med['bare']:>+8.3f}"
        print(row)
    added = results["true"]["libsysref"] - results["true"]["bare"]
    mi = results["true"].get("mimalloc")
    ok = added < 0.2 or (mi is not None and added <= mi - results["true"]["bare"])
    print(f"# target (true: shim adds < 0.2 ms or <= mimalloc): {'PASS' if ok else 'MISS'} (+{added:.3f} ms)")

    if os.path.exists(a.loop):
        print("# malloc/free pair through the PLT, ns (median of 7 runs of 2e6 pairs; 3 rounds, median)")
        loop_variants = [("bare", None, None), ("libsysref stats off", shim, {"SYSREF_STATS": "0"}),
                         ("libsysref stats on", shim, {"SYSREF_STATS": "json", "SYSREF_STATS_FILE": "/dev/null"})]
        loop_variants += [(n, l, None) for n, l in variants[2:]]
        vals = {n: [] for n, _, _ in loop_variants}
        for _ in range(3):
            for name, lib, extra in loop_variants:
                out = subprocess.run([a.loop], env=child_env(lib, extra), capture_output=True, text=True,
                                     check=True).stdout
                vals[name].append(float(out.split()[0]))
        for name, _, _ in loop_variants:
            print(f"{name:<22}{statistics.median(vals[name]):>8.2f}")
        on, off = statistics.median(vals["libsysref stats on"]), statistics.median(vals["libsysref stats off"])
        print(f"# statistics cost: {on - off:+.2f} ns per malloc/free pair")
    else:
        print(f"# {a.loop} not built: no malloc/free table")


if __name__ == "__main__":
    main()
