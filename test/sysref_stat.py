#!/usr/bin/env python3
"""sysref-stat end to end: runs programs under the shim (LD_PRELOAD is set
by sysref-stat in the child only) and checks the exit status it passes
through, the text report, --json, --plot and a program that forks.

usage: sysref_stat.py SYSREF_STAT FAKE_PROGRAM LIBSYSREF_SO B_SANITIZE

FAKE_PROGRAM (sysref_stat_fake.py) writes reports as the shim would, run
with --preload LIBSYSREF_SO (a harmless library to preload): those checks
do not depend on the shim. The rest use the shim sysref-stat finds itself.
Skipped (77) under sanitizers: a sanitized shim cannot be preloaded into
programs that were not built with the sanitizer runtime.
"""
import json
import os
import shutil
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET

failures = []


def check(cond, what, detail=""):
    if not cond:
        failures.append(what)
        print(f"FAIL: {what}\n{detail}", file=sys.stderr)


def stat(*args, expect=None, what=""):
    """Runs sysref-stat with args; returns (exit status, stdout, stderr)."""
    r = subprocess.run([STAT, *args], capture_output=True, text=True, timeout=120)
    if expect is not None:
        check(r.returncode == expect, f"{what}: exit status {r.returncode}, expected {expect}", r.stderr[-3000:])
    return r.returncode, r.stdout, r.stderr


def headings(text):
    """The pids of the reports' headings ("== pid N: ..."), in order."""
    return [int(line.split()[2].rstrip(":")) for line in text.splitlines() if line.startswith("== pid ")]


def fake_checks():
    fake = [sys.executable, FAKE]
    pre = ["--preload", LIBSYSREF]
    # Samples, a forked child, exit status 3: two reports, the program's first.
    _, _, err = stat(*pre, "--", *fake, "--samples", "3", "--fork", "--exit", "3", expect=3, what="fake fork")
    pids = headings(err)
    check(len(pids) == 2, "fake fork: two reports", err)
    check("fake-parent, the program; exit status 3" in err, "fake fork: the program's heading comes with its status", err)
    check(err.find("fake-parent, the program") < err.find(": fake-child =="), "fake fork: the program first", err)
    for section in ("Totals", "Calls", "Size classes", "Large allocations", "Request sizes", "Samples", "Verdicts",
                    "magazine hit rate 42% (low)", "3 samples from 10 ms to 30 ms"):
        check(section in err, f"fake: text has '{section}'", err)
    # --json: one object per process, samples appended.
    _, out, err = stat(*pre, "--json", "--output", "-", "--", *fake, "--samples", "2", "--fork", expect=0,
                       what="fake --json")
    reports = json.loads(out)
    check(len(reports) == 2 and reports[0]["program"] == "fake-parent" and reports[1]["program"] == "fake-child",
          "fake --json: two objects, the program's first", out)
    check(len(reports[0].get("samples", [])) == 2, "fake --json: the samples ride along", out)
    # A process that wrote samples only, and one whose file was cut short.
    _, _, err = stat(*pre, "--", *fake, "--samples", "2", "--no-report", expect=0, what="fake no report")
    check("no report" in err and "2 samples" in err, "fake: samples without a report", err)
    # A process that ran another program before execve, and a sample after the report.
    _, out, err = stat(*pre, "--json", "--", *fake, "--samples", "3", "--exec", "--late", expect=0, what="fake exec")
    check(len(json.loads(err)[0].get("samples", [])) == 4, "fake --exec --late: the last program's samples only", err)
    _, _, err = stat(*pre, "--", *fake, "--samples", "3", "--exec", "--late", expect=0, what="fake exec")
    check("4 samples from 10 ms to 40 ms" in err and "4 earlier samples" in err, "fake: samples split at execve", err)
    _, _, err = stat(*pre, "--", *fake, "--samples", "2", "--torn", expect=0, what="fake torn")
    check("warning:" in err and "no report" in err, "fake: a torn file is reported, not fatal", err)


