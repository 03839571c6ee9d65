"""CPython's own tests of multiprocessing.Pool and ProcessPoolExecutor, run on
safepool.Pool and safepool.Executor: the measure of "drop-in".

    cd python && /usr/bin/python3 -m unittest -v tests.stdlib_compat

It imports the test cases from the interpreter's test suite (Debian's
libpython3.11-testsuite for /usr/bin/python3: test/_test_multiprocessing.py
and test/test_concurrent_futures.py) and runs them with safepool's classes
in place of the standard ones: _TestPool, _TestPoolWorkerErrors and
_TestPoolWorkerLifetime with Pool set to safepool.Pool, and ExecutorTest,
WaitTests, AsCompletedTests, ExecutorShutdownTest and the initializer
cases with safepool.Executor.

A test that is not applicable (it reads a private attribute of
multiprocessing's pool, or its child program imports the standard class by
name) is skipped with its reason, listed in NOT_APPLICABLE. Every other
test must pass; KNOWN_FAILURES lists those that do not yet, each with why,
run as expected failures (an unexpected success fails the run, so the list
stays true).
"""
import multiprocessing
import sys
import unittest

import safepool
from tests.support import skip_or_fail

try:
    import test._test_multiprocessing as mp_tests
    import test.test_concurrent_futures as cf_tests
except ImportError as e:  # the interpreter's test suite is not installed
    mp_tests = cf_tests = None
    MISSING = str(e)

NOT_APPLICABLE = {
    "test_make_pool": "reads p._pool, the list of multiprocessing's worker Process objects",
    "test_pool_worker_lifetime": "reads p._pool and calls p._repopulate_pool(), multiprocessing's internals",
    "test_worker_finalization_via_atexit_handler_of_multiprocessing":
        "its child program imports multiprocessing.Pool by name: it tests multiprocessing, not safepool",
    "test_interpreter_shutdown": "its child program imports the executor class by name from concurrent.futures",
    "test_submit_after_interpreter_shutdown":
        "its child program imports the executor class by name from concurrent.futures",
    "test_hang_gh83386": "its child program imports the executor class by name from concurrent.futures",
}

# Tests that fail today, and why. Each runs as an expected failure.
KNOWN_FAILURES = {
}


def _mark(cls):
    """Skip the not applicable tests of cls and expect the known failures."""
    for name in dir(cls):
        if not name.startswith("test_"):
            continue
        if name in NOT_APPLICABLE:
            setattr(cls, name, unittest.skip("not applicable: " + NOT_APPLICABLE[name])(getattr(cls, name)))
        elif name in KNOWN_FAILURES:
            setattr(cls, name, unittest.expectedFailure(getattr(cls, name)))
    return cls


if mp_tests is None:
    class TestSuiteMissing(unittest.TestCase):
        def test_suite_installed(self):
            skip_or_fail(self, "the interpreter's test suite is not installed (%s); on Debian: apt-get install "
                               "libpython3.%d-testsuite" % (MISSING, sys.version_info[1]))
else:
    class SafepoolPoolMixin(mp_tests.ProcessesMixin):
        """multiprocessing's 'processes' test type, with safepool.Pool."""
        Pool = staticmethod(safepool.Pool)

    class UsesPoolByName:
        """For test classes that call multiprocessing.Pool(...) themselves:
        multiprocessing.Pool is safepool.Pool while they run."""

        @classmethod
        def setUpClass(cls):
            super().setUpClass()
            cls._saved_pool = multiprocessing.Pool
            multiprocessing.Pool = safepool.Pool

        @classmethod
        def tearDownClass(cls):
            multiprocessing.Pool = cls._saved_pool
            super().tearDownClass()

    @_mark
    class WithSafepoolTestPool(mp_tests._TestPool, SafepoolPoolMixin, unittest.TestCase):
        pass

    @_mark
    class WithSafepoolTestPoolWorkerErrors(UsesPoolByName, mp_tests._TestPoolWorkerErrors, SafepoolPoolMixin,
                                           unittest.TestCase):
        pass

    @_mark
    class WithSafepoolTestPoolWorkerLifetime(UsesPoolByName, mp_tests._TestPoolWorkerLifetime,
                                             SafepoolPoolMixin, unittest.TestCase):
        pass

    class SafepoolExecutorMixin(cf_tests.ExecutorMixin):
        """concurrent.futures' executor tests, with safepool.Executor (no
        mp_context: the failing-initializer test then expects the error on
        the concurrent.futures logger, where safepool.Executor logs it)."""
        executor_type = safepool.Executor

    @_mark
    class SafepoolExecutorTest(SafepoolExecutorMixin, cf_tests.ExecutorTest, cf_tests.BaseTestCase):
        pass

    @_mark
    class SafepoolWaitTest(SafepoolExecutorMixin, cf_tests.WaitTests, cf_tests.BaseTestCase):
        pass

    @_mark
    class SafepoolAsCompletedTest(SafepoolExecutorMixin, cf_tests.AsCompletedTests, cf_tests.BaseTestCase):
        pass

    @_mark
    class SafepoolShutdownTest(SafepoolExecutorMixin, cf_tests.ExecutorShutdownTest, cf_tests.BaseTestCase):
        pass

    @_mark
    class SafepoolInitializerTest(cf_tests.InitializerMixin, SafepoolExecutorMixin, cf_tests.BaseTestCase):
        pass

    @_mark
    class SafepoolFailingInitializerTest(cf_tests.FailingInitializerMixin, SafepoolExecutorMixin,
                                         cf_tests.BaseTestCase):
        pass


if __name__ == "__main__":
    unittest.main()
