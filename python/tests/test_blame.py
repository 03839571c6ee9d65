"""A worker that dies in the middle of a chunk of items costs only the item
it was running: the items whose answers it had sent stay done and never run
again; those it ran but had not answered yet (it holds quick items' answers
for up to worker.HOLD seconds, to send them as one frame), and those sent to
it behind the item that killed it, run again elsewhere, uncharged
(invariant 2)."""
import functools
import os
import shutil
import tempfile
import unittest

import safepool
from tests import helpers
from tests.support import item_runs


class MidChunkDeath(unittest.TestCase):
    def setUp(self):
        self.dir = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, self.dir)

    def runs(self):
        """How many times each item ran."""
        return item_runs(self.dir)

    def runs_after(self, at):
        """How many times each item from at on ran; those before it must
        have run once, or twice when their answers were still held (quick
        items: internal/bridge's TestBatchPageBlame checks that case
        exactly)."""
        runs = self.runs()
        for x in range(at):
            self.assertIn(runs.pop(x), (1, 2), "item %d" % x)
        return runs

    def test_retry_charges_only_the_running_item(self):
        fn = functools.partial(helpers.die_once_at, self.dir)
        with safepool.SafePool(1, retry_killed_tasks=1) as pool:
            self.assertEqual(pool.map(fn, range(8), chunksize=8), [x * x for x in range(8)])
            killed = pool.get_killed_tasks()
            self.assertEqual(pool.failed_tasks(), [])
        self.assertEqual([args for _, args in killed], [(3,)])
        self.assertEqual(self.runs_after(3), {3: 2, 4: 1, 5: 1, 6: 1, 7: 1})

    def test_skip_fails_only_the_running_item(self):
        fn = functools.partial(helpers.die_once_at, self.dir)
        with safepool.Pool(1) as pool:
            out = pool.map_async(fn, range(8), chunksize=8, errors="return").get(60)
            failed = pool.failed_tasks()
        self.assertIsInstance(out[3], safepool.WorkerDied)
        self.assertEqual((out[3].cause, out[3].attempts, out[3].state), ("signal:SIGKILL", 1, "failed"))
        self.assertEqual([x for i, x in enumerate(out) if i != 3], [x * x for x in range(8) if x != 3])
        self.assertEqual([(f.args, f.cause, f.attempts) for f in failed], [(3, "signal:SIGKILL", 1)])
        self.assertEqual(self.runs_after(3), {x: 1 for x in range(3, 8)})

    def test_sent_answers_never_run_again(self):
        # Items 0 to 2 take longer than the worker holds answers: each is
        # sent before the next starts, and stays done when 3 kills it.
        fn = functools.partial(helpers.die_once_at_after, self.dir, 0.08)
        with safepool.Pool(1) as pool:
            out = pool.map_async(fn, range(6), chunksize=6, errors="return").get(60)
        self.assertIsInstance(out[3], safepool.WorkerDied)
        self.assertEqual([x for i, x in enumerate(out) if i != 3], [x * x for x in range(6) if x != 3])
        self.assertEqual(self.runs(), {x: 1 for x in range(6)})

    def test_a_range_travels_as_ranges(self):
        # A range's chunks go as ranges (a stepped one too); the rest of a
        # chunk behind a death runs again from the same range.
        items = range(40, 0, -3)
        fn = functools.partial(helpers.die_once_at, self.dir, at=22)
        with safepool.SafePool(2, retry_killed_tasks=1) as pool:
            self.assertEqual(pool.map(fn, items, chunksize=7), [x * x for x in items])
            killed = pool.get_killed_tasks()
        self.assertEqual([args for _, args in killed], [(22,)])
        runs = self.runs()
        self.assertEqual(runs.pop(22), 2)
        for x in items[:6]:  # before it in its chunk: held answers may run again
            self.assertIn(runs.pop(x), (1, 2), "item %d" % x)
        self.assertEqual(runs, {x: 1 for x in items[7:]})

    def test_a_range_marks_its_items_by_their_numbers(self):
        # The worker marks a range's items by their numbers, with the
        # batch's first number as the page's bias: a death is charged to
        # its item in a batch whose numbers do not start at 0, and in the
        # rest of it, split off after the first death, whose first number
        # is another.
        items = range(100, 112)
        fn = functools.partial(helpers.die_once_at_each, self.dir, (103, 108))
        with safepool.SafePool(1, retry_killed_tasks=1) as pool:
            self.assertEqual(pool.map(fn, items, chunksize=12), [x * x for x in items])
            killed = pool.get_killed_tasks()
        # In either order: 103's retry may run before or after the rest of
        # the batch, in which 108 dies.
        self.assertEqual(sorted(args for _, args in killed), [(103,), (108,)])
        runs = self.runs()
        self.assertEqual((runs.pop(103), runs.pop(108)), (2, 2))
        for x in (100, 101, 102, 104, 105, 106, 107):  # ran before a death: held answers may run again
            self.assertIn(runs.pop(x), (1, 2), "item %d" % x)
        self.assertEqual(runs, {x: 1 for x in range(109, 112)})


if __name__ == "__main__":
    unittest.main()


class BatchTimeout(unittest.TestCase):
    def test_timeout_bounds_each_item_of_a_chunk(self):
        # A chunk of 5 items of 0.4 s runs 2 s, longer than the timeout of
        # 1 s: the timeout is each item's, not the chunk's.
        with safepool.Pool(1, timeout=1.0) as pool:
            self.assertEqual(pool.map(helpers.sleep_for, [0.4] * 5, chunksize=5), [0.4] * 5)
            out = pool.map_async(helpers.sleep_for, [0.1, 30, 0.1], chunksize=3, errors="return").get(60)
        self.assertEqual(out[0], 0.1)
        self.assertEqual(out[2], 0.1)
        self.assertIsInstance(out[1], safepool.WorkerDied)
        self.assertEqual(out[1].cause, "timeout")
