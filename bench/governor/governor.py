"""Memory governor benchmark: 16 tasks that each grow to 1.5 GiB over about
2 s, inside a 6 GiB memory cgroup around the whole run (as in a container).

Compared in one run, interleaved in each repetition:
  safepool with the memory governor (-j 16), safepool -j 16 without it,
  multiprocessing.Pool(16), GNU parallel -j 16 --memfree, and safepool with
  static -j 2, 3 and 4 without the governor, to find the best static -j.

For each: outcome (completed / hung / lost tasks), wall time, and OOM kills,
read from the run cgroup's memory.oom_control (kills outside any worker
cgroup) and from safepool's per-worker cgroups (kills inside its workers).
Writes bench/results/governor.md and docs/img/governor.svg (memory of the run
cgroup over time, OOM kills marked).

Needs root and a writable cgroup v1 memory hierarchy.
"""
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "lib"))
import benchlib  # noqa: E402

REPO = benchlib.REPO
SAFEPOOL = os.path.join(benchlib.BIN, "safepool")
PY = "/usr/bin/python3"
TASK = os.path.join(HERE, "task.py")
MP = os.path.join(HERE, "mp.py")
GIB = 1 << 30
MIB = 1 << 20

QUICK = benchlib.quick()
N = 16
SIZE_MIB = 512 if QUICK else 1536
LIMIT = (2 if QUICK else 6) * GIB
TIMEOUT = 60
# ONLY="governor,-j 4" runs only the runners whose names contain one of the
# comma-separated words, prints their figures and writes no results.
ONLY = [w for w in os.environ.get("ONLY", "").split(",") if w]
SAMPLE = 0.1


def own_memcg():
    with open("/proc/self/cgroup") as f:
        for line in f:
            _, ctrls, path = line.rstrip("\n").split(":", 2)
            if "memory" in ctrls.split(","):
                return "/sys/fs/cgroup/memory" + path
    sys.exit("governor: no cgroup v1 memory hierarchy (needs root and cgroup v1 memory)")


def read_int(path):
    with open(path) as f:
        return int(f.read().strip())


def oom_kills(d):
    try:
        with open(os.path.join(d, "memory.oom_control")) as f:
            for line in f:
                if line.startswith("oom_kill "):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def subdirs(d):
    out = []
    for root, dirs, _ in os.walk(d):
        for x in dirs:
            out.append(os.path.join(root, x))
    return out


def procs(d):
    pids = []
    for x in [d] + subdirs(d):
        try:
            with open(os.path.join(x, "cgroup.procs")) as f:
                pids += [int(p) for p in f.read().split()]
        except OSError:
            pass
    return pids


def kill_all(d):
    for _ in range(50):
        pids = procs(d)
        if not pids:
            return
        for p in pids:
            try:
                os.kill(p, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.1)


def remove_cgroup(d):
    kill_all(d)
    for x in sorted(subdirs(d), key=len, reverse=True) + [d]:
        for _ in range(50):
            try:
                os.rmdir(x)
                break
            except FileNotFoundError:
                break
            except OSError:
                time.sleep(0.1)


def make_cgroup(parent, name):
    d = os.path.join(parent, name)
    if os.path.isdir(d):
        remove_cgroup(d)
    os.mkdir(d)
    with open(os.path.join(d, "memory.limit_in_bytes"), "w") as f:
        f.write(str(LIMIT))
    memsw = os.path.join(d, "memory.memsw.limit_in_bytes")
    if os.path.exists(memsw):
        with open(memsw, "w") as f:
            f.write(str(LIMIT))
    return d


