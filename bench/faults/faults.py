"""Fault survival: 40 tasks, task 7 grows until the kernel OOM-kills it.

Every pool runs in a memory cgroup of its own capped at 300 MiB (cgroup v1,
as root), the same for all: 4 workers, tasks that sleep 100 ms and answer
i*i, task 7 appending 20 MB buffers until it is killed (bench/faults/hog.py).
A pool still running after 60 s has hung: its whole cgroup is killed.

For each pool and each run it records the outcome, the results obtained, the
wall time, the OOM kills the kernel logged for that cgroup (/dev/kmsg) and
what the user was told: the exception, or the CLI's stderr. Raw records go to
bench/out/faults/, the section to bench/results/faults.md, the plot to
docs/img/faults.svg.

Run it through bench/faults/run.
"""
import json
import os
import re
import shlex
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.join(REPO, "bench", "lib"))
import benchlib  # noqa: E402

N = 40
HOG = 7
CGROUP_LIMIT = 300 << 20
WORKER_LIMIT = "200MiB"  # safepool's per-worker cap, inside the 300 MiB cgroup
HANG = 60.0  # seconds: a pool still running then has hung
# A pool still running after BACKGROUND seconds is left to finish (or hang)
# while the next ones run, so that a hang costs 60 s per repetition, not 60 s
# per pool. A hung pool is idle, and the ones that finish do so well before.
BACKGROUND = 20.0

PY = "/usr/bin/python3"  # the interpreter Debian's python3-* packages install for
SAFEPOOL = os.path.join(REPO, "bench", ".bin", "safepool")
OUT = os.path.join(REPO, "bench", "out", "faults")


def python_client_available():
    """Reports whether python/safepool provides safepool.Pool."""
    if not os.path.exists(os.path.join(REPO, "python", "safepool", "__init__.py")):
        return False, "python/safepool/__init__.py does not exist"
    p = subprocess.run([PY, "-c", "import safepool; safepool.Pool"], cwd=REPO,
                       env=dict(os.environ, PYTHONPATH="python"), capture_output=True, text=True)
    if p.returncode != 0:
        last = (p.stderr.strip().splitlines() or ["exit %d" % p.returncode])[-1]
        return False, "`import safepool; safepool.Pool` fails: " + last
    return True, ""


def variants(tmp):
    """The pools to compare: (key, label, argv, stdin text, env, kind)."""
    hog = os.path.join(HERE, "hog.py")
    peers = os.path.join(HERE, "peers.py")
    inputs = [str(i) for i in range(N)]
    once = os.path.join(tmp, "hogged")  # removed before each run
    line_worker = "%s %s --line" % (PY, shlex.quote(hog))
    once_worker = "%s %s --line --once %s" % (PY, shlex.quote(hog), shlex.quote(once))
    stdin = "\n".join(inputs) + "\n"
    v = [
        ("mp_pool", "multiprocessing.Pool", [PY, peers, "mp_pool"], None, None, "python"),
        ("ppe", "ProcessPoolExecutor", [PY, peers, "ppe"], None, None, "python"),
        ("joblib", "joblib (loky)", [PY, peers, "joblib"], None, None, "python"),
        ("pebble", "pebble ProcessPool", [PY, peers, "pebble"], None, None, "python"),
        ("billiard", "billiard Pool", [PY, peers, "billiard"], None, None, "python"),
        ("parallel", "GNU parallel -j 4", ["parallel", "-j", "4", PY, hog, "{}", ":::"] + inputs,
         None, None, "cli"),
        ("sp_run", "safepool run --mem-limit " + WORKER_LIMIT,
         [SAFEPOOL, "run", "-j", "4", "--mem-limit", WORKER_LIMIT, PY, hog, "{}", ":::"] + inputs,
         None, None, "cli"),
        ("sp_map", "safepool map --mem-limit " + WORKER_LIMIT,
         [SAFEPOOL, "map", "-j", "4", "--mem-limit", WORKER_LIMIT, "--worker", line_worker],
         stdin, None, "cli"),
        ("sp_map_nolimit", "safepool map (no --mem-limit)",
         [SAFEPOOL, "map", "-j", "4", "--worker", line_worker], stdin, None, "cli"),
        ("sp_py", "safepool Python client", [PY, peers, "safepool"], None,
         {"PYTHONPATH": os.pathsep.join([os.path.join(REPO, "python"), HERE]),
          "PATH": os.path.dirname(SAFEPOOL) + os.pathsep + os.environ.get("PATH", ""),
          "SAFEPOOL_BIN": SAFEPOOL, "SAFEPOOL_BENCH_MEM_LIMIT": WORKER_LIMIT}, "python"),
        ("sp_run_retry", "safepool run --retries 1 (hog fails once)",
         [SAFEPOOL, "run", "-j", "4", "--mem-limit", WORKER_LIMIT, "--retries", "1",
          PY, hog, "--once", once, "{}", ":::"] + inputs, None, None, "cli"),
        ("sp_map_retry", "safepool map --retries 1 (hog fails once)",
         [SAFEPOOL, "map", "-j", "4", "--mem-limit", WORKER_LIMIT, "--retries", "1",
          "--worker", once_worker], stdin, None, "cli"),
    ]
    return v, once


