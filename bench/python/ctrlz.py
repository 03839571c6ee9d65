#!/usr/bin/python3
"""Ctrl-Z of a Python program that uses safepool: how soon its workers stop,
how much CPU they burn while the program is stopped, and what following
the program's state costs the idle binary.

    bench/python/ctrlz.py BIN [BIN...]     RUNS=3 by default

Each BIN is a safepool binary (say one built before the change and one
after), run in turn within each repetition. For each, a program starts
Pool(2) with two tasks that spin the CPU and is sent SIGTSTP (to its
process group, as a terminal's Ctrl-Z) 1 s later: the latency is the time
until both workers are in state T (never, if not within 3 s), and the CPU
is what the two workers used in the 2 s that followed. Then the program is
continued and killed. The idle cost is the binary's own CPU time (every
thread's, from /proc/PID/task/*/schedstat) over 10 s of an idle Pool(2),
per minute. Prints a Markdown table of medians (min-max).
"""
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

PROGRAM = """
import os, sys, time
import safepool

def spin(path):
    with open(path, "w") as f:
        f.write(str(os.getpid()))
    while True:
        pass

if __name__ == "__main__":
    mode, d = sys.argv[1], sys.argv[2]
    with safepool.Pool(2) as pool:
        pool.apply(abs, (1,))
        if mode == "spin":
            pool.map_async(spin, [os.path.join(d, "a"), os.path.join(d, "b")], chunksize=1)
        open(os.path.join(d, "up"), "w").close()
        time.sleep(3600)
"""

NEW_GROUP = "import os, sys; os.setpgid(0, 0); os.execv(sys.executable, [sys.executable] + sys.argv[1:])"
TICK = os.sysconf("SC_CLK_TCK")


def stat(pid):
    """The fields of /proc/PID/stat after the command name, or None."""
    try:
        with open("/proc/%d/stat" % pid) as f:
            return f.read().rsplit(")", 1)[1].split()
    except OSError:
        return None


def cpu_ms(pid):
    """The CPU time (user and system) process pid has used, in ms."""
    f = stat(pid)
    return (int(f[11]) + int(f[12])) * 1000 / TICK if f else 0.0


def binary_cpu_ns(pid):
    """The CPU time of every thread of pid, in ns, from schedstat."""
    total = 0
    for t in os.listdir("/proc/%d/task" % pid):
        try:
            with open("/proc/%d/task/%s/schedstat" % (pid, t)) as f:
                total += int(f.read().split()[0])
        except OSError:
            pass
    return total


def child_of(pid):
    """The pid of pid's child process (the binary)."""
    for name in os.listdir("/proc"):
        if name.isdigit():
            f = stat(int(name))
            if f and int(f[1]) == pid:
                return int(name)
    return None


def wait_file(path, limit=30.0):
    deadline = time.monotonic() + limit
    while not os.path.exists(path) or os.path.getsize(path) == 0 and not path.endswith("up"):
        if time.monotonic() > deadline:
            raise RuntimeError("no %s within %gs" % (path, limit))
        time.sleep(0.005)


def start(binary, mode):
    d = tempfile.mkdtemp()
    script = os.path.join(d, "prog.py")
    with open(script, "w") as f:
        f.write(textwrap.dedent(PROGRAM))
    env = dict(os.environ, SAFEPOOL_BIN=binary, PYTHONPATH=os.path.join(REPO, "python"))
    proc = subprocess.Popen(["/usr/bin/python3", "-c", NEW_GROUP, script, mode, d], env=env, cwd=d)
    try:
        wait_file(os.path.join(d, "up"))
    except BaseException:
        end(proc, d)
        raise
    return proc, d


def end(proc, d):
    try:
        os.killpg(proc.pid, signal.SIGCONT)
        proc.kill()
    except ProcessLookupError:
        pass
    proc.wait()
    shutil.rmtree(d, ignore_errors=True)


def stop_run(binary):
    """(latency in ms or None, workers' CPU ms in 2 s stopped)."""
    proc, d = start(binary, "spin")
    try:
        for n in "ab":
            wait_file(os.path.join(d, n))
        workers = []
        for n in "ab":
            with open(os.path.join(d, n)) as f:
                workers.append(int(f.read()))
        time.sleep(1.0)
        t0 = time.monotonic()
        os.killpg(proc.pid, signal.SIGTSTP)
        latency = None
        while time.monotonic() - t0 < 3.0:
            if all((stat(w) or ["?"])[0] == "T" for w in workers):
                latency = (time.monotonic() - t0) * 1000
                break
            time.sleep(0.001)
        before = sum(cpu_ms(w) for w in workers)
        time.sleep(2.0)
        used = sum(cpu_ms(w) for w in workers) - before
        return latency, used
    finally:
        end(proc, d)


def idle_run(binary, seconds=10.0):
    """The idle binary's CPU ms per minute."""
    proc, d = start(binary, "idle")
    try:
        b = child_of(proc.pid)
        time.sleep(1.0)
        c0, t0 = binary_cpu_ns(b), time.monotonic()
        time.sleep(seconds)
        c1, t1 = binary_cpu_ns(b), time.monotonic()
        return (c1 - c0) / 1e6 * 60 / (t1 - t0)
    finally:
        end(proc, d)


def summary(xs):
    if any(x is None for x in xs):
        return "never (%d of %d)" % (sum(x is None for x in xs), len(xs))
    return "%.0f (%.0f-%.0f)" % (statistics.median(xs), min(xs), max(xs))


def main():
    bins = [os.path.abspath(b) for b in sys.argv[1:]]
    if not bins:
        sys.exit(__doc__)
    runs = max(1, int(os.environ.get("RUNS", "3")))
    got = {b: {"latency": [], "cpu": [], "idle": []} for b in bins}
    for _ in range(runs):
        for b in bins:
            latency, used = stop_run(b)
            got[b]["latency"].append(latency)
            got[b]["cpu"].append(used)
            got[b]["idle"].append(idle_run(b))
    print("| binary | workers stopped after SIGTSTP, ms | workers' CPU in 2 s stopped, ms | idle binary's CPU, ms per minute |")
    print("|---|---|---|---|")
    for b in bins:
        g = got[b]
        print("| %s | %s | %s | %s |" % (b, summary(g["latency"]), summary(g["cpu"]), summary(g["idle"])))
    print("\n%d runs, medians (min-max), interleaved" % runs)


if __name__ == "__main__":
    main()
