"""safepool.Pool: results, failures, policies and worker deaths, on real processes."""
import functools
import itertools
import os
import pickle
import queue
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
import unittest
import warnings
from unittest import mock

import safepool
from safepool import _pickling
from tests import helpers
from tests.support import child_env, skip_or_fail


class PoolBasics(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.pool = safepool.Pool(2)

    @classmethod
    def tearDownClass(cls):
        cls.pool.terminate()

    def test_map(self):
        self.assertEqual(self.pool.map(helpers.square, range(1000)), [i * i for i in range(1000)])

    def test_task_child_is_not_a_worker(self):
        # A program a task starts inherits neither the worker's pipes nor
        # the variables that name them.
        self.assertEqual(self.pool.apply(helpers.child_sees_worker_environment), "[]")

    def test_map_empty(self):
        self.assertEqual(self.pool.map(helpers.square, []), [])

    def test_map_chunksize(self):
        self.assertEqual(self.pool.map(helpers.square, range(10), chunksize=3), [i * i for i in range(10)])

    def chunk_sizes(self, call):
        """The sizes of the batches that call() submits on self.pool."""
        core = self.pool._core
        sizes = []
        submit = core.submit

        def spy(chunk, **kw):
            sizes.append(len(chunk.items))
            submit(chunk, **kw)
        core.submit = spy
        try:
            call()
        finally:
            del core.submit
        return sizes

    def test_map_of_quick_items_goes_in_one_batch_a_worker(self):
        # The first map of a function is cut as multiprocessing does; once
        # its time per item is known (well under a microsecond here; the
        # test allows 10), a map with less than pool.BATCH_WORK of work a
        # worker goes in one batch a worker, which spends less of the
        # pool's per-batch cost. (negate: a function no other test maps.)
        first = self.chunk_sizes(lambda: self.pool.map(helpers.negate, range(20000)))
        self.assertEqual(first, [2500] * 8)
        again = self.chunk_sizes(lambda: self.assertEqual(self.pool.map(helpers.negate, range(400)),
                                                          [-i for i in range(400)]))
        self.assertEqual(again, [200, 200])

    def test_map_of_slow_items_keeps_four_batches_a_worker(self):
        # Items of 10 ms: multiprocessing's chunks, which spread uneven work.
        for _ in range(2):
            sizes = self.chunk_sizes(lambda: self.pool.map(helpers.sleep_for, [0.01] * 16))
            self.assertEqual(sizes, [2] * 8)

    def test_starmap(self):
        self.assertEqual(self.pool.starmap(helpers.add, [(1, 2), (3, 4)]), [3, 7])

    def test_apply(self):
        self.assertEqual(self.pool.apply(helpers.add, (2,), {"b": 5}), 7)

    def test_apply_async_callback(self):
        got = []
        r = self.pool.apply_async(helpers.square, (9,), callback=got.append)
        self.assertEqual(r.get(timeout=30), 81)
        self.assertTrue(r.ready() and r.successful())
        self.assertEqual(got, [81])

    def test_map_async_error_callback(self):
        errs = []
        r = self.pool.map_async(helpers.fail_at, range(5), error_callback=errs.append)
        r.wait(30)
        self.assertFalse(r.successful())
        self.assertIsInstance(errs[0], ValueError)

    def test_map_keeps_order_when_batches_end_out_of_order(self):
        # The first batch ends after the second worker's two: the batches'
        # lists of values come back in another order than theirs (each
        # whole: its items take less than the worker holds values), and
        # make one list in input order.
        items = [0.0004] * 4 + [0.0] * 12
        self.assertEqual(self.pool.map(helpers.sleep_for, items, chunksize=4), items)
        out = self.pool.map_async(helpers.fail_at_value, [0.3, 0.0, 0.0, -1, 0.0, 0.0], chunksize=2,
                                  errors="return").get(30)
        self.assertEqual(out[:3] + out[4:], [0.3, 0.0, 0.0, 0.0, 0.0])
        self.assertIsInstance(out[3], ValueError)

    def test_imap_ordered(self):
        self.assertEqual(list(self.pool.imap(helpers.square, range(500))), [i * i for i in range(500)])

    def test_imap_unordered(self):
        self.assertEqual(sorted(self.pool.imap_unordered(helpers.square, range(500))),
                         [i * i for i in range(500)])

    def test_imap_input_error(self):
        def gen():
            yield 1
            yield 2
            raise RuntimeError("input broke")
        it = self.pool.imap(helpers.square, gen())
        self.assertEqual([next(it), next(it)], [1, 4])
        with self.assertRaises(RuntimeError):
            next(it)

    def test_imap_input_error_after_many_items(self):
        # The items read before the input raised all run, and their
        # results come before its exception, as with multiprocessing's
        # imap. The ones read into a batch not yet sent were dropped: with
        # batches grown on quick items, 3000 items gave 2050 results. With
        # the caller's chunksize, the chunk the input broke off is dropped,
        # as multiprocessing drops it (its own test_imap_handle_iterable_
        # exception, run in stdlib_compat, holds it to that): 100 items in
        # chunks of 7 give the 98 of the 14 whole chunks.
        def gen(n):
            yield from range(n)
            raise RuntimeError("input broke")
        for name, chunksize, n in (("imap", None, 3000), ("imap_unordered", None, 3000), ("imap", 7, 100)):
            with self.subTest(call=name, chunksize=chunksize):
                got = []
                with self.assertRaisesRegex(RuntimeError, "input broke"):
                    for r in getattr(self.pool, name)(helpers.identity, gen(n), chunksize):
                        got.append(r)
                self.assertEqual(sorted(got), list(range(n - n % (chunksize or 1))))

    def test_imap_sends_what_a_waiting_input_gave(self):
        # An input that waits for more (a queue that the consumer feeds
        # from the results, a socket): the items it gave run, though the
        # batch they were read into is not whole. The items read into a
        # batch grown on quick items waited for the rest of it, so the
        # iterator waited forever for their results.
        for name in ("imap", "imap_unordered"):
            with self.subTest(call=name):
                q = queue.Queue()

                def gen():
                    while True:
                        item = q.get()
                        if item is None:
                            return
                        yield item
                n = 3000
                for i in range(n):
                    q.put(i)
                try:
                    it = getattr(self.pool, name)(helpers.identity, gen())
                    got = [it.next(timeout=30) for _ in range(n)]
                finally:
                    q.put(None)
                self.assertEqual(sorted(got), list(range(n)))
                self.assertEqual(list(it), [])

    def test_a_task_that_carries_the_pool_says_so(self):
        # As multiprocessing's: a bound method of an object that holds the
        # pool (self.pool) cannot go to a worker, and the error says why;
        # it said "cannot pickle '_thread.lock' object".
        holder = helpers.HoldsPool(self.pool)
        for call in (self.pool.map, self.pool.imap):
            with self.subTest(call=call.__name__):
                with self.assertRaisesRegex(NotImplementedError, "pool objects cannot be passed"):
                    list(call(holder.work, range(3)))
            # Without cloudpickle, the bound method's object is what fails,
            # not its function, which goes by name: no advice on lambdas.
            with self.subTest(call=call.__name__, cloudpickle=False):
                with mock.patch.object(_pickling, "_cloudpickle", lambda: None):
                    with self.assertRaisesRegex(NotImplementedError, "pool objects cannot be passed"):
                        list(call(holder.work, range(3)))
        with self.assertRaisesRegex(NotImplementedError, "pool objects cannot be passed"):
            pickle.dumps(self.pool)
        self.assertEqual(self.pool.map(helpers.square, range(3)), [0, 1, 4])

    def test_map_reads_a_list_subclass_as_it_iterates(self):
        # multiprocessing reads the input by iterating it; slicing a list
        # subclass whose __iter__ gives other items returned the wrong
        # results, without an error.
        doubled = helpers.Doubled([1, 2, 3])
        self.assertEqual(self.pool.map(helpers.square, doubled), [4, 16, 36])
        self.assertEqual(self.pool.map_async(helpers.square, doubled, 1).get(60), [4, 16, 36])

    def test_bad_chunksize_raises_from_the_call(self):
        # As multiprocessing's imap, every call refuses a chunksize below 1
        # at once. imap's input is read by a thread of its own: a negative
        # chunksize used to reach it unchecked and stop it from submitting
        # anything, and the iterator waited forever; 0 was taken as 1.
        calls = {"map": self.pool.map, "map_async": self.pool.map_async, "starmap": self.pool.starmap,
                 "imap": self.pool.imap, "imap_unordered": self.pool.imap_unordered}
        for name, call in calls.items():
            for bad in (0, -3):
                with self.subTest(call=name, chunksize=bad):
                    with self.assertRaisesRegex(ValueError, "chunksize must be at least 1"):
                        call(helpers.square, [(1, 2)] if name == "starmap" else range(5), bad)
            with self.subTest(call=name, chunksize=2.5):
                with self.assertRaises(TypeError):
                    call(helpers.square, range(5), 2.5)
        self.assertEqual(list(self.pool.imap(helpers.square, range(5), 10 ** 9)), [0, 1, 4, 9, 16])
        self.assertEqual(list(self.pool.imap(helpers.square, range(5), True)), [0, 1, 4, 9, 16])

    def test_exception_with_remote_traceback(self):
        with self.assertRaises(ValueError) as cm:
            self.pool.map(helpers.fail_at, range(5))
        self.assertEqual(str(cm.exception), "bad item 2")
        tb = cm.exception.__cause__
        self.assertIsInstance(tb, safepool.RemoteTraceback)
        self.assertIn("fail_at", tb.tb)
        self.assertIn("helpers.py", tb.tb)

    def test_errors_return(self):
        out = self.pool.map(helpers.fail_at, range(4), errors="return")
        self.assertEqual(out[:2] + out[3:], [0, 1, 3])
        self.assertIsInstance(out[2], ValueError)
        self.assertIn((helpers.fail_at, 2, "task-error", 1), self.pool.failed_tasks())

    def test_imap_error_in_place(self):
        it = self.pool.imap(helpers.fail_at, range(4))
        self.assertEqual([next(it), next(it)], [0, 1])
        with self.assertRaises(ValueError):
            next(it)
        self.assertEqual(next(it), 3)

    def test_unpicklable_exception(self):
        with self.assertRaises(safepool.RemoteError) as cm:
            self.pool.apply(helpers.raise_unpicklable, (1,))
        self.assertIn("Unpicklable", str(cm.exception))
        self.assertIn("raise_unpicklable", cm.exception.__cause__.tb)

    def test_exception_with_its_own_init(self):
        # Its class, its args and its attributes, as the task raised it: an
        # `except HTTPFailure` in the caller catches it (multiprocessing's
        # result thread dies unpickling it, and its map hangs).
        with self.assertRaises(helpers.HTTPFailure) as cm:
            self.pool.apply(helpers.raise_http_failure, (404,))
        e = cm.exception
        self.assertEqual((str(e), e.args, e.status, e.body), ("HTTP 404: not here", ("HTTP 404: not here",), 404,
                                                               "not here"))
        self.assertIsInstance(e.__cause__, safepool.RemoteTraceback)
        self.assertIn("raise_http_failure", e.__cause__.tb)
        out = self.pool.map(helpers.raise_http_failure, [500, 503], errors="return")
        self.assertEqual([(type(x), x.status) for x in out], [(helpers.HTTPFailure, 500), (helpers.HTTPFailure, 503)])
        with safepool.Executor(1) as ex:
            self.assertEqual(ex.submit(helpers.raise_http_failure, 410).exception(timeout=60).status, 410)

    def test_exception_whose_str_fails(self):
        # It is the task's exception, as with multiprocessing: not a death
        # of its worker (which a retry policy would run again).
        with self.assertRaises(helpers.NoText) as cm:
            self.pool.apply(helpers.raise_no_text, (1,))
        self.assertEqual(cm.exception.args, (1,))
        self.assertEqual(self.pool.failed_tasks()[-1][:3], (helpers.raise_no_text, ((1,), {}), "task-error"))

    def test_waiting_in_a_result_callback_raises(self):
        # Callbacks run in the thread that delivers the pool's results: one
        # that waits for results of the same pool would wait forever, and
        # so would every later call of the pool. It gets an error instead.
        got = []

        def callback(value):
            for wait in (lambda: self.pool.map(helpers.square, [value]),
                         lambda: self.pool.apply(helpers.square, (value,)),
                         lambda: next(self.pool.imap(helpers.square, [value]))):
                try:
                    got.append(wait())
                except BaseException as e:
                    got.append(e)

        self.assertEqual(self.pool.apply_async(helpers.square, (3,), callback=callback).get(timeout=20), 9)
        self.assertEqual([type(e) for e in got], [RuntimeError] * 3, got)
        self.assertIn("callback", str(got[0]))
        self.assertEqual(self.pool.map(helpers.square, range(3)), [0, 1, 4])

    def test_callback_that_raises_systemexit(self):
        # A callback's sys.exit() (or any exception) is reported, and the
        # pool goes on: it used to end the thread that delivers results,
        # and the pool broke with "the safepool binary exited unexpectedly".
        import contextlib
        import io

        def callback(value):
            sys.exit("fatal result %r" % value)

        err = io.StringIO()
        with contextlib.redirect_stderr(err):
            self.assertEqual(self.pool.apply_async(helpers.square, (3,), callback=callback).get(timeout=20), 9)
            self.assertEqual(self.pool.map(helpers.square, range(3)), [0, 1, 4])
        self.assertIn("fatal result 9", err.getvalue())
        with safepool.Executor(1) as ex:
            f = ex.submit(helpers.square, 2)
            f.add_done_callback(lambda f: sys.exit(1))
            with contextlib.redirect_stderr(io.StringIO()):
                self.assertEqual(f.result(timeout=20), 4)
                self.assertEqual(ex.submit(helpers.square, 5).result(timeout=20), 25)

    def test_lambda(self):
        try:
            import cloudpickle  # noqa: F401
        except ImportError:
            with self.assertRaises(TypeError) as cm:
                self.pool.map(lambda x: x, [1])
            self.assertIn("cloudpickle", str(cm.exception))
        else:
            self.assertEqual(self.pool.map(lambda x: x + 1, [1]), [2])

    def test_stats(self):
        self.pool.map(helpers.square, range(10))
        st = self.pool.stats()
        self.assertTrue(st)
        for s in st:
            self.assertGreater(s["pid"], 0)
            self.assertLessEqual(s["start"], s["end"])

    def test_stats_lists_only_tasks_that_succeeded(self):
        # A task that raised is in failed_tasks(), not in stats(), which
        # lists the tasks that succeeded: it used to be in both.
        with safepool.Pool(2) as pool:
            rs = [pool.apply_async(helpers.fail_at, (x,)) for x in range(5)]
            for x, r in enumerate(rs):
                if x == 2:
                    with self.assertRaises(ValueError):
                        r.get(timeout=60)
                else:
                    self.assertEqual(r.get(timeout=60), x)
            self.assertEqual(len(pool.failed_tasks()), 1)
            # One job a call, numbered in order: the third raised.
            jobs = sorted(s["job"] for s in pool.stats())
            self.assertEqual(jobs, [jobs[0], jobs[0] + 1, jobs[0] + 3, jobs[0] + 4])

    def test_task_output_goes_to_stdout(self):
        # A task's prints must not corrupt the protocol.
        self.assertEqual(self.pool.map(helpers.print_and_return, range(3)), [0, 1, 2])


class ImapAndClose(unittest.TestCase):
    """An imap reads its input lazily, a few batches ahead of its consumer;
    close() and join() must still run all of it, as multiprocessing's do,
    and terminate() must not pass the input's cut for its end."""

    def test_results_after_close_and_join(self):
        # The pattern of many tutorials: the results are read after join.
        # join() used to return once the few items read ahead were done,
        # and the iterators then ended there, without an error.
        pool = safepool.Pool(2)
        self.addCleanup(pool.terminate)
        ordered = pool.imap(helpers.square, range(300))
        unordered = pool.imap_unordered(helpers.square, iter(range(200)), 3)
        pool.close()
        pool.join()
        self.assertEqual(list(ordered), [i * i for i in range(300)])
        self.assertEqual(sorted(unordered), [i * i for i in range(200)])

    def test_dropped_iterator_does_not_hold_join(self):
        # A dropped iterator's input is not read on: an endless one does
        # not keep join() from returning.
        pool = safepool.Pool(2)
        self.addCleanup(pool.terminate)
        self.assertEqual(next(pool.imap(helpers.square, itertools.count())), 0)
        pool.close()
        pool.join()

    def test_terminate_says_the_rest_never_ran(self):
        pool = safepool.Pool(1)
        self.addCleanup(pool.terminate)
        it = pool.imap(helpers.sleep_for, itertools.repeat(0.01, 1000), 1)
        self.assertEqual(next(it), 0.01)
        pool.terminate()
        values, failures = [], []
        while True:
            try:
                values.append(next(it))
            except StopIteration:
                break
            except safepool.TaskCancelled as e:
                failures.append(e)
        self.assertLess(len(values), 999)
        self.assertTrue(failures, "the iterator ended at the cut as if the input ended there")
        self.assertIn("never ran", str(failures[-1]))


class IdleWorkerFirst(unittest.TestCase):
    """A task goes to an idle worker while there is one: short tasks do not
    wait behind a long one on a busy worker while another is free."""

    def test_short_tasks_beside_a_long_one(self):
        # One worker runs the 3 s task; the other runs the three short ones,
        # one after another, in about 0.3 s. One sent behind the long task
        # would end after it: the order of the ends shows it, however
        # slowly a loaded machine starts the workers.
        pool = safepool.Pool(2)
        self.addCleanup(pool.terminate)
        start = time.monotonic()
        ended = []
        for value in pool.imap_unordered(helpers.sleep_for, [3, 0.1, 0.1, 0.1]):
            ended.append((value, round(time.monotonic() - start, 2)))
        self.assertEqual([v for v, _ in ended], [0.1, 0.1, 0.1, 3],
                         "the ends (value, s after the start): a short task waited behind the long one")


class MaxTasksPerChild(unittest.TestCase):
    def test_imap_runs_each_item_in_a_fresh_worker(self):
        # As multiprocessing's imap (batches of one by default) with
        # maxtasksperchild=1: no item shares a worker. imap's batches used
        # to grow with quick items, and a worker ran a whole batch.
        with safepool.Pool(1, maxtasksperchild=1) as pool:
            pids = list(pool.imap(helpers.pid_of, range(24)))
        self.assertEqual(len(set(pids)), 24)
        with safepool.Executor(1, max_tasks_per_child=1) as ex:
            pids = list(ex.map(helpers.pid_of, range(12)))
        self.assertEqual(len(set(pids)), 12)


class MaxRSS(unittest.TestCase):
    def test_a_max_rss_below_a_fresh_worker_is_said_once(self):
        # A worker holds more than 1 MiB once started: each is replaced
        # after its first item, and the pool says why, once, as a
        # RuntimeWarning (the command line prints the same notice).
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always")
            with safepool.Pool(2, max_rss="1MiB") as pool:
                pids = pool.map(helpers.pid_of, range(6), chunksize=1)
        self.assertGreater(len(set(pids)), 2)  # replaced (an item sent ahead may run before it is)
        said = [str(w.message) for w in seen if issubclass(w.category, RuntimeWarning)
                and "after its first task, over the max RSS of 1 MiB" in str(w.message)]
        self.assertEqual(len(said), 1, [str(w.message) for w in seen])
        self.assertIn("give a max RSS above what a worker holds once started", said[0])

    def test_a_max_rss_above_a_fresh_worker_says_nothing(self):
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always")
            with safepool.Pool(2, max_rss="1GiB") as pool:
                pids = pool.map(helpers.pid_of, range(6), chunksize=1)
        self.assertLessEqual(len(set(pids)), 2)
        self.assertEqual([str(w.message) for w in seen if "max RSS" in str(w.message)], [])


class WorkerDeath(unittest.TestCase):
    def test_sigkill_charges_only_the_running_item(self):
        with safepool.Pool(2) as pool:
            out = pool.map(helpers.kill_self_at, range(20), chunksize=5, errors="return")
            for i, v in enumerate(out):
                if i == 7:
                    self.assertIsInstance(v, safepool.WorkerDied)
                    self.assertEqual(v.cause, "signal:SIGKILL")
                    self.assertEqual(v.attempts, 1)
                    self.assertEqual(v.task_args, 7)
                else:
                    self.assertEqual(v, i * i, "item %d" % i)
            failed = pool.failed_tasks()
            self.assertEqual([(f.args, f.cause, f.attempts) for f in failed], [(7, "signal:SIGKILL", 1)])
            self.assertIs(failed[0].function, helpers.kill_self_at)
            # The pool goes on with a new worker.
            self.assertEqual(pool.map(helpers.square, range(4)), [0, 1, 4, 9])

    def test_map_raises_worker_died(self):
        with safepool.Pool(2) as pool:
            with self.assertRaises(safepool.WorkerDied) as cm:
                pool.map(helpers.kill_self_at, range(10))
            self.assertIsInstance(cm.exception, safepool.TaskFailed)
            self.assertEqual(cm.exception.task_args, 7)

    def test_retry_policy(self):
        d = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, d)
        marker = os.path.join(d, "killed")
        with safepool.Pool(2, retries=1) as pool:
            out = pool.starmap(helpers.kill_once, [(i, marker) for i in range(10)])
            self.assertEqual(out, [i * i for i in range(10)])
            self.assertTrue(os.path.exists(marker))
            self.assertEqual(pool.failed_tasks(), [])

    def test_retries_run_out(self):
        with safepool.Pool(2, retries=2, on_worker_death="retry") as pool:
            pool.map(helpers.square, range(2))  # a first success: the command works
            with self.assertRaises(safepool.WorkerDied) as cm:
                pool.apply(helpers.kill_self_at, (7,))
            self.assertEqual(cm.exception.attempts, 3)
            self.assertEqual([a.cause for a in cm.exception.history], ["signal:SIGKILL"] * 3)

    def test_deaths_in_tasks_do_not_break_the_pool(self):
        # Workers that die while they run a task, however many and however
        # early in their lives, are those tasks' failures: never "the
        # workers cannot start", which would fail every task with
        # BrokenPool. Here every batch holds items that kill their worker,
        # so that no worker finishes its first task, and the first four
        # workers die at once.
        d = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, d)
        n, retries = 200, 5
        with safepool.Pool(4, retries=retries) as pool:
            out = pool.map(functools.partial(helpers.kill_every_20th, directory=d), range(n), chunksize=25,
                           errors="return")
        broken = [i for i, v in enumerate(out) if isinstance(v, safepool.BrokenPool)]
        self.assertEqual(broken, [], "items failed with BrokenPool: %s" % (out[broken[0]] if broken else ""))
        for i, v in enumerate(out):
            if i % 20 == 7:
                self.assertIsInstance(v, safepool.WorkerDied, "item %d" % i)
                self.assertEqual(v.cause, "signal:SIGKILL", "item %d" % i)
                self.assertEqual(v.attempts, retries + 1, "item %d" % i)
                self.assertEqual([a.cause for a in v.history], ["signal:SIGKILL"] * (retries + 1))
                self.assertEqual(v.task_args, i)
            else:
                self.assertEqual(v, i * i, "item %d" % i)

    def test_abort_policy(self):
        pool = safepool.Pool(2, on_worker_death="abort")
        try:
            with self.assertRaises(safepool.WorkerDied):
                pool.map(helpers.kill_self_at, range(40), chunksize=1)
            with self.assertRaises(safepool.BrokenPool):
                pool.map(helpers.square, range(3))
        finally:
            pool.terminate()

    def test_abort_after_retries(self):
        # With retries, "abort" runs a killed task again, and stops the pool
        # only for a task killed on every attempt.
        marker = os.path.join(tempfile.mkdtemp(), "killed")
        pool = safepool.Pool(1, retries=2, on_worker_death="abort")
        try:
            self.assertEqual(pool.map(functools.partial(helpers.kill_once, marker=marker), range(6), chunksize=1),
                             [i * i for i in range(6)])
            with self.assertRaises(safepool.WorkerDied) as cm:
                pool.map(helpers.kill_self_at, range(10), chunksize=1)
            self.assertEqual(cm.exception.attempts, 3)
            self.assertEqual([a.cause for a in cm.exception.history], ["signal:SIGKILL"] * 3)
            with self.assertRaises(safepool.BrokenPool):
                pool.map(helpers.square, range(3))
        finally:
            pool.terminate()
            shutil.rmtree(os.path.dirname(marker), ignore_errors=True)

    def test_timeout(self):
        # The timeout is far above what the quick tasks need even on a busy
        # machine, and far below the slow one's.
        with safepool.Pool(1, timeout=3) as pool:
            out = pool.map(helpers.sleep_for, [0, 300, 0], errors="return")
            self.assertEqual(out[0], 0)
            self.assertEqual(out[2], 0)
            self.assertIsInstance(out[1], safepool.WorkerDied)
            self.assertEqual(out[1].cause, "timeout")

    def test_oom_kill_through_mem_limit(self):
        pool = safepool.Pool(2, mem_limit="200MiB")
        try:
            if not pool.memory_mode.startswith("cgroup"):
                skip_or_fail(self, "no memory cgroups here (%s)" % pool.memory_mode)
            out = pool.map(helpers.hog_at, range(8), chunksize=4, errors="return")
        finally:
            pool.terminate()
        self.assertIsInstance(out[3], safepool.WorkerDied)
        self.assertEqual(out[3].cause, "oom")
        self.assertGreater(out[3].peak_rss, 100 << 20)
        self.assertEqual([v for i, v in enumerate(out) if i != 3], [i * i for i in range(8) if i != 3])


