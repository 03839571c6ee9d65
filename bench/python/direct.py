"""One medium-payload measurement: the direct path (docs/python.md). 400
tasks, each a list of 25000 small ints (a pickle of about 120 KB, no
buffer that pickle protocol 5 could take out of band), through imap on 2
workers, on a warm pool.

    /usr/bin/python3 bench/python/direct.py PEER RESULT [PYTHON_DIR]

PEER is safepool, mp_fork or ppe (ProcessPoolExecutor); RESULT is "small"
(the task returns the list's sum) or "list" (it returns the list).
PYTHON_DIR is where the safepool package is (another commit's, with its
binary in its safepool/_bin). Prints one line of JSON: {"peer", "result",
"seconds", "mb_per_s"}: megabytes (10**6 bytes) of argument pickles per
second, timed from the first submission to the last result.
"""
import json
import os
import pickle
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, sys.argv[3] if len(sys.argv) > 3 else os.path.join(REPO, "python"))

N, LEN, W = 400, 25000, 2


def small(xs):
    return sum(xs)


def same(xs):
    return xs


def run(pool_map, fn, lists):
    list(pool_map(fn, [[1]]))  # warm: the workers are up
    t0 = time.perf_counter()
    out = list(pool_map(fn, lists))
    seconds = time.perf_counter() - t0
    assert len(out) == N
    if fn is same:
        assert all(o[-1] == a[-1] and len(o) == len(a) for o, a in zip(out, lists))
    return seconds


def main():
    peer, result = sys.argv[1], sys.argv[2]
    fn = small if result == "small" else same
    lists = [list(range(i, i + LEN)) for i in range(N)]
    size = sum(len(pickle.dumps(x, 5)) for x in lists)
    if peer == "safepool":
        import safepool
        with safepool.Pool(W) as p:
            seconds = run(p.imap, fn, lists)
    elif peer == "mp_fork":
        import multiprocessing as mp
        with mp.get_context("fork").Pool(W) as p:
            seconds = run(p.imap, fn, lists)
    elif peer == "ppe":
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor
        with ProcessPoolExecutor(W, mp_context=mp.get_context("fork")) as ex:
            seconds = run(ex.map, fn, lists)
    else:
        sys.exit("unknown peer %s" % peer)
    print(json.dumps({"peer": peer, "result": result, "seconds": seconds, "mb_per_s": size / 1e6 / seconds}))


if __name__ == "__main__":
    main()
