"""Where the CPU of one-item-at-a-time tasks goes: N trivial tasks on 2
workers, each submitted alone, and the CPU time per task of each of the
client's threads, of the safepool binary and of each worker.

    /usr/bin/python3 bench/python/threadcpu.py MODE [N]     # MODE: imap1, apply or submit

prints one line: tasks/s, then the CPU µs per task of each thread of the
client ("thread NAME") and of each process below it (its comm[pid]: the
binary, its workers). A thread's or a process's CPU (utime + stime from /proc) is
sampled every 50 ms while it lives, and its last sample kept; the client's
main thread is read at the end. The time covers the pool's start, the tasks
and its shutdown.
"""
import os
import sys
import threading
import time

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# PYTHON_DIR: the safepool package's parent to measure (another revision's
# python/), by default this tree's.
sys.path.insert(0, os.environ.get("PYTHON_DIR") or os.path.join(REPO, "python"))

from warmcpu import TICK, cpu, name, sq, tree  # noqa: E402  (this directory's)


def thread_cpu(tid):
    """Seconds of CPU that this process's thread tid has used, or None once
    it is gone."""
    try:
        with open("/proc/self/task/%d/stat" % tid) as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / TICK


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
                    c = thread_cpu(th.native_id)
                    if c is not None:
                        seen["thread " + th.name] = c
            for pid in tree(os.getpid())[1:]:
                c = cpu(pid)
                if c:
                    seen[name(pid)] = c

    sampler = threading.Thread(target=sample, name="sampler", daemon=True)
    sampler.start()
    start = time.monotonic()
    if mode == "submit":
        with safepool.Executor(2) as ex:
            futures = [ex.submit(sq, i) for i in range(n)]
            total = sum(f.result() for f in futures)
            seen["thread MainThread"] = thread_cpu(threading.get_native_id())
    else:
        with safepool.Pool(2) as p:
            if mode == "imap1":
                total = sum(p.imap(sq, range(n), chunksize=1))
            elif mode == "apply":
                results = [p.apply_async(sq, (i,)) for i in range(n)]
                total = sum(r.get() for r in results)
            else:
                raise SystemExit("threadcpu: MODE is imap1, apply or submit")
            seen["thread MainThread"] = thread_cpu(threading.get_native_id())
    wall = time.monotonic() - start
    done.set()
    sampler.join()
    assert total == sum(i * i for i in range(n))
    print("%s %.0f tasks/s; CPU µs per task: %s" % (mode, n / wall, ", ".join(
        "%s %.0f" % (k, v * 1e6 / n) for k, v in sorted(seen.items()) if v)))


if __name__ == "__main__":
    main()
