"""What a task does to its worker process, and the cause safepool names."""
import os
import shutil
import tempfile
import time
import unittest

import safepool
from tests import exit_helpers as h


class TaskEndsItsWorker(unittest.TestCase):
    def died(self, fn, arg):
        """The WorkerDied of fn(arg) on a fresh pool, and how long it took."""
        with safepool.Pool(1) as pool:
            t = time.monotonic()
            with self.assertRaises(safepool.WorkerDied) as cm:
                pool.apply(fn, (arg,))
            took = time.monotonic() - t
            # The pool goes on with a new worker.
            self.assertEqual(pool.apply(abs, (-2,)), 2)
        return cm.exception, took

    def test_sys_exit_with_a_slow_shutdown_is_its_exit_status(self):
        # The result pipe closed as SystemExit unwound the worker, and the
        # interpreter's shutdown (here an exit handler; on a busy machine,
        # anything) outlasted the binary's patience for a worker whose pipe
        # closed: it was killed and blamed for a protocol error.
        for code, cause in ((3, "exit:3"), (None, "exit:0"), (-1, "exit:255")):
            with self.subTest(code=code):
                e, took = self.died(h.exit_slowly, code)
                self.assertEqual(e.cause, cause, e.history)
                self.assertEqual(e.history[-1].signal, "")
                self.assertLess(took, h.SLOW, "the exit handler held the worker")

    def test_sys_exit_with_a_message_is_exit_1_with_it(self):
        e, _ = self.died(h.exit_slowly, "the input is wrong")
        self.assertEqual(e.cause, "exit:1")
        self.assertIn("the input is wrong", e.history[-1].message)

    def test_sys_exit_is_not_held_by_a_hanging_handler_or_a_thread(self):
        for fn, cause in ((h.exit_hanging, "exit:5"), (h.exit_with_thread, "exit:5")):
            with self.subTest(fn=fn.__name__):
                e, took = self.died(fn, 5)
                self.assertEqual(e.cause, cause, e.history)
                self.assertLess(took, 3.0)

    def test_keyboard_interrupt_in_a_task_is_sigint_at_once(self):
        # The interpreter kept the result pipe open through its shutdown
        # here, and died by SIGINT only after its exit handlers: a handler
        # that never returned held the task forever.
        e, took = self.died(h.interrupt_slowly, 1)
        self.assertEqual(e.cause, "signal:SIGINT", e.history)
        self.assertIn("KeyboardInterrupt: stop at 1", e.history[-1].message)
        # The binary waits 1 s after a death by SIGINT to tell it from a
        # stop of its own.
        self.assertLess(took, h.SLOW, "the exit handler held the worker")

    def test_sys_exit_in_the_initializer_is_its_exit_status(self):
        with self.assertRaises(safepool.BrokenPool) as cm:
            with safepool.Pool(1, initializer=h.init_exit_slowly) as pool:
                pool.apply(abs, (1,))
        self.assertIn("(exit:7)", str(cm.exception))


