"""Where the CPU of one-item-at-a-time tasks goes: N trivial tasks on 2
workers, each submitted alone, and the CPU time per task of each of the
client's threads, of the safepool binary and of each worker.

    /usr/bin/python3 bench/python/threadcpu.py MODE [N]     # MODE: imap1, apply or submit

prints one line: tasks/s, then NAME=µs per task for each thread and
process. A thread's or a process's CPU (utime + stime from /proc) is
sampled every 50 ms while it lives, and its last sample kept; the client's
main thread is read at the end. The time covers the pool's start, the tasks
and its shutdown.
"""
import os
import sys
import threading
import time

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.environ.get("SAFEPOOL_PY") or os.path.join(REPO, "python"))

TICK = os.sysconf("SC_CLK_TCK")


def sq(x):
    return x * x


def cpu(path):
    """The CPU seconds in a /proc stat file, or None when it is gone."""
    try:
        with open(path) as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / TICK


def family():
    """(pid, label) of this process's children (the binary) and theirs (its
    workers, and any other process it runs, labelled by its name)."""
    kids = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open("/proc/%s/stat" % d) as f:
                stat = f.read()
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        kids.setdefault(ppid, []).append((int(d), stat[stat.find("(") + 1:stat.rfind(")")]))
    out = []
    for pid, _ in kids.get(os.getpid(), []):
        out.append((pid, "binary"))
        out.extend((w, "%s %d" % ("worker" if comm.startswith("python") else comm, w))
                   for w, comm in kids.get(pid, []))
    return out


def main():
    import safepool
    mode = sys.argv[1]
    n = int(sys.argv[2]) if len(sys.argv) > 2 else 20000
    seen = {}
    done = threading.Event()

    def sample():
        me = threading.current_thread()
        while not done.wait(0.05):
            for th in threading.enumerate():
                if th is not me and th.native_id:
                    c = cpu("/proc/self/task/%d/stat" % th.native_id)
                    if c is not None:
                        seen["thread " + th.name] = c
            for pid, label in family():
                c = cpu("/proc/%d/stat" % pid)
                if c is not None:
                    seen[label] = c

    sampler = threading.Thread(target=sample, name="sampler", daemon=True)
    sampler.start()
    start = time.monotonic()
    if mode == "submit":
        with safepool.Executor(2) as ex:
            futures = [ex.submit(sq, i) for i in range(n)]
            total = sum(f.result() for f in futures)
            seen["thread MainThread"] = cpu("/proc/self/task/%d/stat" % threading.get_native_id())
    else:
        with safepool.Pool(2) as p:
            if mode == "imap1":
                total = sum(p.imap(sq, range(n), chunksize=1))
            elif mode == "apply":
                results = [p.apply_async(sq, (i,)) for i in range(n)]
                total = sum(r.get() for r in results)
            else:
                raise SystemExit("threadcpu: MODE is imap1, apply or submit")
            seen["thread MainThread"] = cpu("/proc/self/task/%d/stat" % threading.get_native_id())
    wall = time.monotonic() - start
    done.set()
    sampler.join()
    assert total == sum(i * i for i in range(n))
    print("%s %.0f tasks/s; CPU µs per task: %s" % (mode, n / wall, ", ".join(
        "%s %.0f" % (k, v * 1e6 / n) for k, v in sorted(seen.items()) if v)))


if __name__ == "__main__":
    main()
