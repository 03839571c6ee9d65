"""safepool.AsyncPool: the pool for asyncio, on real workers."""
import asyncio
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
import unittest

import safepool
from tests import helpers
from tests.support import PYTHON_DIR, child_env


def wait_file(path, limit=60.0):
    deadline = time.monotonic() + limit
    while not os.path.exists(path) and time.monotonic() < deadline:
        time.sleep(0.01)
    return os.path.exists(path)


class AsyncPoolTest(unittest.TestCase):
    def setUp(self):
        self.dir = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, self.dir)
        self.loop_errors = []

    def run_async(self, coro):
        async def main():
            asyncio.get_running_loop().set_exception_handler(lambda loop, ctx: self.loop_errors.append(ctx))
            return await coro
        result = asyncio.run(main())
        self.assertEqual(self.loop_errors, [], "the event loop reported errors")
        return result

    def test_calls(self):
        async def main():
            async with safepool.AsyncPool(2) as pool:
                self.assertEqual(await pool.apply(helpers.add, (2,), {"b": 3}), 5)
                self.assertEqual(await pool.submit(helpers.add, 2, b=4), 6)
                self.assertEqual(await pool.map(helpers.square, range(50)), [i * i for i in range(50)])
                self.assertEqual(await pool.starmap(helpers.add, [(1, 2), (3, 4)]), [3, 7])
                self.assertEqual([r async for r in pool.imap(helpers.square, range(200))],
                                 [i * i for i in range(200)])
                self.assertEqual(sorted([r async for r in pool.imap_unordered(helpers.square, range(50))]),
                                 [i * i for i in range(50)])
                self.assertEqual(await asyncio.gather(*(pool.apply(helpers.square, (i,)) for i in range(20))),
                                 [i * i for i in range(20)])
                self.assertTrue(pool.stats())
        self.run_async(main())

    def test_worker_death_raises_where_awaited(self):
        async def main():
            async with safepool.AsyncPool(2) as pool:
                with self.assertRaises(safepool.WorkerDied) as cm:
                    await pool.apply(helpers.kill_self_at, (7,))
                self.assertEqual(cm.exception.cause, "signal:SIGKILL")
                with self.assertRaises(safepool.WorkerDied):
                    await pool.map(helpers.kill_self_at, range(10))
                got = []
                it = pool.imap(helpers.kill_self_at, range(10))
                while True:
                    try:
                        got.append(await it.__anext__())
                    except StopAsyncIteration:
                        break
                    except safepool.WorkerDied as e:
                        got.append(e.cause)
                self.assertEqual(got, [i * i if i != 7 else "signal:SIGKILL" for i in range(10)])
                with self.assertRaises(ValueError):
                    await pool.apply(helpers.fail_at, (2,))
                self.assertEqual(await pool.apply(helpers.square, (3,)), 9)
        self.run_async(main())

    def test_task_raising_stop_iteration(self):
        # A task's StopIteration raises where awaited (as a RuntimeError, as
        # from any coroutine), and iteration goes on; it used to end the
        # iteration there, without an error.
        async def main():
            async with safepool.AsyncPool(2) as pool:
                got = []
                it = pool.imap(helpers.stop_at, range(4))
                while True:
                    try:
                        got.append(await it.__anext__())
                    except StopAsyncIteration:
                        break
                    except RuntimeError as e:
                        got.append(type(e.__cause__).__name__)
                self.assertEqual(got, [0, "StopIteration", 2, 3])
        self.run_async(main())

    def test_loop_is_not_blocked(self):
        # While a task runs for a while, other coroutines run: no call
        # blocks the loop's thread.
        started, release = os.path.join(self.dir, "started"), os.path.join(self.dir, "release")

        async def main():
            async with safepool.AsyncPool(1) as pool:
                task = asyncio.ensure_future(pool.apply(helpers.hold, (started, release)))
                ticks = 0
                while not os.path.exists(started):
                    await asyncio.sleep(0.01)
                for _ in range(20):
                    await asyncio.sleep(0.01)
                    ticks += 1
                helpers.touch(release)
                self.assertEqual(await task, "released")
                self.assertEqual(ticks, 20)
        self.run_async(main())

    def test_cancel_a_waiting_call(self):
        # One worker, held by a first task. Cancelling the coroutines that
        # await later calls: those not yet sent to the worker never run,
        # the held one runs to its end, and the pool goes on.
        started, release = os.path.join(self.dir, "started"), os.path.join(self.dir, "release")
        ran = [os.path.join(self.dir, "ran-%d" % i) for i in range(6)]

        async def main():
            async with safepool.AsyncPool(1) as pool:
                held = asyncio.ensure_future(pool.apply(helpers.hold, (started, release)))
                self.assertTrue(await asyncio.get_running_loop().run_in_executor(None, wait_file, started))
                waiting = [asyncio.ensure_future(pool.apply(helpers.touch, (p, i))) for i, p in enumerate(ran)]
                await asyncio.sleep(0.2)
                for w in waiting:
                    w.cancel()
                held.cancel()
                for w in waiting + [held]:
                    with self.assertRaises(asyncio.CancelledError):
                        await w
                helpers.touch(release)
                # The pool goes on; by the time this runs, the worker has
                # run whatever it had been sent.
                self.assertEqual(await pool.apply(helpers.square, (4,)), 16)
                with self.assertRaises(asyncio.TimeoutError):
                    await asyncio.wait_for(pool.apply(helpers.sleep_for, (30,)), 0.5)
                return [os.path.exists(p) for p in ran]

        done = self.run_async(main())
        # At most processes + 1 calls are sent ahead of the worker: the
        # held one and one more. The others were cancelled before they ran.
        self.assertLessEqual(sum(done), 1, done)
        self.assertFalse(any(done[1:]), done)

    def test_leaving_the_block_terminates(self):
        started = os.path.join(self.dir, "started")

        async def main():
            async with safepool.AsyncPool(1) as pool:
                task = asyncio.ensure_future(pool.apply(helpers.hold, (started, os.path.join(self.dir, "never"))))
                self.assertTrue(await asyncio.get_running_loop().run_in_executor(None, wait_file, started))
            with self.assertRaises(safepool.TaskCancelled):
                await task
            with self.assertRaises(ValueError):
                await pool.apply(helpers.square, (1,))
        self.run_async(main())

    def test_close_waits(self):
        async def main():
            async with safepool.AsyncPool(2) as pool:
                calls = [asyncio.ensure_future(pool.apply(helpers.sleep_for, (0.2,))) for _ in range(4)]
                await asyncio.sleep(0)
                await pool.close()
                self.assertTrue(all(c.done() for c in calls))
                self.assertEqual([c.result() for c in calls], [0.2] * 4)
        self.run_async(main())

    def test_close_after_an_imap_left_half_way(self):
        # close() runs the whole input of every imap still alive (as
        # Pool.close does); one left half way is not, so an endless input
        # must not hold close(). It goes at once, without the collector
        # (disabled here): it used to live in a reference cycle. (In a
        # child: a hang must fail the test, not stop it.)
        code = textwrap.dedent("""
            import asyncio, gc, itertools, safepool
            from tests import helpers

            async def main():
                async with safepool.AsyncPool(2) as pool:
                    async for v in pool.imap(helpers.square, itertools.count()):
                        if v > 100:
                            break
                    await pool.close()
                    print("closed", flush=True)

            gc.disable()
            asyncio.run(main())
        """)
        try:
            out = subprocess.run([sys.executable, "-c", code], env=child_env(), cwd=PYTHON_DIR,
                                 capture_output=True, text=True, timeout=60)
        except subprocess.TimeoutExpired:
            self.fail("close() waited for the input of an imap left half way")
        self.assertEqual((out.returncode, out.stdout), (0, "closed\n"), out.stderr)

    def test_imap_results_after_close(self):
        async def main():
            async with safepool.AsyncPool(2) as pool:
                it = pool.imap(helpers.square, range(300))
                await pool.close()
                return [v async for v in it]
        self.assertEqual(self.run_async(main()), [i * i for i in range(300)])

    def test_not_started(self):
        async def main():
            pool = safepool.AsyncPool(1)
            with self.assertRaises(ValueError):
                await pool.apply(helpers.square, (1,))
        self.run_async(main())


if __name__ == "__main__":
    unittest.main()
