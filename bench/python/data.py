"""Driver of the "pydata" scenario: big payloads and
shared data; see bench/pydata/run.

Big payloads: bench/python/payload.py for safepool (this tree), safepool at
OLD (the commit before big buffers went out of band, its package and binary
from `git archive`), multiprocessing.Pool (fork) and ProcessPoolExecutor,
interleaved in a rotated order in each of RUNS runs. Sharing:
bench/python/sharing.py, safepool and fork at SHARE_MIB (default 2048),
pickling at PICKLE_MIB (default 256: eight pickled copies of 2 GiB do not
fit beside the other work of a 24 GiB machine), once per run.
Writes bench/results/pydata.md.
"""
import json
import os
import statistics
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "lib"))
import benchlib  # noqa: E402

PY = "/usr/bin/python3"
OLD = os.environ.get("OLD", "d53ea27")
SHARE_MIB = int(os.environ.get("SHARE_MIB", "512" if benchlib.quick() else "2048"))
PICKLE_MIB = int(os.environ.get("PICKLE_MIB", "256"))

# PARTS=payload or PARTS=sharing runs one part (development); its table
# alone goes to bench/out/pydata.md, not bench/results.
PARTS = os.environ.get("PARTS", "payload,sharing").split(",")
SHARING = [("safepool", SHARE_MIB), ("mp_fork", SHARE_MIB), ("safepool", PICKLE_MIB),
           ("safepool_copy", PICKLE_MIB), ("mp_fork", PICKLE_MIB), ("mp_pickle", PICKLE_MIB)]

PAYLOAD = [  # (peer, label)
    ("safepool", "safepool.Pool.imap"),
    ("safepool_old", "safepool.Pool.imap at %s (before)" % OLD),
    ("mp_fork", "multiprocessing.Pool.imap (fork)"),
    ("ppe", "ProcessPoolExecutor.map"),
]


def load():
    with open("/proc/loadavg") as f:
        return f.read().split()[0]


def old_tree():
    """OLD's tree in a temporary directory, its binary built."""
    d = tempfile.mkdtemp(prefix="safepool-old-")
    benchlib.sh("git archive %s | tar -x -C %s" % (OLD, d))
    subprocess.run(["go", "build", "-o", os.path.join(d, "python/safepool/_bin/safepool"), "./cmd/safepool"],
                   cwd=d, check=True, env=dict(os.environ, CGO_ENABLED="0"))
    return d


def run_json(argv, env):
    out = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=900, cwd=benchlib.REPO)
    if out.returncode != 0:
        raise RuntimeError("%s failed: %s" % (" ".join(argv), out.stderr[-2000:]))
    return json.loads(out.stdout.strip().splitlines()[-1])


