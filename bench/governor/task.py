"""The governor benchmark's task: grow to SIZE_MIB (default 1536) in 15
steps over about 2 seconds (longer where filling memory takes longer),
writing every byte, then print a line.

    task.py I [SIZE_MIB]     run task I (one-shot: safepool run, GNU parallel)

The memory is private anonymous memory with transparent huge pages asked for
(madvise), which keeps the kernel's page-fault work, and so the CPU time, as
low as this machine allows. mp.py imports work() for multiprocessing.Pool.
"""
import mmap
import sys
import time

SIZE_MIB = 1536
STEPS = 15
SECONDS = 2.0


def work(i, size_mib=SIZE_MIB):
    step = (size_mib << 20) // STEPS
    chunk = b"x" * (1 << 20)
    keep = []
    start = time.monotonic()
    for n in range(1, STEPS + 1):
        m = mmap.mmap(-1, step, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        if hasattr(mmap, "MADV_HUGEPAGE"):
            m.madvise(mmap.MADV_HUGEPAGE)
        for _ in range(step // len(chunk)):
            m.write(chunk)
        keep.append(m)
        time.sleep(max(0.0, start + n * SECONDS / STEPS - time.monotonic()))
    return "task %d done %d MiB" % (i, sum(len(m) for m in keep) >> 20)


if __name__ == "__main__":
    print(work(int(sys.argv[1]), int(sys.argv[2]) if len(sys.argv) > 2 else SIZE_MIB), flush=True)
