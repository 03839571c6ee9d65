"""safepool as an unprivileged user inside a container's memory cgroup.

A container is stood in for by a cgroup v1 memory cgroup that root makes and
limits; the runner starts inside it, as root or, through `setpriv --reuid
65534 --regid 65534 --clear-groups`, as nobody, who cannot make cgroups of
its own. The binaries and scripts are copied into a 0755 temporary directory
that nobody can read; nobody's home, outputs and blocks are in a directory it
owns. Every runner, root or nobody, gets the same clean environment.

Three parts, each run RUNS times, interleaved:

1. seed: 40 tasks on 4 workers, task 7 grows until the kernel OOM-kills it
   inside a 300 MiB cgroup (bench/faults/hog.py). safepool as root (its
   per-worker cgroups) and as nobody; Python's pools as nobody. Per runner:
   outcome, results, the cause named for task 7, wall time, OOM kills.
2. share: 16 tasks on 8 workers, each reading all of a 400 MiB shared block
   (a /dev/shm file, or a regular file) mapped shared, with a 200 MiB cap on
   each worker, in a 1 GiB cgroup: tasks lost (none should be).
3. batch: 16 tasks that each grow to a quarter of the cgroup
   (bench/governor/task.py), safepool -j 16 with its governor as nobody and
   as root, static -j 2, 3, 4 and -j 16 without it as nobody,
   multiprocessing.Pool(16) and GNU parallel -j 16 --memfree as nobody.

A runner still running at its deadline has hung: everything in its cgroup is
killed. OOM kills are the kernel's records of them in /dev/kmsg that name
the runner's cgroup (or one below it) or a process that was in it (see
KillWatch). Raw records go to
bench/out/unprivileged/, the section to bench/results/unprivileged.md, the
plot to docs/img/unprivileged.svg.

Every process and cgroup this makes is removed at the end, also on SIGINT,
SIGTERM or SIGHUP; leftovers of a run that was SIGKILLed are removed by the
next one. Run it through bench/unprivileged/run (root, cgroup v1 memory).
"""
import json
import os
import re
import shutil
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
sys.path.insert(0, os.path.join(REPO, "bench", "faults"))
sys.path.insert(0, os.path.join(REPO, "bench", "governor"))
import benchlib  # noqa: E402
# The fault and governor scenarios' own readings, so that the same run is
# read the same way here: what a message names as the cause, and the most
# attempts at once from a joblog.
from faults import cause_named, shorten  # noqa: E402
from governor import most_at_once  # noqa: E402

PY = "/usr/bin/python3"
NOBODY = 65534
MIB, GIB = 1 << 20, 1 << 30
QUICK = benchlib.quick()
OUT = os.path.join(REPO, "bench", "out", "unprivileged")
MEMCG_ROOT = "/sys/fs/cgroup/memory"
PREFIX = "bench_unpriv_"  # cgroups: PREFIX + harness pid + "_" + name
SHM_PREFIX = "bench-unpriv-"  # /dev/shm blocks and the temporary directory
# ONLY="seed,share" runs only these parts and writes the section to
# bench/out/unprivileged/unprivileged.md, not bench/results (development).
ONLY = os.environ.get("ONLY", "")
PARTS = [p for p in (ONLY or "seed,share,batch").split(",") if p]

SEED_N, SEED_HOG, SEED_J = 40, 7, 4
SEED_LIMIT = 300 * MIB
WORKER_LIMIT = "200MiB"  # safepool's cap per worker, in the seed and share parts
SEED_WORKER_LIMIT = WORKER_LIMIT
SEED_HANG = 60.0
SEED_BACKGROUND = 20.0  # a run not done by then goes on while the next ones run

SHARE_N, SHARE_J = 16, 8
SHARE_BLOCK_MIB = 400
SHARE_WORKER_LIMIT = WORKER_LIMIT
SHARE_LIMIT = 1 * GIB
SHARE_HANG = 60.0

BATCH_N = 16
BATCH_SIZE_MIB = 512 if QUICK else 768
BATCH_LIMIT = (2 if QUICK else 3) * GIB
BATCH_HANG = 60.0
SAMPLE = 0.1

# Only the variables a runner needs, the same for root and nobody: no
# root's pyenv on PATH, no root's HOME.
BASE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


class Interrupted(BaseException):
    """Raised by SIGTERM or SIGHUP, so that cleanup runs as on Ctrl-C."""


def on_signal(signum, frame):
    raise Interrupted("signal %d" % signum)


# ---- cgroups and processes this harness owns ------------------------------


def own_memcg():
    """Returns this process's v1 memory cgroup (a directory)."""
    with open("/proc/self/cgroup") as f:
        for line in f:
            _, ctrls, path = line.rstrip("\n").split(":", 2)
            if "memory" in ctrls.split(","):
                return MEMCG_ROOT + path
    sys.exit("unprivileged: no cgroup v1 memory controller at %s; this scenario needs one" % MEMCG_ROOT)


def cgroup_tree(d):
    """d and every cgroup below it, deepest first."""
    out = []
    for root, dirs, _ in os.walk(d, topdown=False):
        out.append(root)
    return out


def cgroup_pids(d):
    pids = []
    for x in cgroup_tree(d):
        try:
            with open(os.path.join(x, "cgroup.procs")) as f:
                pids += [int(p) for p in f.read().split()]
        except OSError:
            pass
    return pids


def empty_cgroup(d):
    """SIGKILLs every process in cgroup d and below until none is left."""
    for _ in range(100):
        pids = cgroup_pids(d)
        if not pids:
            return True
        for p in pids:
            try:
                os.kill(p, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.05)
    return not cgroup_pids(d)


def remove_cgroup(d):
    """Empties cgroup d and removes it with every cgroup below it."""
    if not os.path.isdir(d):
        return True
    empty_cgroup(d)
    for x in cgroup_tree(d):
        for _ in range(100):
            try:
                os.rmdir(x)
                break
            except FileNotFoundError:
                break
            except OSError:
                empty_cgroup(x)
                time.sleep(0.05)
    if os.path.isdir(d):
        benchlib.log("unprivileged: could not remove cgroup", d)
        return False
    return True


