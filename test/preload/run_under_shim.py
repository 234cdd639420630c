#!/usr/bin/env python3
"""Runs a real program bare and under libsysref-preload.so and compares.

    run_under_shim.py SHIM PROGRAM [--exe PATH] [--deepbind PATH] [--env N=V]... [--keep]

PROGRAM is one of: python3, git, perl, sqlite3, gcc, mt. Each scenario runs
once without the shim and once with LD_PRELOAD=SHIM SYSREF_STATS=json
SYSREF_STATS_FILE=<tmp>/r.%p.json set in the child's environment only (this
script never runs under the shim). Stdout, stderr and exit statuses must be
identical after normalising what is inherently variable (the scratch paths).
Then every report file must parse as JSON, carry every section of the
sysref-report/1 schema and have totals that add up.

Exit status: 0 pass, 1 fail, 77 skip (the program is not on this machine).
"""
import argparse
import glob
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
SKIP = 77
CHILD_TIMEOUT = int(os.environ.get("PRELOAD_CHILD_TIMEOUT", "240"))  # seconds per step

failures = []


def fail(msg):
    failures.append(msg)
    print("FAIL: " + msg, flush=True)


# ---- running children ---------------------------------------------------------------

def descendants(pid):
    """Pids of pid's descendants, from /proc (for gdb on a hang)."""
    children = {}
    for st in glob.glob("/proc/[0-9]*/stat"):
        try:
            with open(st) as f:
                data = f.read()
        except OSError:
            continue
        fields = data[data.rfind(")") + 2:].split()
        children.setdefault(int(fields[1]), []).append(int(st.split("/")[2]))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        for c in children.get(p, []):
            out.append(c)
            todo.append(c)
    return out


def gdb_backtraces(pids):
    gdb = shutil.which("gdb")
    if not gdb:
        return "(no gdb on this machine)"
    out = []
    for pid in pids:
        try:
            r = subprocess.run([gdb, "-p", str(pid), "-batch", "-nx", "-ex", "info threads",
                                "-ex", "thread apply all bt 30"],
                               stdin=subprocess.DEVNULL, capture_output=True, text=True,
                               timeout=60, errors="replace")
            out.append("---- gdb -p %d ----\n%s" % (pid, r.stdout[-20000:]))
        except (subprocess.TimeoutExpired, OSError) as e:
            out.append("---- gdb -p %d: %s" % (pid, e))
    return "\n".join(out)


def gdb_rerun(argv, env, cwd, stdin_data):
    """Runs argv again under gdb (the shim preloaded into the inferior only)
    and returns the backtrace of whatever signal stopped it."""
    gdb = shutil.which("gdb")
    if not gdb:
        return "(no gdb on this machine)"
    cmds = ["-batch", "-nx", "-ex", "set startup-with-shell off",
            "-ex", "set follow-fork-mode parent", "-ex", "set detach-on-fork on"]
    for k in ("LD_PRELOAD", "SYSREF_STATS", "SYSREF_STATS_FILE"):
        if k in env:
            cmds += ["-ex", "set environment %s=%s" % (k, env[k])]
    stdin_file = None
    if stdin_data is not None:
        stdin_file = tempfile.NamedTemporaryFile(delete=False)
        stdin_file.write(stdin_data)
        stdin_file.close()
        cmds += ["-ex", "run < %s" % stdin_file.name]
    else:
        cmds += ["-ex", "run"]
    cmds += ["-ex", "info threads", "-ex", "thread apply all bt 30", "--args"] + argv
    genv = {k: v for k, v in env.items() if k not in ("LD_PRELOAD",)}
    try:
        r = subprocess.run([gdb] + cmds, env=genv, cwd=cwd, stdin=subprocess.DEVNULL,
                           capture_output=True, text=True, timeout=180, errors="replace")
        return r.stdout[-20000:] + r.stderr[-3000:]
    except (subprocess.TimeoutExpired, OSError) as e:
        return "(gdb rerun: %s)" % e
    finally:
        if stdin_file:
            os.unlink(stdin_file.name)


