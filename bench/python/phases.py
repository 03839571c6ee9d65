"""Where the time of one safepool.Pool.map measurement goes.

    /usr/bin/python3 bench/python/phases.py [N]

runs what `bench/python/tput.py safepool_map N` runs, timing its phases, and
prints one line of JSON (milliseconds): import (import safepool and the
Pool name), start (Pool(2) returns: the binary is up and has the pool's
configuration; the workers are still starting), map (until the results are
back: the workers' start, then the tasks), terminate (leaving the with
block: the workers and the binary have exited) and total.
"""
import json
import os
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(REPO, "python"))

N = int(sys.argv[1]) if len(sys.argv) > 1 else 20000
W = 2


def sq(x):
    return x * x


if __name__ == "__main__":
    clock = time.perf_counter
    t0 = clock()
    import safepool
    Pool = safepool.Pool
    t1 = clock()
    with Pool(W) as p:
        t2 = clock()
        s = sum(p.map(sq, range(N)))
        t3 = clock()
    t4 = clock()
    assert s == sum(i * i for i in range(N))
    ms = [1000 * d for d in (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t4 - t0)]
    print(json.dumps(dict(zip(("import", "start", "map", "terminate", "total"), ms))))
