"""The governor's and the retry policy's keywords of Pool and Executor, and
context=: checked, sent to the binary, and in force on real workers."""
import concurrent.futures
import functools
import multiprocessing
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
import unittest

import safepool
from safepool import _launch
from safepool._options import EngineOptions
from tests import helpers
from tests.support import child_env, skip_or_fail


def hello_of(**kw) -> dict:
    """The members of the hello frame a pool with these keywords sends."""
    import json
    frame = _launch.hello_frame(EngineOptions(**kw).hello())
    return json.loads(frame[13:])


class Hello(unittest.TestCase):
    def test_members(self):
        h = hello_of(mem_budget="2GiB", mem_per_task="512MiB", mem_reserve=1 << 20, mem_high=90, mem_psi=25,
                     no_governor=True, backoff=0.5, max_backoff=3, task_error_retries=2)
        self.assertEqual(h, {"no_governor": True, "mem_budget": 2 << 30, "mem_per_task": 512 << 20,
                             "mem_reserve": 1 << 20, "preempt_above": 0.9, "preempt_psi": 25.0,
                             "backoff": 0.5, "max_backoff": 3.0, "task_error_retries": 2})

    def test_defaults_are_the_engines(self):
        h = hello_of()
        self.assertEqual((h["mem_budget"], h["preempt_above"], h["preempt_psi"], h["no_governor"]),
                         (0, 0.0, 0.0, False))
        self.assertEqual((h["backoff"], h["max_backoff"]), (0.05, 5.0))

    def test_zero_percent_turns_a_trigger_off(self):
        # As --mem-high 0 and --mem-psi 0: never preempt.
        h = hello_of(mem_high=0, mem_psi=0)
        self.assertEqual((h["preempt_above"], h["preempt_psi"]), (-1.0, -1.0))

    def test_bad_values(self):
        for kw, exc in [({"mem_high": 101}, ValueError), ({"mem_psi": -1}, ValueError),
                        ({"mem_high": "95%"}, TypeError), ({"mem_budget": -1}, ValueError),
                        ({"mem_per_task": "lots"}, ValueError), ({"backoff": -1}, ValueError),
                        ({"task_error_retries": -1}, ValueError), ({"task_error_retries": 1.5}, TypeError)]:
            with self.subTest(kw=kw):
                with self.assertRaises(exc):
                    safepool.Pool(1, **kw)
                with self.assertRaises(exc):
                    safepool.Executor(1, **kw)

    def test_timeout_grace(self):
        # Absent for the default, which an older binary, ignoring it, has
        # too; 0 (SIGKILL at once) is sent as 0.
        self.assertNotIn("timeout_grace", hello_of())
        self.assertEqual(hello_of(timeout_grace=2)["timeout_grace"], 2.0)
        self.assertEqual(hello_of(timeout_grace=0)["timeout_grace"], 0.0)

    def test_bad_timeout_grace(self):
        for value, exc, msg in [(-1, ValueError, "timeout_grace must not be negative"),
                                (-0.5, ValueError, "timeout_grace must not be negative"),
                                (float("inf"), ValueError, "finite"), ("3s", TypeError, "number of seconds"),
                                (True, TypeError, "number of seconds")]:
            with self.subTest(value=value):
                with self.assertRaisesRegex(exc, msg):
                    safepool.Pool(1, timeout=1, timeout_grace=value)
                with self.assertRaisesRegex(exc, msg):
                    safepool.Executor(1, timeout=1, timeout_grace=value)
                with self.assertRaisesRegex(exc, msg):
                    safepool.SafePool(1, timeout=1, timeout_grace=value)

    def test_processes_not_an_int(self):
        # As multiprocessing.Pool(2.5); the binary used to be started with
        # it, and the pool broke with a message about the binary's hello.
        with self.assertRaisesRegex(TypeError, "processes must be an int"):
            safepool.Pool(2.5)
        with self.assertRaisesRegex(TypeError, "processes must be an int"):
            safepool.Executor(2.5)

    def test_bad_pool_timing_and_counts(self):
        # Each used to reach the binary: a string timeout was converted
        # (timeout="abc" said only "could not convert string to float"), a
        # negative one broke the pool with the engine's "Config.Timeout is
        # negative", and inf, NaN or retries=1.5 broke it with a message
        # that blamed a client of another version.
        for kw, exc, msg in [({"timeout": "0.5"}, TypeError, "timeout must be a number of seconds"),
                             ({"timeout": -1}, ValueError, "timeout must be a finite number of seconds"),
                             ({"timeout": float("inf")}, ValueError, "timeout must be a finite"),
                             ({"timeout": float("nan")}, ValueError, "timeout must be a finite"),
                             ({"grace": "x"}, TypeError, "grace must be a number of seconds"),
                             ({"grace": -1}, ValueError, "grace must be a finite"),
                             ({"retries": 1.5}, TypeError, "retries must be an int, not float"),
                             ({"retries": "1"}, TypeError, "retries must be an int, not str"),
                             # The binary refused these, in the engine's words (Config.MemLimit).
                             ({"mem_limit": "1KiB"}, ValueError, "mem_limit='1KiB' is below the least a worker needs, 1 MiB"),
                             ({"mem_budget": 1000}, ValueError, "mem_budget=1000 is below the least"),
                             ({"mem_per_task": "0.5MiB"}, ValueError, "mem_per_task='0.5MiB' is below the least"),
                             ({"mem_limit": 0.5}, ValueError, "a memory size in bytes must be a whole number, not 0.5"),
                             ({"max_rss": 1.5}, ValueError, "a memory size in bytes must be a whole number, not 1.5"),
                             ({"mem_high": 0.5}, ValueError, "mem_high is a percentage: 0.5 would stop tasks whenever 0.5% of memory is in use \\(for 50%, give 50\\)")]:
            with self.subTest(kw=kw):
                with self.assertRaisesRegex(exc, msg):
                    safepool.Pool(1, **kw)
                with self.assertRaisesRegex(exc, msg):
                    safepool.Executor(1, **kw)
        with self.assertRaisesRegex(TypeError, "processes must be an int, not str"):
            safepool.Pool("2")
        with self.assertRaisesRegex(ValueError, "maxtasksperchild=2 and max_tasks_per_child=3 are one setting"):
            safepool.Pool(1, maxtasksperchild=2, max_tasks_per_child=3)

    def test_good_pool_timing_and_counts(self):
        class Two:  # an integer that is not an int, as numpy's
            def __index__(self):
                return 2
        with safepool.Pool(Two(), retries=Two(), timeout=0, grace=0) as pool:
            self.assertEqual(pool.map(helpers.square, range(4)), [0, 1, 4, 9])

    def test_unknown_keyword(self):
        with self.assertRaises(TypeError):
            safepool.Pool(1, mem_bugdet="1GiB")
        with self.assertRaises(TypeError):
            safepool.Executor(1, mem_bugdet="1GiB")


