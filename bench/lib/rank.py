#!/usr/bin/env python3
"""The ordering check of safepool's benchmarks (standard library only).

    bench/lib/rank.py check NAME...

For each scenario NAME, derives the ranking of tools from the tables of
bench/results/NAME.md, writes it to bench/results/NAME.rank (JSON), compares
it with the ranking of the previous results and writes the verdict to
bench/results/NAME.order (one markdown paragraph, which bench/run puts under
the section in docs/benchmarks.md). It prints the verdict too, and never
fails because an ordering changed.

The ranking of a table: its rows are the tools (named by the first column,
and the start of the second where the first repeats), ordered by the table's first metric
column: a rate ("/s" in the header, higher is better) or a time or size
("ms", "s", "MiB", "RSS", lower is better); columns starting with "vs" or
"max" are not metrics. A cell's value is its leading number (a median), and
"(min-max)" after it is its range.

The previous results are the ones in git: the newest committed version of
bench/results/NAME.md (HEAD's, when the file differs from it) that is not
the current text and was measured apart from it (its NAME.stamp differs), so
that notes edited after a run do not make a run its own previous one. Tools
present in only one of the two are named, not compared.
"""

import json
import os
import re
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
RESULTS = os.path.join(REPO, "bench", "results")

_PIPE = re.compile(r"(?<!\\)\|")
_NUM = re.compile(r"\s*[>~<]?\s*(-?\d+(?:\.\d+)?)")
_RANGE = re.compile(r"\((-?\d+(?:\.\d+)?)-(-?\d+(?:\.\d+)?)\)")


def _cells(line):
    return [c.strip() for c in _PIPE.split(line.strip())[1:-1]]


def tables(md):
    """Returns the markdown tables of md as lists of rows (header first)."""
    out, cur = [], None
    for line in md.splitlines():
        if line.lstrip().startswith("|"):
            cells = _cells(line)
            if cur is None:
                cur = [cells]
            elif all(set(c) <= set("-: ") for c in cells):
                continue
            else:
                cur.append(cells)
        elif cur is not None:
            out.append(cur)
            cur = None
    if cur is not None:
        out.append(cur)
    return [t for t in out if len(t) > 1]


def direction(header):
    """Returns "higher", "lower" or None for a column header."""
    h = header.lower().strip()
    if h.startswith("vs") or h.startswith("max") or "per run" in h:
        return None
    if "/s" in h:
        return "higher"
    if re.search(r"\b(ms|s|mib|rss)\b", h):
        return "lower"
    return None


def value(cell):
    """Returns (median, min, max) from "12.3 (10-14)", or None."""
    m = _NUM.match(cell.replace(",", ""))
    if not m:
        return None
    r = _RANGE.search(cell)
    v = float(m.group(1))
    return (v, float(r.group(1)), float(r.group(2))) if r else (v, v, v)


def tool_keys(rows):
    """Names the rows: the first cell; where it repeats, with the start of the
    second cell up to its first "(" or "`" ("persistent line / CLI"), or the
    whole second cell if that still repeats."""
    firsts = [r[0] if r else "" for r in rows]

    def short(r):
        return re.split(r"[(`]", r[1])[0].strip() if len(r) > 1 else ""

    keys = []
    for r in rows:
        if not r or firsts.count(r[0]) == 1 or len(r) < 2:
            keys.append(r[0] if r else "")
            continue
        same = [x for x in rows if x and x[0] == r[0]]
        tag = short(r)
        if not tag or [short(x) for x in same].count(tag) > 1:
            tag = r[1]
        keys.append("%s / %s" % (r[0], tag))
    return keys


def ranking(md):
    """Derives the rankings of every table of a section."""
    out = []
    for n, t in enumerate(tables(md), 1):
        header, rows = t[0], t[1:]
        col = next((i for i, h in enumerate(header) if i > 0 and direction(h)), None)
        if col is None:
            continue
        better = direction(header[col])
        keys = tool_keys(rows)
        entries = []
        for r, key in zip(rows, keys):
            if len(r) <= col:
                continue
            v = value(r[col])
            if v is None:
                continue
            entries.append({"tool": key, "median": v[0], "min": v[1], "max": v[2]})
        entries.sort(key=lambda e: -e["median"] if better == "higher" else e["median"])
        out.append({"table": n, "metric": header[col], "better": better, "order": entries})
    return out


def git(*args):
    """Runs git in the repository; returns its output, or None on failure."""
    try:
        return subprocess.run(["git"] + list(args), cwd=REPO, capture_output=True, check=True).stdout.decode()
    except (OSError, subprocess.CalledProcessError):
        return None