def harness_alive(pid):
    """Reports whether pid is a running harness (this script), not a dead
    one's pid reused by another program."""
    try:
        with open("/proc/%d/cmdline" % pid, "rb") as f:
            return b"unprivileged.py" in f.read()
    except OSError:
        return False


class Owned:
    """Everything this harness makes: cgroups, processes, files. clean()
    removes all of it; it is safe to call more than once."""

    def __init__(self, parent, kills):
        self.parent = parent
        self.kills = kills
        self.cgroups = []
        self.procs = []
        self.paths = []
        self.lock = threading.Lock()

    def sweep_leftovers(self):
        """Removes what a harness that was SIGKILLed left behind: its cgroups,
        blocks and temporary directory (named with its pid, now dead)."""
        pat = re.compile(r"^%s(\d+)_" % PREFIX)
        for name in os.listdir(self.parent):
            m = pat.match(name)
            if m and not harness_alive(int(m.group(1))):
                benchlib.log("unprivileged: removing the leftover cgroup", name)
                remove_cgroup(os.path.join(self.parent, name))
        pat = re.compile(r"^%s(\d+)-" % SHM_PREFIX)
        for base in ("/dev/shm", tempfile.gettempdir()):
            for name in os.listdir(base):
                m = pat.match(name)
                if m and not harness_alive(int(m.group(1))):
                    benchlib.log("unprivileged: removing the leftover", os.path.join(base, name))
                    remove_path(os.path.join(base, name))

    def cgroup(self, name, limit):
        """Makes the cgroup PREFIX<pid>_NAME limited to limit bytes, and
        watches it for OOM kills."""
        d = os.path.join(self.parent, "%s%d_%s" % (PREFIX, os.getpid(), name))
        remove_cgroup(d)
        os.mkdir(d)
        with self.lock:
            self.cgroups.append(d)
        with open(os.path.join(d, "memory.limit_in_bytes"), "w") as f:
            f.write(str(limit))
        self.kills.watch(d)
        return d

    def drop_cgroup(self, d):
        if remove_cgroup(d):
            with self.lock:
                if d in self.cgroups:
                    self.cgroups.remove(d)

    def path(self, p):
        with self.lock:
            self.paths.append(p)
        return p

    def clean(self):
        for p in list(self.procs):
            if p.poll() is None:
                try:
                    os.killpg(p.pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass
        for d in list(self.cgroups):
            self.drop_cgroup(d)
        for p in list(self.procs):
            try:
                p.wait(timeout=5)
            except subprocess.TimeoutExpired:
                benchlib.log("unprivileged: process %d did not end" % p.pid)
        self.procs = []
        for p in reversed(self.paths):
            remove_path(p)
        self.paths = []


def remove_path(p):
    if os.path.isdir(p) and not os.path.islink(p):
        shutil.rmtree(p, ignore_errors=True)
    else:
        try:
            os.remove(p)
        except FileNotFoundError:
            pass


class KillWatch:
    """Counts the OOM kills of processes in a runner's cgroup or below.

    The kernel logs every OOM kill as "Killed process PID", but the detailed
    "oom-kill:...task_memcg=..." record only up to 10 per 5 s for the whole
    machine, which other programs' kills use up. So a thread samples, every
    20 ms, the processes in each watched cgroup tree and reads /dev/kmsg: a
    kill counts for a runner when its record names the runner's cgroup, or
    when the killed pid was in the runner's tree within the last second
    (pids are reused, but not that fast). A process killed within 20 ms of
    its start is counted only through the detailed record.
    """

    TICK = 0.02
    RECENT = 1.0

    def __init__(self):
        self.fd = os.open("/dev/kmsg", os.O_RDONLY | os.O_NONBLOCK)
        os.lseek(self.fd, 0, os.SEEK_END)
        self.lock = threading.Lock()
        self.watched = {}  # cgroup dir -> {"seen": {pid: monotonic time}, "kills": set of pids}
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._loop, daemon=True)
        self.thread.start()

    def watch(self, cg):
        with self.lock:
            self.watched[cg] = {"seen": {}, "kills": set()}

    def kills(self, cg):
        """The OOM kills counted for cg so far; stops watching it."""
        self._tick()
        with self.lock:
            w = self.watched.pop(cg, None)
        return len(w["kills"]) if w else 0

    def close(self):
        self.stop.set()
        self.thread.join()
        os.close(self.fd)

    def _loop(self):
        while not self.stop.wait(self.TICK):
            self._tick()

    def _tick(self):
        with self.lock:
            now = time.monotonic()
            for cg, w in self.watched.items():
                for pid in cgroup_pids(cg):
                    w["seen"][pid] = now
            for pid, memcg in self._drain():
                for cg, w in self.watched.items():
                    path = cg[len(MEMCG_ROOT):]
                    if (memcg is not None and (memcg == path or memcg.startswith(path + "/"))) or \
                            now - w["seen"].get(pid, -1e9) <= self.RECENT:
                        w["kills"].add(pid)

    def _drain(self):
        """(pid, task_memcg or None) for each kill logged since the last call."""
        out = []
        while True:
            try:
                rec = os.read(self.fd, 8192).decode("utf-8", "replace")
            except BlockingIOError:
                return out
            except OSError:  # EPIPE: records were overwritten; go on
                continue
            m = re.search(r"oom-kill:.*task_memcg=([^,]*),.*\bpid=(\d+)", rec)
            if m:
                out.append((int(m.group(2)), m.group(1)))
                continue
            m = re.search(r"Killed process (\d+) \(", rec)
            if m:
                out.append((int(m.group(1)), None))


# ---- the sandbox: what nobody can read, and where it can write -------------


