"""The direct result path (safepool._direct, docs/python.md): a map's
values go from the worker straight to the client, then the worker tells the
binary that the range is answered. A worker killed before it wrote them has
delivered nothing; one killed after it wrote them and before it told the
binary has delivered them, and the binary runs the items again: the client
keeps the first values and ignores the others. In both cases the death is
charged to the item in the running-item page, and no value is lost or
settled twice."""
import functools
import os
import shutil
import tempfile
import textwrap
import time
import unittest

import safepool
from tests import direct_helpers as dh
from tests import helpers
from tests.support import item_runs, run_client
from tests.test_direct import io_bytes


class DirectResults(unittest.TestCase):
    def setUp(self):
        self.dir = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, self.dir, True)

    def runs(self):
        """How many times each item ran."""
        return item_runs(self.dir)

    def marked(self, name):
        """Whether the file name appears in the test's directory within 10
        s: a worker writes "killed-after" once its values went, and the
        client may have them, and the map may return, before the worker
        gets the CPU again to write it. Ask while the pool runs: its end
        would kill the worker before it writes."""
        deadline = time.monotonic() + 10
        while not os.path.exists(os.path.join(self.dir, name)):
            if time.monotonic() > deadline:
                return False
            time.sleep(0.01)
        return True

    def warm(self, pool):
        # The workers' pipes are made, and the function's time per item is
        # known (the map below keeps its chunksize anyway).
        self.assertEqual(pool.map(helpers.square, range(200)), [x * x for x in range(200)])

    def warm_one(self, pool):
        """warm, for a pool of one worker, whose pipe is then open at both
        ends: its client opens it once it reads the worker's announcement,
        which on a loaded machine may come after the first map."""
        self.warm(pool)
        deadline = time.monotonic() + 30
        while pool.apply(dh.pipe_state) != (True, True):
            self.assertLess(time.monotonic(), deadline, "the client never opened the worker's pipe")
            time.sleep(0.01)

    def test_killed_after_the_values_keeps_the_first(self):
        # The worker dies after its values reached the client and before
        # the binary heard of them: the items run again, item 7 (the last
        # marked in the page) charged; the values returned are the dead
        # worker's, each once.
        fn = functools.partial(dh.die_around_send, self.dir, "after", 3)
        with safepool.SafePool(1, retry_killed_tasks=1, initializer=dh.hold_long) as pool:
            self.warm_one(pool)
            first = pool.map(helpers.pid_of, [0])[0]
            out = pool.map(fn, range(8), chunksize=8)
            self.assertTrue(self.marked("killed-after"), "the direct path was not taken")
            killed = pool.get_killed_tasks()
            self.assertEqual(pool.failed_tasks(), [])
            after = pool.map(helpers.pid_of, [0])[0]
        self.assertEqual([v for v, _ in out], [x * x for x in range(8)])
        self.assertEqual({pid for _, pid in out}, {first})
        self.assertNotEqual(after, first)
        self.assertEqual([args for _, args in killed], [(7,)])
        self.assertEqual(self.runs(), {x: 2 for x in range(8)})

    def test_killed_after_the_values_yields_each_once(self):
        # The same through imap_unordered, which yields every value it
        # settles: none twice, none missing.
        fn = functools.partial(dh.die_around_send, self.dir, "after", 3)
        with safepool.Pool(1, retries=1, initializer=dh.hold_long) as pool:
            self.warm_one(pool)
            out = list(pool.imap_unordered(fn, range(8), chunksize=8))
            self.assertTrue(self.marked("killed-after"), "the direct path was not taken")
        self.assertEqual(sorted(v for v, _ in out), [x * x for x in range(8)])
        self.assertEqual(len({pid for _, pid in out}), 1)

    def test_killed_after_the_values_without_retries(self):
        # No retries: the binary fails item 7, whose value the client has
        # already; the first value stands, and the pool goes on.
        fn = functools.partial(dh.die_around_send, self.dir, "after", 3)
        with safepool.Pool(1, initializer=dh.hold_long) as pool:
            self.warm_one(pool)
            out = pool.map_async(fn, range(8), chunksize=8, errors="return").get(60)
            self.assertTrue(self.marked("killed-after"), "the direct path was not taken")
            self.assertEqual(pool.map(helpers.square, range(5)), [0, 1, 4, 9, 16])
        self.assertEqual([v for v, _ in out], [x * x for x in range(8)])

    def test_killed_before_the_values_delivers_nothing(self):
        # The worker dies before it wrote its values: they run again
        # elsewhere (item 7 charged) and come from the new worker.
        fn = functools.partial(dh.die_around_send, self.dir, "before", 3)
        with safepool.SafePool(1, retry_killed_tasks=1, initializer=dh.hold_long) as pool:
            self.warm_one(pool)
            first = pool.map(helpers.pid_of, [0])[0]
            out = pool.map(fn, range(8), chunksize=8)
            killed = pool.get_killed_tasks()
            self.assertEqual(pool.failed_tasks(), [])
        self.assertTrue(os.path.exists(os.path.join(self.dir, "killed-before")))
        self.assertEqual([v for v, _ in out], [x * x for x in range(8)])
        self.assertNotIn(first, {pid for _, pid in out})
        self.assertEqual([args for _, args in killed], [(7,)])
        self.assertEqual(self.runs(), {x: 2 for x in range(8)})

    def test_killed_before_the_values_without_retries(self):
        fn = functools.partial(dh.die_around_send, self.dir, "before", 3)
        with safepool.Pool(1, initializer=dh.hold_long) as pool:
            self.warm_one(pool)
            out = pool.map_async(fn, range(8), chunksize=8, errors="return").get(60)
            failed = pool.failed_tasks()
        self.assertIsInstance(out[7], safepool.WorkerDied)
        self.assertEqual((out[7].cause, out[7].attempts), ("signal:SIGKILL", 1))
        self.assertEqual([v for v, _ in out[:7]], [x * x for x in range(7)])
        self.assertEqual([(f.args, f.cause) for f in failed], [(7, "signal:SIGKILL")])

    def test_values_do_not_pass_through_the_supervisor(self):
        # A warm map's values (about 1 MB pickled) go straight to the
        # client: the supervisor reads and writes only its frames.
        n = 200000
        with safepool.Pool(2) as pool:
            self.warm(pool)
            pool.map(helpers.square, range(n))
            before = io_bytes(pool._core.pid)
            self.assertEqual(pool.map(helpers.square, range(n)), [x * x for x in range(n)])
            after = io_bytes(pool._core.pid)
        read, written = after[0] - before[0], after[1] - before[1]
        self.assertLess(read, 256 << 10, "the supervisor read %d bytes" % read)
        self.assertLess(written, 256 << 10, "the supervisor wrote %d bytes" % written)

    def test_single_items_leave_the_pipes_unread(self):
        # A worker sends no value of a batch of one item straight to the
        # client, so the answer of such a batch is settled without a read
        # of the door and of every worker's pipe first; a range's answer
        # still waits for them.
        with safepool.Pool(2) as pool:
            self.warm(pool)
            # The warm map's values came straight: wait for the binary's
            # answers of its ranges, which read the pipes.
            deadline = time.monotonic() + 30
            while pool._core._inflight:
                self.assertLess(time.monotonic(), deadline, "the warm map's ranges were never answered")
                time.sleep(0.01)
            receiver = pool._core._receiver
            self.assertIsNotNone(receiver)
            drains = []
            drain = receiver.drain
            receiver.drain = lambda settle: (drains.append(1), drain(settle))
            self.assertEqual(list(pool.imap(helpers.square, range(300), chunksize=1)), [x * x for x in range(300)])
            self.assertEqual([pool.apply_async(helpers.square, (x,)).get(timeout=60) for x in range(50)],
                             [x * x for x in range(50)])
            self.assertEqual(drains, [], "single items read the workers' pipes")
            self.assertEqual(pool.map(helpers.square, range(4000), chunksize=500), [x * x for x in range(4000)])
            self.assertNotEqual(drains, [], "ranges' answers did not read the workers' pipes")

    def test_replaced_workers_leave_no_pipe(self):
        # Workers replaced after every 2 batches: the new ones' pipes are
        # opened in turn, and those of the ones gone are closed.
        with safepool.Pool(2, max_tasks_per_child=2) as pool:
            self.warm(pool)
            fds = len(os.listdir("/proc/self/fd"))
            for _ in range(20):
                self.assertEqual(pool.map(helpers.square, range(2000), chunksize=500),
                                 [x * x for x in range(2000)])
            pool.map(helpers.square, range(4), chunksize=1)  # the last replacements are read
            self.assertLessEqual(len(os.listdir("/proc/self/fd")), fds + 2)


# A client whose workers it cannot open through /proc (they are not
# dumpable; as root it could anyway, so it runs as nobody): the workers'
# pipes are never read, and their values go through the binary, without a
# worker ever waiting for the client.
UNREADABLE_WORKERS = textwrap.dedent("""
    import os, safepool
    from tests import direct_helpers as dh
    with safepool.Pool(2, initializer=dh.not_dumpable) as pool:
        for n in (20000, 200000, 20000):
            assert pool.map(dh.square, range(n)) == [x * x for x in range(n)]
        assert sorted(pool.imap_unordered(dh.square, range(5000), chunksize=1000)) == [x * x for x in range(5000)]
        assert set(pool.map(dh.pipe_state, range(8), chunksize=1)) == {(True, False)}
    print("ok")
""")


class UnreadableWorkers(unittest.TestCase):
    def test_values_go_through_the_binary(self):
        out = run_client(self, UNREADABLE_WORKERS)
        self.assertEqual(out.stdout.strip(), "ok", out.stderr[-3000:])

if __name__ == "__main__":
    unittest.main()
