"""Code written for multiprocessing.Pool and ProcessPoolExecutor, ported to
safepool as the docs say, on real processes."""
import time
import unittest

import safepool
from tests import helpers


class TerminateFromACallback(unittest.TestCase):
    def test_error_callback_terminates_the_pool(self):
        # "Stop at the first failure": an error_callback that terminates
        # the pool. Callbacks run in the thread that reads the binary's
        # answers, which terminate() used to wait on for the binary's end:
        # it could not come, so the callback took 10 s, no result was
        # delivered meanwhile, and then the binary was killed.
        pool = safepool.Pool(2)
        took = []

        def stop(e):
            if isinstance(e, ValueError):
                t = time.monotonic()
                pool.terminate()
                took.append(time.monotonic() - t)

        try:
            results = [pool.apply_async(helpers.fail_at_value, (s,), error_callback=stop)
                       for s in [0.1, -1] + [5] * 6]
            results[1].wait(60)
            for r in results:
                r.wait(60)
            self.assertEqual(len(took), 1)
            self.assertLess(took[0], 5, "terminate() in an error_callback took %.1fs" % took[0])
            self.assertTrue(all(r.ready() for r in results))
            with self.assertRaises(ValueError):
                results[1].get()
            with self.assertRaises(safepool.TaskCancelled):
                results[-1].get()
            t = time.monotonic()
            pool.join()
            self.assertLess(time.monotonic() - t, 5)
        finally:
            pool.terminate()


if __name__ == "__main__":
    unittest.main()