class Sandbox:
    """A 0755 copy of the binaries and scripts, a home that nobody owns."""

    def __init__(self, owned):
        self.dir = owned.path(tempfile.mkdtemp(prefix="%s%d-" % (SHM_PREFIX, os.getpid())))
        os.chmod(self.dir, 0o755)
        self.bin = os.path.join(self.dir, "bin")
        self.scripts = os.path.join(self.dir, "scripts")
        self.python = os.path.join(self.dir, "python")
        os.mkdir(self.bin)
        os.mkdir(self.scripts)
        shutil.copy2(os.path.join(REPO, "bench", ".bin", "safepool"), self.bin)
        for src in ("bench/faults/hog.py", "bench/governor/task.py", "bench/governor/mp.py",
                    "bench/unprivileged/share.py", "bench/unprivileged/peers.py"):
            shutil.copy2(os.path.join(REPO, src), self.scripts)
        shutil.copytree(os.path.join(REPO, "python", "safepool"), os.path.join(self.python, "safepool"),
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "_bin"))
        # Bytecode, as an installed package has it, for every reader.
        subprocess.run([PY, "-m", "compileall", "-q", self.scripts, self.python], check=True,
                       stdout=subprocess.DEVNULL)
        for root, dirs, files in os.walk(self.dir):
            for x in dirs:
                os.chmod(os.path.join(root, x), 0o755)
            for x in files:
                os.chmod(os.path.join(root, x), 0o755)
        self.home = os.path.join(self.dir, "home")
        os.makedirs(os.path.join(self.home, ".parallel"))
        os.makedirs(os.path.join(self.home, "tmp"))
        open(os.path.join(self.home, ".parallel", "will-cite"), "w").close()
        for root, dirs, files in os.walk(self.home):
            for x in [root] + [os.path.join(root, f) for f in files]:
                os.chown(x, NOBODY, NOBODY)
        self.safepool = os.path.join(self.bin, "safepool")

    def script(self, name):
        return os.path.join(self.scripts, name)

    def out(self, name):
        """A path nobody can write."""
        return os.path.join(self.home, name)

    def env(self):
        # SAFEPOOL_BENCH_MEM_LIMIT: the client's per-worker cap in peers.py,
        # the same as the CLI's --mem-limit in the seed and share parts.
        return {
            "PATH": BASE_PATH, "HOME": self.home, "TMPDIR": os.path.join(self.home, "tmp"),
            "LANG": "C.UTF-8", "PYTHONPATH": os.pathsep.join([self.scripts, self.python]),
            "SAFEPOOL_BIN": self.safepool, "PYTHONDONTWRITEBYTECODE": "1",
            "SAFEPOOL_BENCH_MEM_LIMIT": WORKER_LIMIT,
        }


def as_user(user, argv):
    if user == "root":
        return list(argv)
    return ["setpriv", "--reuid", str(NOBODY), "--regid", str(NOBODY), "--clear-groups", "--"] + list(argv)


# ---- one run of one runner -------------------------------------------------


class Run:
    """One runner, started inside cgroup cg as user, with a deadline."""

    def __init__(self, owned, sandbox, cg, user, argv, stdin=None, tag="run"):
        self.owned, self.cg, self.user = owned, cg, user
        os.makedirs(OUT, exist_ok=True)
        base = os.path.join(OUT, tag)
        self.out_path, self.err_path = base + ".out", base + ".err"
        procs = os.path.join(cg, "cgroup.procs")

        def enter():
            with open(procs, "w") as f:
                f.write(str(os.getpid()))

        with open(self.out_path, "wb") as fo, open(self.err_path, "wb") as fe:
            self.t0 = time.monotonic()
            self.p = subprocess.Popen(as_user(user, argv),
                                      stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
                                      stdout=fo, stderr=fe, cwd=sandbox.home, env=sandbox.env(),
                                      preexec_fn=enter, start_new_session=True)
        owned.procs.append(self.p)
        if stdin:
            try:
                self.p.stdin.write(stdin.encode())
                self.p.stdin.close()
            except BrokenPipeError:
                pass
        self.wall, self.hung = None, False
        self.ended = threading.Event()
        threading.Thread(target=self._wait, daemon=True).start()

    def _wait(self):
        self.p.wait()
        self.wall = time.monotonic() - self.t0
        self.ended.set()

    def poll(self, until):
        """Waits until the run ends or time until; reports whether it ended."""
        return self.ended.wait(max(0.0, until - time.monotonic()))

    def finish(self, hang):
        """Waits for the end, or kills everything in the cgroup at hang
        seconds and calls the run hung."""
        if not self.poll(self.t0 + hang):
            self.hung = True
            empty_cgroup(self.cg)
            self.ended.wait()
        empty_cgroup(self.cg)  # what the runner left behind (orphans)
        if self.p in self.owned.procs:
            self.owned.procs.remove(self.p)

    def output(self):
        with open(self.out_path, "rb") as f:
            out = f.read().decode("utf-8", "replace")
        with open(self.err_path, "rb") as f:
            err = f.read().decode("utf-8", "replace")
        return out, err


