"""Big data through the pool: what the client holds while arguments of some
MiB each are on their way (safepool._oob, docs/python.md), with real
workers."""
import os
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
import unittest

import safepool
from tests.support import PYTHON_DIR, child_env

MiB = 1 << 20


def slow_len(b):
    time.sleep(0.05)
    return len(b)


def refuse(b):
    raise ValueError("refused")


def argument_files():
    """The bytes of the tasks' argument files (memory files) this process
    holds."""
    total = 0
    for n in os.listdir("/proc/self/fd"):
        try:
            if os.readlink("/proc/self/fd/" + n).startswith("/memfd:safepool-args"):
                total += os.stat("/proc/self/fd/" + n).st_size
        except OSError:
            continue
    return total


class Input:
    """An input of n items of size bytes each, which counts how many
    items were read."""

    def __init__(self, n, size):
        self.n, self.size, self.read = n, size, 0
        self.lock = threading.Lock()

    def __iter__(self):
        for i in range(self.n):
            with self.lock:
                self.read += 1
            yield bytes([i % 256]) * self.size


class ReadAhead(unittest.TestCase):
    def test_imap_bounds_big_items_by_their_bytes(self):
        # imap read its input ahead by a bound in items, which grows with
        # the batch size, and the batch size grows while items are quick:
        # items of 4 MiB were all read ahead (and each held twice, as the
        # object and in its argument file), and a container's client was
        # OOM-killed on an input that multiprocessing ran in 120 MiB.
        for ordered in (True, False):
            data = Input(60, 4 * MiB)
            ahead = 0
            with safepool.Pool(2) as pool:
                it = pool.imap(len, data) if ordered else pool.imap_unordered(len, data)
                for consumed, n in enumerate(it, 1):
                    self.assertEqual(n, 4 * MiB)
                    threading.Event().wait(0.02)  # a consumer slower than the workers
                    with data.lock:
                        ahead = max(ahead, data.read - consumed)
            # 32 MiB a worker: 16 items of 4 MiB read ahead, and a batch's
            # worth that the feeder may take before it knows their size.
            self.assertLessEqual(ahead, 20, "imap(ordered=%s) read %d items of 4 MiB ahead" % (ordered, ahead))

    def test_batches_in_flight_are_bounded_by_their_bytes(self):
        # Every batch sent and not answered holds a copy of its big
        # arguments in its argument file. The client sent as many batches
        # as the binary's window (64 and more), whatever their size: eight
        # map_async calls of 10 arrays of 8 MiB took 1348 MiB of a
        # container's memory, against 857 MiB with multiprocessing.
        data = [[bytes([i]) * (4 * MiB) for i in range(8)] for _ in range(6)]
        with safepool.Pool(2) as pool:
            pool.map(len, [b"warm"] * 4)
            calls = [pool.map_async(slow_len, d, chunksize=1) for d in data]
            most = 0
            while not all(c.ready() for c in calls):
                most = max(most, argument_files())
                time.sleep(0.005)
            self.assertEqual([c.get() for c in calls], [[4 * MiB] * 8] * 6)
        # 32 MiB a worker, one batch beyond it, and the files of answered
        # batches that are closed as their results are read (all 48 of
        # them, 192 MiB, before).
        self.assertGreater(most, 0)
        self.assertLessEqual(most, 96 * MiB, "the argument files of the batches in flight held %d MiB" % (most >> 20))

    def test_small_items_still_batch(self):
        # The bound in bytes leaves small items' batches alone.
        with safepool.Pool(2) as pool:
            it = pool.imap(abs, range(-20000, 0))
            self.assertEqual(sum(it), sum(range(1, 20001)))
            self.assertGreater(it._chunksize, 64)


