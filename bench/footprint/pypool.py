"""Python pools for the footprint benchmark (standard library only).

    pypool.py idle N              multiprocessing.Pool(N), idle until killed
    pypool.py imap N COUNT        Pool(N).imap over COUNT slow items
    pypool.py executor N COUNT    ProcessPoolExecutor(N).map over COUNT slow items
"""

import concurrent.futures
import multiprocessing
import sys
import time


def slow(x):
    time.sleep(1)
    return x


def main():
    mode, n = sys.argv[1], int(sys.argv[2])
    if mode == "idle":
        with multiprocessing.Pool(n):
            time.sleep(3600)
    elif mode == "imap":
        with multiprocessing.Pool(n) as p:
            for _ in p.imap(slow, range(int(sys.argv[3]))):
                pass
    elif mode == "executor":
        with concurrent.futures.ProcessPoolExecutor(n) as ex:
            for _ in ex.map(slow, range(int(sys.argv[3]))):
                pass


if __name__ == "__main__":
    main()
