"""Shared helpers of safepool's benchmarks (standard library only).

Import it from a scenario written in Python:

    sys.path.insert(0, os.path.join(REPO, "bench", "lib"))
    import benchlib

or use its command line from a shell scenario:

    bench/lib/benchlib.py measure [--stdin F] [--stdout F] [--series CSV] -- CMD ARGS...
        runs CMD and prints one line of JSON: wall seconds, exit status and the
        peak RSS of CMD's own process (VmHWM, sampled from /proc every 20 ms;
        children are not counted), with an optional RSS time series.
    bench/lib/benchlib.py summary 3.1 2.9 3.4
        prints "3.1 (2.9-3.4)": the median and the range.
"""

import json
import os
import platform
import statistics
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BIN = os.path.join(REPO, "bench", ".bin")
RESULTS = os.path.join(REPO, "bench", "results")
IMG = os.path.join(REPO, "docs", "img")


def runs():
    """The number of repetitions: $RUNS, default 5 (3 with QUICK=1)."""
    default = "3" if quick() else "5"
    return max(1, int(os.environ.get("RUNS", default)))


def quick():
    """Reports whether QUICK=1 asks for a small, fast version."""
    return os.environ.get("QUICK", "") not in ("", "0")


def sh(cmd, **kw):
    """Runs a shell command line, failing on a non-zero status."""
    return subprocess.run(cmd, shell=True, check=True, cwd=REPO, **kw)


def build():
    """Builds safepool and the benchmark programs into bench/.bin."""
    os.makedirs(BIN, exist_ok=True)
    sh("go build -o bench/.bin/safepool ./cmd/safepool")
    sh("go build -o bench/.bin/ ./bench/cmd/...")


def baseline():
    """Builds safepool at the git revision $BASELINE (a commit before a
    change, for a before-and-after row beside the others) into
    bench/.bin/safepool-REV and returns (REV, path); None when BASELINE is
    unset."""
    rev = os.environ.get("BASELINE", "")
    if not rev:
        return None
    short = subprocess.run(["git", "rev-parse", "--short", rev], cwd=REPO, check=True,
                           capture_output=True, text=True).stdout.strip()
    path = os.path.join(BIN, "safepool-" + short)
    if not os.path.exists(path):
        import tempfile
        with tempfile.TemporaryDirectory(prefix="safepool-baseline-") as tmp:
            sh("git archive %s | tar -x -C %s" % (short, tmp))
            subprocess.run(["go", "build", "-o", path, "./cmd/safepool"], cwd=tmp, check=True)
    return short, path


def peers():
    """Installs the peers (GNU parallel, Python pools, matplotlib)."""
    sh("bench/lib/peers.sh")


def _status_kb(pid, field):
    try:
        with open("/proc/%d/status" % pid) as f:
            for line in f:
                if line.startswith(field):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return None


def measure(argv, stdin=None, stdout=None, stderr=None, series=None, interval=0.02,
            timeout=None, env=None, pid_of=None):
    """Runs argv and samples its memory until it ends.

    stdin/stdout/stderr are file names (or None to inherit, "-" for
    /dev/null); stdin may also be "|", an open pipe that is never written
    (an input that has not ended), or an open file object. series, if a list, receives (seconds, rss_kb) samples.
    timeout, in seconds, kills the process group after that long (the result
    then has "killed": true). pid_of, if given, is called with the child's
    pid and returns the pid to watch (for a supervisor below a wrapper).
    Returns a dict: wall (s), status, peak_rss_kb (VmHWM), killed,
    own_cpu_s (the CPU time of the process started alone, its threads
    included, read from /proc once it has ended and before it is reaped)
    and cpu_s (wait4's usage: the process and every descendant it reaped).
    """
    def opener(name, mode):
        if name is None or name == "|" or not isinstance(name, str):
            return None
        return open(os.devnull if name == "-" else name, mode)

    fin, fout, ferr = opener(stdin, "rb"), opener(stdout, "wb"), opener(stderr, "wb")
    pin = subprocess.PIPE if stdin == "|" else (stdin if fin is None else fin)
    try:
        t0 = time.monotonic()
        p = subprocess.Popen(argv, stdin=pin, stdout=fout, stderr=ferr, cwd=REPO, env=env,
                             start_new_session=True)
        watched = pid_of(p.pid) if pid_of else p.pid
        peak, killed = 0, False
        while not _ended(p.pid):
            hwm = _status_kb(watched, "VmHWM:")
            if hwm is not None:
                peak = max(peak, hwm)
                if series is not None:
                    series.append((time.monotonic() - t0, _status_kb(watched, "VmRSS:") or 0))
            if timeout is not None and time.monotonic() - t0 > timeout:
                killed = True
                kill_tree(p.pid)
                break
            time.sleep(interval)
        wall = time.monotonic() - t0
        own = own_cpu(p.pid)
        status, cpu = reap(p)
        if p.stdin:
            p.stdin.close()
    finally:
        for f in (fin, fout, ferr):
            if f:
                f.close()
    return {"wall": wall, "status": status, "peak_rss_kb": peak, "killed": killed,
            "own_cpu_s": own, "cpu_s": cpu}


