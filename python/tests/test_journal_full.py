"""Pool(journal=...) on a file system that fills up: the error says the
journal could not be written and which file, and resume=True then does
what the journal does not hold."""
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import textwrap
import unittest

import safepool
from tests import helpers
from tests.support import SYSTEM_PYTHON, skip_or_fail

_PYTHON_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Run with the file size limit at 256 KiB (ulimit -f, as a full disk)
# once the workers have started: the journal's rows outgrow it. Python ignores SIGXFSZ, so SQLite gets
# EFBIG and says "database or disk is full".
_SCRIPT = textwrap.dedent("""
    import resource, sqlite3, sys
    sys.path.insert(0, sys.argv[1])
    import safepool
    from tests import helpers
    try:
        with safepool.Pool(2, journal=sys.argv[2]) as pool:
            # The limit is the client's, not its workers', which are
            # started by now: they would inherit it, and fail to write
            # their tasks' data to shared memory files.
            pool.map(helpers.square, [0, 1])
            resource.setrlimit(resource.RLIMIT_FSIZE, (256 << 10, 256 << 10))
            pool.map(helpers.square, range(20000))
    except sqlite3.Error as e:
        print("error:", e)
        sys.exit(3)
    print("no error")
""")


class JournalFull(unittest.TestCase):
    def setUp(self):
        self.dir = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, self.dir)
        self.path = os.path.join(self.dir, "j.db")

    def test_full_then_resume(self):
        p = subprocess.run([sys.executable, "-c", _SCRIPT, _PYTHON_DIR, self.path],
                           capture_output=True, text=True, timeout=120)
        # It used to end with "cannot commit - no transaction is active",
        # raised as the call closed the journal, over the error that
        # mattered, which named no file.
        self.assertEqual(p.returncode, 3, "stdout:\n%s\nstderr:\n%s" % (p.stdout, p.stderr))
        self.assertIn("error: writing the journal %s: " % self.path, p.stdout)
        self.assertNotIn("no transaction", p.stdout)

        with safepool.Pool(2, journal=self.path, resume=True) as pool:
            got = pool.map(helpers.square, range(20000))
        self.assertEqual(got, [x * x for x in range(20000)])
        db = sqlite3.connect(self.path)
        self.addCleanup(db.close)
        (last,) = db.execute("SELECT max(id) FROM run").fetchone()
        counts = dict(db.execute("SELECT state, count(*) FROM task WHERE run_id = ? GROUP BY state", (last,)))
        # Skipped: what the full journal had committed, which may be
        # nothing when it filled before its first commit.
        self.assertEqual(counts.get("done", 0) + counts.get("skipped", 0), 20000, counts)

    def test_new_journal_that_cannot_be_made(self):
        # A new journal that the file size limit keeps from being set up:
        # the error names it and the reason (SQLite's said only "disk I/O
        # error" or "database or disk is full"), and no empty file is left
        # that would pass for a journal.
        script = textwrap.dedent("""
            import resource, sqlite3, sys
            sys.path.insert(0, sys.argv[1])
            import safepool
            resource.setrlimit(resource.RLIMIT_FSIZE, (0, 0))
            try:
                safepool.Pool(1, journal=sys.argv[2])
            except sqlite3.Error as e:
                print("error:", e)
                sys.exit(3)
            print("no error")
        """)
        p = subprocess.run([sys.executable, "-c", script, _PYTHON_DIR, self.path],
                           capture_output=True, text=True, timeout=120)
        self.assertEqual(p.returncode, 3, "stdout:\n%s\nstderr:\n%s" % (p.stdout, p.stderr))
        self.assertIn("error: cannot open the journal %s: " % self.path, p.stdout)
        self.assertIn("has reached the file size limit (ulimit -f) of 0 bytes", p.stdout)
        self.assertEqual(os.listdir(self.dir), [])

    def test_journal_that_cannot_be_opened(self):
        # The errors of a journal that cannot be opened name it, and say
        # why when the file system tells.
        missing = os.path.join(self.dir, "no", "j.db")
        with self.assertRaisesRegex(sqlite3.OperationalError, "cannot open the journal %s: .*: the directory %s does not exist"
                                    % (missing, os.path.dirname(missing))):
            safepool.Pool(1, journal=missing)
        with open(self.path, "wb") as f:
            f.write(b"SQLite format 3\0" + b"\x10\x00\x01\x01" + b"\0" * 4076)
        with self.assertRaisesRegex(sqlite3.DatabaseError, "cannot open the journal %s: " % self.path):
            safepool.Pool(1, journal=self.path)

    @unittest.skipUnless(os.geteuid() == 0, "needs root, to be two users")
    def test_another_users_journal(self):
        # Another user's journal in a directory that others write too
        # (/tmp): refused, and nothing of this user's is left beside it.
        # SQLite made the WAL and shared memory before it failed to
        # write, and they kept the journal's owner from opening it again.
        os.chmod(self.dir, 0o1777)
        script = textwrap.dedent("""
            import sqlite3, sys
            sys.path.insert(0, sys.argv[1])
            import safepool
            try:
                with safepool.Pool(1, journal=sys.argv[2]) as pool:
                    pool.map(abs, [-1, -2])
            except sqlite3.Error as e:
                print("error:", e)
                sys.exit(3)
            print("no error")
        """)

        # Debian's interpreter, which other users may run (one under
        # root's home may not be).
        if not os.access(SYSTEM_PYTHON, os.X_OK):
            skip_or_fail(self, "%s is not installed" % SYSTEM_PYTHON)

        def run(uid):
            return subprocess.run([SYSTEM_PYTHON, "-c", script, _PYTHON_DIR, self.path], capture_output=True,
                                  text=True, timeout=120, user=uid, group=uid, extra_groups=[], cwd=self.dir)

        p = run(65534)
        self.assertEqual((p.returncode, p.stdout), (0, "no error\n"), p.stderr)
        p = run(65533)
        self.assertEqual(p.returncode, 3, "stdout:\n%s\nstderr:\n%s" % (p.stdout, p.stderr))
        self.assertEqual(sorted(f for f in os.listdir(self.dir) if f.startswith("j.db")), ["j.db", "j.db-spans"])
        self.assertIn("error: cannot open the journal %s: %s cannot be written (permission denied)"
                      % (self.path, self.path), p.stdout)
        p = run(65534)
        self.assertEqual((p.returncode, p.stdout), (0, "no error\n"), p.stderr)


if __name__ == "__main__":
    unittest.main()
