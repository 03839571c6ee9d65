"""The unprivileged scenario's work on Python's process pools and on
safepool's Python client.

    peers.py seed PEER          40 tasks on 4 workers; task 7 (hog.work) grows
                                until something kills it
    peers.py share PEER BLOCK   16 tasks on 8 workers, each reading all of the
                                shared BLOCK (share.work)

PEER: mp_pool ppe joblib pebble safepool. Each pool is used the way its
documentation shows, waiting on each result without a timeout. safepool's
client caps each worker at $SAFEPOOL_BENCH_MEM_LIMIT (mem_limit=). Prints one
line of JSON: the results obtained, the first exception the caller saw (type
and message), the cause that exception carries (safepool's `cause`, else
""), how many exceptions carried each cause, and whether the pool call itself
raised.

hog.py (bench/faults) and share.py must be importable (PYTHONPATH): the
pools' workers import the task functions by name.
"""
import functools
import json
import os
import sys

SEED_TASKS, SEED_WORKERS = 40, 4
SHARE_TASKS, SHARE_WORKERS = 16, 8


def describe(e):
    msg = " ".join(str(e).split())
    return "%s: %s" % (type(e).__name__, msg) if msg else type(e).__name__


class Collector:
    """Waits for each handle in turn and keeps the first error."""

    def __init__(self):
        self.got, self.error, self.cause, self.causes = 0, None, "", {}

    def collect(self, handles, get):
        for h in handles:
            try:
                get(h)
                self.got += 1
            except Exception as e:  # the per-task error the user sees
                cause = str(getattr(e, "cause", "") or "")
                if cause:
                    self.causes[cause] = self.causes.get(cause, 0) + 1
                if self.error is None:
                    self.error, self.cause = describe(e), cause
        return self


def run(peer, fn, n, workers):
    c = Collector()
    if peer == "mp_pool":
        import multiprocessing as mp
        with mp.get_context("fork").Pool(workers) as p:
            c.collect([p.apply_async(fn, (i,)) for i in range(n)], lambda ar: ar.get())
    elif peer == "ppe":
        from concurrent.futures import ProcessPoolExecutor
        with ProcessPoolExecutor(workers) as ex:
            c.collect([ex.submit(fn, i) for i in range(n)], lambda f: f.result())
    elif peer == "joblib":
        from joblib import Parallel, delayed
        c.got = len(Parallel(n_jobs=workers)(delayed(fn)(i) for i in range(n)))
    elif peer == "pebble":
        from pebble import ProcessPool
        with ProcessPool(workers) as pool:
            c.collect([pool.schedule(fn, (i,)) for i in range(n)], lambda f: f.result())
    elif peer == "safepool":
        import safepool
        limit = os.environ.get("SAFEPOOL_BENCH_MEM_LIMIT") or None
        with safepool.Pool(workers, mem_limit=limit) as p:
            c.collect([p.apply_async(fn, (i,)) for i in range(n)], lambda ar: ar.get())
    else:
        sys.exit("peers.py: unknown peer %r" % peer)
    return c


def main(argv):
    if len(argv) >= 2 and argv[0] == "seed":
        from hog import work
        fn, n, workers = work, SEED_TASKS, SEED_WORKERS
    elif len(argv) == 3 and argv[0] == "share":
        from share import work
        fn, n, workers = functools.partial(work, argv[2]), SHARE_TASKS, SHARE_WORKERS
    else:
        sys.exit("usage: peers.py seed PEER | peers.py share PEER BLOCK")
    try:
        c = run(argv[1], fn, n, workers)
        out = {"got": c.got, "error": c.error, "cause": c.cause, "causes": c.causes, "raised": False}
    except Exception as e:  # the pool call itself failed
        out = {"got": 0, "error": describe(e), "cause": str(getattr(e, "cause", "") or ""), "causes": {},
               "raised": True}
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