class Run:
    """One scenario's worth of steps, in one mode (bare or shim)."""

    def __init__(self, mode, shim, work, base_env):
        self.mode = mode
        self.work = work
        self.reports = os.path.join(work, "reports")
        os.makedirs(self.reports, exist_ok=True)
        self.env = dict(base_env)
        if mode == "shim":
            self.env["LD_PRELOAD"] = shim
            self.env["SYSREF_STATS"] = "json"
            self.env["SYSREF_STATS_FILE"] = os.path.join(self.reports, "r.%p.json")
        self.transcript = []  # (label, rc, stdout, stderr), normalised
        self.ok = True

    def normalise(self, text):
        text = text.replace(self.work, "<WORK>")
        text = text.replace(os.path.realpath(self.work), "<WORK>")
        return text

    def step(self, label, argv, cwd=None, stdin_data=None, env_extra=None, timeout=CHILD_TIMEOUT):
        env = dict(self.env)
        if env_extra:
            env.update(env_extra)
        cwd = cwd or self.work
        t0 = time.monotonic()
        proc = subprocess.Popen(argv, env=env, cwd=cwd,
                                stdin=subprocess.PIPE if stdin_data is not None else subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                start_new_session=True)
        try:
            out, err = proc.communicate(stdin_data, timeout=timeout)
        except subprocess.TimeoutExpired:
            pids = [proc.pid] + descendants(proc.pid)
            bts = gdb_backtraces(pids)
            os.killpg(proc.pid, signal.SIGKILL)
            out, err = proc.communicate()
            fail("%s [%s]: %s hung (> %d s); backtraces:\n%s" % (label, self.mode, argv, timeout, bts))
            self.ok = False
            self.transcript.append((label, "timeout", "", ""))
            return None
        dt = time.monotonic() - t0
        out = self.normalise(out.decode("utf-8", "replace"))
        err = self.normalise(err.decode("utf-8", "replace"))
        rc = proc.returncode
        print("  [%s] %-28s rc=%s %.2fs" % (self.mode, label, rc, dt), flush=True)
        if rc < 0 and self.mode == "shim":
            fail("%s [shim]: %s killed by signal %d; stderr tail:\n%s\n%s" % (
                label, argv, -rc, err[-3000:], gdb_rerun(argv, env, cwd, stdin_data)))
            self.ok = False
        self.transcript.append((label, rc, out, err))
        return rc, out, err


def compare(bare, shim, compare_stderr=True):
    if len(bare.transcript) != len(shim.transcript):
        fail("bare ran %d steps, shim %d" % (len(bare.transcript), len(shim.transcript)))
    for b, s in zip(bare.transcript, shim.transcript):
        label = b[0]
        if b[1] != s[1]:
            fail("%s: exit status %s bare, %s under the shim" % (label, b[1], s[1]))
        if b[2] != s[2]:
            fail("%s: stdout differs under the shim\n%s" % (label, diff(b[2], s[2])))
        if compare_stderr and b[3] != s[3]:
            fail("%s: stderr differs under the shim\n%s" % (label, diff(b[3], s[3])))


def diff(a, b):
    import difflib
    lines = list(difflib.unified_diff(a.splitlines(), b.splitlines(), "bare", "shim", lineterm="", n=2))
    return "\n".join(lines[:80])


# ---- report checks -------------------------------------------------------------------

TOP_KEYS = ["schema", "kind", "program", "pid", "reason", "time_ms", "duration_s", "cpus",
            "percpu_mode", "topology", "stats_counting", "totals", "calls", "size_classes",
            "large", "histogram", "caches", "zones", "classes", "verdicts"]
