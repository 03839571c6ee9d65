"""Per-call and pool-wide limits: timeout, soft_timeout, retry_on, mem and
wait_timeout, on real worker processes."""
import concurrent.futures
import os
import tempfile
import time
import unittest

import safepool
from tests import helpers


class TaskTimeout(unittest.TestCase):
    def test_apply_async_timeout(self):
        with safepool.Pool(2) as pool:
            t0 = time.monotonic()
            slow = pool.apply_async(time.sleep, (30,), timeout=1)
            neighbour = pool.apply_async(time.sleep, (2,))
            with self.assertRaises(safepool.WorkerDied) as cm:
                slow.get(20)
            self.assertLess(time.monotonic() - t0, 15)
            self.assertEqual(cm.exception.cause, "timeout")
            self.assertIn("killed after 1s", cm.exception.history[-1].message)
            self.assertIsNone(neighbour.get(20))
            self.assertEqual([t.cause for t in pool.failed_tasks()], ["timeout"])

    def test_call_timeout_longer_than_pool_default(self):
        with safepool.Pool(1, timeout=0.5) as pool:
            self.assertIsNone(pool.apply_async(time.sleep, (1.5,), timeout=30).get(20))
            with self.assertRaises(safepool.WorkerDied) as cm:
                pool.apply_async(time.sleep, (30,)).get(20)
            self.assertEqual(cm.exception.cause, "timeout")

    def test_executor_submit_with_timeout(self):
        with safepool.Executor(2) as ex:
            slow = ex.submit_with(time.sleep, (30,), timeout=1)
            neighbour = ex.submit(time.sleep, 1)
            with self.assertRaises(safepool.WorkerDied) as cm:
                slow.result(20)
            self.assertEqual(cm.exception.cause, "timeout")
            self.assertIsNone(neighbour.result(20))

    def test_timeout_is_a_timeout_error(self):
        # As pebble's ProcessPool.schedule(timeout=...): the task's future
        # fails with an exception that `except TimeoutError` (and
        # concurrent.futures.TimeoutError) catches, its worker is killed,
        # and the next task runs on a fresh one.
        with safepool.Executor(1) as ex:
            slow = ex.submit_with(helpers.pid_of, (), timeout=30)
            first = slow.result(20)
            late = ex.submit_with(time.sleep, (30,), timeout=0.5)
            after = ex.submit(helpers.pid_of)
            try:
                late.result(20)
            except TimeoutError as e:
                caught = e
            self.assertIsInstance(caught, concurrent.futures.TimeoutError)
            self.assertIsInstance(caught, safepool.TaskTimeout)
            self.assertIsInstance(caught, safepool.WorkerDied)
            self.assertEqual(caught.cause, "timeout")
            self.assertNotEqual(after.result(20), first)
        with safepool.Pool(1, timeout=0.5) as pool:
            out = pool.map(time.sleep, [30, 0], errors="return")
            self.assertIsInstance(out[0], TimeoutError)
            self.assertEqual(out[1], None)
            # A death of another cause is not one.
            died = pool.apply_async(helpers.kill_self_at, (7,))
            with self.assertRaises(safepool.WorkerDied) as cm:
                died.get(20)
            self.assertNotIsInstance(cm.exception, TimeoutError)

    def test_bad_timeout(self):
        with safepool.Pool(1) as pool:
            with self.assertRaises(ValueError):
                pool.apply_async(time.sleep, (0,), timeout=0)
            with self.assertRaises(TypeError):
                pool.apply_async(time.sleep, (0,), retry_on="ConnectionError")


class SoftTimeout(unittest.TestCase):
    def test_uncaught(self):
        with safepool.Pool(1) as pool:
            pid = pool.apply(os.getpid)
            t0 = time.monotonic()
            with self.assertRaises(safepool.SoftTimeLimitExceeded):
                pool.apply_async(helpers.soft_sleep, (30, False), soft_timeout=0.5, timeout=20).get(20)
            self.assertLess(time.monotonic() - t0, 15)
            self.assertEqual(pool.apply(os.getpid), pid)  # the worker survived
            self.assertTrue(issubclass(safepool.SoftTimeLimitExceeded, Exception))

    def test_caught(self):
        with safepool.Pool(1) as pool:
            self.assertEqual(pool.apply_async(helpers.soft_sleep, (30, True), soft_timeout=0.5).get(20), "caught")
            # The limit is per item: one that ends in time is not disturbed.
            self.assertEqual(pool.apply_async(helpers.soft_sleep, (0.1, True), soft_timeout=0.5).get(20), "slept")
            time.sleep(0.6)  # no alarm is left armed in the worker
            self.assertEqual(pool.apply(helpers.square, (3,)), 9)

    def test_pool_default_in_map(self):
        with safepool.Pool(1, soft_timeout=0.3) as pool:
            self.assertEqual(pool.starmap(helpers.soft_sleep, [(30, True), (0, True), (30, True)], chunksize=3),
                             ["caught", "slept", "caught"])


