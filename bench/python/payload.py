"""One big-payload measurement: 64 numpy arrays of 8 MB through imap on 2
workers, on a warm pool.

    /usr/bin/python3 bench/python/payload.py PEER RESULT [PYTHON_DIR]

PEER is safepool, mp_fork or ppe (ProcessPoolExecutor); RESULT is "small"
(the task returns the array's sum) or "array" (it returns the array).
PYTHON_DIR is where the safepool package is (another commit's, say; its
binary comes from $SAFEPOOL_BIN). Prints one line of JSON: {"peer",
"result", "seconds", "mb_per_s"}: megabytes (10**6 bytes) of arguments per
second, timed from the first submission to the last result; the pool is
started and warmed with one small task before.
"""
import json
import os
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, sys.argv[3] if len(sys.argv) > 3 else os.path.join(REPO, "python"))

import numpy  # noqa: E402

N, SIZE, W = 64, 8 * 1000 * 1000, 2


def small(a):
    return float(a[::4096].sum())


def same(a):
    return a


def run(pool_map, fn, arrays):
    list(pool_map(fn, [numpy.zeros(4)]))  # warm: the workers are up
    t0 = time.perf_counter()
    out = list(pool_map(fn, arrays))
    seconds = time.perf_counter() - t0
    assert len(out) == N
    if fn is same:
        assert all(o.shape == a.shape and o[-1] == a[-1] for o, a in zip(out, arrays))
    return seconds


def main():
    peer, result = sys.argv[1], sys.argv[2]
    fn = small if result == "small" else same
    arrays = [numpy.full(SIZE // 8, float(i)) for i in range(N)]
    if peer == "safepool":
        import safepool
        with safepool.Pool(W) as p:
            seconds = run(p.imap, fn, arrays)
    elif peer == "mp_fork":
        import multiprocessing as mp
        with mp.get_context("fork").Pool(W) as p:
            seconds = run(p.imap, fn, arrays)
    elif peer == "ppe":
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor
        with ProcessPoolExecutor(W, mp_context=mp.get_context("fork")) as ex:
            seconds = run(ex.map, fn, arrays)
    else:
        sys.exit("unknown peer %s" % peer)
    print(json.dumps({"peer": peer, "result": result, "seconds": seconds,
                      "mb_per_s": N * SIZE / 1e6 / seconds}))


if __name__ == "__main__":
    main()
