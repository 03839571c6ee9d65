"""Big arrays in a container: the peak memory of a memory cgroup (v1) with
a limit, and whether the program finished, for data-path cases run as
nobody inside it, with safepool (one or two trees) and multiprocessing.Pool
(spawn). Run as root:

    /usr/bin/python3 bench/python/container.py RUNS TREE [TREE...]

TREE is a directory holding the safepool package and its binary (this
tree's python/, or another commit's from `git archive`). Prints one
markdown table: per case and peer, the median (min-max) of the cgroup's
max_usage_in_bytes in MiB over RUNS runs, peers interleaved in a rotated
order, and how many runs were OOM-killed."""
import os
import statistics
import subprocess
import sys
import textwrap

CG = "/sys/fs/cgroup/memory/safepool-bench-container"

CASES = {
    # name: (cgroup limit, top-level definitions, the program's body);
    # PEER is "safepool" or "spawn", P the pool.
    "imap over a generator of 100 arrays of 16 MiB, 1 GiB": ("1G", """
def f(x): return x[:1 << 17] * 2
def gen():
    for i in range(100): yield np.full(16 << 17, i, dtype=np.float64)
""", """
with P as p:
    for r in p.imap(f, gen()): time.sleep(0.01)
"""),
    "8 map_async of 10 arrays of 8 MiB, 2 GiB": ("2G", """
def f(x): return float(x[::4096].sum())
""", """
xs = [[np.full(8 << 17, i, dtype=np.float64) for i in range(10)] for _ in range(8)]
with P as p:
    rs = [p.map_async(f, x) for x in xs]
    [r.get() for r in rs]
"""),
    "imap of 600 arrays of 8 MiB, one in four raises, 1 GiB": ("1G", """
def f(x):
    if int(x[0]) % 4 == 3: raise ValueError("bad input")
    return float(x[0])
def f2(x):
    try: return f(x)
    except Exception as e: return e
def gen():
    for i in range(600): yield np.full(8 << 17, i, dtype=np.float64)
""", """
with P as p:
    for r in (p.imap(f, gen(), errors="return") if PEER == "safepool" else p.imap(f2, gen())): pass
"""),
    "12 maps, each sharing a new 100 MiB array, 1 GiB": ("1G", """
def g(h, i): return float(h[i::64].sum())
""", """
with P as p:
    for rnd in range(12):
        with safepool.share(np.full(100 << 17, rnd, dtype=np.float64)) as h:
            p.starmap(g, [(h, i) for i in range(8)])
"""),
}

HEAD = """
import sys, time, numpy as np
PEER = sys.argv[1]
"""

MAIN = """
if __name__ == "__main__":
    if PEER == "safepool":
        import safepool
        P = safepool.Pool(2)
    else:
        import multiprocessing as mp
        P = mp.get_context("spawn").Pool(2)
"""


def run(case, peer, tree, scratch):
    limit, defs, body = CASES[case]
    if peer != "safepool" and "safepool.share" in body:
        return None
    path = os.path.join(scratch, "case.py")
    with open(path, "w") as f:
        f.write(HEAD + defs + MAIN + textwrap.indent(body, "    "))
    os.makedirs(CG, exist_ok=True)
    for name, value in (("memory.limit_in_bytes", limit), ("memory.max_usage_in_bytes", "0")):
        with open(os.path.join(CG, name), "w") as f:
            f.write(value)
    cmd = ("echo $$ > %s/cgroup.procs && exec setpriv --reuid 65534 --regid 65534 --clear-groups "
           "env PYTHONPATH=%s HOME=/tmp /usr/bin/python3 %s %s" % (CG, tree, path, peer))
    try:
        r = subprocess.run(["sh", "-c", cmd], capture_output=True, text=True, timeout=120)
        rc = r.returncode
    except subprocess.TimeoutExpired:
        rc = -1  # multiprocessing waits for ever once a worker is OOM-killed
    _empty()
    with open(os.path.join(CG, "memory.max_usage_in_bytes")) as f:
        peak = int(f.read()) >> 20
    return peak, rc


def _empty():
    """SIGKILL what the case left in the cgroup (a hung peer's processes),
    by pid, and wait until it is empty."""
    import signal
    import time
    for _ in range(100):
        with open(os.path.join(CG, "cgroup.procs")) as f:
            pids = [int(p) for p in f.read().split()]
        if not pids:
            return
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.1)


def main():
    runs, trees = int(sys.argv[1]), sys.argv[2:]
    peers = [("safepool", t) for t in trees] + [("spawn", trees[0])]
    scratch = "/tmp/safepool-bench-container"
    os.makedirs(scratch, exist_ok=True)
    os.chmod(scratch, 0o755)
    results = {}
    try:
        for k in range(runs):
            for case in CASES:
                order = peers[k % len(peers):] + peers[:k % len(peers)]
                for peer, tree in order:
                    out = run(case, peer, tree, scratch)
                    if out is not None:
                        results.setdefault((case, peer, tree), []).append(out)
    finally:
        os.rmdir(CG)
        for name in os.listdir(scratch):
            os.unlink(os.path.join(scratch, name))
        os.rmdir(scratch)
    print("| case | peer | peak MiB, median (min-max) | runs killed or failed |")
    print("|---|---|---|---|")
    for (case, peer, tree), outs in results.items():
        peaks = [p for p, _ in outs]
        bad = sum(1 for _, rc in outs if rc != 0)
        label = "safepool (%s)" % tree if peer == "safepool" else "multiprocessing.Pool (spawn)"
        print("| %s | %s | %d (%d-%d) | %d of %d |" % (case, label, statistics.median(peaks), min(peaks), max(peaks),
                                                       bad, len(outs)))


if __name__ == "__main__":
    main()
