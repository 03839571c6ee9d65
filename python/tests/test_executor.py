"""safepool.Executor: a concurrent.futures.Executor whose workers may die."""
import concurrent.futures
import multiprocessing
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
import unittest

import safepool
from tests import helpers
from tests.support import PYTHON_DIR, child_env


def wait_for(cond, limit=60.0):
    """Wait until cond() is true, for at most limit seconds (a bound against
    hangs, not a speed requirement); return cond()."""
    deadline = time.monotonic() + limit
    while not cond() and time.monotonic() < deadline:
        time.sleep(0.01)
    return cond()


class ShutdownCancelFutures:
    """shutdown(cancel_futures=True) as the standard library documents it:
    it cancels the futures that have not started running; futures that are
    running finish, and shutdown(wait=True) waits for them. The same tests
    run on ProcessPoolExecutor, the reference, and on safepool.Executor."""

    def executor(self, n):
        raise NotImplementedError

    def _start(self):
        d = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, d)
        started, self.release = os.path.join(d, "started"), os.path.join(d, "release")
        ex = self.executor(1)
        running = ex.submit(helpers.hold, started, self.release)
        self.assertTrue(wait_for(lambda: os.path.exists(started)), "the first task never started")
        pending = [ex.submit(helpers.square, i) for i in range(20)]
        return ex, running, pending

    def _let_go(self):
        with open(self.release, "w"):
            pass

    def _check_pending(self, pending):
        for f in pending:
            self.assertTrue(f.done())
        cancelled = [f.cancelled() for f in pending]
        # Futures start in order: those that had started (an executor may
        # start a few ahead of its workers) ran to the end, the rest were
        # cancelled.
        k = cancelled.index(True) if True in cancelled else len(cancelled)
        self.assertEqual(cancelled, [False] * k + [True] * (len(cancelled) - k))
        self.assertGreaterEqual(cancelled.count(True), len(pending) // 2)
        for i, f in enumerate(pending[:k]):
            self.assertEqual(f.result(), i * i)

    def test_wait_lets_running_futures_finish(self):
        ex, running, pending = self._start()
        # Let the running task go once the pending futures are cancelled:
        # shutdown(wait=True) must then wait for it.
        threading.Thread(target=lambda: (wait_for(lambda: pending[-1].done()), self._let_go()),
                         daemon=True).start()
        ex.shutdown(wait=True, cancel_futures=True)
        self.assertTrue(running.done(), "shutdown(wait=True) returned before the running future finished")
        self.assertFalse(running.cancelled())
        self.assertEqual(running.result(), "released")
        self._check_pending(pending)
        with self.assertRaises(RuntimeError):
            ex.submit(helpers.square, 1)

    def test_no_wait_lets_running_futures_finish(self):
        ex, running, pending = self._start()
        try:
            ex.shutdown(wait=False, cancel_futures=True)
            # It returned while the running task cannot end until told to.
            self.assertFalse(running.done())
            self.assertTrue(wait_for(lambda: pending[-1].done()))
            self.assertTrue(pending[-1].cancelled())
            self._let_go()
            self.assertEqual(running.result(timeout=60), "released")
            self.assertTrue(wait_for(lambda: all(f.done() for f in pending)))
            self._check_pending(pending)
        finally:
            self._let_go()
            ex.shutdown(wait=True)


class StdlibShutdown(ShutdownCancelFutures, unittest.TestCase):
    def executor(self, n):
        return concurrent.futures.ProcessPoolExecutor(n, mp_context=multiprocessing.get_context("spawn"))


class SafepoolShutdown(ShutdownCancelFutures, unittest.TestCase):
    def executor(self, n):
        return safepool.Executor(n)


class CancelledFuturesAreDone(unittest.TestCase):
    """concurrent.futures.wait() and as_completed() count a cancelled future
    as done only once its executor has called set_running_or_notify_cancel()
    on it. A future cancelled before it was sent used to stay out of their
    reach, and wait() on it waited forever."""

    def _busy_executor(self):
        """An executor of one worker held busy until the cleanup, with
        futures queued behind it (at most two are sent ahead)."""
        d = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, d)
        started, release = os.path.join(d, "started"), os.path.join(d, "release")
        ex = safepool.Executor(1)
        self.addCleanup(ex.shutdown, wait=True)
        self.addCleanup(lambda: open(release, "w").close())
        ex.submit(helpers.hold, started, release)
        self.assertTrue(wait_for(lambda: os.path.exists(started)), "the first task never started")
        return ex, [ex.submit(helpers.square, i) for i in range(6)]

    def test_wait_on_a_cancelled_future(self):
        ex, queued = self._busy_executor()
        last = queued[-1]
        self.assertTrue(last.cancel())
        done, not_done = concurrent.futures.wait([last], timeout=10)
        self.assertEqual((done, not_done), ({last}, set()))
        self.assertEqual(list(concurrent.futures.as_completed([last], timeout=10)), [last])
        self.assertTrue(last.cancel())  # cancelling again says so, and changes nothing

    def test_wait_on_futures_cancelled_by_shutdown(self):
        # (ProcessPoolExecutor leaves these out of wait()'s reach too.)
        ex, queued = self._busy_executor()
        ex.shutdown(wait=False, cancel_futures=True)
        cancelled = [f for f in queued if f.cancelled()]
        self.assertGreaterEqual(len(cancelled), 3)
        done, not_done = concurrent.futures.wait(cancelled, timeout=10)
        self.assertEqual(not_done, set())


