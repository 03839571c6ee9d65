"""Streaming: a CSV file through a Python line transform.

The same input (bench/streaming/gencsv.py, deterministic) goes through
bench/streaming/transform.py in several ways: one process, GNU parallel --pipe,
safepool map -j 2, safepool map --pipe --block 10M -j 2 and (up to 200 MB)
safepool map -j 2 -k. For each it records the wall
time (throughput = input bytes / wall) and the peak RSS of the process the
user started (the supervisor; for the single process, the transform itself),
and checks that every output holds the same multiset of lines as the single
process's. Raw records go to bench/out/streaming/, the section to
bench/results/streaming.md, the plot to docs/img/streaming.svg.

Run it through bench/streaming/run. SIZE (bytes, with an optional K/M/G
suffix, powers of 1000) sets the input size: 1 GB by default, 10 MB with
QUICK=1.
"""
import hashlib
import json
import os
import shutil
import statistics
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.join(REPO, "bench", "lib"))
import benchlib  # noqa: E402

PY = "/usr/bin/python3"
SAFEPOOL = os.path.join(REPO, "bench", ".bin", "safepool")
OUT = os.path.join(REPO, "bench", "out", "streaming")
# Block sizes of GNU parallel --pipe: its default, and larger ones, which
# safepool map --pipe runs too. A block of a Python transform pays a start
# of the interpreter (about 15 ms of CPU here): 103 of them at 10M in 1 GB,
# 33 at 32M, 17 at 64M (the last block of each a short one).
BLOCKS = ("1M", "10M", "32M", "64M")
PIPE_BLOCKS = BLOCKS[1:]
# GNU parallel's default block, 1M, runs about 6 MB/s here: almost three
# minutes a run at 1 GB. It is left out above this size, and so is
# safepool map -k (the same engine, with ordered output), so that RUNS=5 of
# the 1 GB input fit in about a quarter of an hour.
SMALL_BLOCK_UP_TO = 200 * 10**6
DEFAULT_SIZE = "1G"
# Every way runs without PYTHONUNBUFFERED, whatever the caller's shell has:
# set, it makes the transform write each row alone (a write(2) per row), on
# a pipe a wake-up of its reader for each, which the single process, writing
# to a file, hardly pays. The line workers flush after each row in any case
# (--flush), as the line protocol needs.
ENV = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
QUICK_SIZE = "10M"


def parse_size(s):
    mult = {"K": 10**3, "M": 10**6, "G": 10**9}
    s = s.strip().upper()
    if s and s[-1] in mult:
        return int(float(s[:-1]) * mult[s[-1]])
    return int(s)


def listing(items):
    """Names items in a sentence: "a", "a and b", "a, b and c"."""
    return " and ".join(filter(None, [", ".join(items[:-1]), items[-1]]))


def blocks(size):
    """The block sizes of GNU parallel --pipe to run at an input of size bytes."""
    return BLOCKS if size <= SMALL_BLOCK_UP_TO else BLOCKS[1:]


def variants(size):
    """The ways to run the transform: (key, label, argv)."""
    t = os.path.join(HERE, "transform.py")
    worker = "%s %s --flush" % (PY, t)
    return [
        ("single", "one process", [PY, t]),
    ] + [
        ("parallel_" + b, "parallel --pipe -j 2 --block " + b,
         ["parallel", "--pipe", "-j", "2", "--block", b, PY, t]) for b in blocks(size)
    ] + [
        ("map", "safepool map -j 2", [SAFEPOOL, "map", "-j", "2", "-q", "--worker", worker]),
    ] + [
        ("map_pipe" + ("" if b == PIPE_BLOCKS[0] else "_" + b), "safepool map --pipe --block %s -j 2" % b,
         [SAFEPOOL, "map", "--pipe", "--block", b, "-j", "2", "-q", "--", PY, t]) for b in PIPE_BLOCKS
    ] + ([
        ("map_k", "safepool map -j 2 -k", [SAFEPOOL, "map", "-j", "2", "-k", "-q", "--worker", worker]),
    ] if size <= SMALL_BLOCK_UP_TO else []) + [
        # Not a tool: the ceiling of any two-way split on this machine.
        # The input is cut in two halves of whole rows before the run, and
        # two transforms run at once, each on its half into a file of its
        # own; the two outputs are joined after the time is taken.
        (HALVES, "ceiling: two transforms at once on the two halves",
         ["sh", "-c", '"$0" "$1" < "$2" > "$3" & "$0" "$1" < "$4" > "$5"; wait',
          PY, t, "{half0}", "{out0}", "{half1}", "{out1}"]),
    ]


# HALVES is the key of the ceiling's way (variants), whose argv names the
# two halves of the input and their outputs by the placeholders filled in
# main (split_halves).
HALVES = "halves"