class Context(unittest.TestCase):
    def test_spawn_like_contexts_are_accepted(self):
        for ctx in (None, "spawn", "forkserver", multiprocessing.get_context("spawn"),
                    multiprocessing.get_context("forkserver")):
            with self.subTest(ctx=ctx):
                with safepool.Pool(1, context=ctx) as pool:
                    self.assertEqual(pool.apply(helpers.square, (3,)), 9)
        with safepool.Executor(1, mp_context=multiprocessing.get_context("spawn")) as ex:
            self.assertEqual(ex.submit(helpers.square, 4).result(timeout=60), 16)

    def test_fork_is_refused_with_what_to_do(self):
        for ctx in ("fork", multiprocessing.get_context("fork")):
            with self.subTest(ctx=ctx):
                with self.assertRaises(ValueError) as cm:
                    safepool.Pool(1, None, (), None, ctx)
                msg = str(cm.exception)
                self.assertIn("never forks", msg)
                self.assertIn("context=None", msg)
                self.assertIn("spawn", msg)
                with self.assertRaises(ValueError) as cm:
                    safepool.Executor(1, mp_context=ctx)
                self.assertIn("mp_context=None", str(cm.exception))

    def test_not_a_context(self):
        with self.assertRaises(TypeError):
            safepool.Pool(1, context=42)