def read_json(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def last_json_line(out):
    for line in reversed(out.strip().splitlines()):
        try:
            return json.loads(line)
        except ValueError:
            continue
    return None


SUMMARY = re.compile(r"^safepool: \d+ (done|tasks)")


def cli_message(err, status):
    """safepool's summary and its task lines first, then whatever else was on
    stderr but safepool's other lines (notices(), quoted once in the section)."""
    lines = [ln.strip() for ln in err.splitlines() if ln.strip()]
    first = [ln for ln in lines if SUMMARY.match(ln)] + [ln for ln in lines if ln.startswith("task ")]
    lines = first + [ln for ln in lines if ln not in first and not ln.startswith("safepool:")]
    msg = " / ".join(lines[:3]) if lines else "nothing on stderr"
    return msg + " (exit status %s)" % status


def notices(err):
    """safepool's lines on stderr other than its summary: what it says at
    start about what it can do, with the cgroup path left out."""
    return [re.sub(r"/sys/fs/cgroup/\S+", "…", ln.strip()) for ln in err.splitlines()
            if ln.startswith("safepool:") and not SUMMARY.match(ln)]


def task_cause(summary, err, inp):
    """The cause safepool gave for the task with input inp: from the JSON
    summary, else from the stderr summary; "" when it did not fail."""
    if summary:
        for key in ("failed", "recovered"):
            for t in summary.get(key) or []:
                if str(t.get("input")) == inp:
                    c = t.get("cause") or ""
                    return "poison (%s)" % c if t.get("state") == "poison" else c
    m = re.search(r"\(input '%s'\) (poison \([^)]*\)|\S+)" % re.escape(inp), err)
    return m.group(1) if m else ""


def causes_count(summary):
    """{cause: how many failed tasks} from a JSON summary."""
    out = {}
    for t in (summary or {}).get("failed") or []:
        c = t.get("cause") or "?"
        out[c] = out.get(c, 0) + 1
    return out


def safe(user):
    return "as nobody" if user == "nobody" else "as root"


# ---- part 1: the seed scenario ---------------------------------------------


def seed_runners(sb):
    hog = sb.script("hog.py")
    peers = sb.script("peers.py")
    inputs = [str(i) for i in range(SEED_N)]
    stdin = "\n".join(inputs) + "\n"
    line = "%s %s --line" % (PY, hog)
    wl = SEED_WORKER_LIMIT
    rs = []
    for user in ("nobody", "root"):
        rs += [
            ("sp_map_limit", "safepool map --mem-limit %s" % wl, user, "cli",
             lambda js: [sb.safepool, "map", "-j", str(SEED_J), "--mem-limit", wl, "--worker", line,
                                 "--json=" + js], stdin),
            ("sp_run_limit", "safepool run --mem-limit %s" % wl, user, "cli",
             lambda js: [sb.safepool, "run", "-j", str(SEED_J), "--mem-limit", wl, "--json=" + js,
                                 PY, hog, "{}", ":::"] + inputs, None),
            ("sp_map", "safepool map (no --mem-limit)", user, "cli",
             lambda js: [sb.safepool, "map", "-j", str(SEED_J), "--worker", line, "--json=" + js], stdin),
            ("sp_py", "safepool Python client, mem_limit=%s" % wl, user, "python",
             lambda js: [PY, peers, "seed", "safepool"], None),
        ]
    for key, label in (("mp_pool", "multiprocessing.Pool"), ("ppe", "ProcessPoolExecutor"),
                       ("joblib", "joblib (loky)"), ("pebble", "pebble ProcessPool")):
        rs.append((key, label, "nobody", "python", lambda js, k=key: [PY, peers, "seed", k], None))
    return rs


def seed_record(kind, run, kills, js):
    out, err = run.output()
    status = run.p.returncode
    r = {"wall": run.wall, "status": status, "oom_kills": kills, "hung": run.hung, "mode": "-"}
    summary = read_json(js) if js else None
    if summary:
        r["mode"] = summary.get("memory_mode", "-")
    if kind == "python":
        res = last_json_line(out)
        if run.hung:
            r.update(got=None, outcome="hung", cause="", message="nothing; still waiting at %.0f s" % SEED_HANG)
            return r
        if res is None:
            tail = [ln for ln in err.strip().splitlines() if ln.strip()][-1:] or ["no output, exit %s" % status]
            res = {"got": 0, "error": tail[0], "cause": "", "raised": True}
        r["got"] = res["got"]
        r["message"] = res["error"] or "nothing"
        r["cause"] = res.get("cause") or ""
        r["outcome"] = "error" if res["raised"] or res["got"] < SEED_N - 1 else "completed"
        return r
    r["got"] = sum(1 for ln in out.splitlines() if ln.strip().isdigit())
    r["message"] = cli_message(err, status)
    r["notices"] = notices(err)
    r["cause"] = task_cause(summary, err, str(SEED_HOG))
    if run.hung:
        r.update(outcome="hung", message="still running at %.0f s; " % SEED_HANG + r["message"])
    else:
        r["outcome"] = "completed" if r["got"] >= SEED_N - 1 else "error"
    return r


def seed_rep(owned, sb, rep, runs, records):
    background = []

    def done(key, user, kind, run, js, cg):
        run.finish(SEED_HANG)
        rec = seed_record(kind, run, owned.kills.kills(cg), js)
        owned.drop_cgroup(cg)
        records.setdefault((key, user), []).append(rec)
        benchlib.log("  %-44s %-9s %-9s got %s  task 7: %-14s %5.1fs  oom kills %d  %s" % (
            key, user, rec["outcome"], rec["got"], rec["cause"] or cause_named(rec["message"]),
            rec["wall"], rec["oom_kills"], rec["mode"]))

    # multiprocessing.Pool first: when it hangs, it waits out its deadline
    # in the background, idle, while the others run.
    for key, label, user, kind, argv, stdin in sorted(seed_runners(sb), key=lambda r: r[0] != "mp_pool"):
        benchlib.log("unprivileged: seed %d/%d: %s, %s" % (rep + 1, runs, label, safe(user)))
        cg = owned.cgroup("seed_%s_%s" % (key, user), SEED_LIMIT)
        js = sb.out("seed_%s_%s_%d.json" % (key, user, rep)) if kind == "cli" else None
        run = Run(owned, sb, cg, user, argv(js), stdin, tag="seed_%s_%s_%d" % (key, user, rep))
        if run.poll(run.t0 + SEED_BACKGROUND):
            done(key, user, kind, run, js, cg)
        else:
            background.append((key, user, kind, run, js, cg))
    for args in background:
        done(*args)


# ---- part 2: false kills under sharing -------------------------------------


BLOCKS = (("shm", "/dev/shm file"), ("file", "regular file"))


def share_runners(sb):
    peers = sb.script("peers.py")
    share = sb.script("share.py")
    inputs = [str(i) for i in range(SHARE_N)]
    stdin = "\n".join(inputs) + "\n"
    wl = SHARE_WORKER_LIMIT
    rs = []
    for user in ("nobody", "root"):
        rs += [
            ("sp_map", "safepool map --mem-limit %s" % wl, user, "cli",
             lambda js, blk: [sb.safepool, "map", "-j", str(SHARE_J), "--mem-limit", wl, "--worker",
                              "%s %s --line %s" % (PY, share, blk), "--json=" + js], stdin),
            ("sp_run", "safepool run --mem-limit %s" % wl, user, "cli",
             lambda js, blk: [sb.safepool, "run", "-j", str(SHARE_J), "--mem-limit", wl, "--json=" + js,
                              PY, share, blk, "{}", ":::"] + inputs, None),
            ("sp_py", "safepool Python client, mem_limit=%s" % wl, user, "python",
             lambda js, blk: [PY, peers, "share", "safepool", blk], None),
        ]
    for key, label in (("mp_pool", "multiprocessing.Pool"), ("ppe", "ProcessPoolExecutor"),
                       ("joblib", "joblib (loky)"), ("pebble", "pebble ProcessPool")):
        rs.append((key, label + " (no memory cap)", "nobody", "python",
                   lambda js, blk, k=key: [PY, peers, "share", k, blk], None))
    return rs


def share_rep(owned, sb, rep, runs, records):
    for block, block_label in BLOCKS:
        for key, label, user, kind, argv, stdin in share_runners(sb):
            benchlib.log("unprivileged: share %d/%d: %s, %s, %s" % (rep + 1, runs, label, block_label, safe(user)))
            cg = owned.cgroup("share_%s_%s_%s" % (key, block, user), SHARE_LIMIT)
            if block == "shm":
                blk = owned.path("/dev/shm/%s%d-%s-%s" % (SHM_PREFIX, os.getpid(), key, user))
            else:
                blk = owned.path(sb.out("block-%s-%s" % (key, user)))
            # The runner's own user writes the block inside the container,
            # before the pool starts and outside its time: its pages are the
            # container's, charged once, and no worker's.
            prep = Run(owned, sb, cg, user, ["sh", "-c", 'head -c %dM /dev/zero > "$0"' % SHARE_BLOCK_MIB, blk],
                       tag="share_prep")
            prep.finish(SHARE_HANG)
            if prep.hung or prep.p.returncode != 0 or os.path.getsize(blk) != SHARE_BLOCK_MIB * MIB:
                raise RuntimeError("unprivileged: could not write the %s block %s (see %s)"
                                   % (block_label, blk, prep.err_path))
            js = sb.out("share_%s_%s_%s_%d.json" % (key, block, user, rep)) if kind == "cli" else None
            run = Run(owned, sb, cg, user, argv(js, blk), stdin, tag="share_%s_%s_%s_%d" % (key, block, user, rep))
            run.finish(SHARE_HANG)
            rec = share_record(kind, run, js)
            rec["oom_kills"] = owned.kills.kills(cg)
            remove_path(blk)
            owned.drop_cgroup(cg)
            records.setdefault((key, block, user), []).append(rec)
            benchlib.log("  %-44s %-6s %-7s lost %2d of %d  %5.1fs  %s  %s" % (
                key, block, user, rec["lost"], SHARE_N, rec["wall"], rec["mode"],
                ", ".join("%s %d" % kv for kv in sorted(rec["causes"].items())) or "-"))


def share_record(kind, run, js):
    out, err = run.output()
    status = run.p.returncode
    summary = read_json(js) if js else None
    r = {"wall": run.wall, "status": status, "hung": run.hung, "mode": "-", "causes": {}}
    if kind == "python":
        res = last_json_line(out) or {"got": 0, "error": (err.strip().splitlines() or ["no output"])[-1],
                                      "cause": "", "raised": True}
        got = res["got"]
        r["message"] = res["error"] or "nothing"
        r["causes"] = res.get("causes") or {}
    else:
        got = len(re.findall(r"^task \d+ crc ", out, re.M))
        r["message"] = cli_message(err, status)
        r["notices"] = notices(err)
        if summary:
            r["mode"] = summary.get("memory_mode", "-")
            r["causes"] = causes_count(summary)
    if run.hung:
        r["message"] = "still running at %.0f s; %s" % (SHARE_HANG, r["message"])
    r["got"] = got
    r["lost"] = SHARE_N - got
    return r


# ---- part 3: the governed hog batch ----------------------------------------


def batch_runners(sb):
    task = sb.script("task.py")
    items = [str(i) for i in range(1, BATCH_N + 1)]

    def sp(*flags):
        return lambda js, log: ([sb.safepool, "run", "-q", "--retries", "3", "--json=" + js, "--joblog=" + log]
                                + list(flags) + ["--", PY, task, "{}", str(BATCH_SIZE_MIB), ":::"] + items)

    none = lambda argv: (lambda js, log: argv)
    return [
        ("gov", "safepool -j 16 (governor)", "nobody", sp("-j", "16")),
        ("gov", "safepool -j 16 (governor)", "root", sp("-j", "16")),
        ("j16", "safepool -j 16, no governor", "nobody", sp("-j", "16", "--no-governor")),
        ("j2", "safepool -j 2 (static)", "nobody", sp("-j", "2", "--no-governor")),
        ("j3", "safepool -j 3 (static)", "nobody", sp("-j", "3", "--no-governor")),
        ("j4", "safepool -j 4 (static)", "nobody", sp("-j", "4", "--no-governor")),
        ("mp_pool", "multiprocessing.Pool(16)", "nobody", none([PY, sb.script("mp.py"), str(BATCH_N),
                                                                str(BATCH_SIZE_MIB)])),
        ("parallel", "GNU parallel -j 16 --memfree", "nobody",
         none(["parallel", "-j", "16", "--memfree", "%dM" % (BATCH_SIZE_MIB + 64), PY, task, "{}",
               str(BATCH_SIZE_MIB), ":::"] + items)),
    ]


def batch_rep(owned, sb, rep, runs, records):
    for key, label, user, argv in batch_runners(sb):
        benchlib.log("unprivileged: batch %d/%d: %s, %s" % (rep + 1, runs, label, safe(user)))
        cg = owned.cgroup("batch_%s_%s" % (key, user), BATCH_LIMIT)
        memsw = os.path.join(cg, "memory.memsw.limit_in_bytes")
        if os.path.exists(memsw):
            with open(memsw, "w") as f:
                f.write(str(BATCH_LIMIT))
        js = sb.out("batch_%s_%s_%d.json" % (key, user, rep))
        log = sb.out("batch_%s_%s_%d.log" % (key, user, rep))
        series, stop = [], threading.Event()
        t0 = time.monotonic()

        def sampler():
            while not stop.is_set():
                try:
                    with open(os.path.join(cg, "memory.usage_in_bytes")) as f:
                        series.append((time.monotonic() - t0, int(f.read())))
                except (OSError, ValueError):
                    pass
                stop.wait(SAMPLE)

        th = threading.Thread(target=sampler, daemon=True)
        th.start()
        try:
            run = Run(owned, sb, cg, user, argv(js, log), tag="batch_%s_%s_%d" % (key, user, rep))
            run.finish(BATCH_HANG)
        finally:
            stop.set()
            th.join()
        with open(os.path.join(cg, "memory.max_usage_in_bytes")) as f:
            peak = int(f.read())
        out, err = run.output()
        summary = read_json(js)
        done = summary["tasks"]["done"] if summary else len(re.findall(r"^task \d+ done", out, re.M))
        most = most_at_once(log) if os.path.exists(log) and os.path.getsize(log) > 0 else None
        kills = owned.kills.kills(cg)
        owned.drop_cgroup(cg)
        outcome = "hung" if run.hung else ("completed" if done == BATCH_N else "lost %d" % (BATCH_N - done))
        rec = {"wall": run.wall, "status": run.p.returncode, "hung": run.hung, "done": done,
               "lost": BATCH_N - done, "outcome": outcome, "peak": peak, "oom_kills": kills, "most": most,
               "mode": (summary or {}).get("memory_mode", "-"),
               "budget": ((summary or {}).get("memory") or {}).get("budget_bytes"),
               "message": cli_message(err, run.p.returncode), "notices": notices(err), "series": series}
        records.setdefault((key, user), []).append(rec)
        benchlib.log("  %-32s %-7s %-10s done %2d/%d  %5.1fs  most %s  peak %.2f GiB  oom kills %d  %s" % (
            label, user, outcome, done, BATCH_N, run.wall, most, peak / GIB, kills, rec["mode"]))


# ---- the section -----------------------------------------------------------


def mode_of(recs):
    modes = sorted({r["mode"] for r in recs if r.get("mode") and r["mode"] != "-"})
    return ", ".join("`%s`" % m for m in modes) or "-"


def tally(values):
    """"a ×3, b ×2": each value with how many runs had it, most frequent first."""
    counts = {}
    for v in values:
        counts[v] = counts.get(v, 0) + 1
    return ", ".join("%s ×%d" % (v, n) for v, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))