def previous(name):
    """Returns (markdown, stamp, commit) of the previous results, or None:
    those of another measurement (another stamp) than the current one, so
    that a section whose notes alone were edited and committed since it was
    measured is not compared with itself."""
    path = "bench/results/%s.md" % name
    stamp_path = "bench/results/%s.stamp" % name
    try:
        with open(os.path.join(REPO, stamp_path)) as f:
            cur_stamp = f.read().strip()
    except OSError:
        cur_stamp = None
    with open(os.path.join(REPO, path)) as f:
        cur = f.read()
    head = git("show", "HEAD:" + path)
    if head is None:
        return None
    revs = (git("log", "--format=%H", "--", path) or "").split()
    if head != cur:
        revs = ["HEAD"] + revs
    for rev in revs:
        md = git("show", "%s:%s" % (rev, path))
        if md is None or md == cur:
            continue
        stamp = (git("show", "%s:%s" % (rev, stamp_path)) or "").strip()
        if cur_stamp is not None and stamp == cur_stamp:
            continue  # the same measurement, its text edited
        commit = (git("log", "-1", "--format=%h", rev, "--", path) or "").strip()
        return md, stamp, commit
    return None


def _before(order, better):
    """Returns {(a, b)} for every pair where a ranks strictly before b."""
    out = set()
    for e in order:
        for f in order:
            if (e["median"] > f["median"]) if better == "higher" else (e["median"] < f["median"]):
                out.add((e["tool"], f["tool"]))
    return out


def _overlap(a, b):
    return a["min"] <= b["max"] and b["min"] <= a["max"]


def compare(cur, prev):
    """Compares two rankings; returns (same, [sentences])."""
    same, lines = True, []
    for t in cur:
        p = next((x for x in prev if x["table"] == t["table"] and x["metric"] == t["metric"]), None)
        where = "table %d, by %s" % (t["table"], t["metric"]) if len(cur) > 1 else "by %s" % t["metric"]
        if p is None:
            lines.append("%s: no previous ranking to compare with." % where)
            continue
        ptools = {e["tool"] for e in p["order"]}
        ctools = {e["tool"] for e in t["order"]}
        common = ptools & ctools
        c = [e for e in t["order"] if e["tool"] in common]
        pc = [e for e in p["order"] if e["tool"] in common]
        byname = {e["tool"]: e for e in t["order"]}
        swaps = []
        now = _before(c, t["better"])
        for a, b in sorted(_before(pc, p["better"])):
            if (b, a) in now:
                note = " (their ranges overlap in this run)" if _overlap(byname[a], byname[b]) else ""
                swaps.append("%s now before %s%s" % (b, a, note))
        extra = ""
        if ctools - ptools:
            extra += " New, not compared: %s." % "; ".join(sorted(ctools - ptools))
        if ptools - ctools:
            extra += " No longer measured: %s." % "; ".join(sorted(ptools - ctools))
        if swaps:
            same = False
            lines.append("%s, changed: %s.%s" % (where, "; ".join(swaps), extra))
        else:
            lines.append("%s, the same order of the %d tools in both.%s" % (where, len(common), extra))
    return same, lines


def check(name):
    """Writes NAME.rank and NAME.order; returns the verdict."""
    md_path = os.path.join(RESULTS, name + ".md")
    with open(md_path) as f:
        md = f.read()
    stamp = ""
    if os.path.exists(os.path.join(RESULTS, name + ".stamp")):
        with open(os.path.join(RESULTS, name + ".stamp")) as f:
            stamp = f.read().strip()
    cur = ranking(md)
    with open(os.path.join(RESULTS, name + ".rank"), "w") as f:
        json.dump({"scenario": name, "measured": stamp, "rankings": cur}, f, indent=1)
        f.write("\n")
    prev = previous(name)
    if not cur:
        verdict = "Ordering check: no table with a metric column to rank."
    elif prev is None:
        verdict = "Ordering check: no previous results in git to compare with."
    else:
        pmd, pstamp, pcommit = prev
        same, lines = compare(cur, ranking(pmd))
        head = "Ordering check against the previous results (measured at %s; committed in %s): %s" % (
            pstamp or "an unknown commit", pcommit or "?", "same order" if same else "CHANGED")
        verdict = head + ". " + " ".join(l[0].upper() + l[1:] for l in lines)
    with open(os.path.join(RESULTS, name + ".order"), "w") as f:
        f.write(verdict.replace("Ordering check", "**Ordering check**", 1) + "\n")
    return verdict


def main(argv):
    if len(argv) < 2 or argv[0] != "check":
        print(__doc__, file=sys.stderr)
        return 2
    for name in argv[1:]:
        try:
            print("%s: %s" % (name, check(name)))
        except Exception as e:  # a report, never a failure of the run
            print("%s: ordering check failed: %s" % (name, e), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