TOPOLOGY_KEYS = ["packages", "cores", "pus", "numa_nodes", "from_hwloc"]
TOTALS_KEYS = ["requested_bytes", "allocated_bytes", "internal_fragmentation_bytes", "live_bytes",
               "peak_live_bytes", "freed_bytes", "allocations", "frees", "live_objects",
               "metadata_bytes", "mapped_bytes", "peak_mapped_bytes", "resident_bytes",
               "released_bytes", "minor_faults", "foreign_frees"]
CLASS_KEYS = ["size", "allocations", "frees", "live", "peak", "live_bytes", "magazine_hit_rate",
              "depot_exchanges", "slabs", "contention"]
LARGE_KEYS = ["allocations", "frees", "live", "live_bytes"]
CALL_NAMES = ["malloc", "calloc", "realloc", "free"]


def is_count(v):
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


def check_report(path, rep, errs):
    """Appends to errs what is wrong with one report object."""
    def need(obj, keys, where):
        missing = [k for k in keys if k not in obj]
        if missing:
            errs.append("%s: %s lacks %s" % (path, where, missing))
        return not missing

    if not isinstance(rep, dict):
        errs.append("%s: not a JSON object" % path)
        return
    need(rep, TOP_KEYS, "report")
    if rep.get("schema") != "sysref-report/1":
        errs.append("%s: schema is %r" % (path, rep.get("schema")))
    if rep.get("kind") != "report":
        errs.append("%s: kind is %r, not 'report'" % (path, rep.get("kind")))
    m = re.search(r"r\.(\d+)\.json$", path)
    if m and rep.get("pid") != int(m.group(1)):
        errs.append("%s: pid %r but the file is named for %s" % (path, rep.get("pid"), m.group(1)))
    if rep.get("reason") not in ("exit", "signal", "request", "interval"):
        errs.append("%s: reason %r" % (path, rep.get("reason")))
    if isinstance(rep.get("topology"), dict):
        need(rep["topology"], TOPOLOGY_KEYS, "topology")
    for key in ("size_classes", "histogram", "caches", "zones", "classes", "verdicts"):
        if key in rep and not isinstance(rep[key], list):
            errs.append("%s: %s is not a list" % (path, key))
    t = rep.get("totals")
    if not isinstance(t, dict) or not need(t, TOTALS_KEYS, "totals"):
        return
    for k in TOTALS_KEYS:
        if not is_count(t[k]):
            errs.append("%s: totals.%s = %r is not a count" % (path, k, t[k]))
            return
    calls = rep.get("calls")
    if isinstance(calls, dict):
        need(calls, CALL_NAMES, "calls")
        for k, v in calls.items():
            if not is_count(v):
                errs.append("%s: calls.%s = %r" % (path, k, v))
    else:
        errs.append("%s: calls is not an object" % path)
    classes = rep.get("size_classes") if isinstance(rep.get("size_classes"), list) else []
    large = rep.get("large") if isinstance(rep.get("large"), dict) else {}
    if not need(large, LARGE_KEYS, "large"):
        return
    sums = {k: 0 for k in ("allocations", "frees", "live", "live_bytes", "bytes")}
    for i, c in enumerate(classes):
        if not isinstance(c, dict) or not need(c, CLASS_KEYS, "size_classes[%d]" % i):
            return
        for k in ("size", "allocations", "frees", "live", "peak", "live_bytes", "depot_exchanges",
                  "slabs", "contention"):
            if not is_count(c[k]):
                errs.append("%s: size_classes[%d].%s = %r" % (path, i, k, c[k]))
                return
        hr = c["magazine_hit_rate"]
        if not isinstance(hr, (int, float)) or not 0 <= hr <= 1.0000001:
            errs.append("%s: size_classes[%d].magazine_hit_rate = %r" % (path, i, hr))
        if c["live"] != c["allocations"] - c["frees"]:
            errs.append("%s: class %d: live %d != allocations %d - frees %d" % (
                path, c["size"], c["live"], c["allocations"], c["frees"]))
        if c["live_bytes"] != c["live"] * c["size"]:
            errs.append("%s: class %d: live_bytes %d != live %d * size" % (
                path, c["size"], c["live_bytes"], c["live"]))
        if c["peak"] < c["live"]:
            errs.append("%s: class %d: peak %d < live %d" % (path, c["size"], c["peak"], c["live"]))
        sums["allocations"] += c["allocations"]
        sums["frees"] += c["frees"]
        sums["live"] += c["live"]
        sums["live_bytes"] += c["live_bytes"]
    for k in LARGE_KEYS:
        if not is_count(large[k]):
            errs.append("%s: large.%s = %r" % (path, k, large[k]))
            return
    if large["live"] != large["allocations"] - large["frees"]:
        errs.append("%s: large: live %d != allocations %d - frees %d" % (
            path, large["live"], large["allocations"], large["frees"]))

    def eq(what, a, b):
        if a != b:
            errs.append("%s: %s: %d != %d (off by %d)" % (path, what, a, b, a - b))

    eq("totals.live_bytes == allocated_bytes - freed_bytes", t["live_bytes"],
       t["allocated_bytes"] - t["freed_bytes"])
    eq("totals.allocations == sum(size_classes.allocations) + large.allocations",
       t["allocations"], sums["allocations"] + large["allocations"])
    eq("totals.frees == sum(size_classes.frees) + large.frees",
       t["frees"], sums["frees"] + large["frees"])
    eq("totals.live_objects == sum(size_classes.live) + large.live",
       t["live_objects"], sums["live"] + large["live"])
    eq("totals.live_objects == allocations - frees", t["live_objects"], t["allocations"] - t["frees"])
    eq("totals.live_bytes == sum(size_classes.live_bytes) + large.live_bytes",
       t["live_bytes"], sums["live_bytes"] + large["live_bytes"])
    if t["peak_live_bytes"] < t["live_bytes"]:
        errs.append("%s: peak_live_bytes %d < live_bytes %d" % (path, t["peak_live_bytes"], t["live_bytes"]))
    if t["peak_mapped_bytes"] < t["mapped_bytes"]:
        errs.append("%s: peak_mapped_bytes %d < mapped_bytes %d" % (
            path, t["peak_mapped_bytes"], t["mapped_bytes"]))
    if t["allocations"] == 0:
        errs.append("%s: no allocations counted" % path)
    if rep.get("stats_counting") is True:
        if calls and calls.get("malloc", 0) + calls.get("calloc", 0) + calls.get("realloc", 0) == 0 \
                and t["allocations"] > 0 and sum(v for v in calls.values() if is_count(v)) == 0:
            errs.append("%s: stats_counting but no calls counted" % path)
        if t["requested_bytes"] > t["allocated_bytes"]:
            errs.append("%s: requested_bytes %d > allocated_bytes %d" % (
                path, t["requested_bytes"], t["allocated_bytes"]))
    hist = rep.get("histogram") if isinstance(rep.get("histogram"), list) else []
    last = -1
    for i, h in enumerate(hist):
        if not isinstance(h, dict) or "le" not in h or "count" not in h:
            errs.append("%s: histogram[%d] = %r" % (path, i, h))
            break
        if h["le"] is None and i == len(hist) - 1 and is_count(h["count"]):
            break  # the last bucket may be open-ended ("le": null, +inf)
        if not is_count(h["count"]) or not isinstance(h["le"], (int, float)) or h["le"] <= last:
            errs.append("%s: histogram[%d] = %r (counts, le ascending)" % (path, i, h))
            break
        last = h["le"]
    for i, v in enumerate(rep.get("verdicts") or []):
        if not isinstance(v, str):
            errs.append("%s: verdicts[%d] = %r" % (path, i, v))