def main():
    runs = benchlib.runs()
    load0 = load()
    old = old_tree() if "payload" in PARTS else ""
    new_env = dict(os.environ, SAFEPOOL_BIN=os.path.join(benchlib.BIN, "safepool-py"))
    old_env = dict(os.environ, SAFEPOOL_BIN=os.path.join(old, "python/safepool/_bin/safepool"))
    pay = {(p, r): [] for p, _ in PAYLOAD for r in ("small", "array")}
    share = {}
    try:
        for i in range(runs):
            order = PAYLOAD[i % len(PAYLOAD):] + PAYLOAD[:i % len(PAYLOAD)]
            for result in ("small", "array") if "payload" in PARTS else ():
                for peer, _ in order:
                    if peer == "safepool_old":
                        argv, env = [PY, "bench/python/payload.py", "safepool", result, os.path.join(old, "python")], old_env
                    else:
                        argv, env = [PY, "bench/python/payload.py", peer, result], new_env
                    r = run_json(argv, env)
                    benchlib.log("run", i + 1, peer, result, "%.0f MB/s" % r["mb_per_s"])
                    pay[(peer, result)].append(r["mb_per_s"])
            for peer, mib in SHARING if "sharing" in PARTS else ():
                r = run_json([PY, "bench/python/sharing.py", peer, str(mib)], new_env)
                benchlib.log("run", i + 1, "share", peer, mib, r)
                share.setdefault((peer, mib), []).append(r)
    finally:
        if old:
            subprocess.run(["rm", "-rf", old])
    load1 = load()

    med = {k: statistics.median(v) if v else float("nan") for k, v in pay.items()}
    rows = []
    for peer, label in PAYLOAD:
        row = [label]
        for result in ("small", "array"):
            row.append(benchlib.summary(pay[(peer, result)]))
            row.append("%.2fx / %.2fx" % (med[(peer, result)] / med[("mp_fork", result)],
                                          med[(peer, result)] / med[("ppe", result)]))
        rows.append(row)
    srows = []
    for (peer, mib), rs in share.items():
        label = {"safepool": "safepool.share, read in the initializer",
                 "safepool_copy": "safepool.Pool, the array in initargs (pickled)",
                 "mp_fork": "multiprocessing.Pool (fork), a global array",
                 "mp_pickle": "multiprocessing.Pool (spawn), the array in initargs (pickled)"}[peer]
        pool = [r["pool_mib"] for r in rs]
        client = [r["client_mib"] for r in rs]
        total = [r["total_mib"] for r in rs]
        srows.append([label, "%d MiB" % mib, benchlib.summary(pool), "%.2fx" % (statistics.median(pool) / mib),
                      benchlib.summary(client), benchlib.summary(total), "%.2fx" % (statistics.median(total) / mib)])
    text = """## Python client: big payloads and shared data

Big payloads: 64 numpy arrays of 8 MB (float64) through `imap` on 2
workers, on a warm pool (started and given one small task before timing);
the task returns a small result (`float(a[::4096].sum())`) or the array
itself. MB/s of arguments (10^6 bytes), {runs} runs, peers interleaved in a
rotated order in each run; median (min-max). "before" is safepool at
{old}, before big buffers went out of band, every payload copied client →
supervisor → worker and back through pipes. The ratios are of medians, to
multiprocessing.Pool (fork) / to ProcessPoolExecutor (fork).

| pool | small result MB/s | ratio | array back MB/s | ratio |
|---|---|---|---|---|
{rows}

Shared data: 8 workers each read all of a float64 array (its sum) in the
pool's initializer and keep it; then the proportional set size (PSS,
`/proc/PID/smaps_rollup`) of the pool's processes (workers, and for
safepool its supervisor and the supervisor's helper process) and of the
client is summed. safepool's client shares the array and deletes its own
copy; the fork peer's client keeps the array its workers inherited.
Pickling is measured at {pmib} MiB only: eight pickled copies of
{smib} MiB (plus the pickles in flight) do not fit beside the other work of
this 24 GiB machine; its cost grows with the size (a copy per worker).
Median (min-max) of {runs} runs; MiB.

| pool | array | PSS of pool | pool / array | PSS of client | total | total / array |
|---|---|---|---|---|---|---|
{srows}

Commands: `RUNS={runs} bench/pydata/run` (measurements: `bench/python/payload.py
PEER small|array [PYTHON_DIR]`, `bench/python/sharing.py PEER MIB`). Machine:
{machine}; its 1-minute load average was {load0} when the run began and
{load1} when it ended (2 cores: anything above 0 is other work competing).
""".format(runs=runs, old=OLD, pmib=PICKLE_MIB, smib=SHARE_MIB, machine=benchlib.machine(),
           load0=load0, load1=load1,
           rows="\n".join("| " + " | ".join(r) + " |" for r in rows),
           srows="\n".join("| " + " | ".join(r) + " |" for r in srows))
    if PARTS == ["payload", "sharing"]:
        benchlib.write_section("pydata", text)
    else:
        os.makedirs(os.path.join(benchlib.REPO, "bench", "out"), exist_ok=True)
        with open(os.path.join(benchlib.REPO, "bench", "out", "pydata.md"), "w") as f:
            f.write(text)
    print(text)


if __name__ == "__main__":
    main()