def scenarios(tmp):
    items = " ".join(str(i) for i in range(1, N + 1))
    sp = lambda name, *flags: (name, [SAFEPOOL, "run", "-q", "--retries", "3", "--json=%s/%s.json" % (tmp, name),
                                      "--joblog=%s/%s.log" % (tmp, name)] + list(flags) +
                               ["--", PY, TASK, "{}", str(SIZE_MIB), ":::"] + items.split())
    return [
        sp("safepool (governor)", "-j", "16"),
        sp("safepool -j 16, no governor", "-j", "16", "--no-governor"),
        ("multiprocessing.Pool(16)", [PY, MP, str(N), str(SIZE_MIB)]),
        ("GNU parallel -j 16 --memfree", ["parallel", "-j", "16", "--memfree", "%dM" % (SIZE_MIB + 64), PY, TASK, "{}", str(SIZE_MIB), ":::"] + items.split()),
        sp("safepool -j 2 (static)", "-j", "2", "--no-governor"),
        sp("safepool -j 3 (static)", "-j", "3", "--no-governor"),
        sp("safepool -j 4 (static)", "-j", "4", "--no-governor"),
    ]


def run_one(parent, name, argv, tmp):
    cg = make_cgroup(parent, "bench-governor")
    series, kills = [], []
    last = {}
    stop = threading.Event()
    t0 = time.monotonic()

    def sampler():
        while not stop.is_set():
            now = time.monotonic() - t0
            try:
                usage = read_int(os.path.join(cg, "memory.usage_in_bytes"))
            except OSError:
                usage = None
            if usage is not None:
                series.append((now, usage))
            for d in [cg] + subdirs(cg):
                k = oom_kills(d)
                if k > last.get(d, 0):
                    for _ in range(k - last.get(d, 0)):
                        kills.append((now, usage or 0, "outside" if d == cg else "worker"))
                    last[d] = k
            stop.wait(SAMPLE)

    th = threading.Thread(target=sampler)
    th.start()
    out = open(os.path.join(tmp, "out.txt"), "w+")
    err = open(os.path.join(tmp, "err.txt"), "w+")
    p = subprocess.Popen(["sh", "-c", 'echo $$ > "$0/cgroup.procs" && exec "$@"', cg] + argv,
                         stdout=out, stderr=err, start_new_session=True, cwd=REPO)
    hung = False
    try:
        p.wait(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        hung = True
        kill_all(cg)
        p.wait()
    wall = time.monotonic() - t0
    kill_all(cg)  # orphans (multiprocessing's workers)
    time.sleep(SAMPLE * 2)
    stop.set()
    th.join()
    outside = oom_kills(cg)
    worker_kills = sum(1 for k in kills if k[2] == "worker")
    out.seek(0)
    text = out.read()
    err.seek(0)
    errtext = err.read()
    out.close()
    err.close()
    done = len(re.findall(r"^task \d+ done", text, re.M))
    budget = None
    js = os.path.join(tmp, name + ".json")
    if os.path.exists(js):
        with open(js) as f:
            s = json.load(f)
        os.remove(js)
        done = s["tasks"]["done"]
        if s.get("memory"):
            budget = s["memory"]["budget_bytes"]
        preempted = s.get("preempted", 0)
    most, preempted = None, None
    log = os.path.join(tmp, name + ".log")
    if os.path.exists(log):
        most = most_at_once(log)
        os.remove(log)
    remove_cgroup(cg)
    outcome = "completed" if done == N and not hung else ("hung" if hung else "lost %d" % (N - done))
    benchlib.log("  %-32s %-10s done %2d/%d  wall %5.1fs  oom kills: %d in workers, %d outside  status %s" %
                 (name, outcome, done, N, wall, worker_kills, outside, p.returncode))
    if p.returncode not in (0, None) and not hung and done == N:
        benchlib.log("    stderr: " + errtext.strip()[-300:])
    return {"wall": wall, "outcome": outcome, "done": done, "hung": hung, "worker_kills": worker_kills,
            "outside": outside, "series": series, "kills": kills, "budget": budget, "most": most,
            "preempted": preempted, "peak": max((u for _, u in series), default=0)}


def most_at_once(joblog):
    """The most attempts that ran at once, from safepool's --joblog."""
    ev = []
    with open(joblog) as f:
        for row in list(f)[1:]:
            cols = row.rstrip("\n").split("\t")
            start, runtime = float(cols[4]), float(cols[5])
            # The joblog rounds to milliseconds: an attempt that starts as
            # another ends in the same slot must not count as overlapping.
            ev += [(start, 1), (start + runtime - 0.005, -1)]
    n = most = 0
    for _, d in sorted(ev):
        n += d
        most = max(most, n)
    return most


def plot(last, best_static):
    plt = benchlib.pyplot()
    if plt is None:
        return None
    names = ["safepool (governor)", best_static, "safepool -j 16, no governor",
             "multiprocessing.Pool(16)", "GNU parallel -j 16 --memfree"]
    fig, axes = plt.subplots(1, len(names), figsize=(4 * len(names), 3.4), sharey=True)
    for ax, name in zip(axes, names):
        r = last[name]
        xs = [t for t, _ in r["series"]]
        ys = [u / GIB for _, u in r["series"]]
        ax.plot(xs, ys, lw=1.2)
        ax.axhline(LIMIT / GIB, color="grey", ls="--", lw=0.8)
        ax.text(0, LIMIT / GIB * 1.01, "cgroup limit", fontsize=7, color="grey")
        kx = [k[0] for k in r["kills"]]
        ky = [k[1] / GIB for k in r["kills"]]
        if kx:
            ax.plot(kx, ky, "rx", ms=7, mew=1.5, label="OOM kill (%d)" % len(kx))
            ax.legend(fontsize=7, loc="lower right")
        ax.set_title("%s\n%s, %.1fs" % (name, r["outcome"], r["wall"]), fontsize=8)
        ax.set_xlabel("seconds")
    axes[0].set_ylabel("run cgroup memory (GiB)")
    fig.tight_layout()
    return benchlib.save_plot(fig, "governor")


def main():
    if os.geteuid() != 0:
        sys.exit("governor: needs root (memory cgroups)")
    parent = own_memcg()
    runs = benchlib.runs()
    tmp = tempfile.mkdtemp(prefix="bench-governor-")
    results = {}
    last = {}
    try:
        for rep in range(runs):
            benchlib.log("governor: repetition %d of %d" % (rep + 1, runs))
            for name, argv in scenarios(tmp):
                if ONLY and not any(w in name for w in ONLY):
                    continue
                r = run_one(parent, name, argv, tmp)
                results.setdefault(name, []).append(r)
                last[name] = r
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    med = lambda name: benchlib.percentile([r["wall"] for r in results[name]], 50)
    if ONLY:
        for name, rs in results.items():
            print("%-32s %s  wall %s  done %s  most %s  kills %s" % (name, [r["outcome"] for r in rs],
                  benchlib.summary([r["wall"] for r in rs], "{:.1f}"), benchlib.summary([r["done"] for r in rs]),
                  [r["most"] for r in rs], benchlib.summary([r["worker_kills"] + r["outside"] for r in rs])))
        return
    statics = [n for n in results if "(static)" in n and all(r["outcome"] == "completed" for r in results[n])]
    best_static = min(statics, key=med) if statics else "safepool -j 3 (static)"
    gov = results["safepool (governor)"]
    ratio = med("safepool (governor)") / med(best_static)
    rows = []
    for name, rs in results.items():
        mosts = [r["most"] for r in rs if r["most"] is not None]
        outcomes = {}
        for r in rs:
            outcomes[r["outcome"]] = outcomes.get(r["outcome"], 0) + 1
        rows.append([name, ", ".join("%s ×%d" % kv for kv in sorted(outcomes.items())),
                     benchlib.summary([r["done"] for r in rs]),
                     benchlib.summary([r["wall"] for r in rs], "{:.1f}"),
                     benchlib.summary(mosts) if mosts else "-",
                     benchlib.summary([r["peak"] / GIB for r in rs], "{:.2f}"),
                     benchlib.summary([r["worker_kills"] + r["outside"] for r in rs]),
                     benchlib.summary([r["outside"] for r in rs])])
    img = plot(last, best_static)
    budgets = sorted({r["budget"] for r in gov if r["budget"]})
    cmd = "bench/governor/run" + ("" if runs == 5 and not QUICK else "  # RUNS=%d%s" % (runs, " QUICK=1" if QUICK else ""))
    text = []
    text.append("## Memory governor: %d tasks of %s under a %d GiB cgroup\n" % (N, "%.1f GiB" % (SIZE_MIB / 1024.0), LIMIT // GIB))
    text.append("Each task grows to %d MiB in 15 steps over about 2 s, touching every page (`bench/governor/task.py`). "
                "The whole run is inside a cgroup v1 memory cgroup limited to %d GiB, as in a container; each runner "
                "starts inside it with nothing else. Every runner gets %d s before it is called hung and killed. "
                "safepool runs one-shot workers with `--retries 3`; the governed run uses `-j 16` and no memory flag, "
                "so it must find the budget itself (the cgroup's limit, less a tenth: it planned with %s). "
                "OOM kills are read from the run cgroup's `memory.oom_control` (kills outside any worker cgroup) and "
                "from each safepool worker's cgroup while it exists. %d repetitions, interleaved.\n"
                % (SIZE_MIB, LIMIT // GIB, TIMEOUT, ", ".join(sorted({"%.2f GiB" % (b / GIB) for b in budgets})) or "?", runs))
    text.append("```\n%s\n```\n" % cmd)
    text.append(benchlib.table(["Runner", "Outcome (runs)", "Tasks done of %d" % N, "Wall s, median (min-max)",
                                "Most tasks at once", "Peak memory of the run GiB", "OOM kills",
                                "OOM kills outside workers"], rows))
    ok = all(r["outcome"] == "completed" and r["outside"] == 0 for r in gov)
    text.append("The governed run %s all %d tasks in every repetition with %s OOM kills outside its workers, in %.2f× "
                "the median wall time of the best static `-j` (%s, %.1f s); the requirement is at most 1.15×.\n"
                % ("finished" if ok else "did NOT finish", N,
                   "zero" if all(r["outside"] == 0 for r in gov) else "some",
                   ratio, best_static, med(best_static)))
    gmost = [r["most"] for r in gov if r["most"] is not None]
    size = "%.1f GiB" % (SIZE_MIB / 1024.0)
    text.append("Reading: without the governor, `-j 16` asks for %d GiB in a %d GiB cgroup, so the kernel OOM-kills "
                "workers until the retries run out. multiprocessing.Pool loses a worker to the OOM killer and then waits "
                "for its result forever. GNU parallel's `--memfree` looks at the host's free memory, not the cgroup's "
                "limit, so it starts every job. The governor found the budget by itself (the cgroup's limit less a "
                "tenth), admitted the first tasks half a second apart while it watched them grow, and then planned "
                "from what it had measured: peaks of about %s, of which 3 fit side by side, and how each task "
                "grows over its life, so that a new task grows while older ones end (docs/memory.md, Admission). It "
                "ran up to %s tasks at once (median of each run's most), the run's memory peaked at %s GiB of %d, "
                "and it preempted %s attempts in all. A hand-picked `-j 4` starts four %s tasks at once in "
                "%d GiB, with no reserve and no room for a larger task. Filling memory costs this 2-core machine "
                "1.5-3 s of CPU per task, so with more than 2 tasks at once the run is also bound by CPU; the first "
                "wave of every runner is slower than the later ones (the kernel has to find the memory the first "
                "time).\n" % (N * SIZE_MIB // 1024, LIMIT // GIB, size, benchlib.summary(gmost) if gmost else "?",
                              benchlib.summary([r["peak"] / GIB for r in gov], "{:.2f}"), LIMIT // GIB,
                              sum(r["preempted"] or 0 for r in gov), size, LIMIT // GIB))
    if img:
        text.append("![Memory of the run cgroup over time; OOM kills marked](%s)\n" % img)
    benchlib.write_section("governor", "\n".join(text))


if __name__ == "__main__":
    main()