class ExecutorTest(unittest.TestCase):
    def test_is_an_executor(self):
        with safepool.Executor(2) as ex:
            self.assertIsInstance(ex, concurrent.futures.Executor)
            f = ex.submit(helpers.add, 2, b=3)
            self.assertIsInstance(f, concurrent.futures.Future)
            self.assertEqual(f.result(timeout=60), 5)

    def test_waiting_in_a_done_callback_raises(self):
        # Done callbacks run in the thread that delivers the results: one
        # that waits for another future of the same executor would wait
        # forever, and so would every later future and the shutdown. It
        # gets an error. (In a child: a hang must fail the test, not stop it.)
        code = textwrap.dedent("""
            import time, safepool
            from tests import helpers
            got = []
            with safepool.Executor(2) as ex:
                def callback(f):
                    for wait in (lambda: ex.submit(helpers.square, f.result()).result(),
                                 lambda: ex.submit(helpers.square, 2).exception(),
                                 lambda: next(ex.map(helpers.square, [1]))):
                        try:
                            got.append(wait())
                        except BaseException as e:
                            got.append(e)

                ex.submit(helpers.square, 3).add_done_callback(callback)
                assert ex.submit(helpers.square, 4).result(timeout=20) == 16
                deadline = time.monotonic() + 20
                while len(got) < 3 and time.monotonic() < deadline:
                    time.sleep(0.01)
                print([type(e).__name__ for e in got], "callback" in str(got[0]))
                print(list(ex.map(helpers.square, range(3), timeout=20)))
        """)
        out = subprocess.run([sys.executable, "-c", code], env=child_env(), cwd=PYTHON_DIR, capture_output=True,
                             text=True, timeout=90)
        self.assertEqual(out.returncode, 0, out.stderr)
        self.assertEqual(out.stdout, "['RuntimeError', 'RuntimeError', 'RuntimeError'] True\n[0, 1, 4]\n")

    def test_death_fails_only_its_future(self):
        with safepool.Executor(2) as ex:
            futs = [ex.submit(helpers.kill_self_at, i) for i in range(12)]
            for i, f in enumerate(futs):
                if i == 7:
                    e = f.exception(timeout=60)
                    self.assertIsInstance(e, safepool.WorkerDied)
                    self.assertEqual(e.cause, "signal:SIGKILL")
                    self.assertEqual(e.task_args, ((7,), {}))
                else:
                    self.assertEqual(f.result(timeout=60), i * i)
            # Still usable afterwards.
            self.assertEqual(ex.submit(helpers.square, 5).result(timeout=60), 25)
            self.assertEqual(list(ex.map(helpers.square, range(5))), [0, 1, 4, 9, 16])

    def test_exception_with_remote_traceback(self):
        with safepool.Executor(1) as ex:
            f = ex.submit(helpers.fail_at, 2)
            e = f.exception(timeout=60)
            self.assertIsInstance(e, ValueError)
            self.assertIsInstance(e.__cause__, safepool.RemoteTraceback)

    def test_map_buffersize_reads_lazily(self):
        pulled = []

        def gen():
            for i in range(2000):
                pulled.append(i)
                yield i

        with safepool.Executor(2) as ex:
            it = ex.map(helpers.square, gen(), buffersize=10)
            for n, v in enumerate(it):
                self.assertEqual(v, n * n)
                self.assertLessEqual(len(pulled) - n, 10 + 1)

    def test_map_that_raises_runs_no_more_of_its_input(self):
        # As ProcessPoolExecutor's map, whose iterator cancels the futures
        # not yet running when it ends early: leaving the with block after
        # a task's exception used to run the whole rest of the input (the
        # iterator lived on in a cycle with the exception, and shutdown
        # runs all of a map still held).
        # (Not assertRaises, which clears the traceback's frames: a program
        # keeps the exception, to log it or raise it again.)
        raised = None
        with safepool.Executor(2) as ex:
            try:
                for _ in ex.map(helpers.fail_at_value, [0.0, -1.0] + [0.005] * 2000, buffersize=8):
                    pass
            except ValueError as e:
                raised = e
        self.assertIsInstance(raised, ValueError)
        self.assertLess(len(ex.stats()), 100)

    def test_map_timed_out_runs_no_more_of_its_input(self):
        raised = None
        with safepool.Executor(2) as ex:
            try:
                for _ in ex.map(helpers.fail_at_value, [0.0] + [0.05] * 2000, timeout=0.3, buffersize=8):
                    pass
            except concurrent.futures.TimeoutError as e:
                raised = e
        self.assertIsInstance(raised, concurrent.futures.TimeoutError)
        self.assertLess(len(ex.stats()), 100)

    def test_map_task_raising_stop_iteration(self):
        # As ProcessPoolExecutor's map (a generator, PEP 479): the task's
        # StopIteration becomes a RuntimeError there. It used to end the
        # results early, without an error: list() gave [0].
        with safepool.Executor(2) as ex:
            it = ex.map(helpers.stop_at, range(4))
            self.assertEqual(next(it), 0)
            with self.assertRaisesRegex(RuntimeError, "StopIteration") as cm:
                next(it)
            self.assertIsInstance(cm.exception.__cause__, StopIteration)
            self.assertEqual(list(ex.map(helpers.stop_at, [0, 2, 3])), [0, 2, 3])

    def test_map_several_iterables(self):
        with safepool.Executor(2) as ex:
            self.assertEqual(list(ex.map(helpers.add, [1, 2, 3], [10, 20, 30])), [11, 22, 33])

    def test_map_bad_chunksize_raises_from_the_call(self):
        # As ProcessPoolExecutor.map. A negative chunksize used to reach the
        # thread that reads the input unchecked, and the map waited forever.
        with safepool.Executor(1) as ex:
            for bad in (0, -1):
                with self.assertRaisesRegex(ValueError, "chunksize must be at least 1"):
                    ex.map(helpers.square, range(3), chunksize=bad)
            self.assertEqual(list(ex.map(helpers.square, range(3), chunksize=10 ** 9, timeout=60)), [0, 1, 4])

    def test_map_results_after_shutdown(self):
        # As ProcessPoolExecutor, whose map submits all at once: shutdown()
        # waits for the whole map, and its results are all there after.
        # safepool's map reads ahead only a few batches, and it used to
        # end after them, without an error.
        ex = safepool.Executor(2)
        it = ex.map(helpers.square, range(300))
        ex.shutdown(wait=True)
        self.assertEqual(list(it), [i * i for i in range(300)])

    def test_shutdown(self):
        ex = safepool.Executor(1)
        f = ex.submit(helpers.sleep_for, 0.2)
        ex.shutdown(wait=True)
        self.assertEqual(f.result(), 0.2)
        with self.assertRaises(RuntimeError):
            ex.submit(helpers.square, 1)

    def test_private_worker_counts(self):
        # Read by programs written for the standard library's pools.
        with safepool.Executor(2) as ex:
            self.assertEqual(ex._max_workers, 2)
        with safepool.Pool(3) as pool:
            self.assertEqual(pool._processes, 3)

    def test_map_cut_by_shutdown_raises_a_cancelled_error(self):
        # As ProcessPoolExecutor's map over futures that shutdown(
        # cancel_futures=True) cancelled: a concurrent.futures.CancelledError
        # (safepool's TaskCancelled is one), which code catches.
        self.assertTrue(issubclass(safepool.TaskCancelled, concurrent.futures.CancelledError))
        self.assertTrue(issubclass(safepool.TaskCancelled, safepool.TaskFailed))
        ex = safepool.Executor(1)
        it = ex.map(helpers.sleep_for, [0.3] + [0] * 200)
        ex.shutdown(wait=False, cancel_futures=True)
        with self.assertRaises(concurrent.futures.CancelledError):
            list(it)

    def test_abort_policy_breaks_the_executor(self):
        ex = safepool.Executor(1, on_worker_death="abort")
        try:
            f = ex.submit(helpers.kill_self_at, 7)
            self.assertIsInstance(f.exception(timeout=60), safepool.WorkerDied)
            with self.assertRaises(safepool.BrokenPool):
                ex.submit(helpers.square, 1)
        finally:
            ex.shutdown(cancel_futures=True)


class StandardLibrarysName(unittest.TestCase):
    """`from safepool import ProcessPoolExecutor` in place of
    `from concurrent.futures import ProcessPoolExecutor`, and the code
    stays as it was."""

    def test_the_name_is_the_executor(self):
        from safepool import ProcessPoolExecutor
        self.assertIs(ProcessPoolExecutor, safepool.Executor)
        self.assertIn("ProcessPoolExecutor", safepool.__all__)
        with ProcessPoolExecutor(max_workers=1) as ex:
            self.assertEqual(ex.submit(helpers.square, 7).result(timeout=60), 49)
            self.assertEqual(list(ex.map(helpers.square, range(3), timeout=60)), [0, 1, 4])


if __name__ == "__main__":
    unittest.main()
