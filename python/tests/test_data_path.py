"""The Python client's data path (safepool._oob, safepool._pickling) with
real workers: what a task's arguments and results go through, and what
is said when they cannot go."""
import functools
import gc
import os
import sys
import threading
import time
import unittest
from unittest import mock

import safepool
from safepool import _oob, _pickling
from tests.support import skip_or_fail


def sleep_tag(arg):
    seconds, tag = arg
    time.sleep(seconds)
    return tag


def identity(x):
    return x


def init(*args):
    pass


def first_len(data, x):
    return len(data) + x


def sleep_len(data, seconds):
    time.sleep(seconds)
    return len(data)


def memfd_bytes(name):
    """The bytes of the memory files named name (safepool-args,
    safepool-shared) that this process holds, and how many there are."""
    total = count = 0
    for n in os.listdir("/proc/self/fd"):
        try:
            if os.readlink("/proc/self/fd/" + n).startswith("/memfd:" + name):
                total += os.stat("/proc/self/fd/" + n).st_size
                count += 1
        except OSError:
            continue
    return total, count


def private():
    """This process's resident private memory (anonymous), in bytes: not
    the pages of memory files it maps, which others share."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) << 10
    return 0


class Regions(unittest.TestCase):
    def setUp(self):
        if not _oob._client_inbox():
            skip_or_fail(self, "this process has no inbox (no memfd, or not dumpable)")
        saved = _oob._REGIONS
        self.addCleanup(setattr, _oob, "_REGIONS", saved)

    def test_a_region_in_use_is_not_given_again(self):
        # Region numbers go round (after about four million tasks): a
        # task still running then shared its region with a new one.
        _oob._REGIONS = 4  # regions 1, 2 and 3
        held = [_oob.encode(("x", i))[1] for i in range(2)]
        gone = _oob.encode(("x", 2))[1]
        gone.release()
        again = _oob.encode(("x", 3))[1]
        self.assertNotIn(again.region, [t.region for t in held])
        for t in held + [again]:
            t.release()

    def test_values_sent_straight_go_to_their_own_batch(self):
        # The values a worker sends straight to the client name their
        # batch by its region: a batch whose region a running one held
        # was settled with that one's values, and the running one failed
        # with "the results sent straight to the client did not arrive".
        _oob._REGIONS = 17  # regions 1 to 16: more than the batches in flight
        with safepool.Pool(2) as pool:
            pool.map(identity, range(8), chunksize=2)  # both workers up, their pipes open
            # Its first item is sent alone, after 1 s; the other two at
            # once after, together, straight to the client.
            a = pool.map_async(sleep_tag, [(1, "a0"), (0, "a1"), (0, "a2")], chunksize=3)
            # Tasks one after another, until the region numbers come round
            # to a's.
            for i in range(_oob._REGIONS - 2):
                self.assertEqual(pool.apply(identity, (i,)), i)
            b = pool.map_async(sleep_tag, [(5, "b0"), (0, "b1"), (0, "b2")], chunksize=3)
            self.assertEqual(a.get(60), ["a0", "a1", "a2"])
            self.assertEqual(b.get(60), ["b0", "b1", "b2"])


class Unpicklable(unittest.TestCase):
    def test_initargs_without_cloudpickle(self):
        # Without cloudpickle, initargs that pickle refuses were reported
        # as the initializer's fault: "this one has no importable name (a
        # lambda, a nested function or a closure)", of a function at the
        # top level of a module.
        with mock.patch.object(_pickling, "_cloudpickle", lambda: None):
            with self.assertRaises(TypeError) as cm:
                safepool.Pool(1, initializer=init, initargs=(threading.Lock(),))
            self.assertIn("_thread.lock", str(cm.exception))
            self.assertNotIn("importable name", str(cm.exception))
            # The initializer's own fault is still said.
            with self.assertRaisesRegex(TypeError, "no importable name"):
                safepool.Pool(1, initializer=lambda: None)
        with safepool.Pool(1, initializer=init, initargs=(1, b"x")) as pool:
            self.assertEqual(pool.apply(identity, (2,)), 2)

    @unittest.skipUnless(sys.version_info >= (3, 11), "exception notes came with Python 3.11")
    def test_argument_named(self):
        # The pickling error of one item among many said nothing of which
        # it was.
        items = list(range(40))
        items[23] = threading.Lock()
        with safepool.Pool(2) as pool:
            out = pool.map(identity, items, errors="return")
            self.assertEqual([x for i, x in enumerate(out) if i != 23], [i for i in range(40) if i != 23])
            self.assertIsInstance(out[23], TypeError)
            self.assertRegex(" ".join(out[23].__notes__), r"identity\(<unlocked _thread.lock .*item 23 of the call")
            with self.assertRaises(TypeError) as cm:
                pool.map(identity, items)
            self.assertIn("item 23", " ".join(cm.exception.__notes__))
            self.assertEqual(pool.map(identity, range(3)), [0, 1, 2])


class Functions(unittest.TestCase):
    def test_workers_let_go_of_big_functions(self):
        # A partial, a lambda or a closure is pickled with what it refers
        # to, and a worker kept the last 33 functions it ran, each with
        # its pickle: maps of functions of 32 MiB each, one after another,
        # left 64 MiB more in the worker for each (32 MiB once the
        # function is shared: its unpickled bytes).
        MiB = 1 << 20
        with safepool.Pool(1) as pool:
            before = pool.apply(private)
            for i in range(8):
                fn = functools.partial(first_len, bytes([i]) * (32 * MiB))
                self.assertEqual(pool.map(fn, range(3)), [32 * MiB + k for k in range(3)])
            grown = pool.apply(private) - before
        self.assertLess(grown, 100 * MiB, "the worker keeps %d MiB more after 8 maps" % (grown // MiB))

    def test_client_lets_go_of_big_functions(self):
        # The client learns each function's time per item, and kept the
        # last 32 functions' pickles as the keys of what it learnt: maps
        # of functions of 24 MiB each, one after another, left 24 MiB more
        # in the client for each.
        MiB = 1 << 20
        with safepool.Pool(1) as pool:
            gc.collect()  # a job and its result refer to each other: only the collector frees them
            before = private()
            for i in range(8):
                fn = functools.partial(first_len, bytes([i]) * (24 * MiB))
                self.assertEqual(pool.map(fn, range(400), chunksize=200)[-1], 24 * MiB + 399)
                del fn
            gc.collect()
            grown = private() - before
        # (The last map's function may stay until the next call.)
        self.assertLess(grown, 110 * MiB, "the client keeps %d MiB more after 8 maps" % (grown // MiB))

    def test_a_big_function_is_sent_once(self):
        # A function pickled with big data (a closure, a partial) went with
        # every batch: into the argument file of each batch in flight, and
        # out of it again in the worker. It is now shared once, until the
        # call's results are all in.
        MiB = 1 << 20
        _, shared_before = memfd_bytes("safepool-shared")
        with safepool.Pool(2) as pool:
            fn = functools.partial(sleep_len, bytes(8 * MiB))
            result = pool.map_async(fn, [0.5] * 8, chunksize=1)
            peak = 0
            while not result.ready():
                peak = max(peak, memfd_bytes("safepool-args")[0])
                time.sleep(0.02)
            self.assertEqual(result.get(), [8 * MiB] * 8)
            self.assertLess(peak, 8 * MiB, "the batches in flight held copies of the function")
            # Closed with the call's end (just after its result is ready),
            # not only when the collector frees the call's objects.
            deadline = time.monotonic() + 10
            while memfd_bytes("safepool-shared")[1] != shared_before and time.monotonic() < deadline:
                time.sleep(0.02)
            self.assertEqual(memfd_bytes("safepool-shared")[1], shared_before, "the shared function outlives its call")


if __name__ == "__main__":
    unittest.main()