class TaskRaisesABaseException(unittest.TestCase):
    """A BaseException that is not an Exception (asyncio's CancelledError,
    GeneratorExit, a class of the caller's own) is the task's exception, as
    in ProcessPoolExecutor: re-raised in the parent with its own type, the
    worker kept, no retry. It ended the worker (WorkerDied exit:1) and was
    retried as a death."""

    def test_each_kind_is_raised_with_its_type(self):
        import asyncio
        kinds = (("cancelled", asyncio.CancelledError), ("generatorexit", GeneratorExit),
                 ("own", h.OwnBaseException))
        with safepool.Pool(1, retries=2) as pool:
            first = pool.apply(h.pid, (0,))
            for kind, cls in kinds:
                with self.subTest(kind=kind):
                    with self.assertRaises(cls):
                        pool.apply(h.raise_base, (kind,))
            self.assertEqual(pool.apply(h.pid, (0,)), first, "the worker was replaced")

    def test_in_a_map_the_others_are_answered(self):
        with safepool.Pool(1, retries=2) as pool:
            first = pool.apply(h.pid, (0,))
            for items in (range(5), [0, 1, 2, 3, 4]):
                with self.subTest(items=type(items).__name__):
                    with self.assertRaises(h.OwnBaseException) as cm:
                        pool.map(h.raise_base_at, items, chunksize=5)
                    self.assertIn("at 2", str(cm.exception))
                    got = list(pool.imap(h.raise_base_at, [0, 1, 3, 4], chunksize=1))
                    self.assertEqual(got, [0, 1, 3, 4])
            self.assertEqual(pool.apply(h.pid, (0,)), first, "the worker was replaced")

    def test_executor_sets_it_on_the_future(self):
        import asyncio
        with safepool.Executor(1, retries=2) as ex:
            first = ex.submit(h.pid, 0).result()
            e = ex.submit(h.raise_base, "cancelled").exception()
            self.assertIsInstance(e, asyncio.CancelledError)
            self.assertEqual(ex.submit(h.pid, 0).result(), first, "the worker was replaced")


class TaskLeavesItsWorker(unittest.TestCase):
    def test_a_task_that_takes_sigalrm_keeps_later_soft_timeouts(self):
        # The soft limit's SIGALRM handler was installed once per worker:
        # a task that took SIGALRM (and did not give it back) left every
        # later task of that worker without its soft timeout.
        with safepool.Pool(1, soft_timeout=1) as pool:
            first = pool.apply(h.nap, (0,))
            self.assertEqual(pool.apply(h.take_sigalrm, (1,)), 1)
            t = time.monotonic()
            with self.assertRaises(safepool.SoftTimeLimitExceeded):
                pid = pool.apply(h.nap, (10,))
                self.fail("nap(10) returned from worker %d (the first ran on %d)" % (pid, first))
            self.assertLess(time.monotonic() - t, 8)
            self.assertEqual(pool.apply(h.nap, (0,)), first, "the worker was replaced")


class WorkerEndsWithThePool(unittest.TestCase):
    def test_close_lets_exit_handlers_finish(self):
        # A worker closed its result pipe as its loop returned, before its
        # interpreter's shutdown, and the binary killed it 200 ms later
        # (a protocol fault): exit handlers that took longer were cut off.
        d = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, d)
        pool = safepool.Pool(2, initializer=h.init_saves_at_exit, initargs=(d, 0.6))
        pids = set(pool.map(h.pid, range(20), chunksize=1))
        pool.close()
        pool.join()
        saved = set(int(name) for name in os.listdir(d))
        # Every worker that ran items. (As an unprivileged user, the items
        # often all ran on one worker, and no second one saved.)
        self.assertLessEqual(pids, saved, "saved by %s, the items ran on %s" % (saved, pids))

    def test_close_bounds_a_hanging_exit_handler(self):
        d = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, d)
        pool = safepool.Pool(1, initializer=h.init_saves_at_exit, initargs=(d, 3600), grace=1)
        self.assertEqual(pool.apply(abs, (-1,)), 1)
        t = time.monotonic()
        pool.close()
        pool.join()
        self.assertLess(time.monotonic() - t, 20)


class BinaryKilled(unittest.TestCase):
    def test_a_binary_killed_under_the_pool_breaks_it_and_says_so(self):
        # The flag that tells terminate()'s own kill of the binary from an
        # unexpected end shared its name with killed_tasks()'s records,
        # which are never false: every end of the binary was taken for
        # terminate()'s, and the tasks were "cancelled: the pool stopped".
        pool = safepool.Pool(1)
        self.addCleanup(pool.terminate)
        with self.assertRaises(safepool.BrokenPool) as cm:
            pool.apply(h.kill_the_binary, (1,))
        self.assertIn("the safepool binary exited unexpectedly (status -9)", str(cm.exception))
        with self.assertRaises(safepool.BrokenPool):
            pool.apply(abs, (1,))


if __name__ == "__main__":
    unittest.main()
