"""The fault-survival workload on Python's process pools.

    peers.py PEER        PEER: mp_pool ppe joblib pebble billiard safepool

40 tasks on 4 workers; task 7 (hog.work) grows until the kernel kills it.
Each pool is used the way its documentation shows, waiting without a
timeout. Prints one line of JSON: the results obtained, the exception the
caller saw (type and message) and whether the pool call itself raised.
safepool is the Python client, imported from PYTHONPATH.
"""
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from hog import work  # noqa: E402

N = 40
WORKERS = 4


def describe(e):
    inner = getattr(e, "exc", None)  # billiard wraps the error with its traceback
    if type(e).__name__ == "ExceptionWithTraceback" and isinstance(inner, BaseException):
        e = inner
    msg = " ".join(str(e).split())
    return "%s: %s" % (type(e).__name__, msg) if msg else type(e).__name__


def collect(handles, get):
    """Waits for each handle in turn; returns (results, first error)."""
    got, first = 0, None
    for h in handles:
        try:
            get(h)
            got += 1
        except Exception as e:  # the per-task error the user sees
            first = first or describe(e)
    return got, first


def run_mp_pool():
    import multiprocessing as mp
    with mp.get_context("fork").Pool(WORKERS) as p:
        return collect([p.apply_async(work, (i,)) for i in range(N)], lambda ar: ar.get())


def run_ppe():
    from concurrent.futures import ProcessPoolExecutor
    with ProcessPoolExecutor(WORKERS) as ex:
        return collect([ex.submit(work, i) for i in range(N)], lambda f: f.result())


def run_joblib():
    from joblib import Parallel, delayed
    res = Parallel(n_jobs=WORKERS)(delayed(work)(i) for i in range(N))
    return len(res), None


def run_pebble():
    from pebble import ProcessPool
    with ProcessPool(WORKERS) as pool:
        return collect([pool.schedule(work, (i,)) for i in range(N)], lambda f: f.result())


def run_billiard():
    import billiard
    with billiard.Pool(WORKERS) as p:
        return collect([p.apply_async(work, (i,)) for i in range(N)], lambda ar: ar.get())


def run_safepool():
    import inspect
    import safepool
    kw = {}
    limit = os.environ.get("SAFEPOOL_BENCH_MEM_LIMIT")
    if limit:
        params = inspect.signature(safepool.Pool).parameters
        for name in ("mem_limit", "memory_limit"):
            if name in params:
                kw[name] = limit
                break
    with safepool.Pool(WORKERS, **kw) as p:
        return collect([p.apply_async(work, (i,)) for i in range(N)], lambda ar: ar.get())


def main():
    peer = sys.argv[1]
    try:
        got, err = globals()["run_" + peer]()
        out = {"got": got, "error": err, "raised": False}
    except Exception as e:  # the pool call itself failed
        out = {"got": 0, "error": describe(e), "raised": True}
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