class Governor(unittest.TestCase):
    """The governor's settings reach the engine: its budget caps each
    worker's memory cgroup (so a task that needs more is OOM-killed), the
    reserve lowers the budget, no_governor lifts the cap, and a per-task
    hint that fits once in the budget runs tasks one at a time."""

    def _pool(self, **kw):
        pool = safepool.Pool(1, **kw)
        self.addCleanup(pool.terminate)
        if not pool.memory_mode.startswith("cgroup"):
            skip_or_fail(self, "no memory cgroups here (%s): the governor is off" % pool.memory_mode)
        return pool

    def test_budget_caps_a_worker(self):
        pool = self._pool(mem_budget="200MiB")
        with self.assertRaises(safepool.WorkerDied) as cm:
            pool.apply(helpers.hog, (600,))
        self.assertEqual(cm.exception.cause, "oom")
        self.assertLessEqual(cm.exception.peak_rss, 200 << 20)
        self.assertEqual(pool.apply(helpers.square, (5,)), 25)

    def test_no_governor_lifts_the_cap(self):
        pool = self._pool(mem_budget="200MiB", no_governor=True)
        self.assertEqual(pool.apply(helpers.hog, (400,)), 50)

    def test_reserve_lowers_the_budget(self):
        with open("/proc/meminfo") as f:
            total = next(int(line.split()[1]) * 1024 for line in f if line.startswith("MemTotal:"))
        pool = self._pool(mem_reserve=total - (200 << 20))
        with self.assertRaises(safepool.WorkerDied) as cm:
            pool.apply(helpers.hog, (600,))
        self.assertEqual(cm.exception.cause, "oom")

    def test_per_task_hint_admits_one_at_a_time(self):
        # Each task waits (3 s at most) for the other to run beside it:
        # with a hint of 700MiB in a budget of 1GiB, they never do. The
        # first task is given up on after 3 s, and only then does the other
        # start (and find it finished).
        # Both workers are started first (their initializer has run), so
        # that the tasks are not both sent to the first worker.
        d, started = tempfile.mkdtemp(), tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, d)
        self.addCleanup(shutil.rmtree, started)
        pool = safepool.Pool(2, mem_budget="1GiB", mem_per_task="700MiB", initializer=helpers.init,
                             initargs=(started, None))
        self.addCleanup(pool.terminate)
        if not pool.memory_mode.startswith("cgroup"):
            skip_or_fail(self, "no memory cgroups here (%s): the governor is off" % pool.memory_mode)
        deadline = time.monotonic() + 60
        while len(os.listdir(started)) < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.2)  # their ready frames, sent right after
        met = pool.map(functools.partial(helpers.meet, directory=d, n=2, limit=3), [0, 1], chunksize=1)
        self.assertEqual(sorted(met), [False, True])


class PoolThatCannotStart(unittest.TestCase):
    def test_its_reason_is_raised_and_not_printed(self):
        # A reserve above the machine's memory leaves no room for a worker:
        # the binary says why in its end frame, which the client raises;
        # nothing goes to stderr besides, where it was printed a second time.
        code = textwrap.dedent('''
            import safepool
            try:
                safepool.Pool(2, mem_reserve="1000TiB").map(abs, [1])
            except safepool.BrokenPool as e:
                print("raised:", e)
        ''')
        out = subprocess.run([sys.executable, "-c", code], env=child_env(), capture_output=True, text=True,
                             timeout=60)
        self.assertIn("raised: the safepool binary cannot start the pool: pool: a memory reserve of 1000 TiB",
                      out.stdout, out.stderr)
        self.assertEqual(out.stderr, "")


