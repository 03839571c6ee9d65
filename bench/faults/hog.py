"""The fault-survival workload as a safepool worker.

The same work as bench/faults/peers.py: 40 tasks, task 7 appends 20 MB
buffers every 10 ms until something kills it, the others sleep 100 ms and
answer i*i.

    hog.py I            one-shot worker (safepool run, GNU parallel): task I
    hog.py --line       line worker (safepool map): one task per stdin line

--once FILE: task 7 hogs only when FILE does not exist yet, and creates it,
so a retry of it succeeds.
"""
import os
import sys
import time

HOG = 7


def should_hog(once):
    if not once:
        return True
    try:
        os.close(os.open(once, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
        return True
    except FileExistsError:
        return False


def work(i, once=None):
    if i == HOG and should_hog(once):
        hog = []
        while True:
            hog.append(bytearray(20_000_000))
            time.sleep(0.01)
    time.sleep(0.1)
    return i * i


def main(argv):
    once = None
    if "--once" in argv:
        k = argv.index("--once")
        once = argv[k + 1]
        del argv[k:k + 2]
    if argv == ["--line"]:
        for line in sys.stdin:
            print(work(int(line), once), flush=True)
    elif len(argv) == 1:
        print(work(int(argv[0]), once), flush=True)
    else:
        sys.exit("usage: hog.py I | hog.py --line [--once FILE]")


if __name__ == "__main__":
    main(sys.argv[1:])
