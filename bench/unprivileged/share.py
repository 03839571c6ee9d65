"""The sharing workload: each task reads all of one shared block.

The block is a file mapped shared and read-only: a file in /dev/shm (shared
memory, like a memfd) or a regular file (page cache). Each task maps it,
computes the CRC-32 of the whole block, again and again until HOLD seconds
have passed (at least once), and answers "task I crc C". Its memory is
then the whole block, all of it shared with every other reader: a
per-worker limit of half the block is exceeded only by one that charges
shared pages to each reader.

    share.py BLOCK I            one-shot worker (safepool run): task I
    share.py --line BLOCK       line worker (safepool map): one task per stdin line

work() is imported by seed-style peers (bench/unprivileged/peers.py).
"""
import mmap
import os
import sys
import time
import zlib

HOLD = 1.0


def work(block, i):
    fd = os.open(block, os.O_RDONLY)
    try:
        m = mmap.mmap(fd, 0, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ)
    finally:
        os.close(fd)
    start = time.monotonic()
    with memoryview(m) as view:
        while True:
            crc = zlib.crc32(view)
            if time.monotonic() - start >= HOLD:
                break
    m.close()
    return "task %d crc %08x" % (i, crc)


def main(argv):
    if len(argv) == 2 and argv[0] == "--line":
        for line in sys.stdin:
            print(work(argv[1], int(line)), flush=True)
    elif len(argv) == 2:
        print(work(argv[0], int(argv[1])), flush=True)
    else:
        sys.exit("usage: share.py BLOCK I | share.py --line BLOCK")


if __name__ == "__main__":
    main(sys.argv[1:])