def own_memcg():
    """Returns (hierarchy path, directory) of this process's v1 memory cgroup."""
    with open("/proc/self/cgroup") as f:
        for line in f:
            _, ctrls, path = line.rstrip("\n").split(":", 2)
            if "memory" in ctrls.split(","):
                return path, "/sys/fs/cgroup/memory" + path
    sys.exit("faults: no cgroup v1 memory controller here; this scenario needs one")


def clean_cgroup(d):
    """Kills every process left in cgroup d and its children, then removes them."""
    for _ in range(50):
        if not os.path.isdir(d):
            return
        busy = False
        for root, dirs, _ in os.walk(d, topdown=False):
            try:
                with open(os.path.join(root, "cgroup.procs")) as f:
                    pids = [int(x) for x in f.read().split()]
            except OSError:
                pids = []
            for pid in pids:
                busy = True
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            try:
                os.rmdir(root)
            except OSError:
                busy = True
        if not busy:
            return
        time.sleep(0.1)
    benchlib.log("faults: could not remove cgroup", d)


class KernelLog:
    """Reads the OOM kills the kernel logs, from now on."""

    def __init__(self):
        self.fd = os.open("/dev/kmsg", os.O_RDONLY | os.O_NONBLOCK)
        os.lseek(self.fd, 0, os.SEEK_END)
        self.lines = []

    def drain(self):
        while True:
            try:
                rec = os.read(self.fd, 8192)
            except BlockingIOError:
                return
            except OSError:  # EPIPE: a record was overwritten; go on
                continue
            self.lines.append(rec.decode("utf-8", "replace"))

    def kills_in(self, cgpath):
        """Counts logged OOM kills of a task in cgpath or below, and forgets them."""
        self.drain()
        n, keep = 0, []
        for rec in self.lines:
            m = re.search(r"oom-kill:.*task_memcg=([^,]*)", rec)
            if m and (m.group(1) == cgpath or m.group(1).startswith(cgpath + "/")):
                n += 1
            else:
                keep.append(rec)
        self.lines = keep
        return n