SAMPLE_KEYS = ["time_ms", "live_bytes", "resident_bytes", "mapped_bytes"]


def check_samples(path, objs):
    """SYSREF_STATS_INTERVAL_MS: samples (one line each), then the final report."""
    kinds = [o.get("kind") if isinstance(o, dict) else None for o in objs]
    if "report" in kinds and kinds.index("report") != len(kinds) - 1:
        after = len(kinds) - 1 - kinds.index("report")
        fail("%s: %d line(s) after the final report (kinds of the last lines: %s)" % (
            path, after, kinds[-4:]))
    last = -1
    for n, o in enumerate(objs):
        if not isinstance(o, dict) or o.get("kind") != "sample":
            continue
        missing = [k for k in SAMPLE_KEYS if not is_count(o.get(k))]
        if missing:
            fail("%s: sample on line %d lacks %s" % (path, n + 1, missing))
            break
        if o["time_ms"] < last:
            fail("%s: sample on line %d: time_ms %d goes back (from %d)" % (path, n + 1, o["time_ms"], last))
            break
        last = o["time_ms"]


def load_reports(run):
    """Parses every report file; returns [(path, report)]."""
    out = []
    for path in sorted(glob.glob(os.path.join(run.reports, "r.*.json"))):
        with open(path, "rb") as f:
            data = f.read().decode("utf-8", "replace")
        try:
            objs = [json.loads(data)]
        except ValueError:
            # One object per line (samples, then the report), or broken.
            objs = []
            for n, line in enumerate(data.splitlines()):
                if not line.strip():
                    continue
                try:
                    objs.append(json.loads(line))
                except ValueError as e:
                    fail("%s: line %d does not parse as JSON: %s\n%s" % (path, n + 1, e, line[:500]))
        reps = [o for o in objs if isinstance(o, dict) and o.get("kind", "report") == "report"]
        samples_only = objs and all(isinstance(o, dict) and o.get("kind") == "sample" for o in objs)
        if len(reps) != 1 and not (samples_only and not reps):
            # (a process that left by _exit or exec has samples and no report)
            fail("%s: %d report objects (expected 1)" % (path, len(reps)))
        check_samples(path, objs)
        out += [(path, r) for r in reps]
    return out