class Retries(unittest.TestCase):
    def test_task_error_retries(self):
        d = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, d)
        with safepool.Pool(2, task_error_retries=2, backoff=0.01) as pool:
            self.assertEqual(pool.apply(helpers.raise_until, (d, 2, "ok")), "ok")
            self.assertEqual(len(os.listdir(d)), 3)
            self.assertEqual(pool.failed_tasks(), [])
            shutil.rmtree(d)
            os.mkdir(d)
            # Out of retries: the third exception is raised.
            with self.assertRaises(ValueError) as cm:
                pool.apply(helpers.raise_until, (d, 5, "ok"))
            self.assertEqual(str(cm.exception), "call 3 fails")
            self.assertEqual([(f.cause, f.attempts) for f in pool.failed_tasks()], [("task-error", 3)])

    def test_task_error_retries_in_a_batch(self):
        # Only the items that raised run again; the others keep their result.
        d = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, d)
        with safepool.Pool(2, task_error_retries=1) as pool:
            out = pool.map(functools.partial(helpers.raise_until, d, 1), range(6), chunksize=6)
        self.assertEqual(out, list(range(6)))
        self.assertEqual(len(os.listdir(d)), 7)

    def test_no_task_error_retries_by_default(self):
        d = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, d)
        with safepool.Executor(1) as ex:
            with self.assertRaises(ValueError):
                ex.submit(helpers.raise_until, d, 1, "ok").result(timeout=60)
        self.assertEqual(len(os.listdir(d)), 1)

    def test_backoff(self):
        # The delay before each retry doubles from backoff, up to
        # max_backoff: here 0.4 s, then 0.4 s again (capped).
        with safepool.Pool(1, retries=2, backoff=0.4, max_backoff=0.4) as pool:
            with self.assertRaises(safepool.WorkerDied) as cm:
                pool.apply(helpers.kill_self)
        h = cm.exception.history
        self.assertEqual(len(h), 3)
        for a, b in zip(h, h[1:]):
            self.assertGreaterEqual(b.start - a.end, 0.4, "retry started %.3f s after the death" % (b.start - a.end))

    def test_max_backoff_caps_the_delay(self):
        # A backoff of 30 s capped at 0.1 s: the retry comes long before 30 s.
        with safepool.Executor(1, retries=1, backoff=30, max_backoff=0.1) as ex:
            t = time.monotonic()
            f = ex.submit(helpers.kill_self)
            self.assertIsInstance(f.exception(timeout=60), safepool.WorkerDied)
            self.assertLess(time.monotonic() - t, 30)
            self.assertEqual(f.exception().attempts, 2)


class PoolLike:
    """An Executor with the few methods of Pool that TimeoutGrace uses."""

    def __init__(self, ex):
        self.ex = ex

    def apply(self, fn, args):
        return self.ex.submit(fn, *args).result(timeout=60)

    def apply_async(self, fn, args):
        f = self.ex.submit(fn, *args)
        f.get = f.result
        return f

    def terminate(self):
        self.ex.shutdown(wait=True, cancel_futures=True)