class Run:
    """One pool run, in its own memory cgroup."""

    def __init__(self, key, argv, stdin, env, rep):
        self.key, self.rep = key, rep
        self.cgpath = "%s/bench_faults_%s" % (CGPATH, key)
        self.cgdir = "/sys/fs/cgroup/memory" + self.cgpath
        clean_cgroup(self.cgdir)
        os.mkdir(self.cgdir)
        with open(os.path.join(self.cgdir, "memory.limit_in_bytes"), "w") as f:
            f.write(str(CGROUP_LIMIT))
        base = os.path.join(OUT, "%s.%d" % (key, rep))
        self.out_path, self.err_path = base + ".out", base + ".err"
        procs = os.path.join(self.cgdir, "cgroup.procs")

        def enter():
            with open(procs, "w") as f:
                f.write(str(os.getpid()))

        full_env = dict(os.environ)
        full_env.update(env or {})
        with open(self.out_path, "wb") as fo, open(self.err_path, "wb") as fe:
            self.t0 = time.monotonic()
            self.p = subprocess.Popen(argv, stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
                                      stdout=fo, stderr=fe, cwd=REPO, env=full_env,
                                      preexec_fn=enter, start_new_session=True)
        if stdin:
            self.p.stdin.write(stdin.encode())
            self.p.stdin.close()
        self.wall = None
        self.hung = False
        # The end is timed by a thread waiting for it, so that a run left
        # in the background gets its true wall time.
        self.ended = threading.Event()
        threading.Thread(target=self._wait, daemon=True).start()

    def _wait(self):
        self.p.wait()
        self.wall = time.monotonic() - self.t0
        self.ended.set()

    def poll(self, until):
        """Waits until the run ends or time until; reports whether it ended."""
        return self.ended.wait(max(0.0, until - time.monotonic()))

    def finish(self):
        """Waits for the end, or kills the run at HANG seconds, and cleans up."""
        if not self.poll(self.t0 + HANG):
            self.hung = True
            try:
                os.killpg(self.p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.ended.wait()
        clean_cgroup(self.cgdir)  # the pool's leftovers too


def record(kind, run, kills):
    """Turns a finished run into a record: outcome, results, time, message."""
    with open(run.out_path, "rb") as f:
        out = f.read().decode("utf-8", "replace")
    with open(run.err_path, "rb") as f:
        err = f.read().decode("utf-8", "replace")
    r = {"wall": run.wall, "status": run.p.returncode, "oom_kills": kills, "hung": run.hung}
    if run.hung:
        r.update(got=None, outcome="hung", message="nothing; still waiting at %.0f s" % HANG)
        if kind == "cli":
            r["got"] = sum(1 for line in out.splitlines() if line.strip().isdigit())
        return r
    if kind == "python":
        try:
            res = json.loads(out.strip().splitlines()[-1])
        except (ValueError, IndexError):
            tail = err.strip().splitlines()[-1:] or ["no output, exit %s" % run.p.returncode]
            res = {"got": 0, "error": tail[0], "raised": True}
        r["got"] = res["got"]
        msg = res["error"] or first_line(err) or "nothing"
        r["message"] = msg
        r["outcome"] = "error" if res["raised"] or res["got"] < N - 1 else "completed"
        return r
    r["got"] = sum(1 for line in out.splitlines() if line.strip().isdigit())
    lines = [ln.strip() for ln in err.splitlines() if ln.strip()]
    # The summary first (safepool's), then whatever else was on stderr.
    lines = [ln for ln in lines if ln.startswith(("safepool:", "task "))] + \
        [ln for ln in lines if not ln.startswith(("safepool:", "task "))]
    r["message"] = " / ".join(lines[:3]) if lines else "nothing on stderr"
    r["message"] += " (exit status %d)" % run.p.returncode
    r["outcome"] = "completed" if r["got"] >= N - 1 else "error"
    return r


def first_line(s):
    lines = [ln.strip() for ln in s.splitlines() if ln.strip()]
    return lines[-1] if lines else ""


def shorten(s, n=200):
    s = " ".join(s.split())
    return s if len(s) <= n else s[:n - 1] + "…"


def main():
    global CGPATH
    runs = benchlib.runs()
    CGPATH, _ = own_memcg()
    os.makedirs(OUT, exist_ok=True)
    klog = KernelLog()
    ok, why = python_client_available()
    with tempfile.TemporaryDirectory(prefix="safepool-faults-") as tmp:
        vs, once = variants(tmp)
        if not ok:
            benchlib.log("faults: safepool Python client not run:", why)
            vs = [v for v in vs if v[0] != "sp_py"]
        only = os.environ.get("FAULTS_ONLY", "").split()  # for development: some rows only
        if only:
            vs = [v for v in vs if v[0] in only]
        records = {v[0]: [] for v in vs}
        for rep in range(runs):
            background = []
            for key, label, argv, stdin, env, kind in vs:
                if os.path.exists(once):
                    os.remove(once)
                benchlib.log("faults: run %d/%d: %s" % (rep + 1, runs, label))
                run = Run(key, argv, stdin, env, rep)
                if run.poll(run.t0 + BACKGROUND):
                    run.finish()
                    records[key].append(record(kind, run, klog.kills_in(run.cgpath)))
                else:
                    background.append((kind, run))
            for kind, run in background:
                run.finish()
                records[run.key].append(record(kind, run, klog.kills_in(run.cgpath)))
    with open(os.path.join(OUT, "records.json"), "w") as f:
        json.dump(records, f, indent=1)
    write(vs, records, runs, None if ok else why)


def outcome_of(recs):
    """The most common outcome, with a count when runs disagree."""
    outs = [r["outcome"] for r in recs]
    top = max(set(outs), key=outs.count)
    return top if outs.count(top) == len(outs) else "%s (%d/%d runs)" % (top, outs.count(top), len(outs))


def write(vs, records, runs, client_missing):
    rows, plot = [], []
    for key, label, argv, stdin, env, kind in vs:
        recs = records[key]
        walls = [r["wall"] for r in recs]
        gots = [r["got"] for r in recs if r["got"] is not None]
        hung = all(r["hung"] for r in recs)
        wall = ">%.0f (killed)" % HANG if hung else benchlib.summary(walls, "{:.1f}")
        msgs = [r["message"] for r in recs]
        msg = max(set(msgs), key=msgs.count)
        msg = re.sub(r"\d+\.\d+s\b", "…s", msg)  # times vary between runs
        named = sorted({cause_named(m) for m in msgs})
        rows.append([label, outcome_of(recs), benchlib.summary(gots) if gots else "-",
                     wall, benchlib.summary([r["oom_kills"] for r in recs]), " / ".join(named),
                     "`" + shorten(msg).replace("`", "'").replace("|", "\\|") + "`"])
        plot.append((label, statistics.median(gots) if gots else 0,
                     statistics.median(walls), outcome_of(recs).split()[0]))
    if client_missing:
        rows.append(["safepool Python client", "not run", "-", "-", "-", "-", client_missing])
    img = make_plot(plot)
    hog = "bench/faults/hog.py"
    text = """## Fault survival: one task OOM-killed among 40

What ran: 40 tasks on 4 workers; every task sleeps 100 ms and answers `i*i`,
except task 7, which appends 20 MB buffers every 10 ms until something kills it
(`{hog}`; the Python pools run it through `bench/faults/peers.py`, waiting on
each result without a timeout, as their documentation shows). Each pool runs in
a memory cgroup of its own capped at 300 MiB, so the kernel's OOM killer ends
task 7. safepool additionally caps each worker at {wl} (`--mem-limit`), except
in the "no --mem-limit" row. A pool still running after {hang:.0f} s has hung
and is killed. OOM kills are the kernel's `oom-kill` records for the pool's
cgroup in /dev/kmsg. "Told" is what the user sees: the exception raised for a
task (first one), or the command's stderr and exit status; "cause named" is
whether that says `oom`, suggests memory, gives only the signal, or nothing. Outcome: completed
when the pool returned with at most the hog's result missing, error when it
lost more or raised, hung when killed at {hang:.0f} s. {runs} runs,
interleaved; median (min-max).

Command: `RUNS={runs} bench/faults/run` (the commands of each row are in
`bench/faults/faults.py`; e.g. `seq 0 39 | safepool map -j 4 --mem-limit {wl}
--worker '/usr/bin/python3 {hog} --line'`).

| pool | outcome | results of {n} | wall s | OOM kills | cause named | told (most frequent) |
|---|---|---|---|---|---|---|
""".format(hog=hog, wl=WORKER_LIMIT, hang=HANG, runs=runs, n=N)
    text += "\n".join("| " + " | ".join(str(c) for c in r) + " |" for r in rows) + "\n"
    if img:
        text += "\n![results and wall time per pool](%s)\n" % img
    text += "\n" + reading(vs, records) + "\n"
    benchlib.write_section("faults", text)


def cause_named(msg):
    """What a message says about the cause: oom, memory (as a guess), signal or nothing."""
    if re.search(r"\boom\b|OOM killer|out of memory", msg, re.I):
        return "oom"
    if re.search(r"memory", msg, re.I):
        return "memory, as a guess"
    if re.search(r"SIGKILL|signal 9|\(-9\)", msg):
        return "signal only"
    return "nothing"


def reading(vs, records):
    """A short reading, computed from the records."""
    labels = {v[0]: v[1] for v in vs}
    kept, named, hung = [], [], []
    for key, recs in records.items():
        if not recs or key.endswith("_retry"):
            continue
        gots = [r["got"] or 0 for r in recs]
        if all(r["hung"] for r in recs):
            hung.append(labels[key])
        if min(gots) >= N - 1:
            kept.append(labels[key])
            if all(cause_named(r["message"]) == "oom" for r in recs):
                named.append(labels[key])
    parts = []
    if hung:
        parts.append("Hung in every run, telling the user nothing: %s." % ", ".join(hung))
    parts.append("Kept every result but the hog's in every run: %s." % (", ".join(kept) or "none"))
    parts.append("Of those, named the cause `oom` in every run: %s." % (", ".join(named) or "none"))
    for k in ("sp_run_retry", "sp_map_retry"):
        if records.get(k):
            gots = [r["got"] or 0 for r in records[k]]
            parts.append("%s obtained %s of %d." % (labels[k], benchlib.summary(gots), N))
    return " ".join(parts)


def make_plot(plot):
    plt = benchlib.pyplot()
    if plt is None:
        return None
    colors = {"completed": "#4c9a2a", "error": "#d08c1a", "hung": "#c0392b"}
    labels = [p[0] for p in plot][::-1]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 0.42 * len(plot) + 1.4), sharey=True)
    y = range(len(plot))
    ax1.barh(y, [p[1] for p in plot][::-1], color=[colors.get(p[3], "grey") for p in plot][::-1])
    ax1.set_yticks(list(y))
    ax1.set_yticklabels(labels)
    ax1.set_xlim(0, N)
    ax1.set_xlabel("results obtained of %d (median)" % N)
    ax2.barh(y, [p[2] for p in plot][::-1], color=[colors.get(p[3], "grey") for p in plot][::-1])
    ax2.set_xlabel("wall seconds (median; hung = killed at %.0f s)" % HANG)
    handles = [plt.Rectangle((0, 0), 1, 1, color=c) for c in colors.values()]
    ax2.legend(handles, list(colors), loc="lower right")
    fig.suptitle("One task OOM-killed among 40, 4 workers, 300 MiB cgroup")
    path = benchlib.save_plot(fig, "faults")
    plt.close(fig)
    return path


if __name__ == "__main__":
    main()