def check_reports(run, min_reports=1, min_foreign=0):
    reps = load_reports(run)
    if len(reps) < min_reports:
        fail("%d report files under the shim, expected at least %d (SYSREF_STATS_FILE=%s)" % (
            len(reps), min_reports, run.env.get("SYSREF_STATS_FILE")))
    errs = []
    for path, rep in reps:
        check_report(path, rep, errs)
        mode = run.env.get("SYSREF_PERCPU")
        if mode and rep.get("percpu_mode") != mode:
            errs.append("%s: percpu_mode %r under SYSREF_PERCPU=%s" % (path, rep.get("percpu_mode"), mode))
    for e in errs[:40]:
        fail(e)
    foreign = sum(r.get("totals", {}).get("foreign_frees", 0) for _, r in reps
                  if isinstance(r.get("totals"), dict))
    if min_foreign and foreign < min_foreign:
        fail("foreign_frees %d in all reports, expected at least %d" % (foreign, min_foreign))
    progs = sorted({str(r.get("program")) for _, r in reps})
    print("  %d reports (%s); foreign_frees %d; errors %d" % (len(reps), ", ".join(progs), foreign,
                                                             len(errs)), flush=True)
    if reps:
        t = max(reps, key=lambda pr: pr[1].get("totals", {}).get("allocations", 0)
                if isinstance(pr[1].get("totals"), dict) else 0)[1].get("totals", {})
        print("  largest: allocations %s frees %s live_bytes %s peak %s" % (
            t.get("allocations"), t.get("frees"), t.get("live_bytes"), t.get("peak_live_bytes")))
    return reps


TEXT_SECTIONS = ["totals", "calls", "size classes", "large", "histogram", "object caches", "zones",
                 "sysref classes", "verdicts"]


