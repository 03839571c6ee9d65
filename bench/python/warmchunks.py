"""Warm maps of N trivial tasks on 2 workers by batch size: safepool's
Pool.map with each chunksize given, and multiprocessing.Pool (fork, its
default chunksize), both pools in this one process, interleaved in ROUNDS
rounds of 5 maps each.

    /usr/bin/python3 bench/python/warmchunks.py N SIZE,SIZE,... ROUNDS

prints, per peer, the median and the best map in ms.
"""
import os
import statistics
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.environ.get("PYTHON_DIR") or os.path.join(REPO, "python"))


def sq(x):
    return x * x


if __name__ == "__main__":
    import multiprocessing as mp
    import safepool
    n, sizes, rounds = int(sys.argv[1]), [int(s) for s in sys.argv[2].split(",")], int(sys.argv[3])
    pool = safepool.Pool(2)
    pool.map(sq, range(4))
    peer = mp.get_context("fork").Pool(2)
    peer.map(sq, range(4))
    times = {s: [] for s in sizes}
    times["mp"] = []
    items = range(n)
    for _ in range(rounds):
        for s in sizes:
            for _ in range(5):
                t = time.perf_counter()
                pool.map(sq, items, chunksize=s)
                times[s].append(time.perf_counter() - t)
        for _ in range(5):
            t = time.perf_counter()
            peer.map(sq, items)
            times["mp"].append(time.perf_counter() - t)
    pool.terminate()
    peer.terminate()
    for k, v in times.items():
        print("%s median %.2f ms best %.2f ms" % (k, statistics.median(v) * 1e3, min(v) * 1e3))
