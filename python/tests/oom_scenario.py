"""The governor's OOM retry for a Python task, run by test_governor inside
a memory cgroup of its own (a container's wall): a task that grows to
BIG MiB starts beside 3 neighbours that hold NEIGHBOUR MiB each, so the
wall's OOM killer takes it; the pool runs it again once it fits, with fewer
neighbours. Prints one JSON line: the task's result, and how many
neighbours each of its attempts saw.

    python3 -m tests.oom_scenario DIR BIG NEIGHBOUR
"""
import json
import os
import sys
import time

import safepool


def touch_in(d):
    """Initializer: say that this worker is up."""
    open(os.path.join(d, str(os.getpid())), "w").close()


def neighbour(d, i, mib):
    """Hold mib MiB for 6 s, with a file in d saying that it runs."""
    mark = os.path.join(d, "running-%d" % i)
    held = bytearray(mib << 20)  # touched: bytearray zero-fills
    open(mark, "w").close()
    with open(os.path.join(d, "log"), "a") as f:
        f.write("n%d start %.2f pid %d\n" % (i, time.time(), os.getpid()))
    try:
        time.sleep(6)
    finally:
        os.unlink(mark)
    return len(held) >> 20


def big(d, mib):
    """Wait for the neighbours to hold their memory, note how many run, then
    grow to mib MiB."""
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and sum(n.startswith("running-") for n in os.listdir(d)) < 3:
        time.sleep(0.02)
    with open(os.path.join(d, "log"), "a") as f:
        f.write("big start %.2f pid %d\n" % (time.time(), os.getpid()))
    with open(os.path.join(d, "attempts"), "a") as f:
        f.write("%d\n" % sum(n.startswith("running-") for n in os.listdir(d)))
    held = []
    for _ in range(mib // 8):
        held.append(bytearray(8 << 20))
        time.sleep(0.01)
    return len(held) * 8


def main():
    d, big_mib, each = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    # Preemption off: the point is the OOM killer and the retry after it.
    started = os.path.join(d, "started")
    os.mkdir(started)
    # One task per worker process, so that each task runs beside the others
    # (a worker may take a task while it runs another: the pool sends tasks
    # ahead).
    # The governor is told that a task needs a neighbour's memory, which is
    # less than the big task takes, so that it starts beside them.
    with safepool.Pool(4, mem_high=0, mem_psi=0, mem_per_task=each << 20, initializer=touch_in,
                       initargs=(started,), max_tasks_per_child=1) as pool:
        deadline = time.monotonic() + 60
        while len(os.listdir(started)) < 4 and time.monotonic() < deadline:
            time.sleep(0.02)
        neighbours = []
        for i in range(3):
            neighbours.append(pool.apply_async(neighbour, (d, i, each)))
            time.sleep(0.1)
        r = pool.apply_async(big, (d, big_mib))
        out = {"memory_mode": pool.memory_mode}
        try:
            out["result"] = r.get(120)
        except safepool.TaskFailed as e:
            out["error"] = "%s: %s" % (type(e).__name__, e)
            out["history"] = [a.cause for a in e.history]
        out["neighbours"] = [n.get(120) for n in neighbours]
        out["killed"] = len(pool._core.killed_tasks())
    with open(os.path.join(d, "attempts")) as f:
        out["seen"] = [int(line) for line in f]
    with open(os.path.join(d, "log")) as f:
        out["log"] = f.read().splitlines()
    print(json.dumps(out))


if __name__ == "__main__":
    main()