def check_text_reports(run, expect_program):
    """The text report of every process: every section heading, the header lines."""
    paths = sorted(glob.glob(os.path.join(run.reports, "t.*.txt")))
    if not paths:
        fail("no text report under %s" % run.reports)
    for path in paths:
        with open(path, "rb") as f:
            lines = f.read().decode("utf-8", "replace").splitlines(True)
        # With SYSREF_STATS_INTERVAL_MS: JSON samples (one a line) come first.
        samples = 0
        while lines and lines[0].startswith("{"):
            try:
                if json.loads(lines[0]).get("kind") != "sample":
                    fail("%s: a JSON line that is not a sample before the text report" % path)
            except ValueError as e:
                fail("%s: sample line does not parse: %s" % (path, e))
            lines.pop(0)
            samples += 1
        if not lines and samples:
            continue  # samples only: the process left by _exit or exec
        text = "".join(lines)
        if any(l.startswith("{") for l in lines):
            fail("%s: JSON lines after the text report began" % path)
        headings = [l.strip("= \n").lower() for l in text.splitlines() if l.startswith("==")]
        missing = [s for s in TEXT_SECTIONS if not any(h.startswith(s) for h in headings)]
        if missing:
            fail("%s: text report lacks the sections %s (has %s)" % (path, missing, headings))
        for word in ("pid", "topology", expect_program):
            if word not in text.split("==")[0]:
                fail("%s: text report header lacks %r" % (path, word))
    print("  %d text reports checked" % len(paths), flush=True)


# ---- scenarios ----------------------------------------------------------------------
# Each takes a Run and performs its steps; called once bare and once under the shim.

def need_program(name):
    path = shutil.which(name)
    if not path:
        print("SKIP: %s is not on this machine" % name)
        sys.exit(SKIP)
    return path


def python_executable():
    # The real interpreter, not a wrapper script (pyenv shims are bash).
    return os.path.realpath(sys.executable) if sys.executable else need_program("python3")


def scenario_python3(run, args):
    py = python_executable()
    script = os.path.join(HERE, "py_stress.py")
    env = {"PYTHONHASHSEED": "0", "PYTHONDONTWRITEBYTECODE": "1"}
    run.step("python3 (pymalloc)", [py, script], env_extra=env)
    # Every object through malloc/free: the shim sees all of CPython's traffic.
    run.step("python3 PYTHONMALLOC=malloc", [py, script], env_extra=dict(env, PYTHONMALLOC="malloc"))


def scenario_git(run, args):
    git = need_program("git")
    repo = os.path.join(run.work, "repo")
    os.makedirs(repo)
    g = [git, "-c", "user.name=Preload Test", "-c", "user.email=preload@example.invalid",
         "-c", "init.defaultBranch=main", "-c", "core.autocrlf=false", "-c", "gc.auto=0"]
    for i in range(40):
        with open(os.path.join(repo, "file%02d.txt" % i), "w") as f:
            f.write("".join("line %d of file %d %s\n" % (j, i, "x" * (j % 13)) for j in range(200)))
    run.step("git init", g + ["init", "-q", "."], cwd=repo)
    run.step("git add", g + ["add", "."], cwd=repo)
    run.step("git commit 1", g + ["commit", "-q", "-m", "first"], cwd=repo)
    for i in range(0, 40, 3):
        with open(os.path.join(repo, "file%02d.txt" % i), "a") as f:
            f.write("changed %d\n" % i)
    os.remove(os.path.join(repo, "file39.txt"))
    run.step("git add -A", g + ["add", "-A"], cwd=repo)
    run.step("git commit 2", g + ["commit", "-q", "-m", "second\n\nbody text"], cwd=repo)
    run.step("git log", g + ["log", "--stat", "--format=%H %an <%ae> %ad%n%B"], cwd=repo)
    run.step("git diff", g + ["diff", "HEAD~1", "HEAD"], cwd=repo)
    run.step("git gc", g + ["gc", "-q", "--aggressive"], cwd=repo)
    run.step("git fsck", g + ["fsck", "--full", "--strict"], cwd=repo)
    run.step("git status", g + ["status", "--porcelain=v1", "--branch"], cwd=repo)
    run.step("git rev-list", g + ["rev-list", "--objects", "--all"], cwd=repo)
    # A clone through the pack protocol: upload-pack and pack-objects (threads) as children.
    run.step("git clone", g + ["clone", "-q", "--no-local", repo, os.path.join(run.work, "clone")])
    run.step("git log clone", g + ["-C", os.path.join(run.work, "clone"), "log", "--format=%H %s",
                                   "--name-status"])


