"""safepool.Executor: a concurrent.futures.Executor whose workers may die."""
import concurrent.futures
import unittest

import safepool
from tests import helpers


class ExecutorTest(unittest.TestCase):
    def test_is_an_executor(self):
        with safepool.Executor(2) as ex:
            self.assertIsInstance(ex, concurrent.futures.Executor)
            f = ex.submit(helpers.add, 2, b=3)
            self.assertIsInstance(f, concurrent.futures.Future)
            self.assertEqual(f.result(timeout=60), 5)

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

    def test_map_several_iterables(self):
        with safepool.Executor(2) as ex:
            self.assertEqual(list(ex.map(helpers.add, [1, 2, 3], [10, 20, 30])), [11, 22, 33])

    def test_shutdown(self):
        ex = safepool.Executor(1)
        f = ex.submit(helpers.sleep_for, 0.2)
        ex.shutdown(wait=True)
        self.assertEqual(f.result(), 0.2)
        with self.assertRaises(RuntimeError):
            ex.submit(helpers.square, 1)

    def test_abort_policy_breaks_the_executor(self):
        ex = safepool.Executor(1, on_worker_death="abort")
        try:
            f = ex.submit(helpers.kill_self_at, 7)
            self.assertIsInstance(f.exception(timeout=60), safepool.WorkerDied)
            with self.assertRaises(safepool.BrokenPool):
                ex.submit(helpers.square, 1)
        finally:
            ex.shutdown(cancel_futures=True)


if __name__ == "__main__":
    unittest.main()