class Initializer(unittest.TestCase):
    def test_runs_once_per_worker(self):
        d = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, d)
        with safepool.Pool(2, initializer=helpers.init, initargs=(d, "ready")) as pool:
            out = pool.map(helpers.initialized, range(200), chunksize=1)
            self.assertEqual({v for v, _ in out}, {"ready"})
            pids = {p for _, p in out}
        files = os.listdir(d)
        for name in files:
            with open(os.path.join(d, name)) as f:
                self.assertEqual(f.read(), "x", "initializer ran more than once in %s" % name)
        self.assertTrue(pids <= {int(n) for n in files})


    def test_initializer_that_raises_breaks_the_pool(self):
        pool = safepool.Pool(1, initializer=helpers.bad_init)
        try:
            with self.assertRaises(safepool.BrokenPool) as cm:
                pool.map(helpers.square, range(3))
            self.assertIn("initializer failed", str(cm.exception))
        finally:
            pool.terminate()


class MainScript(unittest.TestCase):
    def run_script(self, source):
        """Run source, dedented, as a main script in a directory of its own."""
        d = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, d)
        script = os.path.join(d, "script.py")
        with open(script, "w") as f:
            f.write(textwrap.dedent(source))
        return subprocess.run([sys.executable, script], env=child_env(), capture_output=True, text=True,
                              timeout=120)

    def test_functions_from_main(self):
        out = self.run_script("""
                import safepool

                class Point:
                    def __init__(self, x):
                        self.x = x

                def triple(x):
                    return Point(3 * x)

                print("imported as", __name__)
                if __name__ == "__main__":
                    with safepool.Pool(2) as pool:
                        print("result", [p.x for p in pool.map(triple, range(5))])
            """)
        self.assertEqual(out.returncode, 0, out.stderr)
        self.assertIn("result [0, 3, 6, 9, 12]", out.stdout)
        # Workers import the script under another name and skip its main block.
        self.assertIn("imported as __mp_main__", out.stdout)
        self.assertEqual(out.stdout.count("result"), 1)

    def test_function_defined_under_the_main_guard(self):
        # As with multiprocessing's spawn, workers cannot find it; the error
        # says why, not only that the attribute is missing.
        out = self.run_script("""
                import safepool

                if __name__ == "__main__":
                    def double(x):
                        return 2 * x

                    with safepool.Pool(1) as pool:
                        try:
                            pool.map(double, range(3))
                        except AttributeError as e:
                            print(str(e))
            """)
        self.assertEqual(out.returncode, 0, out.stderr)
        self.assertIn("Can't get attribute 'double'", out.stdout)
        self.assertIn('without running its `if __name__ == "__main__":` block', out.stdout)

    def test_local_function_or_class_result_from_main(self):
        # A result that pickle cannot send (a function or class local to a
        # function of the script) fails as multiprocessing reports it,
        # MaybeEncodingError with the pickling error, not as a result the
        # parent could not unpickle.
        out = self.run_script("""
                import multiprocessing.pool, safepool

                def make_adder(x):
                    return lambda y: x + y

                def make_record(x):
                    class Record:
                        pass
                    r = Record()
                    r.x = x
                    return r

                if __name__ == "__main__":
                    with safepool.Pool(2) as pool:
                        for fn in (make_adder, make_record):
                            try:
                                pool.apply(fn, (1,))
                            except multiprocessing.pool.MaybeEncodingError as e:
                                print(fn.__name__, "MaybeEncodingError", "local object" in str(e))
                            except Exception as e:
                                print(fn.__name__, type(e).__name__, e)
            """)
        self.assertEqual(out.returncode, 0, out.stderr)
        self.assertEqual(out.stdout.splitlines(), ["make_adder MaybeEncodingError True",
                                                   "make_record MaybeEncodingError True"])