def git_env(work):
    return {
        "GIT_AUTHOR_DATE": "2024-01-02T03:04:05Z",
        "GIT_COMMITTER_DATE": "2024-01-02T03:04:05Z",
        "GIT_CONFIG_NOSYSTEM": "1",
        "GIT_CONFIG_GLOBAL": "/dev/null",
        "GIT_TERMINAL_PROMPT": "0",
        "GIT_PAGER": "cat",
        "PAGER": "cat",
        "HOME": work,
    }


def scenario_perl(run, args):
    perl = need_program("perl")
    script = os.path.join(HERE, "perl_stress.pl")
    env = {"PERL_HASH_SEED": "0", "PERL_PERTURB_KEYS": "0"}
    run.step("perl script", [perl, script], env_extra=env)
    run.step("perl one-liner", [perl, "-e",
                                'my %h; $h{$_ % 977} .= "v$_," for 1..300000; '
                                'my $t = 0; $t += length for values %h; '
                                'print scalar(keys %h), " $t ", join("", sort map { chr(97 + $_ % 26) } 1..2000) =~ tr/a//, "\\n"'],
             env_extra=env)


def scenario_sqlite3(run, args):
    sqlite3 = need_program("sqlite3")
    with open(os.path.join(HERE, "sqlite_stress.sql"), "rb") as f:
        sql = f.read()
    run.step("sqlite3 :memory:", [sqlite3, "-bail", ":memory:"], stdin_data=sql)
    run.step("sqlite3 file db", [sqlite3, "-bail", os.path.join(run.work, "t.db")], stdin_data=sql)
    run.step("sqlite3 reopen", [sqlite3, "-bail", os.path.join(run.work, "t.db"),
                                "SELECT count(*), sum(length(name)) FROM t; PRAGMA integrity_check;"])


def scenario_gcc(run, args):
    gcc = need_program("gcc")
    src = os.path.join(HERE, "gcc_prog.c")
    exe = os.path.join(run.work, "prog")
    run.step("gcc -O2", [gcc, "-O2", "-g", "-Wall", "-Wextra", "-o", exe, src])
    run.step("gcc -O0 -c", [gcc, "-O0", "-c", "-o", os.path.join(run.work, "prog.o"), src])
    # The compiler's output is the same with and without the shim.
    import hashlib
    for name in ("prog.o", "prog"):
        path = os.path.join(run.work, name)
        digest = hashlib.sha256(open(path, "rb").read()).hexdigest() if os.path.exists(path) else "missing"
        run.transcript.append(("sha256 " + name, 0, digest, ""))
    # The compiled program runs without the shim in both modes.
    if os.path.exists(exe):
        r = subprocess.run([exe], capture_output=True, env={"PATH": os.environ.get("PATH", "")})
        run.transcript.append(("compiled program (bare)", r.returncode, r.stdout.decode(), r.stderr.decode()))
        print("  [%s] %-28s rc=%s" % (run.mode, "compiled program (bare)", r.returncode), flush=True)
    else:
        run.transcript.append(("compiled program (bare)", "missing", "", ""))


def scenario_mt(run, args):
    if not args.exe or not os.path.exists(args.exe):
        fail("mt: --exe %r does not exist" % args.exe)
        return
    argv = [args.exe] + ([args.deepbind] if args.deepbind else [])
    run.step("mt_program", argv)