def most_frequent(values):
    return max(set(values), key=values.count)


def cell(s):
    return "`" + shorten(re.sub(r"\d+\.\d+s\b", "…s", s)).replace("`", "'").replace("|", "\\|") + "`"


def names_oom(cause):
    """Reports whether a cause safepool gave is `oom` (also as a poison task's)."""
    return cause == "oom" or cause == "poison (oom)"


def seed_section(sb, records, runs):
    rows, sp_all_oom, sp_not = [], [], []
    for key, label, user, kind, _, _ in seed_runners(sb):
        recs = records.get((key, user))
        if not recs:
            continue
        name = "%s, %s" % (label, safe(user))
        causes = [r["cause"] or ("(not named) " + cause_named(r["message"]) if key.startswith("sp_") else
                                 cause_named(r["message"])) for r in recs]
        gots = [r["got"] for r in recs if r["got"] is not None]
        hung = all(r["hung"] for r in recs)
        rows.append([name, tally([r["outcome"] for r in recs]), benchlib.summary(gots) if gots else "-",
                     tally(causes), ">%.0f (killed)" % SEED_HANG if hung else
                     benchlib.summary([r["wall"] for r in recs], "{:.1f}"),
                     benchlib.summary([r["oom_kills"] for r in recs]), mode_of(recs),
                     cell(most_frequent([r["message"] for r in recs]))])
        if key.startswith("sp_"):
            (sp_all_oom if all(names_oom(r["cause"]) for r in recs) else sp_not).append((name, tally(causes)))
    text = ["### 1. One task OOM-killed among %d, in a 300 MiB container\n" % SEED_N]
    text.append(
        "The fault-survival scenario of bench/faults: %d tasks on %d workers; each sleeps 100 ms and answers "
        "`i*i`, except task %d, which appends 20 MB buffers every 10 ms until something kills it "
        "(`bench/faults/hog.py`). Each runner has a cgroup of its own limited to 300 MiB, so the kernel's OOM "
        "killer ends task %d unless safepool's cap of %s per worker does first. \"Cause for task 7\" is the "
        "cause safepool reports for it (`oom`, `memory-limit`, ...), from its JSON summary or the client's "
        "exception; for the Python pools, what their exception says (as in bench/faults). Outcome: completed "
        "when at most the hog's result is missing, error when more was lost or the call raised, hung when "
        "killed at %.0f s. OOM kills: the kernel's records for the runner's cgroup or below. Memory mode: "
        "safepool's `memory_mode`.\n" % (SEED_N, SEED_J, SEED_HOG, SEED_HOG, SEED_WORKER_LIMIT, SEED_HANG))
    text.append(benchlib.table(["runner", "outcome (runs)", "results of %d" % SEED_N, "cause for task 7 (runs)",
                                "wall s", "OOM kills", "memory mode", "told (most frequent)"], rows))
    reading = []
    if sp_all_oom:
        reading.append("safepool named task 7's cause `oom` in every run (the target): %s."
                       % "; ".join(n for n, _ in sp_all_oom))
    if sp_not:
        reading.append("It did not in every run: %s." % "; ".join("%s (%s)" % x for x in sp_not))
    text.append(" ".join(reading) + "\n")
    return "\n".join(text)


