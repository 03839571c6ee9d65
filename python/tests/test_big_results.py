"""imap and imap_unordered hold few big results that their consumer has not
taken yet: their window ahead of the consumer is bounded by the results'
bytes as well as by their arguments', so that a consumer slower than the
workers (one that writes each array to disk, say) does not have every
result in flight pile up in memory."""
import os
import shutil
import tempfile
import time
import unittest
from unittest import mock

import safepool
from safepool import _jobs
from tests import helpers

MIB = 1 << 20


class BigResultsAhead(unittest.TestCase):
    def started_while_consumer_waits(self, unordered):
        d = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, d)
        # Results of 4 MiB against 1 MiB a worker: big ones.
        with mock.patch.object(_jobs, "AHEAD_BYTES", MIB), safepool.Pool(2) as pool:
            imap = pool.imap_unordered if unordered else pool.imap
            it = imap(helpers.big_result_noted, ((i, d, 4 * MIB) for i in range(40)), chunksize=1)
            self.assertEqual(len(next(it)), 4 * MIB)
            # The consumer is slow: the workers run all the window lets them.
            time.sleep(2)
            started = len(os.listdir(d))
            rest = list(it)
        self.assertEqual(len(rest), 39)
        return started

    def test_imap(self):
        # One consumed, and the workers' two plus one ahead: before the
        # window knew of the results' size, 1 + 4 per worker had started.
        self.assertLessEqual(self.started_while_consumer_waits(False), 5)

    def test_imap_unordered(self):
        self.assertLessEqual(self.started_while_consumer_waits(True), 5)

    def test_small_results_keep_the_window(self):
        with safepool.Pool(2) as pool:
            self.assertEqual(sum(pool.imap(abs, range(-5000, 5000))), 25000000)


if __name__ == "__main__":
    unittest.main()