STDIN_SCRIPT = """
import safepool
from tests import helpers

def triple(x):
    return 3 * x

def init():
    pass

if __name__ == "__main__":
    with safepool.Pool(2) as pool:
        print("helpers", pool.map(helpers.square, range(3)))
        try:
            print("main", pool.map(triple, range(3)))
        except TypeError as e:
            print("error", e)
    try:
        with safepool.Pool(1, initializer=init) as pool:
            print("init", pool.apply(helpers.square, (4,)))
    except TypeError as e:
        print("init error", e)
"""


def python_with_cloudpickle(want: bool):
    """The argument vector of a Python interpreter that can (want) or
    cannot import cloudpickle, or None. Without site-packages (-S), no
    Python has it."""
    candidates = [[sys.executable], ["/usr/bin/python3"]] if want else [[sys.executable, "-S"]]
    for argv in candidates:
        if not os.path.exists(argv[0]):
            continue
        r = subprocess.run(argv + ["-c", "import cloudpickle"], capture_output=True)
        if (r.returncode == 0) == want:
            return argv
    return None


class MainFromStdin(unittest.TestCase):
    """A program read from standard input (python3 - < script.py) has no
    script file: workers must not import one. Before, they ran a file named
    "<stdin>" in the working directory, which anyone who can write there
    could plant."""

    def _run(self, python):
        d = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, d)
        marker = os.path.join(d, "planted-file-ran")
        for name in ("<stdin>", "<string>", "-c"):
            with open(os.path.join(d, name), "w") as f:
                f.write("open(%r, 'w').close()\nraise SystemExit('planted file ran')\n" % marker)
        out = subprocess.run(python + ["-"], input=textwrap.dedent(STDIN_SCRIPT), env=child_env(),
                             capture_output=True, text=True, timeout=120, cwd=d)
        self.assertEqual(out.returncode, 0, out.stderr)
        self.assertIn("helpers [0, 1, 4]", out.stdout, out.stderr)
        self.assertFalse(os.path.exists(marker), "a worker ran the planted file")
        return out.stdout

    def test_without_cloudpickle(self):
        python = python_with_cloudpickle(False)
        if python is None:
            skip_or_fail(self, "this Python has cloudpickle even without site-packages")
        out = self._run(python)
        for line in ("error ", "init error "):
            msg = [l for l in out.splitlines() if l.startswith(line)]
            self.assertEqual(len(msg), 1, out)
            # It says why and what to do.
            self.assertIn("standard input", msg[0])
            self.assertIn("module", msg[0])
            self.assertIn("cloudpickle", msg[0])

    def test_with_cloudpickle(self):
        python = python_with_cloudpickle(True)
        if python is None:
            skip_or_fail(self, "no Python here has cloudpickle (test.sh installs python3-cloudpickle "
                               "for /usr/bin/python3)")
        out = self._run(python)
        self.assertIn("main [0, 3, 6]", out)
        self.assertIn("init 16", out)