def share_section(sb, records, runs):
    rows, lost_rows = [], []
    for block, block_label in BLOCKS:
        for key, label, user, kind, _, _ in share_runners(sb):
            recs = records.get((key, block, user))
            if not recs:
                continue
            name = "%s, %s" % (label, safe(user))
            causes = {}
            for r in recs:
                for c, n in r["causes"].items():
                    causes[c] = causes.get(c, 0) + n
            lost = [r["lost"] for r in recs]
            rows.append([name, block_label, benchlib.summary(lost),
                         ", ".join("%s %d" % kv for kv in sorted(causes.items())) or "-",
                         benchlib.summary([r["wall"] for r in recs], "{:.1f}"), mode_of(recs),
                         tally(["hung" if r["hung"] else "ended" for r in recs]),
                         cell(most_frequent([r["message"] for r in recs]))])
            if key.startswith("sp_"):
                lost_rows.append((name, block_label, lost))
    text = ["### 2. False kills under sharing: %d workers reading one %d MiB block\n" % (SHARE_J, SHARE_BLOCK_MIB)]
    text.append(
        "%d tasks on %d workers; each maps all of one %d MiB block shared and read-only and computes its CRC-32 "
        "over and over for 1 s (`bench/unprivileged/share.py`). The block is a file in /dev/shm (shared memory, "
        "as a memfd is) or a regular file (page cache), written inside the runner's cgroup (1 GiB) by the "
        "runner's own user before the pool starts, so its pages belong to the container, once. safepool caps "
        "each worker at %s (`--mem-limit`, `mem_limit=`): the block is shared, so a worker holds almost nothing "
        "of its own, and a worker killed for it is a false kill. Tasks lost: of %d, the target is 0. Causes: "
        "what safepool said for the lost tasks, summed over the runs. The Python pools have no per-worker "
        "memory cap; they are here for the time.\n" % (SHARE_N, SHARE_J, SHARE_BLOCK_MIB, SHARE_WORKER_LIMIT,
                                                        SHARE_N))
    text.append(benchlib.table(["runner", "block", "tasks lost of %d" % SHARE_N, "causes of the lost",
                                "wall s", "memory mode", "runs", "told (most frequent)"], rows))
    zero = ["%s (%s)" % (n, b) for n, b, lost in lost_rows if max(lost) == 0]
    some = ["%s (%s): %s" % (n, b, benchlib.summary(lost)) for n, b, lost in lost_rows if max(lost) > 0]
    reading = []
    if zero:
        reading.append("safepool lost no task in any run: %s." % "; ".join(zero))
    if some:
        reading.append("safepool lost tasks (median, min-max): %s." % "; ".join(some))
    text.append(" ".join(reading) + "\n")
    return "\n".join(text)