class FailedRecords(unittest.TestCase):
    def test_failed_tasks_keep_big_arguments_bounded(self):
        # failed_tasks() kept every failed task's arguments for the pool's
        # life: an imap of 8 MiB arrays of which one in four raised grew the
        # client by 200 MiB every 100 items, until a 1 GiB container's
        # OOM killer took it.
        with safepool.Pool(2) as pool:
            out = list(pool.imap(refuse, Input(40, 4 * MiB), errors="return"))
            self.assertEqual(len(out), 40)
            self.assertTrue(all(isinstance(e, ValueError) for e in out))
            del out
            failed = pool.failed_tasks()
            self.assertEqual(len(failed), 40)
            self.assertEqual({f.cause for f in failed}, {"task-error"})
            kept = [f.args for f in failed if f.args is not ...]
            # 64 MiB of them: the latest 16 to fail.
            self.assertEqual(len(kept), 16, "%d failed tasks kept their 4 MiB arguments" % len(kept))
            self.assertTrue(all(len(a) == 4 * MiB for a in kept))
            self.assertEqual(failed[-1].args, kept[-1])
            # Small arguments are all kept.
            pool.map(refuse, range(100), errors="return")
            self.assertEqual(sorted(f.args for f in pool.failed_tasks()[40:]), list(range(100)))


def mapped_memfds(pid, inodes):
    """The inodes of inodes that process pid maps."""
    found = set()
    try:
        with open("/proc/%d/maps" % pid) as f:
            for line in f:
                parts = line.split()
                if len(parts) >= 6 and int(parts[4]) in inodes:
                    found.add(int(parts[4]))
    except OSError:
        pass
    return found


class SharedSegments(unittest.TestCase):
    def test_workers_let_go_of_closed_segments(self):
        # A worker kept every segment it had opened mapped for its life: a
        # client that shared new data for each map (and closed it) grew a
        # container by the data's size every map, until it was OOM-killed.
        inodes = set()
        with safepool.Pool(1) as pool:
            for i in range(6):
                with safepool.share(bytes([i]) * (8 * MiB)) as h:
                    inodes.add(h.ino)
                    self.assertEqual(pool.map(len, [h] * 3, chunksize=1), [8 * MiB] * 3)
            live = safepool.share(b"x" * (2 * MiB))
            self.addCleanup(live.close)
            self.assertEqual(pool.map(len, [live] * 2, chunksize=1), [2 * MiB] * 2)
            self.assertEqual(pool.map(abs, [-1, -2]), [1, 2])
            workers = []
            for t in os.listdir("/proc/%d/task" % pool._core.pid):
                with open("/proc/%d/task/%s/children" % (pool._core.pid, t)) as f:
                    workers += [int(p) for p in f.read().split()]
            # The worker lets go after its batch, which may be after its
            # values reached this process.
            deadline = time.monotonic() + 10
            while True:
                held = set()
                for w in workers:
                    held |= mapped_memfds(w, inodes | {live.ino})
                if not held & inodes or time.monotonic() > deadline:
                    break
                time.sleep(0.05)
            self.assertEqual(held & inodes, set(), "the workers still map %d closed segments" % len(held & inodes))
            self.assertEqual(held, {live.ino}, "a segment still open stays mapped for the next tasks")


class InitializerFile(unittest.TestCase):
    def test_no_file_left_when_tmpdir_is_full(self):
        # A client that is not dumpable writes its initializer's arguments
        # to a file in $TMPDIR; one that did not fit was left there.
        tmp = tempfile.mkdtemp()
        self.addCleanup(os.rmdir, tmp)
        code = textwrap.dedent("""
            import ctypes, resource, signal, safepool
            ctypes.CDLL(None).prctl(4, 0, 0, 0, 0)  # PR_SET_DUMPABLE 0
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
            resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, 1 << 20))  # a full $TMPDIR, as it were
            try:
                safepool.Pool(1, initializer=len, initargs=(b"x" * (4 << 20),))
            except OSError as e:
                print("refused", e.errno)
        """)
        out = subprocess.run([sys.executable, "-c", code], env=child_env(TMPDIR=tmp), cwd=PYTHON_DIR,
                             capture_output=True, text=True, timeout=120)
        self.assertTrue(out.stdout.startswith("refused"), out.stdout + out.stderr[-2000:])
        left = os.listdir(tmp)
        for name in left:
            os.unlink(os.path.join(tmp, name))
        self.assertEqual(left, [])


if __name__ == "__main__":
    unittest.main()