# Text that is not valid UTF-8 once encoded: non-UTF-8 bytes decoded with
# surrogateescape (as file names and argv are), and lone surrogates.
SURROGATES = b"\xff\xfe\x80 caf\xc3\xa9 \xed\xa0\x80".decode("utf-8", "surrogateescape") + "\ud800\udfff"


class HostileData(unittest.TestCase):
    """Bytes and text that break naive framing or encoding come back intact."""

    def assertSame(self, got, want):
        # Not assertEqual: its diff of a 48 MB string would drown the report.
        if got != want or type(got) is not type(want):
            self.fail("got %s of length %s, want %s of length %s" % (
                type(got).__name__, len(got) if hasattr(got, "__len__") else "?",
                type(want).__name__, len(want) if hasattr(want, "__len__") else "?"))

    def test_round_trip(self):
        huge = "\u00e9\u20ac\U0001f600" * (4 << 20)  # 12 M characters, 36 MB of UTF-8
        items = [
            b"", b"\0", bytes(range(256)) * 3, b"\0" * (1 << 20) + b"\xff", bytearray(b"\0\1\2"),
            os.urandom(8 << 20),
            "", "\0nul\0in\0a\0str\0", SURROGATES, "\r\n\x00\x1b[2J\u2028",
            {"k\0": b"\0", SURROGATES: [SURROGATES, b"\xff" * 3]},
            huge,
        ]
        with safepool.Pool(2) as pool:
            for chunksize in (1, len(items)):
                out = pool.map(helpers.identity, items, chunksize=chunksize)
                self.assertEqual(len(out), len(items))
                for got, want in zip(out, items):
                    self.assertSame(got, want)
            self.assertSame(pool.apply(helpers.identity, (), {"x": huge}), huge)
            self.assertSame(pool.starmap(helpers.add, [(SURROGATES, "\0")])[0], SURROGATES + "\0")
            for message in ("\0", SURROGATES):
                with self.assertRaises(ValueError) as cm:
                    pool.apply(helpers.raise_with, (message,))
                self.assertEqual(cm.exception.args, (message,))

    def test_argv_and_script_path_not_utf8(self):
        # A script whose path and arguments are not UTF-8: workers get the
        # same sys.argv and import the same script.
        d = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, d)
        sub = os.path.join(os.fsencode(d), b"dir-\xff\xfe")
        os.mkdir(sub)
        script = os.path.join(sub, b"script-\xff.py")
        with open(script, "w") as f:
            f.write(textwrap.dedent("""
                import sys, safepool
                from tests import helpers

                def main_fn(x):
                    return x

                if __name__ == "__main__":
                    with safepool.Pool(1) as pool:
                        print(ascii(pool.apply(helpers.argv) == sys.argv), ascii(sys.argv[1:]))
                        print(ascii(pool.apply(main_fn, (sys.argv[1],)) == sys.argv[1]))
            """))
        out = subprocess.run([os.fsencode(sys.executable), script, b"arg-\xff\x80", b"\xed\xa0\x80"],
                             env=child_env(), capture_output=True, text=True, timeout=120)
        self.assertEqual(out.returncode, 0, out.stderr)
        self.assertEqual(out.stdout.splitlines(),
                         ["True ['arg-\\udcff\\udc80', '\\udced\\udca0\\udc80']", "True"])


class Binary(unittest.TestCase):
    def test_missing_binary_says_how_to_build(self):
        old = os.environ.get("SAFEPOOL_BIN")
        os.environ["SAFEPOOL_BIN"] = "/nonexistent/safepool"
        try:
            with self.assertRaises(safepool.BrokenPool) as cm:
                safepool.Pool(1)
            self.assertIn("go build -o python/safepool/_bin/safepool ./cmd/safepool", str(cm.exception))
        finally:
            if old is None:
                del os.environ["SAFEPOOL_BIN"]
            else:
                os.environ["SAFEPOOL_BIN"] = old


if __name__ == "__main__":
    unittest.main()
