"""One sharing measurement: 8 workers each read all of a read-only numpy
array, then the proportional set size (PSS, /proc/PID/smaps_rollup) of the
pool's processes is summed while every worker still holds the data.

    /usr/bin/python3 bench/python/sharing.py PEER MIB

PEER is safepool (safepool.share, the array deleted from the client after
sharing), safepool_copy (the array itself in safepool's initargs, so
pickled to each worker), mp_fork (a global array inherited by multiprocessing.Pool's
forked workers) or mp_pickle (the array passed by pickling to the
initializer of multiprocessing.Pool's spawned workers). Each worker reads
it all in the pool's initializer and keeps it. Prints one line of JSON with the PSS in MiB of the
workers (and, for safepool, the supervisor) as "pool_mib", of the client
as "client_mib", and their sum, "total_mib".
"""
import json
import os
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(REPO, "python"))

import numpy  # noqa: E402

W = 8
_kept = []
_global = None


def pss_mib(pid):
    with open("/proc/%d/smaps_rollup" % pid) as f:
        for line in f:
            if line.startswith("Pss:"):
                return int(line.split()[1]) / 1024
    return 0.0


def descendants(pid):
    out = []
    for tid in os.listdir("/proc/%d/task" % pid):
        try:
            with open("/proc/%d/task/%s/children" % (pid, tid)) as f:
                kids = [int(x) for x in f.read().split()]
        except OSError:
            continue
        for k in kids:
            out += [k] + descendants(k)
    return out


def keep(a):
    """The initializer: read every element of a and keep it."""
    a.sum()
    _kept.append(a)


def keep_global():
    keep(_global)


def rss_mib(pid):
    with open("/proc/%d/smaps_rollup" % pid) as f:
        for line in f:
            if line.startswith("Rss:"):
                return int(line.split()[1]) / 1024
    return 0.0


def measure(me, mib):
    """Wait until W processes below this one have each read the array (their
    RSS is at least its size), then return the PSS of each process below,
    and this one's."""
    deadline = time.monotonic() + 600
    while True:
        pids = descendants(me)
        readers = [pid for pid in pids if rss_mib(pid) >= 0.95 * mib]
        if len(readers) >= W:
            # The client too, while its children still share its pages.
            return {pid: pss_mib(pid) for pid in pids}, pss_mib(me)
        if time.monotonic() > deadline:
            raise SystemExit("the workers did not read the array")
        time.sleep(0.05)


def main():
    global _global
    peer, mib = sys.argv[1], int(sys.argv[2])
    n = mib * (1 << 20) // 8
    arr = numpy.arange(n, dtype="f8")
    me = os.getpid()
    if peer == "safepool":
        import safepool
        h = safepool.share(arr)
        del arr
        with safepool.Pool(W, initializer=keep, initargs=(h,)) as p:
            sizes, client = measure(me, mib)
        h.close()
    elif peer == "safepool_copy":
        import safepool
        with safepool.Pool(W, initializer=keep, initargs=(arr,)) as p:
            del arr
            sizes, client = measure(me, mib)
    elif peer == "mp_fork":
        import multiprocessing as mp
        _global = arr
        with mp.get_context("fork").Pool(W, initializer=keep_global) as p:
            sizes, client = measure(me, mib)
    elif peer == "mp_pickle":
        import multiprocessing as mp
        with mp.get_context("spawn").Pool(W, initializer=keep, initargs=(arr,)) as p:
            sizes, client = measure(me, mib)
    else:
        sys.exit("unknown peer %s" % peer)
    pool_mib = sum(sizes.values())
    print(json.dumps({"peer": peer, "array_mib": mib, "workers": W, "processes": len(sizes),
                      "pool_mib": round(pool_mib, 1), "client_mib": round(client, 1),
                      "total_mib": round(pool_mib + client, 1)}))


if __name__ == "__main__":
    main()