SCENARIOS = {
    "python3": scenario_python3,
    "git": scenario_git,
    "perl": scenario_perl,
    "sqlite3": scenario_sqlite3,
    "gcc": scenario_gcc,
    "mt": scenario_mt,
}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("shim")
    ap.add_argument("program", choices=sorted(SCENARIOS))
    ap.add_argument("--exe", help="mt: the mt_program executable")
    ap.add_argument("--deepbind", help="mt: the library mt_program dlopens with RTLD_DEEPBIND")
    ap.add_argument("--env", action="append", default=[], metavar="NAME=VALUE",
                    help="set in the children's environment, bare and under the shim alike")
    ap.add_argument("--keep", action="store_true", help="keep the scratch directory")
    ap.add_argument("--bare-only", action="store_true",
                    help="run the scenario twice bare (develops the harness without a shim)")
    args = ap.parse_args()

    if "LD_PRELOAD" in os.environ:
        print("run_under_shim.py: LD_PRELOAD is set in the harness itself; refusing "
              "(only the children run under the shim)")
        return 1
    # meson runs the harness in the build directory; the scenarios change it.
    shim = os.path.abspath(args.shim)
    args.exe = os.path.abspath(args.exe) if args.exe else None
    args.deepbind = os.path.abspath(args.deepbind) if args.deepbind else None
    if not args.bare_only and not os.path.exists(shim):
        print("FAIL: the shim %s does not exist" % shim)
        return 1
    if args.program in ("python3",) and not sys.executable:
        need_program("python3")

    scratch = tempfile.mkdtemp(prefix="preload-%s-" % args.program)
    print("%s: scratch %s" % (args.program, scratch), flush=True)
    base_env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "LC_ALL": "C",
        "LANG": "C",
        "TZ": "UTC",
        "TMPDIR": scratch,
    }
    for kv in args.env:
        name, _, value = kv.partition("=")
        base_env[name] = value
    runs = {}
    try:
        for mode in ("bare", "shim"):
            work = os.path.join(scratch, "w")  # the same path in both modes
            if os.path.exists(work):
                os.rename(work, os.path.join(scratch, "bare-run"))
            os.makedirs(work)
            env = dict(base_env, HOME=work)
            if args.program == "git":
                env.update(git_env(work))
            run = Run("bare" if (mode == "bare" or args.bare_only) else "shim", shim, work, env)
            run.mode = mode if not args.bare_only else "bare" + ("" if mode == "bare" else "2")
            SCENARIOS[args.program](run, args)
            runs[mode] = run
        compare(runs["bare"], runs["shim"])
        if not args.bare_only:
            min_foreign = 0
            if args.program == "mt":
                m = re.search(r"^foreign: freed (\d+)$", "".join(
                    t[2] for t in runs["shim"].transcript if isinstance(t[2], str)), re.M)
                min_foreign = int(m.group(1)) if m else 1
            reps = check_reports(runs["shim"], min_reports=1, min_foreign=min_foreign)
            if args.program == "mt":
                # Parent plus the children that left through exit(3).
                if len(reps) < 1 + 6:
                    fail("mt: %d reports, expected the parent's and 6 fork children's" % len(reps))
                # Once more with the text report: same output, every section.
                work = os.path.join(scratch, "w")
                os.rename(work, os.path.join(scratch, "shim-run"))
                os.makedirs(work)
                text = Run("shim", shim, work, dict(base_env, HOME=work))
                text.mode = "shim-text"
                text.env["SYSREF_STATS"] = "text"
                text.env["SYSREF_STATS_FILE"] = os.path.join(text.reports, "t.%p.txt")
                SCENARIOS[args.program](text, args)
                compare(runs["bare"], text)
                check_text_reports(text, os.path.basename(args.exe))
        for t in runs["bare"].transcript:
            if t[1] != 0:
                fail("%s: exits %s even without the shim:\n%s" % (t[0], t[1], str(t[3])[-2000:]))
    finally:
        if failures or args.keep:
            print("scratch kept: %s" % scratch)
        else:
            shutil.rmtree(scratch, ignore_errors=True)
    if failures:
        print("%d failures" % len(failures))
        return 1
    print("PASS")
    return 0


if __name__ == "__main__":
    sys.exit(main())
