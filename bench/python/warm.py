"""Steady-state throughput: N trivial tasks on 2 workers of a pool that is
already running (its start and shutdown are not timed).

    /usr/bin/python3 bench/python/warm.py PEER [N]

prints one line of JSON: {"peer", "n", "seconds", "tasks_per_s",
"median_tasks_per_s", "maps"}: the best (seconds, tasks_per_s) and the
median of MAPS maps on the same pool (MAPS=3 unless the environment says
otherwise). The input is range(N), or list(range(N)) with INPUT=list.
PYTHON_DIR names another revision's python/ directory to measure.
"""
import json
import os
import statistics
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# PYTHON_DIR: the safepool package's parent to measure (another revision's
# python/, with its binary in safepool/_bin), by default this tree's.
sys.path.insert(0, os.environ.get("PYTHON_DIR") or os.path.join(REPO, "python"))

N = int(sys.argv[2]) if len(sys.argv) > 2 else 20000
W = 2
MAPS = int(os.environ.get("MAPS", "3"))


def sq(x):
    return x * x


def make(peer):
    if peer == "safepool_map":
        import safepool
        p = safepool.Pool(W)
        return p, p.map, p.terminate
    if peer == "mp_pool_chunked":
        import multiprocessing as mp
        p = mp.get_context("fork").Pool(W)
        return p, p.map, p.terminate
    if peer == "ppe":
        from concurrent.futures import ProcessPoolExecutor
        ex = ProcessPoolExecutor(W)
        return ex, lambda f, it: list(ex.map(f, it)), ex.shutdown
    raise SystemExit("unknown peer " + peer)


if __name__ == "__main__":
    peer = sys.argv[1]
    pool, run, stop = make(peer)
    run(sq, range(2 * W))  # the workers are up
    items = list(range(N)) if os.environ.get("INPUT") == "list" else range(N)
    want = sum(i * i for i in range(N))
    times = []
    for _ in range(MAPS):
        t = time.perf_counter()
        s = sum(run(sq, items))
        times.append(time.perf_counter() - t)
        assert s == want, peer
    stop()
    best = min(times)
    print(json.dumps({"peer": peer, "n": N, "seconds": best, "tasks_per_s": N / best,
                      "median_tasks_per_s": N / statistics.median(times), "maps": MAPS}))
