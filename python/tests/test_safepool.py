"""safepool.SafePool: the SafePool library's interface, on real workers that
are really killed."""
import functools
import os
import shutil
import tempfile
import unittest

import safepool
from tests import helpers
from tests.support import skip_or_fail


class SafePoolSkips(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.pool = safepool.SafePool(processes=2)

    @classmethod
    def tearDownClass(cls):
        cls.pool.terminate()

    def test_killed_task_is_none_in_map(self):
        out = self.pool.map(helpers.kill_self_at, range(12), chunksize=4)
        self.assertEqual(out, [None if i == 7 else i * i for i in range(12)])
        self.assertIn((helpers.kill_self_at, (7,)), self.pool.get_killed_tasks())

    def test_map_async_imap_starmap_apply(self):
        self.assertEqual(self.pool.map_async(helpers.kill_self_at, range(9)).get(timeout=60),
                         [None if i == 7 else i * i for i in range(9)])
        self.assertEqual(list(self.pool.imap(helpers.kill_self_at, range(9))),
                         [None if i == 7 else i * i for i in range(9)])
        self.assertEqual(sorted(self.pool.imap_unordered(helpers.kill_self_at, range(9)), key=str),
                         sorted([None if i == 7 else i * i for i in range(9)], key=str))
        self.assertEqual(self.pool.starmap(helpers.kill_self_at, [(1,), (7,)]), [1, None])
        self.assertIsNone(self.pool.apply(helpers.kill_self_at, (7,)))
        killed = self.pool.get_killed_tasks()
        self.assertIn((helpers.kill_self_at, (7,)), killed)
        self.assertEqual({f for f, _ in killed}, {helpers.kill_self_at})

    def test_exceptions_are_raised(self):
        # Only deaths give None: a task's own exception is raised, as
        # multiprocessing raises it.
        with self.assertRaises(ValueError):
            self.pool.map(helpers.fail_at, range(4))
        self.assertEqual(self.pool.map(helpers.fail_at, range(4), errors="return")[:2], [0, 1])


class SafePoolOptions(unittest.TestCase):
    def test_retry_killed_tasks(self):
        d = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, d)
        marker = os.path.join(d, "killed")
        with safepool.SafePool(processes=2, retry_killed_tasks=True) as pool:
            out = pool.map(functools.partial(helpers.kill_once, marker=marker), range(10), chunksize=3)
            self.assertEqual(out, [i * i for i in range(10)])
            # The task was killed once and then succeeded: SafePool lists it.
            [(fn, args)] = pool.get_killed_tasks()
            self.assertEqual((fn.func, args), (helpers.kill_once, (3,)))
            self.assertEqual(pool.failed_tasks(), [])

    def test_retries_are_bounded(self):
        with safepool.SafePool(2, retry_killed_tasks=2) as pool:
            self.assertEqual(pool.map(helpers.kill_self_at, [6, 7]), [36, None])
            self.assertEqual([(f.args, f.attempts) for f in pool.failed_tasks()], [(7, 3)])
            self.assertEqual(pool.get_killed_tasks(), [(helpers.kill_self_at, (7,))])

    def test_abort_when_killed(self):
        pool = safepool.SafePool(processes=2, abort_when_killed=True)
        try:
            with self.assertRaises(safepool.SubProcessKilledException) as cm:
                pool.map(helpers.kill_self_at, range(20), chunksize=1)
            self.assertIsInstance(cm.exception, safepool.WorkerDied)
            self.assertEqual(cm.exception.task_args, 7)
            with self.assertRaises(safepool.BrokenPool):
                pool.map(helpers.square, range(3))
        finally:
            pool.terminate()

    def test_positional_arguments_as_safepool(self):
        # SafePool(processes, initializer, initargs, maxtasksperchild,
        # retry_killed_tasks, abort_when_killed)
        d = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, d)
        marker = os.path.join(d, "killed")
        with safepool.SafePool(1, None, (), None, True) as pool:
            self.assertEqual(pool.starmap(helpers.kill_once, [(3, marker)]), [9])

    def test_on_worker_death_is_refused(self):
        with self.assertRaises(TypeError):
            safepool.SafePool(1, on_worker_death="abort")

    def test_oom_kill(self):
        # A task that allocates past mem_limit is killed by the kernel in
        # its worker's cgroup: its result is None and the others come back.
        pool = safepool.SafePool(processes=2, mem_limit="200MiB")
        try:
            if not pool.memory_mode.startswith("cgroup"):
                skip_or_fail(self, "no memory cgroups here (%s)" % pool.memory_mode)
            out = pool.map(helpers.hog_at, range(8), chunksize=4)
            self.assertEqual(out, [None if i == 3 else i * i for i in range(8)])
            self.assertEqual(pool.get_killed_tasks(), [(helpers.hog_at, (3,))])
            self.assertEqual([(f.args, f.cause) for f in pool.failed_tasks()], [(3, "oom")])
        finally:
            pool.terminate()


if __name__ == "__main__":
    unittest.main()
