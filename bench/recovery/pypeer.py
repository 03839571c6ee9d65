"""Recovery latency on Python's process pools, with the caller's own retry.

    /usr/bin/python3 bench/recovery/pypeer.py POOL DIR N     POOL: pebble ppe

None of these pools runs a task again when its worker is killed; the
caller sees an error and submits the task again. This program submits the
inputs 0..N-1 one at a time to a pool of 2 workers and waits for each. The
task is the same as `benchworker once DIR INPUT`: the first time it sees an
input it writes the wall clock (Unix nanoseconds) to DIR/INPUT.kill and
SIGKILLs its own worker process; when it runs again it writes the wall clock
to DIR/INPUT.rerun. When the wait fails, the caller resubmits at once:

    pebble    ProcessPool(2).schedule(...).result() raises ProcessExpired;
              the pool has already replaced the worker; schedule again.
    ppe       concurrent.futures.ProcessPoolExecutor(2) (fork): the future
              raises BrokenProcessPool and the executor is unusable; the
              caller shuts it down, builds a new one and submits again.

So the latency measured from the clock files includes the pool noticing the
death, the caller being told, and the new attempt starting.
"""
import os
import signal
import sys
import time

WORKERS = 2


def once(d, i):
    """The task: die by SIGKILL on the first sight of input i."""
    now = str(time.time_ns())
    kill = os.path.join(d, "%d.kill" % i)
    if not os.path.exists(kill):
        with open(kill, "w") as f:
            f.write(now)
        os.kill(os.getpid(), signal.SIGKILL)
    with open(os.path.join(d, "%d.rerun" % i), "w") as f:
        f.write(now)
    return i


def run_pebble(d, n):
    from pebble import ProcessPool
    from pebble.common import ProcessExpired
    with ProcessPool(max_workers=WORKERS) as pool:
        for i in range(n):
            while True:
                try:
                    pool.schedule(once, args=(d, i)).result()
                    break
                except ProcessExpired:
                    continue


def run_ppe(d, n):
    from concurrent.futures import ProcessPoolExecutor
    from concurrent.futures.process import BrokenProcessPool
    import multiprocessing as mp
    ctx = mp.get_context("fork")
    ex = ProcessPoolExecutor(WORKERS, mp_context=ctx)
    try:
        for i in range(n):
            while True:
                try:
                    ex.submit(once, d, i).result()
                    break
                except BrokenProcessPool:
                    ex.shutdown(wait=False)
                    ex = ProcessPoolExecutor(WORKERS, mp_context=ctx)
    finally:
        ex.shutdown()


def main(argv):
    if len(argv) != 3 or argv[0] not in ("pebble", "ppe"):
        print(__doc__, file=sys.stderr)
        return 2
    globals()["run_" + argv[0]](argv[1], int(argv[2]))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