class RetryOn(unittest.TestCase):
    def setUp(self):
        self.dir = tempfile.mkdtemp()
        self.counter = os.path.join(self.dir, "n")

    def tearDown(self):
        if os.path.exists(self.counter):
            os.unlink(self.counter)
        os.rmdir(self.dir)

    def test_pool_retry_on(self):
        with safepool.Pool(1, retries=2, retry_on=(ConnectionError,), backoff=0.01) as pool:
            self.assertEqual(pool.apply(helpers.fail_first, (self.counter, 2)), 3)
            self.assertEqual(pool.failed_tasks(), [])

    def test_retries_exhausted(self):
        with safepool.Pool(1, retries=1, retry_on=ConnectionError, backoff=0.01) as pool:
            with self.assertRaises(ConnectionError):
                pool.apply(helpers.fail_first, (self.counter, 2))

    def test_other_exception_not_retried(self):
        with safepool.Pool(1, retries=2, retry_on=(ConnectionError,), backoff=0.01) as pool:
            with self.assertRaises(ValueError):
                pool.apply(helpers.fail_first, (self.counter, 2, ValueError))
            with open(self.counter) as f:
                self.assertEqual(f.read(), "x")

    def test_per_call(self):
        with safepool.Executor(1, retries=2, backoff=0.01) as ex:
            f = ex.submit_with(helpers.fail_first, (self.counter, 2), retry_on=(ConnectionError,))
            self.assertEqual(f.result(20), 3)


class MemHint(unittest.TestCase):
    """Two tasks that each wait for the other: they meet only if they run
    at once."""

    def run_pair(self, mem, wait):
        with tempfile.TemporaryDirectory() as d:
            with safepool.Pool(2, mem_budget="1GiB", mem_per_task="16MiB") as pool:
                pool.map(helpers.span, [0.3] * 4, chunksize=1)  # both workers up, peaks known
                rs = [pool.apply_async(helpers.rendezvous, (d, 2, wait), mem=mem) for _ in range(2)]
                return sorted(r.get(60) for r in rs)

    def test_hint_serializes(self):
        (s1, e1, met1), (s2, e2, met2) = self.run_pair("700MiB", 2.0)
        self.assertFalse(met1, "two tasks of 700MiB each ran at once within 1GiB")
        self.assertGreaterEqual(s2, e1)

    def test_no_hint_overlaps(self):
        (s1, e1, met1), (s2, e2, met2) = self.run_pair(None, 20.0)
        self.assertTrue(met1 and met2, "the two tasks did not run at once")


class WaitTimeoutTest(unittest.TestCase):
    def test_waited_too_long(self):
        self.assertTrue(issubclass(safepool.WaitTimeout, TimeoutError))
        with tempfile.TemporaryDirectory() as d:
            marker = os.path.join(d, "ran")
            with safepool.Pool(1) as pool:
                pool.apply(helpers.square, (1,))  # the worker is up
                busy = pool.apply_async(time.sleep, (3,))
                late = pool.apply_async(helpers.touch, (marker,), wait_timeout=1)
                patient = pool.apply_async(helpers.square, (4,), wait_timeout=30)
                with self.assertRaises(safepool.WaitTimeout):
                    late.get(20)
                self.assertEqual(patient.get(20), 16)
                busy.get(20)
                self.assertFalse(os.path.exists(marker), "a task past its wait_timeout ran")
                self.assertEqual([t.cause for t in pool.failed_tasks()], ["wait-timeout"])

    def test_pool_default(self):
        with safepool.Pool(1, wait_timeout=1) as pool:
            pool.apply(helpers.square, (1,))
            busy = pool.apply_async(time.sleep, (3,))
            late = pool.apply_async(helpers.square, (2,))
            with self.assertRaises(safepool.WaitTimeout):
                late.get(20)
            busy.get(20)


if __name__ == "__main__":
    unittest.main()
