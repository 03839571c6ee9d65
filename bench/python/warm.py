"""Steady-state throughput: N trivial tasks on 2 workers of a pool that is
already running (its start and shutdown are not timed).

    /usr/bin/python3 bench/python/warm.py PEER [N]

prints one line of JSON: {"peer", "n", "seconds", "tasks_per_s"}, the best
of 3 maps on the same pool.
"""
import json
import os
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(REPO, "python"))

N = int(sys.argv[2]) if len(sys.argv) > 2 else 20000
W = 2


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
    best = None
    for _ in range(3):
        t = time.perf_counter()
        s = sum(run(sq, range(N)))
        dt = time.perf_counter() - t
        assert s == sum(i * i for i in range(N)), peer
        best = dt if best is None else min(best, dt)
    stop()
    print(json.dumps({"peer": peer, "n": N, "seconds": best, "tasks_per_s": N / best}))
