"""The seed scenario of /work/shared/peers/peers_kill.py, run with safepool.

    /usr/bin/python3 bench/python/kill.py VARIANT

40 tasks on 4 workers; every task sleeps 100 ms and returns i*i, except task
7, which appends 20 MB buffers every 10 ms until it is killed. Run it inside a
300 MiB memory cgroup (bench/python/run does). Variants:

  safepool        safepool.Pool(4), apply_async + get(), as peers_kill.py
  safepool_limit  the same with mem_limit="200MiB" per worker
  safepool_retry  retries=1, and task 7 hogs only on its first attempt

Prints one line of JSON: variant, results obtained, the causes of the
failed tasks, wall seconds.
"""
import json
import os
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(REPO, "python"))

N = 40
HOG = 7


def work(i, once=None):
    if i == HOG:
        first = True
        if once:
            try:
                os.close(os.open(once, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
            except FileExistsError:
                first = False
        if first:
            hog = []
            while True:
                hog.append(bytearray(20_000_000))
                time.sleep(0.01)
    time.sleep(0.1)
    return i * i


def run(variant):
    import safepool
    kw = {}
    once = None
    if variant == "safepool_limit":
        kw["mem_limit"] = "200MiB"
    if variant == "safepool_retry":
        kw["retries"] = 1
        once = os.path.join(tempfile.mkdtemp(), "hogged")
    got, causes, told = 0, [], ""
    with safepool.Pool(4, **kw) as p:
        ars = [p.apply_async(work, (i, once)) for i in range(N)]
        for i, ar in enumerate(ars):
            try:
                ar.get()  # no timeout: this is what users write
                got += 1
            except safepool.WorkerDied as e:
                causes.append("task %d: %s" % (i, e.cause))
                told = told or "%s: %s" % (type(e).__name__, e)
        attempts = [f.attempts for f in p.failed_tasks()]
    return got, causes, told, attempts


if __name__ == "__main__":
    variant = sys.argv[1]
    t = time.perf_counter()
    got, causes, told, attempts = run(variant)
    print(json.dumps({"variant": variant, "got": got, "n": N, "causes": causes, "told": told,
                      "seconds": time.perf_counter() - t}), flush=True)