def split_halves(src, tmp):
    """Cuts src in two files of whole lines, the first ending at the first
    line end at or after the middle, and returns the placeholders of the
    ceiling's argv: the halves' paths and their outputs'."""
    size = os.path.getsize(src)
    paths = {k: os.path.join(tmp, k) for k in ("half0", "half1", "out0", "out1")}
    with open(src, "rb") as f, open(paths["half0"], "wb") as a, open(paths["half1"], "wb") as b:
        f.seek(size // 2)
        f.readline()
        cut = f.tell()
        f.seek(0)
        left = cut
        while left > 0:  # a MiB at a time, as the second half
            chunk = f.read(min(left, 1 << 20))
            if not chunk:
                raise RuntimeError("%s ended before byte %d" % (src, cut))
            a.write(chunk)
            left -= len(chunk)
        shutil.copyfileobj(f, b, 1 << 20)
    return paths


def join_halves(paths, dst):
    """Writes the ceiling's two outputs, one after the other, to dst."""
    with open(dst, "wb") as out:
        for k in ("out0", "out1"):
            with open(paths[k], "rb") as f:
                shutil.copyfileobj(f, out, 1 << 20)
            os.remove(paths[k])


def multiset(path):
    """Returns (lines, checksum) of a file: the checksum ignores line order."""
    n, total = 0, 0
    with open(path, "rb") as f:
        for line in f:
            n += 1
            total = (total + int.from_bytes(hashlib.blake2b(line, digest_size=8).digest(), "little")) % (1 << 64)
    return n, "%016x" % total


def main():
    size = parse_size(os.environ.get("SIZE", QUICK_SIZE if benchlib.quick() else DEFAULT_SIZE))
    runs = benchlib.runs()
    os.makedirs(OUT, exist_ok=True)
    vs = variants(size)
    records = {k: [] for k, _, _ in vs}
    with tempfile.TemporaryDirectory(prefix="safepool-streaming-") as tmp:
        src = os.path.join(tmp, "orders.csv")
        benchlib.log("streaming: generating %d bytes of CSV" % size)
        with open(src, "wb") as f:
            benchlib.sh("%s bench/streaming/gencsv.py %d" % (PY, size), stdout=f)
        size = os.path.getsize(src)
        lines = sum(1 for _ in open(src, "rb"))
        halves = split_halves(src, tmp)
        dst = os.path.join(tmp, "out.csv")
        want = None
        for rep in range(runs):
            for key, label, argv in vs:
                benchlib.log("streaming: run %d/%d: %s" % (rep + 1, runs, label))
                err = os.path.join(OUT, "%s.%d.err" % (key, rep))
                if key == HALVES:
                    argv = [a.format(**halves) for a in argv]
                r = benchlib.measure(argv, stdin=src, stdout=dst, stderr=err, env=ENV)
                if key == HALVES:
                    join_halves(halves, dst)
                r["mb_s"] = size / 1e6 / r["wall"]
                r["lines"], r["checksum"] = multiset(dst)
                if key == "single" and want is None:
                    want = (r["lines"], r["checksum"])
                r["same"] = (r["lines"], r["checksum"]) == want
                if r["status"] != 0 or not r["same"]:
                    benchlib.log("streaming: %s: exit %d, %d lines, same output: %s (see %s)"
                                 % (label, r["status"], r["lines"], r["same"], err))
                records[key].append(r)
                os.remove(dst)
    with open(os.path.join(OUT, "records.json"), "w") as f:
        json.dump({"size": size, "lines": lines, "records": records}, f, indent=1)
    write(vs, records, size, lines, runs, want)


def write(vs, records, size, lines, runs, want):
    rows, plot = [], []
    single = statistics.median(r["mb_s"] for r in records["single"])
    for key, label, argv in vs:
        recs = records[key]
        ok = all(r["status"] == 0 and r["same"] for r in recs)
        rows.append([label,
                     benchlib.summary([r["mb_s"] for r in recs], "{:.1f}"),
                     "%.2fx" % (statistics.median(r["mb_s"] for r in recs) / single),
                     benchlib.summary([r["lines"] / r["wall"] / 1000 for r in recs], "{:.0f}"),
                     benchlib.summary([r["wall"] for r in recs], "{:.1f}"),
                     benchlib.summary([r["peak_rss_kb"] / 1024 for r in recs], "{:.1f}"),
                     benchlib.summary([r["own_cpu_s"] for r in recs], "{:.2f}"),
                     benchlib.summary([r["cpu_s"] for r in recs], "{:.2f}"),
                     "yes" if ok else "NO (exit %s, lines %s)" % (
                         sorted({r["status"] for r in recs}), sorted({r["lines"] for r in recs}))])
        plot.append((label, statistics.median(r["mb_s"] for r in recs),
                     statistics.median(r["peak_rss_kb"] / 1024 for r in recs)))
    img = make_plot(plot, size)
    gb = "%.0f GB" % (size / 1e9) if size >= 0.995e9 else "%.0f MB" % (size / 1e6)
    blockNote = ("at {all}; {b} is its default".format(all=listing(blocks(size)), b=BLOCKS[0])
                 if BLOCKS[0] in blocks(size) else
                 "at {all}; its default block, {b}, runs about 6 MB/s here and is left out above {s} MB "
                 "to keep the run short".format(all=listing(blocks(size)), b=BLOCKS[0],
                                                s=SMALL_BLOCK_UP_TO // 10**6))
    text = """## Streaming: {gb} of CSV through a Python line transform

What ran: {mb:.0f} MB ({lines} rows of about {row:.0f} bytes, generated by
`bench/streaming/gencsv.py`, deterministic) through `bench/streaming/transform.py`,
a csv-module transform writing one output row per input row, in these ways: one
process (`python3 transform.py < in > out`); `parallel --pipe -j 2 --block
SIZE` (a new transform process per block; {blockNote}); `safepool map -j 2`{mapk}
with two persistent line workers
(`--worker '/usr/bin/python3 transform.py --flush'`, flushing after each row,
as the line protocol requires) and safepool map's default `--pipeline 32`
(up to 32 lines in flight per worker); and `safepool map --pipe --block SIZE -j 2`
at {pipeBlocks} (block mode: a new transform process per block of whole rows, as
GNU parallel --pipe, the block on its stdin). The last row, the ceiling, is no tool: the
input cut in two halves of whole rows before the run, and two transforms
run at once, each on its half into a file of its own (the outputs are
joined after the time is taken). Throughput is input MB (10^6 bytes) / wall
time, and "x one process" the ratio of its median to the single process's; peak RSS is VmHWM of the process started (the supervisor: safepool, or
GNU parallel's perl; for the single process, the transform itself), sampled
every 20 ms. "Own CPU" is that process's own CPU time (its threads',
read from /proc once it has ended, before it is reaped: for the single
process, the transform; for the others, the supervisor alone); "CPU" adds
that of every process it reaped (the transforms, GNU parallel's helpers),
from `wait4`: on two CPUs the wall time is at least half of it. Every output is checked to hold the same lines as the single
process's (line count and an order-independent checksum: {want}). {runs} run{s},
interleaved; median (min-max).

Command: `{cmd}` (`QUICK=1` runs 10 MB three times, `SIZE=50M` another size).
""".format(mapk=" and `safepool map -j 2 -k`" if size <= SMALL_BLOCK_UP_TO else
           " (`-k`, ordered output, is left out above %d MB to keep the run short)" % (SMALL_BLOCK_UP_TO // 10**6),
           pipeBlocks=listing(PIPE_BLOCKS), gb=gb, mb=size / 1e6, lines=lines, row=size / max(lines, 1), blockNote=blockNote,
           want="%d lines, %s" % want if want else "-", runs=runs, s="" if runs == 1 else "s",
           cmd=command(size, runs))
    text += """
| way | MB/s | x one process | k rows/s | wall s | peak RSS MiB | own CPU s | CPU s | same output |
|---|---|---|---|---|---|---|---|---|
"""
    text += "\n".join("| " + " | ".join(str(c) for c in r) + " |" for r in rows) + "\n"
    if img:
        text += "\n![throughput and supervisor peak RSS](%s)\n" % img
    notes = os.path.join(HERE, "notes.md")
    if os.path.exists(notes):
        with open(notes) as f:
            text += "\n" + f.read()
    benchlib.write_section("streaming", text)


def command(size, runs):
    """The command line that reproduces this run."""
    env = []
    if benchlib.quick():
        env.append("QUICK=1")
    if "SIZE" in os.environ:
        env.append("SIZE=" + os.environ["SIZE"])
    if "RUNS" in os.environ:
        env.append("RUNS=%d" % runs)
    return " ".join(env + ["bench/streaming/run"])


def make_plot(plot, size):
    plt = benchlib.pyplot()
    if plt is None:
        return None
    labels = [p[0] for p in plot][::-1]
    y = list(range(len(plot)))
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 0.5 * len(plot) + 1.5), sharey=True)
    ax1.barh(y, [p[1] for p in plot][::-1], color="#3b75af")
    ax1.set_yticks(y)
    ax1.set_yticklabels(labels)
    ax1.set_xlabel("throughput, MB/s (median)")
    ax2.barh(y, [p[2] for p in plot][::-1], color="#d08c1a")
    ax2.set_xlabel("peak RSS of the process started, MiB (median)")
    fig.suptitle("%.0f MB of CSV through a Python line transform, 2 workers" % (size / 1e6))
    path = benchlib.save_plot(fig, "streaming")
    plt.close(fig)
    return path


if __name__ == "__main__":
    main()
