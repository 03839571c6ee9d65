"""One throughput measurement: N trivial tasks on 2 workers with one pool.

    /usr/bin/python3 bench/python/tput.py PEER [N]

prints one line of JSON: {"peer", "n", "seconds", "tasks_per_s"}. The time
covers creating the pool, running the tasks and shutting the pool down, as
in /work/shared/peers/peers_tput.py, whose peers these are, plus safepool's.
"""
import json
import os
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# PYTHON_DIR names another client's directory (bench/python/single runs a
# baseline's this way).
sys.path.insert(0, os.environ.get("PYTHON_DIR") or os.path.join(REPO, "python"))

N = int(sys.argv[2]) if len(sys.argv) > 2 else 20000
W = 2


def sq(x):
    return x * x


def safepool_map():
    import safepool
    with safepool.Pool(W) as p:
        return sum(p.map(sq, range(N)))


def safepool_imap():
    import safepool
    with safepool.Pool(W) as p:
        return sum(p.imap(sq, range(N)))


def safepool_imap1():
    import safepool
    with safepool.Pool(W) as p:
        return sum(p.imap(sq, range(N), chunksize=1))


def safepool_apply():
    import safepool
    with safepool.Pool(W) as p:
        results = [p.apply_async(sq, (i,)) for i in range(N)]
        return sum(r.get() for r in results)


def safepool_submit():
    import safepool
    with safepool.Executor(W) as ex:
        futures = [ex.submit(sq, i) for i in range(N)]
        return sum(f.result() for f in futures)


def safepool_executor_map():
    import safepool
    with safepool.Executor(W) as ex:
        return sum(ex.map(sq, range(N)))


def safepool_empty():
    import safepool
    with safepool.Pool(W) as p:
        p.map(sq, range(W))
    return sum(i * i for i in range(N))


def mp_pool_chunked():
    import multiprocessing as mp
    with mp.get_context("fork").Pool(W) as p:
        return sum(p.map(sq, range(N)))


def mp_pool_spawn_chunked():
    import multiprocessing as mp
    with mp.get_context("spawn").Pool(W) as p:
        return sum(p.map(sq, range(N)))


def mp_pool():
    import multiprocessing as mp
    with mp.get_context("fork").Pool(W) as p:
        return sum(p.imap(sq, range(N), chunksize=1))


def mp_apply():
    import multiprocessing as mp
    with mp.get_context("fork").Pool(W) as p:
        results = [p.apply_async(sq, (i,)) for i in range(N)]
        return sum(r.get() for r in results)


def mp_apply_spawn():
    import multiprocessing as mp
    with mp.get_context("spawn").Pool(W) as p:
        results = [p.apply_async(sq, (i,)) for i in range(N)]
        return sum(r.get() for r in results)


def ppe_submit():
    from concurrent.futures import ProcessPoolExecutor
    with ProcessPoolExecutor(W) as ex:
        futures = [ex.submit(sq, i) for i in range(N)]
        return sum(f.result() for f in futures)


def ppe():
    from concurrent.futures import ProcessPoolExecutor
    with ProcessPoolExecutor(W) as ex:
        return sum(ex.map(sq, range(N)))


def pebble():
    from pebble import ProcessPool
    with ProcessPool(W) as pool:
        return sum(pool.map(sq, range(N)).result())


def joblib():
    from joblib import Parallel, delayed
    return sum(Parallel(n_jobs=W, batch_size=1)(delayed(sq)(i) for i in range(N)))


def joblib_auto():
    from joblib import Parallel, delayed
    return sum(Parallel(n_jobs=W)(delayed(sq)(i) for i in range(N)))


if __name__ == "__main__":
    peer = sys.argv[1]
    t = time.perf_counter()
    s = globals()[peer]()
    dt = time.perf_counter() - t
    assert s == sum(i * i for i in range(N)), peer
    print(json.dumps({"peer": peer, "n": N, "seconds": dt, "tasks_per_s": N / dt}))