def batch_section(sb, records, runs):
    med = lambda k: statistics.median([r["wall"] for r in records[k]])
    statics = [(k, u) for k, _, u, _ in batch_runners(sb) if (k, u) in records and k in ("j2", "j3", "j4")
               and all(r["outcome"] == "completed" for r in records[(k, u)])]
    best = min(statics, key=med) if statics else None
    labels = {(k, u): l for k, l, u, _ in batch_runners(sb)}
    rows = []
    for key, label, user, _ in batch_runners(sb):
        recs = records.get((key, user))
        if not recs:
            continue
        mosts = [r["most"] for r in recs if r["most"] is not None]
        # A time is comparable only when every task was done.
        whole = all(r["outcome"] == "completed" for r in recs)
        ratio = "%.2fx" % (med((key, user)) / med(best)) if best and whole else "-"
        rows.append(["%s, %s" % (label, safe(user)), tally([r["outcome"] for r in recs]),
                     benchlib.summary([r["lost"] for r in recs]),
                     benchlib.summary([r["wall"] for r in recs], "{:.1f}"), ratio,
                     benchlib.summary(mosts) if mosts else "-",
                     benchlib.summary([r["peak"] / GIB for r in recs], "{:.2f}"),
                     benchlib.summary([r["oom_kills"] for r in recs]), mode_of(recs)])
    size = "%.2f GiB" % (BATCH_SIZE_MIB / 1024.0)
    text = ["### 3. The governed hog batch: %d tasks of %s in a %d GiB container\n"
            % (BATCH_N, size, BATCH_LIMIT // GIB)]
    text.append(
        "bench/governor's batch, sized for this container: %d tasks that each grow to %d MiB in 15 steps over "
        "about 2 s (`bench/governor/task.py`), in a cgroup limited to %d GiB, so that %d tasks at once already "
        "ask for all of it. safepool runs one-shot workers with `--retries 3`; the governed runs use `-j 16` and "
        "no memory flag, so the governor must find the budget itself; the static runs use `--no-governor`. "
        "Runners still running at %.0f s are killed and called hung. \"vs best static\" divides the median wall "
        "time by that of the fastest static `-j` that finished every task in every run (%s). Most tasks at "
        "once: from safepool's `--joblog`. Peak memory: the cgroup's `memory.max_usage_in_bytes`.\n"
        % (BATCH_N, BATCH_SIZE_MIB, BATCH_LIMIT // GIB, BATCH_LIMIT // (BATCH_SIZE_MIB * MIB), BATCH_HANG,
           ("%s, %s, %.1f s" % (labels[best], safe(best[1]), med(best))) if best else "none did"))
    text.append(benchlib.table(["runner", "outcome (runs)", "tasks lost of %d" % BATCH_N, "wall s",
                                "vs best static", "most at once", "peak memory GiB", "OOM kills", "memory mode"],
                               rows))
    reading = []
    for user in ("nobody", "root"):
        recs = records.get(("gov", user))
        if not recs:
            continue
        lost = [r["lost"] for r in recs]
        part = "Governed, %s: tasks lost %s (target 0); median wall time %.1f s" % (
            safe(user), benchlib.summary(lost), med(("gov", user)))
        if best:
            ratio = med(("gov", user)) / med(best)
            part += ", %.2fx the best static `-j`'s (target: at most 1.3x with no task lost): %s" % (
                ratio, "met" if ratio <= 1.3 and max(lost) == 0 else "not met")
        reading.append(part + ".")
    text.append(" ".join(reading) + "\n")
    return "\n".join(text)


def plot(sb, records):
    plt = benchlib.pyplot()
    if plt is None or not records:
        return None
    picks = [k for k in (("gov", "nobody"), ("gov", "root"), ("j3", "nobody"), ("j4", "nobody"),
                         ("j16", "nobody"), ("parallel", "nobody")) if k in records]
    labels = {(k, u): l for k, l, u, _ in batch_runners(sb)}
    fig, axes = plt.subplots(1, len(picks), figsize=(3.6 * len(picks), 3.2), sharey=True, squeeze=False)
    for ax, k in zip(axes[0], picks):
        r = records[k][-1]
        ax.plot([t for t, _ in r["series"]], [u / GIB for _, u in r["series"]], lw=1.2)
        ax.axhline(BATCH_LIMIT / GIB, color="grey", ls="--", lw=0.8)
        ax.set_title("%s, %s\n%s, %.1f s, %d OOM kills" % (labels[k], safe(k[1]), r["outcome"], r["wall"],
                                                          r["oom_kills"]), fontsize=8)
        ax.set_xlabel("seconds")
    axes[0][0].set_ylabel("container memory (GiB)")
    fig.tight_layout()
    path = benchlib.save_plot(fig, "unprivileged")
    plt.close(fig)
    return path


def write(sb, seed, share, batch, runs):
    cmd = "bench/unprivileged/run" + ("" if runs == 5 and not QUICK else "  # RUNS=%d%s" % (
        runs, " QUICK=1" if QUICK else ""))
    text = ["## Unprivileged, in a container: safepool as nobody inside a memory cgroup\n"]
    text.append(
        "A container stood in for by a cgroup v1 memory cgroup that root makes and limits. Each runner starts "
        "inside a fresh one: safepool as nobody (`setpriv --reuid 65534 --regid 65534 --clear-groups`, which "
        "cannot make cgroups of its own), the same as root (with a cgroup per worker), and Python's pools "
        "(/usr/bin/python3) and GNU parallel as nobody. Binaries and scripts are copies in a 0755 temporary "
        "directory; every runner gets the same environment. %d repetition%s, each running every runner once, "
        "interleaved; median (min-max). Per-run records: bench/out/unprivileged/.\n" % (runs, "" if runs == 1 else "s"))
    text.append("```\n%s\n```\n" % cmd)
    said = {}
    for part in (seed, share, batch):
        for k, recs in part.items():
            if k[-1] == "nobody":
                for r in recs:
                    for n in r.get("notices") or []:
                        said[n] = said.get(n, 0) + 1
    if said:
        text.append("What safepool said on stderr as nobody, besides its summary (the cgroup's path left out): %s.\n"
                    % "; ".join("`%s` (%d runs)" % (n.replace("`", "'"), c)
                                for n, c in sorted(said.items(), key=lambda kv: -kv[1])))
    if seed:
        text.append(seed_section(sb, seed, runs))
    if share:
        text.append(share_section(sb, share, runs))
    if batch:
        text.append(batch_section(sb, batch, runs))
        img = None if ONLY else plot(sb, batch)
        if img:
            text.append("![Memory of the container over time in the hog batch (last run)](%s)\n" % img)
    if ONLY:
        # Some parts only: not a section to publish.
        path = os.path.join(OUT, "unprivileged.md")
        with open(path, "w") as f:
            f.write("\n".join(text))
        benchlib.log("unprivileged: ONLY=%s: wrote %s, not bench/results" % (",".join(PARTS), path))
        return
    benchlib.write_section("unprivileged", "\n".join(text))


def dump(records):
    return {" ".join(k): [{x: y for x, y in r.items() if x != "series"} for r in v] for k, v in records.items()}


def main():
    if os.geteuid() != 0:
        sys.exit("unprivileged: needs root (it makes the memory cgroups)")
    if shutil.which("setpriv") is None:
        sys.exit("unprivileged: needs setpriv (util-linux)")
    # SIGINT raises KeyboardInterrupt already; a signal its caller ignores
    # (nohup) stays ignored.
    for s in (signal.SIGTERM, signal.SIGHUP):
        if signal.getsignal(s) != signal.SIG_IGN:
            signal.signal(s, on_signal)
    runs = benchlib.runs()
    kills = KillWatch()
    owned = Owned(own_memcg(), kills)
    owned.sweep_leftovers()
    if os.path.isdir(OUT):
        shutil.rmtree(OUT)
    os.makedirs(OUT)
    seed, share, batch = {}, {}, {}
    try:
        sb = Sandbox(owned)
        for rep in range(runs):
            if "seed" in PARTS:
                seed_rep(owned, sb, rep, runs, seed)
            if "share" in PARTS:
                share_rep(owned, sb, rep, runs, share)
            if "batch" in PARTS:
                batch_rep(owned, sb, rep, runs, batch)
        with open(os.path.join(OUT, "records.json"), "w") as f:
            json.dump({"seed": dump(seed), "share": dump(share), "batch": dump(batch)}, f, indent=1)
        write(sb, seed, share, batch, runs)
    finally:
        for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(s, signal.SIG_IGN)
        owned.clean()
        kills.close()
        left = [d for d in owned.cgroups if os.path.isdir(d)]
        if left:
            benchlib.log("unprivileged: cgroups left behind:", " ".join(left))


if __name__ == "__main__":
    try:
        main()
    except (KeyboardInterrupt, Interrupted) as e:
        benchlib.log("unprivileged: interrupted (%s); everything it started is removed" % (e or "SIGINT"))
        sys.exit(130)
