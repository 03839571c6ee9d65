"""Where a warm map's CPU goes: REPS maps of N trivial tasks on 2 workers
of a pool that is already running, and the CPU time (user and system, from
/proc/PID/stat) that the client, each of its child processes (the safepool
binary, its workers) and grandchildren spent, per map.

    /usr/bin/python3 bench/python/warmcpu.py safepool_map|mp_pool_chunked [N [REPS]]

PYTHON_DIR names another revision's python/ directory to measure; CHUNKSIZE
gives map's chunksize. Prints one line of JSON: {"peer", "n", "reps",
"wall_ms", "cpu_ms": {name: ms per map}}, where a name is the process's comm
and pid.
"""
import json
import os
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# PYTHON_DIR: the safepool package's parent to measure (another revision's
# python/, with its binary in safepool/_bin), by default this tree's.
sys.path.insert(0, os.environ.get("PYTHON_DIR") or os.path.join(REPO, "python"))

TICK = os.sysconf("SC_CLK_TCK")


def sq(x):
    return x * x


def cpu(pid):
    """Seconds of CPU that pid has used, or 0 once it is gone."""
    try:
        with open("/proc/%d/stat" % pid) as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / TICK


def tree(root):
    """root and its descendants."""
    kids = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open("/proc/%s/stat" % d) as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except OSError:
                continue
            kids.setdefault(ppid, []).append(int(d))
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo += kids.get(pid, [])
    return out


def name(pid):
    try:
        with open("/proc/%d/comm" % pid) as f:
            return "%s[%d]" % (f.read().strip(), pid)
    except OSError:
        return "?[%d]" % pid


if __name__ == "__main__":
    peer = sys.argv[1]
    n = int(sys.argv[2]) if len(sys.argv) > 2 else 20000
    reps = int(sys.argv[3]) if len(sys.argv) > 3 else 300
    chunksize = int(os.environ["CHUNKSIZE"]) if os.environ.get("CHUNKSIZE") else None
    if peer == "safepool_map":
        import safepool
        pool = safepool.Pool(2)
    elif peer == "mp_pool_chunked":
        import multiprocessing as mp
        pool = mp.get_context("fork").Pool(2)
    else:
        raise SystemExit("unknown peer " + peer)
    pool.map(sq, range(4))
    pids = tree(os.getpid())
    before = {p: cpu(p) for p in pids}
    t = time.perf_counter()
    for _ in range(reps):
        pool.map(sq, range(n), chunksize)
    wall = time.perf_counter() - t
    after = {p: cpu(p) for p in pids}
    out = {name(p): round((after[p] - before[p]) / reps * 1e3, 3) for p in pids}
    pool.terminate()
    print(json.dumps({"peer": peer, "n": n, "reps": reps, "wall_ms": round(wall / reps * 1e3, 3), "cpu_ms": out}))
