"""Warm pools side by side, map by map: the same map of N trivial tasks on
2 workers, run in turn on each peer's warm pool, PAIRS times.

    [BLOCK=K] /usr/bin/python3 bench/python/warmpair.py N PAIRS PEER...

PEER is safepool_map, mp_pool_chunked or ppe (bench/python/warm.py), or
base=DIR: safepool_map from another revision's python/ directory (with its
binary in safepool/_bin). Each peer's pool lives in a process of its own,
started and warmed before timing; while one peer runs its map, the others
wait on a pipe and take no CPU. In each turn a peer runs BLOCK maps back to
back (1 unless the environment says otherwise), and the turn counts as
their median; in each round of turns the order rotates, so that every peer
runs first as often as the others.

A map here takes a few milliseconds, while the load of a shared machine
changes over seconds: runs of many maps of one peer followed by runs of
another (bench/python/warmrounds) compare different moments as much as
different pools. Maps taken in turn see the same moments, and the ratio
of each pair (the first peer's map time over the other's) cancels what
they share.

Prints one line of JSON per peer: the median, 10th and 90th percentile
of its turns' map times (ms) and median items/s, and, for every peer but
the first, the median of the rounds' ratios (the other peer's map time
over the first peer's, so above 1.0 means the first peer is faster) with
the ratio of the medians.
"""
import json
import os
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))


def serve(peer, n):
    """A peer's process: a warm pool that runs one map per line read."""
    sys.argv = [sys.argv[0], peer, str(n)]
    sys.path.insert(0, HERE)
    import warm
    pool, run, stop = warm.make(peer)
    items = range(n)
    want = sum(i * i for i in items)
    run(warm.sq, range(4))
    for _ in range(3):
        run(warm.sq, items)
    out = sys.stdout
    out.write("ready\n")
    out.flush()
    for line in sys.stdin:
        word, _, count = line.partition(" ")
        if word != "go":
            break
        times = []
        for _ in range(int(count)):
            t = time.perf_counter()
            s = sum(run(warm.sq, items))
            times.append(time.perf_counter() - t)
            assert s == want, peer
        out.write(" ".join("%.9f" % t for t in times) + "\n")
        out.flush()
    stop()


def start(spec, n):
    env = dict(os.environ)
    peer = spec
    if spec.startswith("base="):
        env["PYTHON_DIR"] = spec[len("base="):]
        peer = "safepool_map"
    proc = subprocess.Popen([sys.executable, os.path.abspath(__file__), "serve", peer, str(n)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env, cwd=HERE)
    if proc.stdout.readline().strip() != "ready":
        raise SystemExit("peer %s did not start" % spec)
    return proc


def turn(proc, block):
    """The times of block maps run back to back by proc; their median."""
    proc.stdin.write("go %d\n" % block)
    proc.stdin.flush()
    line = proc.stdout.readline()
    if not line:
        raise SystemExit("a peer ended early")
    return statistics.median(float(t) for t in line.split())


def main():
    n, pairs, peers = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3:]
    if len(peers) < 2:
        raise SystemExit(__doc__)
    block = int(os.environ.get("BLOCK", "1"))
    procs = [start(p, n) for p in peers]
    times = [[] for _ in peers]
    load0 = os.getloadavg()[0]
    try:
        for i in range(pairs):
            k = i % len(peers)
            for j in list(range(k, len(peers))) + list(range(k)):
                times[j].append(turn(procs[j], block))
    finally:
        for p in procs:
            p.stdin.close()
        for p in procs:
            p.wait()
    load1 = os.getloadavg()[0]
    first = times[0]
    for spec, ts in zip(peers, times):
        s = sorted(ts)
        row = {"peer": spec, "n": n, "turns": len(ts), "block": block, "median_ms": statistics.median(ts) * 1e3,
               "p10_ms": s[len(s) // 10] * 1e3, "p90_ms": s[len(s) * 9 // 10] * 1e3,
               "median_items_per_s": n / statistics.median(ts), "load": [load0, load1]}
        if ts is not first:
            row["first_vs_this_median_of_pair_ratios"] = statistics.median(b / a for a, b in zip(first, ts))
            row["first_vs_this_ratio_of_medians"] = statistics.median(ts) / statistics.median(first)
        print(json.dumps(row))


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "serve":
        serve(sys.argv[2], int(sys.argv[3]))
    else:
        main()
