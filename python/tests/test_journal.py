"""Pool(journal=..., resume=True): map and imap skip what an earlier call
finished, by function and argument."""
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
import unittest

import safepool
from tests import journal_helpers


class Journal(unittest.TestCase):
    def setUp(self):
        self.dir = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, self.dir)
        os.environ["JOURNAL_TEST_DIR"] = self.dir
        self.addCleanup(os.environ.pop, "JOURNAL_TEST_DIR", None)
        self.path = os.path.join(self.dir, "j.db")

    def calls(self):
        with open(os.path.join(self.dir, "calls")) as f:
            calls = sorted(int(l) for l in f)
        os.remove(os.path.join(self.dir, "calls"))
        return calls

    def test_resume(self):
        with safepool.Pool(2, journal=self.path) as pool:
            got = pool.map(journal_helpers.square_once, range(6), errors="return")
        self.assertEqual(got[:3] + got[4:], [0, 1, 4, 16, 25])
        self.assertIsInstance(got[3], Exception)
        self.assertEqual(self.calls(), [0, 1, 2, 3, 4, 5])

        # resume: nothing runs again, done results come from the journal,
        # and the failure is reported again.
        with safepool.Pool(2, journal=self.path, resume=True) as pool:
            got = pool.map(journal_helpers.square_once, [5, 4, 3, 2, 1, 0], errors="return")
        self.assertEqual(got[:2] + got[3:], [25, 16, 4, 1, 0])
        self.assertIsInstance(got[2], Exception)
        self.assertFalse(os.path.exists(os.path.join(self.dir, "calls")))

        # resume_failed: only the failed one, and new arguments, run.
        open(os.path.join(self.dir, "fixed"), "w").close()
        with safepool.Pool(2, journal=self.path, resume_failed=True) as pool:
            got = list(pool.imap(journal_helpers.square_once, range(8)))
        self.assertEqual(got, [i * i for i in range(8)])
        self.assertEqual(self.calls(), [3, 6, 7])

        db = sqlite3.connect(self.path)
        rows = db.execute("SELECT run_id, state, count(*) FROM task GROUP BY 1, 2 ORDER BY 1, 2").fetchall()
        db.close()
        self.assertEqual(rows, [(1, "done", 5), (1, "failed", 1), (2, "skipped", 6),
                                (3, "done", 3), (3, "skipped", 5)])

    def test_resume_after_several_calls(self):
        # A program that maps the same function over two inputs, killed in
        # the second call, and started again with resume=True: the first
        # call's work is skipped too, not only the last call's.
        with safepool.Pool(2, journal=self.path) as pool:
            self.assertEqual(pool.map(journal_helpers.square_once, [0, 1, 2]), [0, 1, 4])
            self.assertEqual(pool.map(journal_helpers.square_once, [10, 11]), [100, 121])
        self.assertEqual(self.calls(), [0, 1, 2, 10, 11])
        with safepool.Pool(2, journal=self.path, resume=True) as pool:
            self.assertEqual(pool.map(journal_helpers.square_once, [0, 1, 2]), [0, 1, 4])
            self.assertEqual(pool.map(journal_helpers.square_once, [10, 11, 12]), [100, 121, 144])
        self.assertEqual(self.calls(), [12])
        # A pool without resume starts over at its first call of the
        # function, and its later calls of it do not skip.
        with safepool.Pool(2, journal=self.path) as pool:
            self.assertEqual(pool.map(journal_helpers.square_once, [0, 1]), [0, 1])
            self.assertEqual(pool.map(journal_helpers.square_once, [1, 5]), [1, 25])
        self.assertEqual(self.calls(), [0, 1, 1, 5])
        with safepool.Pool(2, journal=self.path, resume=True) as pool:
            self.assertEqual(pool.map(journal_helpers.square_once, [0, 1, 1, 2, 5]), [0, 1, 1, 4, 25])
        self.assertEqual(self.calls(), [2])

    def test_results_that_no_longer_unpickle(self):
        # A result of an earlier run that no longer unpickles (its class
        # renamed since) runs its task again, with a warning, where the
        # call failed with the unpickling's error; a later resume takes
        # the result of the run that ran it again, without a word.
        with safepool.Pool(2, journal=self.path) as pool:
            self.assertEqual([r.x for r in pool.map(journal_helpers.versioned, range(4))], [0, 1, 2, 3])
        self.assertEqual(self.calls(), [0, 1, 2, 3])
        with open(os.path.join(self.dir, "version"), "w") as f:
            f.write("2")
        with safepool.Pool(2, journal=self.path, resume=True) as pool:
            with self.assertWarnsRegex(RuntimeWarning, "no longer unpickle .*AttributeError.*run again"):
                got = pool.map(journal_helpers.versioned, range(5))
        self.assertEqual([r.x for r in got], [0, 1, 2, 3, 4])
        self.assertEqual(self.calls(), [0, 1, 2, 3, 4])
        import warnings
        with safepool.Pool(2, journal=self.path, resume=True) as pool:
            with warnings.catch_warnings():
                warnings.simplefilter("error")
                got = pool.map(journal_helpers.versioned, range(5))
        self.assertEqual([r.x for r in got], [0, 1, 2, 3, 4])
        self.assertFalse(os.path.exists(os.path.join(self.dir, "calls")))

    def test_imap_unordered(self):
        # The guide says that with a journal imap_unordered is recorded,
        # resumed and in input order; it went around the journal: nothing
        # recorded, everything run again on resume, in completion order.
        open(os.path.join(self.dir, "fixed"), "w").close()
        with safepool.Pool(2, journal=self.path) as pool:
            got = list(pool.imap_unordered(journal_helpers.square_once, range(8)))
        self.assertEqual(got, [i * i for i in range(8)])
        self.assertEqual(self.calls(), list(range(8)))
        with safepool.Pool(2, journal=self.path, resume=True) as pool:
            got = list(pool.imap_unordered(journal_helpers.square_once, range(10)))
        self.assertEqual(got, [i * i for i in range(10)])
        self.assertEqual(self.calls(), [8, 9])

    def test_failed_attempts(self):
        # A task whose worker dies keeps its attempts and their causes.
        with safepool.Pool(2, journal=self.path) as pool:
            got = pool.map(journal_helpers.die_on_three, range(5), errors="return")
        self.assertIsInstance(got[3], Exception)
        db = sqlite3.connect(self.path)
        task = db.execute("SELECT state, cause, attempts FROM task WHERE id = 4").fetchall()
        attempts = db.execute("SELECT task_id, number, cause, exit_code, worker_pid > 0, ended >= started"
                              " FROM attempt ORDER BY 1, 2").fetchall()
        db.close()
        self.assertEqual(task, [("failed", "exit:3", 1)])
        self.assertEqual(attempts, [(4, 1, "exit:3", 3, 1, 1)])

    def test_results_committed_while_waiting(self):
        # The results of tasks that ended close together are committed
        # within the flush interval even when nothing comes after them
        # for a long time: they were committed only with the next result,
        # so a SIGKILL while the next tasks ran (for hours, overnight)
        # lost them, and resume ran them again.
        env = dict(os.environ, PYTHONPATH=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        child = subprocess.Popen([sys.executable, "-m", "tests.journal_helpers", self.path, "quick_then_stuck", "4"],
                                 stdout=subprocess.PIPE, text=True, env=env, start_new_session=True)
        try:
            got = [child.stdout.readline(), child.stdout.readline()]
            self.assertEqual(got, ["0\n", "1\n"])
            time.sleep(1)  # several flush intervals; tasks 2 and 3 still run
            self.assertIsNone(child.poll())
        finally:
            os.killpg(child.pid, signal.SIGKILL)
            child.wait()
            child.stdout.close()
        db = sqlite3.connect(self.path)
        rows = db.execute("SELECT id, state FROM task ORDER BY id").fetchall()
        db.close()
        self.assertEqual(rows, [(1, "done"), (2, "done")])

    def test_one_program_at_a_time(self):
        # While a program's call of a function runs on a journal, another
        # program's call of it is refused, as a second safepool run of one
        # command is: both ran everything the journal did not have as
        # done. safepool report tells such a call from one whose program
        # was killed. A call of another function, and calls of the pool
        # that holds the lock, go on.
        from safepool._binary import find_binary
        env = dict(os.environ, PYTHONPATH=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        # Imported, so that its function has the name it has here (as
        # python3 -m, it is __main__'s).
        child = subprocess.Popen([sys.executable, "-c", "import sys; from tests import journal_helpers as h;"
                                  " h.imap_and_print(sys.argv[1], h.quick_then_stuck, 4)", self.path],
                                 stdout=subprocess.PIPE, text=True, env=env, start_new_session=True)

        def report():
            p = subprocess.run([find_binary(), "report", "--run", "1", "-o", os.path.join(self.dir, "r.html"), self.path],
                               capture_output=True, text=True, timeout=60)
            self.assertEqual(p.returncode, 0, p.stderr)
            return p.stderr

        try:
            self.assertEqual([child.stdout.readline(), child.stdout.readline()], ["0\n", "1\n"])
            with safepool.Pool(2, journal=self.path, resume=True) as pool:
                with self.assertRaisesRegex(RuntimeError, "journal %s is in use: a call of tests.journal_helpers.quick_then_stuck"
                                            % self.path):
                    pool.map(journal_helpers.quick_then_stuck, range(2))
                self.assertEqual(pool.map(journal_helpers.square_once, range(3)), [0, 1, 4])
            self.assertIn("still running", report())
        finally:
            os.killpg(child.pid, signal.SIGKILL)
            child.wait()
            child.stdout.close()
        self.assertIn("did not end: no safepool runs it now", report())
        with safepool.Pool(2, journal=self.path, resume=True) as pool:
            self.assertEqual(pool.map(journal_helpers.quick_then_stuck, range(2)), [0, 1])
            # Two calls of one function at once in one pool.
            first = pool.imap(journal_helpers.square_once, range(3))
            self.assertEqual(next(first), 0)
            self.assertEqual(pool.map(journal_helpers.square_once, range(5, 7)), [25, 36])
            self.assertEqual(list(first), [1, 4])
        with safepool.Pool(2, journal=self.path) as pool:
            self.assertEqual(pool.map(journal_helpers.square_once, range(2)), [0, 1])

    def test_a_journal_through_a_link(self):
        # Through a symbolic link, a call takes its lock in the span file
        # beside the journal's own name, as safepool run and map do: it
        # took one beside the link, which a call through the name did not
        # see. A journal with two names (hard links) is refused.
        from safepool._journal import _lock_command
        with safepool.Pool(1, journal=self.path) as pool:
            self.assertEqual(pool.map(abs, [-1]), [1])
        link = os.path.join(self.dir, "link.db")
        os.symlink("j.db", link)
        held = _lock_command(self.path, "f")
        try:
            with self.assertRaisesRegex(RuntimeError, "journal %s is in use" % link):
                _lock_command(link, "f")
        finally:
            held.close()
        self.assertFalse(os.path.lexists(link + "-spans"))
        hard = os.path.join(self.dir, "hard.db")
        os.link(self.path, hard)
        for p in (hard, self.path):
            with self.subTest(path=p):
                with self.assertRaisesRegex(ValueError, "has 2 names \\(hard links\\)"):
                    safepool.Pool(1, journal=p)

    def test_older_journal(self):
        # A journal of an older schema is refused, with a clear error,
        # and left as it was.
        db = sqlite3.connect(self.path)
        db.execute("CREATE TABLE run (id INTEGER PRIMARY KEY)")
        db.execute("PRAGMA user_version = 2")
        db.commit()
        db.close()
        with self.assertRaisesRegex(ValueError, "older safepool.*schema version 2"):
            safepool.Pool(1, journal=self.path)
        db = sqlite3.connect(self.path)
        (version,) = db.execute("PRAGMA user_version").fetchone()
        db.close()
        self.assertEqual(version, 2)

    def test_results_held_for_order_committed(self):
        # imap returns results in input order: those done behind a task
        # that still runs wait for it. They are in the journal all the
        # same: they were written only as the caller took them, and a
        # SIGKILL while the first task ran lost them all.
        env = dict(os.environ, PYTHONPATH=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        child = subprocess.Popen([sys.executable, "-m", "tests.journal_helpers", self.path, "stuck_first", "8"],
                                 stdout=subprocess.PIPE, text=True, env=env, start_new_session=True)
        rows = []
        try:
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline and len(rows) < 4:
                time.sleep(0.2)
                try:
                    db = sqlite3.connect(self.path)
                    rows = db.execute("SELECT id, state FROM task ORDER BY id").fetchall()
                    db.close()
                except sqlite3.Error:
                    pass
            self.assertIsNone(child.poll())
        finally:
            os.killpg(child.pid, signal.SIGKILL)
            child.wait()
            child.stdout.close()
        # Tasks 2 to 8, but those sent to the first task's worker behind it.
        self.assertGreaterEqual(len(rows), 4, rows)
        self.assertTrue(all(state == "done" and 2 <= i <= 8 for i, state in rows), rows)

    def test_callables_that_share_a_name(self):
        # Bound methods of two instances, two closures of one function and
        # two lambdas have the same qualname, and compute different
        # things: resume gave the second the first's results (exit 0,
        # wrong values). Each is now its own; the same callable again
        # (an equal instance, in a new pool) still resumes.
        with safepool.Pool(2, journal=self.path, resume=True) as pool:
            self.assertEqual(pool.map(journal_helpers.Scaler(2).apply, range(4)), [0, 2, 4, 6])
            self.assertEqual(pool.map(journal_helpers.Scaler(3).apply, range(4)), [0, 3, 6, 9])
            self.assertEqual(pool.map(journal_helpers.Scaler(5), range(4)), [0, 5, 10, 15])
        self.assertEqual(self.calls(), [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3])
        with safepool.Pool(2, journal=self.path, resume=True) as pool:
            self.assertEqual(pool.map(journal_helpers.Scaler(3).apply, range(4)), [0, 3, 6, 9])
            self.assertEqual(pool.map(journal_helpers.Scaler(5), range(4)), [0, 5, 10, 15])
        self.assertFalse(os.path.exists(os.path.join(self.dir, "calls")))
        try:
            import cloudpickle  # noqa: F401
        except ImportError:
            return  # closures and lambdas cannot be sent without it
        with safepool.Pool(2, journal=self.path, resume=True) as pool:
            self.assertEqual(pool.map(journal_helpers.scaler(2), range(4)), [0, 2, 4, 6])
            self.assertEqual(pool.map(journal_helpers.scaler(3), range(4)), [0, 3, 6, 9])
            self.assertEqual(pool.map(lambda x: x + 1, range(4)), [1, 2, 3, 4])
            self.assertEqual(pool.map(lambda x: x - 1, range(4)), [-1, 0, 1, 2])

    def test_set_arguments_keep_their_key(self):
        # A set's order follows its elements' hashes, which for strings
        # change with each interpreter (PYTHONHASHSEED): an argument
        # holding a set had another key in the run that resumed, and ran
        # again. Its key is now the same in every interpreter, and an
        # argument without a set keeps the key it always had.
        code = ("from safepool._journal import key; "
                "print(key('m.f', ('x', {'alpha', 'beta', 'gamma', 'delta'}, frozenset({'a', 'b', 'c'}))))")
        env = dict(os.environ, PYTHONPATH=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        keys = {subprocess.run([sys.executable, "-c", code], env=dict(env, PYTHONHASHSEED=str(seed)),
                               capture_output=True, text=True, check=True).stdout for seed in range(1, 6)}
        self.assertEqual(len(keys), 1, keys)
        import hashlib
        import pickle
        from safepool import _journal
        arg = {"a": [1.5, None, b"x"], "b": ("t", 3)}
        plain = hashlib.sha256(b"python\0m.f\0" + pickle.dumps(arg, protocol=4)).hexdigest()
        self.assertEqual(_journal.key("m.f", arg), plain)

    def test_foreign_database(self):
        # A program's own SQLite database named by mistake is refused and
        # left as it was: it used to get the journal's tables, and WAL mode.
        db = sqlite3.connect(self.path)
        db.execute("CREATE TABLE customers (name TEXT)")
        db.execute("INSERT INTO customers VALUES ('ada')")
        db.commit()
        db.close()
        with self.assertRaisesRegex(ValueError, "not a safepool journal"):
            safepool.Pool(1, journal=self.path)
        db = sqlite3.connect(self.path)
        tables = db.execute("SELECT name FROM sqlite_master WHERE type = 'table'").fetchall()
        (mode,) = db.execute("PRAGMA journal_mode").fetchone()
        db.close()
        self.assertEqual((tables, mode), ([("customers",)], "delete"))

    def test_not_a_file(self):
        # A FIFO or a directory is refused with the reason, and nothing is
        # made beside it (for a device, SQLite made PATH-journal there).
        fifo = os.path.join(self.dir, "fifo")
        os.mkfifo(fifo)
        sub = os.path.join(self.dir, "sub")
        os.mkdir(sub)
        for path, kind in ((fifo, "a FIFO"), (sub, "a directory")):
            with self.assertRaisesRegex(ValueError, "not a regular file but " + kind):
                safepool.Pool(1, journal=path)
        self.assertEqual(sorted(os.listdir(self.dir)), ["fifo", "sub"])

    def test_resume_needs_journal(self):
        with self.assertRaises(ValueError):
            safepool.Pool(1, resume=True)


if __name__ == "__main__":
    unittest.main()
