"""progress=True on map, imap, imap_unordered and Executor.map: a tqdm bar
when tqdm is importable, one plain line on stderr otherwise."""
import re
import subprocess
import textwrap
import unittest

from tests.support import PYTHON_DIR, child_env, python_with, python_without, skip_or_fail

SCRIPT = textwrap.dedent("""
    import sys, time, safepool
    from tests import helpers

    def report(name, t, n):
        print(name, n, "%.3f" % (time.monotonic() - t), flush=True)

    if __name__ == "__main__":
        with safepool.Pool(2) as pool:
            t = time.monotonic()
            sys.stderr.write("<map>")
            report("map", t, len(pool.map(helpers.sleep_for, [0.05] * 40, chunksize=1, progress=True)))
            t = time.monotonic()
            sys.stderr.write("<imap>")
            report("imap", t, sum(1 for _ in pool.imap(helpers.square, range(300), progress=True)))
            t = time.monotonic()
            sys.stderr.write("<unordered>")
            out = pool.imap_unordered(helpers.fail_at, range(10), progress=True, errors="return")
            report("unordered", t, len(list(out)))
            t = time.monotonic()
            sys.stderr.write("<generator>")
            report("generator", t, len(list(pool.imap(helpers.square, (i for i in range(7)), progress=True))))
        with safepool.Executor(2) as ex:
            t = time.monotonic()
            sys.stderr.write("<executor>")
            report("executor", t, len(list(ex.map(helpers.add, range(25), range(30), progress=True))))
        sys.stderr.write("<end>")
""")

CALLS = ["map", "imap", "unordered", "generator", "executor"]


def run(python):
    # Bytes, not text=True, whose universal newlines would turn \r into \n.
    out = subprocess.run(python + ["-c", SCRIPT], env=child_env(), cwd=PYTHON_DIR, capture_output=True,
                         timeout=300)
    stdout, stderr = out.stdout.decode(), out.stderr.decode()
    if out.returncode != 0:
        raise AssertionError("the script failed:\n" + stderr)
    times = {}
    for line in stdout.splitlines():
        name, n, seconds = line.split()
        times[name] = (int(n), float(seconds))
    parts = re.split(r"<(\w+)>", stderr)
    shown = {parts[i]: parts[i + 1] for i in range(1, len(parts) - 1, 2)}
    return times, shown


class PlainLine(unittest.TestCase):
    def test_one_line_per_call(self):
        python = python_without("tqdm")
        if python is None:
            skip_or_fail(self, "every Python here has tqdm")
        times, shown = run(python)
        want = {"map": "40/40 tasks done", "imap": "300/300 tasks done", "unordered": "9/10 tasks done, 1 failed",
                "generator": "7 tasks done", "executor": "25/25 tasks done"}
        for name in CALLS:
            text = shown[name]
            # Rewritten in place, ended with one newline.
            self.assertTrue(text.endswith("\n"), "%s: %r" % (name, text))
            self.assertEqual(text.count("\n"), 1, "%s: %r" % (name, text))
            last = text.rstrip("\n").split("\r")[-1]
            self.assertRegex(last, r"^safepool: %s \(\d+\.\d+s\)$" % re.escape(want[name]))
            # At most four renderings a second, plus the first and the last.
            renderings = text.count("\r")
            seconds = times[name][1]
            self.assertLessEqual(renderings, 4 * seconds + 2, "%s: %d renderings in %.2f s" % (
                name, renderings, seconds))
        # 40 tasks of 50 ms on 2 workers take a second or more: the line
        # was rewritten while they ran, not only at the end.
        self.assertGreaterEqual(shown["map"].count("\r"), 2)


class Tqdm(unittest.TestCase):
    def test_tqdm_bar(self):
        python = python_with("tqdm")
        if python is None:
            skip_or_fail(self, "no Python here has tqdm (test.sh installs python3-tqdm for /usr/bin/python3)")
        times, shown = run(python)
        self.assertEqual(times["map"][0], 40)
        for name, total in [("map", 40), ("imap", 300), ("unordered", 10), ("executor", 25)]:
            last = shown[name].split("\r")[-1]
            self.assertIn("100%", last, "%s: %r" % (name, shown[name]))
            self.assertIn("%d/%d" % (total, total), last)
            self.assertTrue(shown[name].endswith("\n"))
        self.assertIn("failed=1", shown["unordered"])
        # Without a length, tqdm counts without a bar.
        self.assertIn("7task", shown["generator"].replace(" ", ""))


if __name__ == "__main__":
    unittest.main()
