# Stresses CPython's allocations (dicts, lists, strings, bytes, threads) with
# deterministic output: the preload harness runs it bare and under the shim
# and compares what it prints. Run with PYTHONHASHSEED=0.
import hashlib
import json
import os
import queue
import subprocess
import sys
import threading


def digest(obj):
    return hashlib.sha256(repr(obj).encode()).hexdigest()[:16]


def dicts(n):
    d = {}
    for i in range(n):
        d["key-%d" % i] = {"i": i, "sq": i * i, "s": str(i) * (i % 7 + 1)}
    for i in range(0, n, 3):
        del d["key-%d" % i]
    total = sum(v["sq"] for v in d.values())
    merged = {}
    for k, v in d.items():
        merged.setdefault(len(v["s"]), []).append(k)
    return len(d), total, sorted((k, len(v)) for k, v in merged.items())


def lists(n):
    xs = [(i * 7919) % 10007 for i in range(n)]
    ys = sorted(xs)
    nested = [[j for j in range(i % 50)] for i in range(n // 10)]
    while len(xs) > n // 2:
        xs.pop()
    xs.extend(range(1000))
    return len(xs), sum(ys[:100]), sum(map(len, nested)), digest(ys[-10:])


def strings(n):
    parts = []
    for i in range(n):
        parts.append(("abc%05d" % i).upper() + "-" + "x" * (i % 31))
    s = "|".join(parts)
    pieces = s.split("|")
    replaced = s.replace("ABC", "defg")
    growing = ""
    for i in range(2000):
        growing += chr(ord("a") + i % 26)
    b = bytearray()
    for i in range(5000):
        b += bytes([i % 256]) * (i % 13)
    blob = json.dumps({"parts": pieces[:500], "n": n})
    back = json.loads(blob)
    return (len(s), len(pieces), len(replaced), digest(growing), len(b),
            hashlib.sha256(bytes(b)).hexdigest()[:16], len(back["parts"]))


def worker(idx, inq, outq):
    # Consumes objects made by another thread (cross-thread frees) and makes
    # new ones for the main thread to drop.
    acc = 0
    while True:
        item = inq.get()
        if item is None:
            break
        acc += sum(len(s) for s in item["strs"]) + sum(item["nums"])
        outq.put({"from": idx, "blob": "y" * (acc % 997), "list": list(range(acc % 113))})
    outq.put(("done", idx, acc))


def threads(nthreads, items):
    inqs = [queue.Queue() for _ in range(nthreads)]
    outq = queue.Queue()
    ts = [threading.Thread(target=worker, args=(i, inqs[i], outq)) for i in range(nthreads)]
    for t in ts:
        t.start()
    for k in range(items):
        inqs[k % nthreads].put({"strs": [str(k) * (k % 5 + 1) for _ in range(k % 9)],
                                "nums": list(range(k % 17))})
    for q in inqs:
        q.put(None)
    done = {}
    produced = 0
    while len(done) < nthreads:
        m = outq.get()
        if isinstance(m, tuple):
            done[m[1]] = m[2]
        else:
            produced += len(m["blob"]) + len(m["list"])
    for t in ts:
        t.join()
    return [done[i] for i in range(nthreads)], produced


def churn_threads(nthreads, rounds):
    # Threads allocating and freeing on their own at the same time.
    results = [None] * nthreads

    def run(i):
        d = {}
        for r in range(rounds):
            d[r % 500] = [str(r)] * (r % 11) + [{"r": r}]
            if r % 3 == 0:
                d.pop((r * 7) % 500, None)
        results[i] = (len(d), sum(len(v) for v in d.values()))

    ts = [threading.Thread(target=run, args=(i,)) for i in range(nthreads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    return results


def fork_and_exec():
    # fork while other threads allocate; the child allocates and leaves with
    # os._exit. Then a child interpreter (fork + exec, inheriting the
    # environment, the shim included).
    stop = threading.Event()

    def busy():
        while not stop.is_set():
            [str(i) * 3 for i in range(2000)]

    ts = [threading.Thread(target=busy) for _ in range(3)]
    for t in ts:
        t.start()
    statuses = []
    for n in range(8):
        pid = os.fork()
        if pid == 0:
            junk = {i: [str(i)] * 5 for i in range(20000)}
            os._exit(0 if len(junk) == 20000 else 3)
        statuses.append(os.waitpid(pid, 0)[1])
    stop.set()
    for t in ts:
        t.join()
    child = subprocess.run([sys.executable, "-c", "d = {str(i): i for i in range(10**5)}; print(sum(d.values()))"],
                           capture_output=True, text=True, check=True)
    return statuses, child.stdout.strip()


def main():
    print("dicts", dicts(60000))
    print("lists", lists(200000))
    print("strings", strings(40000))
    print("threads", threads(6, 20000))
    print("churn", churn_threads(8, 40000))
    print("set", sorted({i % 1000 for i in range(100000)})[-3:], len({str(i) for i in range(50000)}))
    print("fork/exec", fork_and_exec())
    print("ok")


if __name__ == "__main__":
    main()
