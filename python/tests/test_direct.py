"""The direct data path (safepool._oob, docs/python.md): a pickle of at
least _oob.DIRECT bytes, a task's or a result's, goes between the client and
the worker through memory files, not through the supervisor, which still
sees every frame and blames exactly."""
import functools
import os
import shutil
import tempfile
import unittest

import safepool
from safepool import _oob
from tests import direct_helpers as dh

KiB, MiB = 1 << 10, 1 << 20


def io_bytes(pid):
    """The bytes process pid has read and written (rchar, wchar)."""
    with open("/proc/%d/io" % pid) as f:
        fields = dict(line.split(": ") for line in f.read().splitlines())
    return int(fields["rchar"]), int(fields["wchar"])


class Direct(unittest.TestCase):
    def setUp(self):
        self.dir = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, self.dir, True)

    def test_payloads_do_not_pass_through_the_supervisor(self):
        n = 256 * KiB
        args = [dh.text(i, n) for i in range(40)]
        with safepool.Pool(2) as pool:
            pool.map(dh.length, ["warm"] * 4)
            before = io_bytes(pool._core.pid)
            self.assertEqual(pool.map(dh.length, args, chunksize=1), [n] * 40)
            self.assertEqual(pool.map(dh.length, args, chunksize=8), [n] * 40)
            out = pool.starmap(dh.text, [(i, n) for i in range(40)], chunksize=3)
            after = io_bytes(pool._core.pid)
        self.assertTrue(out == args, "the results differ from the arguments")
        moved = 3 * 40 * n  # 30 MiB each way, client to worker or back
        read, written = after[0] - before[0], after[1] - before[1]
        self.assertLess(read, moved // 20, "the supervisor read %d bytes of %d" % (read, moved))
        self.assertLess(written, moved // 20, "the supervisor wrote %d bytes of %d" % (written, moved))

    def test_round_trips_about_the_threshold(self):
        sizes = [0, 1, _oob.DIRECT - 200, _oob.DIRECT - 20, _oob.DIRECT, _oob.DIRECT + 1, 3 * MiB]
        with safepool.Pool(2) as pool:
            for chunksize in (1, 3):
                want = [dh.text(i, n) if n > 8 else "x" * n for i, n in enumerate(sizes)]
                self.assertEqual(pool.map(dh.length, want, chunksize=chunksize), [len(s) for s in want])
                got = pool.starmap(dh.text, [(i, n) for i, n in enumerate(sizes) if n > 8], chunksize=chunksize)
                self.assertTrue(got == [dh.text(i, n) for i, n in enumerate(sizes) if n > 8], chunksize)
            # Lists of numbers (a big pickle of small objects), and imap.
            lists = [list(range(i, i + 40000)) for i in range(10)]
            self.assertEqual(list(pool.imap(dh.total, lists, chunksize=2)), [sum(x) for x in lists])
            self.assertTrue(pool.apply(dh.text, (7, 5 * MiB)) == dh.text(7, 5 * MiB))

    def test_results_keep_to_their_slots(self):
        # In one process: the client's side encodes a batch of 4 items, the
        # worker's side decodes it and answers items 1 and 3 directly, each
        # in its own slot; a result bigger than its slots goes in band.
        items = [dh.text(i, 100 * KiB) for i in range(4)]
        payload, ticket = _oob.encode((0, b"", items))
        self.assertEqual(payload[0], _oob.DIRECT_ENVELOPE)
        self.assertLess(len(payload), 200, "the batch's pickle is not in the frame")
        self.assertEqual(_oob.worker_decode(payload)[2], items)
        _oob.worker_slots(4)
        slot = _oob.REGION // 4
        one, three = _oob.worker_encode(items[1], 1), _oob.worker_encode(items[3], 3)
        for out, i in ((one, 1), (three, 3)):
            self.assertEqual(out[0], _oob.DIRECT_ENVELOPE)
            (start, _), = [_oob._SPAN.unpack_from(out, _oob._RESULT.size)]
            self.assertTrue(i * slot <= start < (i + 1) * slot, (i, start))
        self.assertTrue(_oob.decode(three) == items[3])
        self.assertTrue(_oob.decode(one, ticket) == items[1])
        # A batch of 2**30 items: slots of 4 KiB, too small for 100 KiB.
        payload, ticket = _oob.encode((0, b"", items))
        _oob.worker_decode(payload)
        _oob.worker_slots(1 << 30)
        out = _oob.worker_encode(items[2], 2)
        self.assertEqual(out[0], 0x80, "a result too big for its slots goes in band")
        self.assertTrue(_oob.decode(out, ticket) == items[2])

    def test_clean_batches_leave_the_inbox_alone(self):
        # A batch whose results all came in band, each item done at its
        # first attempt, never had its region written: releasing it costs
        # no fallocate. A result that came through the inbox is punched.
        punched = []
        punch = _oob._Inbox.punch
        _oob._Inbox.punch = lambda box, region: (punched.append(region), punch(box, region))[1]
        try:
            with safepool.Pool(2) as pool:
                self.assertEqual(pool.map(abs, range(-50, 50), chunksize=5), [abs(i) for i in range(-50, 50)])
                self.assertEqual(punched, [], "clean batches punched their regions")
                self.assertEqual(pool.starmap(dh.text, [(1, 100 * KiB)], chunksize=1), [dh.text(1, 100 * KiB)])
                self.assertEqual(len(punched), 1, "the region of a result that came through it")
        finally:
            _oob._Inbox.punch = punch

    def test_unknown_envelope_says_so(self):
        # A payload of a later release's format (an envelope byte this one
        # does not know) is refused with why, in the worker and the client.
        for fn in (_oob.worker_decode, _oob.decode):
            with self.assertRaisesRegex(ValueError, "different safepool releases"):
                fn(b"\x07" + bytes(64))

    def test_worker_killed_writing_a_result_is_blamed(self):
        fn = functools.partial(dh.die_writing_once, self.dir)
        n = 64 * MiB
        with safepool.Pool(1) as pool:
            out = pool.starmap_async(fn, [(0, n)], chunksize=1, errors="return").get(60)
            self.assertTrue(isinstance(out[0], safepool.WorkerDied), "the item was not blamed")
            self.assertEqual(out[0].cause, "signal:SIGKILL")
            self.assertEqual([f.args for f in pool.failed_tasks()], [(0, n)])
            self.assertEqual(pool.apply(dh.length, ("ok",)), 2)
        del out
        # Retried, the item's whole result comes back, not the dead
        # worker's part of it.
        with safepool.SafePool(1, retry_killed_tasks=1) as pool:
            got = pool.apply(fn, (1, n))
            self.assertEqual(len(got), n)
            self.assertTrue(got == dh.text(1, n), "the result is not whole")
            self.assertEqual([args for _, args in pool.get_killed_tasks()], [(1, n)])

    def test_split_batch_results_stay_whole(self):
        # A death in a batch splits it; its parts run on both workers at
        # once and write their results into the batch's region, each in
        # its own items' slots.
        n = 200 * KiB
        fn = functools.partial(dh.text_or_die_once, self.dir, 5)
        with safepool.SafePool(2, retry_killed_tasks=1) as pool:
            out = pool.starmap(fn, [(i, n) for i in range(24)], chunksize=24)
            self.assertEqual([args for _, args in pool.get_killed_tasks()], [(5, n)])
        bad = [i for i in range(24) if out[i] != dh.text(i, n)]
        self.assertEqual(bad, [], "items whose results differ")


if __name__ == "__main__":
    unittest.main()
