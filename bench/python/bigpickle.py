"""Big pickles through the direct path: 8 tasks whose argument is a str of
64 MiB (in band in its pickle: protocol 5 has no buffer to take out), then
8 tasks that return one, on a warm pool of 2 workers, one task at a time.

    /usr/bin/python3 bench/python/bigpickle.py PEER [PYTHON_DIR]

PEER is safepool or mp_fork. PYTHON_DIR is where the safepool package is
(another commit's, with its binary in its safepool/_bin). Prints one line of
JSON: {"peer", "args_mb_per_s", "results_mb_per_s", "supervisor_hwm_kib"}:
megabytes (10**6 bytes) per second each way, and, for safepool, the peak
resident memory of the supervisor (the safepool binary) afterwards.
"""
import json
import os
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, sys.argv[2] if len(sys.argv) > 2 else os.path.join(REPO, "python"))

N, SIZE = 8, 64 << 20


def length(s):
    return len(s)


def make(n):
    return "y" * n


def run(apply):
    big = "x" * SIZE
    apply(length, ("warm",))
    t0 = time.perf_counter()
    for _ in range(N):
        assert apply(length, (big,)) == SIZE
    args = time.perf_counter() - t0
    t0 = time.perf_counter()
    for _ in range(N):
        assert len(apply(make, (SIZE,))) == SIZE
    results = time.perf_counter() - t0
    return N * SIZE / 1e6 / args, N * SIZE / 1e6 / results


def main():
    peer = sys.argv[1]
    hwm = None
    if peer == "safepool":
        import safepool
        with safepool.Pool(2) as p:
            a, r = run(p.apply)
            with open("/proc/%d/status" % p._core.pid) as f:
                hwm = int([line for line in f if line.startswith("VmHWM")][0].split()[1])
    elif peer == "mp_fork":
        import multiprocessing as mp
        with mp.get_context("fork").Pool(2) as p:
            a, r = run(p.apply)
    else:
        sys.exit("unknown peer %s" % peer)
    print(json.dumps({"peer": peer, "args_mb_per_s": a, "results_mb_per_s": r, "supervisor_hwm_kib": hwm}))


if __name__ == "__main__":
    main()