def _ended(pid):
    """Reports whether child pid has ended, without reaping it."""
    info = os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
    return info is not None and info.si_pid == pid


def own_cpu(pid):
    """utime + stime, in seconds, of process pid (ended, not yet reaped:
    its threads' time is all in it, its children's not), or None."""
    try:
        with open("/proc/%d/stat" % pid) as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


def reap(p):
    """Reaps Popen p with wait4 (after own_cpu, which needs it unreaped);
    returns its returncode, as Popen gives it, and the CPU seconds of it and
    of the descendants it reaped."""
    while True:
        try:
            _, st, usage = os.wait4(p.pid, 0)
            break
        except InterruptedError:
            continue
    p.returncode = os.waitstatus_to_exitcode(st)
    return p.returncode, usage.ru_utime + usage.ru_stime


def descendants(pid):
    """Returns the pids of every living descendant of pid."""
    children = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open("/proc/%s/stat" % d) as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            children.setdefault(ppid, []).append(int(d))
    out, todo = [], [pid]
    while todo:
        for c in children.get(todo.pop(), []):
            out.append(c)
            todo.append(c)
    return out


def kill_tree(pid):
    """SIGKILLs pid, its process group and every descendant, even those in
    process groups of their own."""
    procs = descendants(pid)
    for target in [pid] + procs:
        try:
            os.kill(target, 9)
        except ProcessLookupError:
            pass
    try:
        os.killpg(pid, 9)
    except (ProcessLookupError, PermissionError):
        pass


def summary(values, fmt="{:.0f}"):
    """Formats values as "median (min-max)"."""
    values = [v for v in values if v is not None]
    if not values:
        return "-"
    med = statistics.median(values)
    if len(values) == 1:
        return fmt.format(med)
    return "%s (%s-%s)" % (fmt.format(med), fmt.format(min(values)), fmt.format(max(values)))


def percentile(values, p):
    """Returns the p-th percentile (0-100) of values, nearest rank."""
    s = sorted(values)
    if not s:
        return None
    k = max(0, min(len(s) - 1, int(round(p / 100.0 * len(s) + 0.5)) - 1))
    return s[k]


def mib(kb):
    """Converts kB to MiB."""
    return kb / 1024.0


def table(header, rows):
    """Returns a markdown table."""
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    for r in rows:
        out.append("| " + " | ".join(str(c) for c in r) + " |")
    return "\n".join(out) + "\n"


def write_section(name, text):
    """Writes bench/results/NAME.md."""
    os.makedirs(RESULTS, exist_ok=True)
    path = os.path.join(RESULTS, name + ".md")
    with open(path, "w") as f:
        f.write(text.rstrip() + "\n")
    print("wrote", os.path.relpath(path, REPO), file=sys.stderr)


def pyplot():
    """Returns matplotlib.pyplot with a file-only backend, or None."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        return plt
    except ImportError:
        print("matplotlib is missing: no plot (bench/lib/peers.sh installs it)", file=sys.stderr)
        return None


def save_plot(fig, name):
    """Saves fig as docs/img/NAME.svg and returns the path relative to docs/."""
    os.makedirs(IMG, exist_ok=True)
    fig.savefig(os.path.join(IMG, name + ".svg"), bbox_inches="tight")
    return "img/%s.svg" % name


def machine():
    """One line describing the machine."""
    mem = _status_kb_file("/proc/meminfo", "MemTotal:")
    return "%d CPUs, %.1f GiB RAM, Linux %s" % (os.cpu_count(), (mem or 0) / 1048576.0, platform.release())


def _status_kb_file(path, field):
    with open(path) as f:
        for line in f:
            if line.startswith(field):
                return int(line.split()[1])
    return None


def log(*args):
    """Prints progress on stderr."""
    print(*args, file=sys.stderr, flush=True)


def _main(argv):
    if argv[:1] == ["summary"]:
        print(summary([float(v) for v in argv[1:]], "{:g}"))
        return 0
    if argv[:1] == ["measure"]:
        import argparse
        ap = argparse.ArgumentParser(prog="benchlib.py measure")
        ap.add_argument("--stdin")
        ap.add_argument("--stdout")
        ap.add_argument("--series", help="write seconds,rss_kb samples to this CSV")
        ap.add_argument("cmd", nargs=argparse.REMAINDER)
        a = ap.parse_args(argv[1:])
        cmd = a.cmd[1:] if a.cmd[:1] == ["--"] else a.cmd
        series = [] if a.series else None
        r = measure(cmd, stdin=a.stdin, stdout=a.stdout, series=series)
        if a.series:
            with open(a.series, "w") as f:
                f.write("seconds,rss_kb\n")
                for t, kb in series:
                    f.write("%.3f,%d\n" % (t, kb))
        print(json.dumps(r))
        return 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