class TimeoutGrace(unittest.TestCase):
    """timeout_grace: the time a task past its timeout has, after SIGTERM,
    to clean up before SIGKILL."""

    def run_past_timeout(self, pool_class, **kw):
        """Run helpers.clean_up_on_sigterm past a timeout of 0.5 s in a pool
        of pool_class with the keywords kw; return the exception its call
        raised (or its result) and whether its SIGTERM handler wrote its
        marker."""
        d = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, d)
        marker, started = os.path.join(d, "marker"), os.path.join(d, "started")
        pool = pool_class(1, timeout=0.5, **kw)
        try:
            # A first task imports the helpers, so that the timed one
            # installs its handler well within its timeout.
            self.assertEqual(pool.apply(helpers.square, (3,)), 9)
            try:
                out = pool.apply_async(helpers.clean_up_on_sigterm, (marker, started)).get(timeout=60)
            except safepool.TaskTimeout as e:
                out = e
        finally:
            pool.terminate()
        self.assertTrue(os.path.exists(started), "the task never ran")
        return out, os.path.exists(marker)

    def test_grace_lets_the_task_clean_up(self):
        exc, cleaned = self.run_past_timeout(safepool.Pool, timeout_grace=2)
        self.assertIsInstance(exc, safepool.TaskTimeout)
        self.assertEqual(exc.cause, "timeout")
        self.assertTrue(cleaned, "the task's SIGTERM handler did not run in its timeout_grace")

    def test_zero_grace_kills_at_once(self):
        exc, cleaned = self.run_past_timeout(safepool.Pool, timeout_grace=0)
        self.assertIsInstance(exc, safepool.TaskTimeout)
        self.assertEqual(exc.cause, "timeout")
        self.assertFalse(cleaned, "timeout_grace=0 sent SIGTERM before SIGKILL")

    def test_safepool_takes_it(self):
        # SafePool (as AsyncPool and the joblib backend) passes it on to
        # Pool; its task past its timeout is skipped: None.
        out, cleaned = self.run_past_timeout(safepool.SafePool, timeout_grace=0)
        self.assertIsNone(out)
        self.assertFalse(cleaned, "timeout_grace=0 sent SIGTERM before SIGKILL")

    def test_executor_takes_it(self):
        exc, cleaned = self.run_past_timeout(lambda n, **kw: PoolLike(safepool.Executor(n, **kw)),
                                             timeout_grace=0)
        self.assertIsInstance(exc, safepool.TaskTimeout)
        self.assertFalse(cleaned, "timeout_grace=0 sent SIGTERM before SIGKILL")


class ExecutorStats(unittest.TestCase):
    def test_stats(self):
        with safepool.Executor(2) as ex:
            futs = [ex.submit(helpers.square, i) for i in range(3)]
            self.assertEqual([f.result(timeout=60) for f in futs], [0, 1, 4])
            self.assertEqual(list(ex.map(helpers.square, range(5))), [0, 1, 4, 9, 16])
            st = ex.stats()
        self.assertEqual(len(st), 8)
        self.assertEqual(len({s["job"] for s in st}), 4)  # three submits and one map
        for s in st:
            self.assertGreater(s["pid"], 0)
            self.assertLessEqual(s["start"], s["end"])
        self.assertEqual(sorted(s["index"] for s in st if s["job"] == max(x["job"] for x in st)), list(range(5)))


if __name__ == "__main__":
    unittest.main()


class Sizes(unittest.TestCase):
    """format_size reads like the binary's sizes (internal/bytesize's
    TestFormat has the same table), so that one message never shows
    "256.0 MiB" beside "256 MiB"."""

    def test_format_size(self):
        from safepool._options import format_size
        for n, want in [(0, "0 B"), (312, "312 B"), (1024, "1 KiB"), (800 << 10, "800 KiB"),
                        (1 << 20, "1 MiB"), (64 << 20, "64 MiB"), (256 << 20, "256 MiB"),
                        (1932735283, "1.8 GiB"), (2040109465, "1.9 GiB"), (3 << 29, "1.5 GiB"),
                        (15 << 30, "15 GiB"), ((10 << 20) - (1 << 10), "10 MiB"), ((1 << 20) - 100, "1 MiB"),
                        ((2 << 20) - 1, "2 MiB"), ((1 << 30) + (1 << 20), "1 GiB"), (9_900_000, "9.4 MiB")]:
            self.assertEqual(format_size(n), want, "format_size(%d)" % n)

    def test_death_message_size(self):
        import types
        from safepool._core import MAP, _death_message
        msg = _death_message(types.SimpleNamespace(fn=len, mode=MAP), 7, "oom", 1, {"peak_rss": 256 << 20})
        self.assertEqual(msg, "the worker died running len(7) (oom) after 1 attempt, peak memory 256 MiB")
