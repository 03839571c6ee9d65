"""multiprocessing.Pool(16) running the governor benchmark's tasks; prints
one line per finished task. When the kernel OOM-kills one of its workers the
pool waits forever for that task's result: the benchmark's timeout reports it
as hung.

    mp.py N SIZE_MIB
"""
import functools
import multiprocessing
import sys

import task

if __name__ == "__main__":
    n, size = int(sys.argv[1]), int(sys.argv[2])
    with multiprocessing.Pool(16) as pool:
        for line in pool.imap_unordered(functools.partial(task.work, size_mib=size), range(1, n + 1)):
            print(line, flush=True)
