#!/usr/bin/env python3
"""A stand-in for a program under libsysref-preload.so, for the sysref-stat
tests that must not depend on the shim: writes what the shim would write
into $SYSREF_STATS_FILE ("%p" = pid), samples then a report, one JSON
object per line.

usage: sysref_stat_fake.py [--samples N] [--fork] [--no-report] [--torn] [--exec] [--late] [--exit N]
  --fork       a child process writes its own file too (its pid's)
  --no-report  samples only, as a process that ended with _exit
  --torn       the last line is cut short, as a process killed while writing
  --exec       first 4 samples of another program ("fake-before"), as if this
               process had been that program until it called execve
  --late       one more sample after the report (a sampler that outlived it)
"""
import json
import os
import sys


def report(pid, program, samples):
    classes = [
        {"size": 16, "allocations": 1200, "frees": 1100, "live": 100, "peak": 400, "live_bytes": 1600,
         "magazine_hit_rate": 0.97, "depot_exchanges": 12, "slabs": 2, "contention": 0},
        {"size": 64, "allocations": 300, "frees": 290, "live": 10, "peak": 90, "live_bytes": 640,
         "magazine_hit_rate": 0.42, "depot_exchanges": 40, "slabs": 1, "contention": 3},
    ]
    large = {"allocations": 2, "frees": 1, "live": 1, "live_bytes": 1 << 20}
    alloc = sum(c["allocations"] * c["size"] for c in classes) + (2 << 20)
    freed = sum(c["frees"] * c["size"] for c in classes) + (1 << 20)
    return {
        "schema": "sysref-report/1", "kind": "report", "program": program, "pid": pid,
        "reason": "exit", "time_ms": 10 * samples + 5, "duration_s": (10 * samples + 5) / 1000,
        "cpus": 2, "percpu_mode": "rseq",
        "topology": {"packages": 1, "cores": 2, "pus": 2, "numa_nodes": 1, "from_hwloc": True},
        "stats_counting": True,
        "totals": {"requested_bytes": alloc - 4000, "allocated_bytes": alloc,
                   "internal_fragmentation_bytes": 4000, "live_bytes": alloc - freed,
                   "peak_live_bytes": 3 << 20, "freed_bytes": freed, "allocations": 1502, "frees": 1391,
                   "live_objects": 111, "metadata_bytes": 65536, "mapped_bytes": 8 << 20,
                   "peak_mapped_bytes": 9 << 20, "resident_bytes": 5 << 20, "released_bytes": 1 << 20,
                   "minor_faults": 1234, "foreign_frees": 1},
        "calls": {"malloc": 1400, "calloc": 2, "realloc": 100, "free": 1391, "posix_memalign": 0,
                  "new": 0, "delete": 0},
        "size_classes": classes, "large": large,
        "histogram": [{"le": 8, "count": 10}, {"le": 16, "count": 1190}, {"le": 32, "count": 0},
                      {"le": 64, "count": 300}, {"le": 1 << 20, "count": 0}, {"le": 2 << 20, "count": 2}],
        "caches": [], "zones": [], "classes": [],
        "verdicts": ["64-byte class: magazine hit rate 42% (low)", "1 foreign free (a pointer the shim did not allocate)"],
    }


def sample(program, k):
    return json.dumps({"schema": "sysref-report/1", "kind": "sample", "program": program,
                       "pid": os.getpid(), "reason": "interval", "time_ms": 10 * (k + 1),
                       "live_bytes": (k + 1) * 300000, "resident_bytes": 2000000 + k * 250000,
                       "mapped_bytes": 8 << 20}, separators=(",", ":"))


def write(program, samples, with_report, torn, before=False, late=False):
    path = os.environ["SYSREF_STATS_FILE"].replace("%p", str(os.getpid()))
    lines = [sample("fake-before", k) for k in range(4 if before else 0)]
    lines += [sample(program, k) for k in range(samples)]
    if with_report:
        lines.append(json.dumps(report(os.getpid(), program, samples), separators=(",", ":")))
    if late:
        lines.append(sample(program, samples))
    text = "\n".join(lines) + "\n"
    if torn:
        text = text[:-20]
    with open(path, "a") as f:
        f.write(text)


def main(argv):
    samples, fork, with_report, torn, code, before, late = 0, False, True, False, 0, False, False
    args = iter(argv)
    for a in args:
        if a == "--samples":
            samples = int(next(args))
        elif a == "--fork":
            fork = True
        elif a == "--no-report":
            with_report = False
        elif a == "--torn":
            torn = True
        elif a == "--exec":
            before = True
        elif a == "--late":
            late = True
        elif a == "--exit":
            code = int(next(args))
    if fork:
        child = os.fork()
        if child == 0:
            write("fake-child", samples, True, False)
            os._exit(0)
        os.waitpid(child, 0)
    write("fake-parent", samples, with_report, torn, before, late)
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