def usage_checks():
    stat("--bogus", "true", expect=125, what="unknown option")
    stat("--interval", "0", "true", expect=125, what="bad interval")
    stat(expect=125, what="no program")
    stat("--preload", "/nonexistent/libx.so", "true", expect=125, what="missing shim")
    stat("--", "/nonexistent/program", expect=127, what="program not found")
    rc, out, _ = stat("--help", expect=0, what="--help")
    check("--plot" in out, "--help lists the options", out)
    rc, out, _ = stat("--version", expect=0, what="--version")
    check(out.startswith("sysref-stat "), "--version", out)


def shim_checks(tmp):
    py = os.path.realpath(sys.executable)  # the interpreter itself, not a wrapper script
    _, _, err = stat("--", "true", expect=0, what="true")
    check(len(headings(err)) == 1, "true: one report", err)
    for section in ("Totals", "Calls", "Size classes", "Request sizes", "Verdicts"):
        check(section in err, f"true: text has '{section}'", err)

    _, _, err = stat("--", py, "-c", "import sys; sys.exit(3)", expect=3, what="exit 3")
    check("exit status 3" in err and "Totals" in err, "exit 3: reported", err)
    stat("--", "sh", "-c", "kill -TERM $$", expect=128 + 15, what="killed by SIGTERM")

    # A shell that forks a child: a report per process, named by pid, the
    # shell's heading first (dash ends with _exit, so its own may be empty).
    rc, _, err = stat("--", "sh", "-c", "ls / >/dev/null; exit 3", expect=3, what="sh -c fork")
    pids = headings(err)
    check(len(pids) == 2 and err.count("== pid") == 2, "sh -c: two processes by pid", err)
    check("sh, the program; exit status 3" in err, "sh -c: the shell first", err)
    check(": ls ==" in err, "sh -c: the child's report", err)
    if shutil.which("bash"):
        _, _, err = stat("--", "bash", "-c", "ls / >/dev/null; exit 3", expect=3, what="bash -c fork")
        check(err.count("report at exit") == 2, "bash -c: both processes report", err)

    # --json parses, one object per process, with every section.
    out_path = os.path.join(tmp, "out.json")
    stat("--json", "--output", out_path, "--", "sh", "-c", "ls / >/dev/null; exit 3", expect=3, what="--json")
    with open(out_path) as f:
        reports = json.load(f)
    check(isinstance(reports, list) and len(reports) == 2, "--json: an array of two objects", str(reports)[:2000])
    ls = [r for r in reports if r.get("program", "").endswith("ls")]
    check(len(ls) == 1, "--json: ls has its object", str(reports)[:2000])
    for key in ("schema", "pid", "totals", "calls", "size_classes", "histogram", "verdicts"):
        check(ls and key in ls[0], f"--json: ls report has '{key}'")

    # --plot: valid SVG with its axes, and samples with --interval.
    svg = os.path.join(tmp, "plot.svg")
    code = "import time\na=[]\nfor i in range(20):\n a.append(bytearray(200000)); time.sleep(0.01)\n"
    _, _, err = stat("--plot", svg, "--interval", "5", "--", py, "-c", code, expect=0, what="--plot")
    check("Samples" in err, "--plot: samples were taken", err)
    root = ET.parse(svg).getroot()
    texts = " ".join(t.text or "" for t in root.iter("{http://www.w3.org/2000/svg}text"))
    for label in ("time since start (ms)", "memory (MiB)", "requests (count)", "live heap", "resident"):
        check(label in texts, f"--plot: the SVG has '{label}'", texts[:2000])
    check(any(True for _ in root.iter("{http://www.w3.org/2000/svg}polyline")), "--plot: lines are drawn")


def main():
    global STAT, FAKE, LIBSYSREF
    STAT, FAKE, LIBSYSREF, sanitize = sys.argv[1:5]
    if sanitize not in ("", "none"):
        print(f"skipped under -Db_sanitize={sanitize}")
        return 77
    with tempfile.TemporaryDirectory() as tmp:
        fake_checks()
        usage_checks()
        shim_checks(tmp)
    if failures:
        print(f"{len(failures)} check(s) failed", file=sys.stderr)
        return 1
    print("all checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
