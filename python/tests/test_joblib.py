"""The joblib backend (safepool.joblib), with Debian's python3-joblib and
python3-numpy: a killed worker costs one task, not the whole call.

Run under an interpreter that has joblib and numpy: this one, or else
Debian's /usr/bin/python3, in a child process."""
import functools
import os
import shutil
import sys
import tempfile
import unittest

from tests import helpers
from tests.support import python_with, run_tests_under, skip_or_fail

try:
    import joblib
    import numpy
except ImportError:
    joblib = numpy = None


if joblib is None:
    class UnderDebianPython(unittest.TestCase):
        def test_joblib_backend(self):
            python = python_with("joblib, numpy")
            if python is None:
                skip_or_fail(self, "no Python here has joblib and numpy (test.sh installs python3-joblib and "
                                   "python3-numpy for /usr/bin/python3)")
            run_tests_under(self, python, __name__)
else:
    import safepool
    import safepool.joblib  # noqa: F401  (registers the backend)
    from joblib import Parallel, delayed, parallel_backend

    class Backend(unittest.TestCase):
        def test_results(self):
            with parallel_backend("safepool", n_jobs=2):
                out = Parallel()(delayed(helpers.square)(i) for i in range(200))
            self.assertEqual(out, [i * i for i in range(200)])
            out = Parallel(backend="safepool", n_jobs=2)(delayed(helpers.add)(i, b=1) for i in range(5))
            self.assertEqual(out, [1, 2, 3, 4, 5])
            if hasattr(joblib, "parallel_config"):  # joblib 1.3 and later
                with joblib.parallel_config(backend="safepool", n_jobs=2):
                    self.assertEqual(Parallel()(delayed(helpers.square)(i) for i in range(5)), [0, 1, 4, 9, 16])

        def test_numpy_arrays(self):
            arrays = [numpy.arange(i, i + 1000) for i in range(10)]
            with parallel_backend("safepool", n_jobs=2):
                out = Parallel()(delayed(numpy.sum)(a) for a in arrays)
            self.assertEqual([int(x) for x in out], [int(a.sum()) for a in arrays])

        def test_mixed_functions_and_lambdas_in_a_batch(self):
            calls = [delayed(helpers.square)(i) if i % 2 else delayed(helpers.add)(i, 1) for i in range(20)]
            calls.append(delayed(lambda x: x - 1)(10))
            out = Parallel(backend="safepool", n_jobs=2, batch_size=4)(calls)
            self.assertEqual(out, [i * i if i % 2 else i + 1 for i in range(20)] + [9])

        def test_what_the_script_main_block_defines(self):
            # As with loky, what the script's `if __name__ == "__main__":`
            # block defines goes by value with cloudpickle: a function
            # defined there, or one that uses a global set there. A worker
            # imports the script as __mp_main__, without that block: it
            # raised NameError or "Can't get attribute".
            try:
                import cloudpickle  # noqa: F401
            except ImportError:
                skip_or_fail(self, "cloudpickle is not importable (test.sh installs python3-cloudpickle)")
            from tests.test_script_habits import run_script
            out = run_script(self, """
                    import os

                    import joblib
                    import safepool.joblib

                    def score(x):
                        return x * FACTOR

                    if __name__ == "__main__":
                        FACTOR = 10
                        W = [1.0, 2.0]

                        def score2(x):
                            return sum(w * x for w in W)

                        for fn in (score, score2):
                            print(joblib.Parallel(n_jobs=2, backend="safepool")(joblib.delayed(fn)(i) for i in range(4)))
                        calls = [joblib.delayed(score if i % 2 else score2)(i) for i in range(6)]
                        print(joblib.Parallel(n_jobs=2, backend="safepool", batch_size=3)(calls))

                        # A death names the function sent by value, not
                        # the call that unpickles it.
                        def die(x):
                            if x == 2:
                                os._exit(9)
                            return x

                        died = joblib.Parallel(n_jobs=2, backend="safepool")(joblib.delayed(die)(i) for i in range(4))[2]
                        print(str(died).split(" after ")[0], died.function.__name__, died.task_args)
                    """, python=[sys.executable])
            self.assertEqual(out.returncode, 0, out.stderr)
            self.assertEqual(out.stdout.splitlines(), ["[0, 10, 20, 30]", "[0.0, 3.0, 6.0, 9.0]",
                                                       "[0.0, 10, 6.0, 30, 12.0, 50]",
                                                       "the worker died running die(2) (exit:9) die ((2,), {})"])

        def test_killed_worker_costs_one_task(self):
            # Batches of 5: the worker dies on task 7, in the middle of the
            # second batch. Only task 7 is charged.
            with parallel_backend("safepool", n_jobs=2):
                out = Parallel(batch_size=5)(delayed(helpers.kill_self_at)(i) for i in range(20))
            for i, v in enumerate(out):
                if i == 7:
                    self.assertIsInstance(v, safepool.WorkerDied)
                    self.assertEqual(v.cause, "signal:SIGKILL")
                    self.assertIn("kill_self_at", str(v))
                else:
                    self.assertEqual(v, i * i)

        def test_deaths_raise(self):
            with parallel_backend("safepool", n_jobs=2, deaths="raise"):
                with self.assertRaises(safepool.WorkerDied) as cm:
                    Parallel()(delayed(helpers.kill_self_at)(i) for i in range(10))
            self.assertEqual(cm.exception.task_args, ((7,), {}))

        def test_retried_per_policy(self):
            d = tempfile.mkdtemp()
            self.addCleanup(shutil.rmtree, d)
            marker = os.path.join(d, "killed")
            with parallel_backend("safepool", n_jobs=2, retries=1):
                out = Parallel(batch_size=3)(delayed(helpers.kill_once)(i, marker) for i in range(10))
            self.assertEqual(out, [i * i for i in range(10)])
            self.assertTrue(os.path.exists(marker))

        def test_task_exception_raises(self):
            with self.assertRaises(ValueError):
                Parallel(backend="safepool", n_jobs=2)(delayed(helpers.fail_at)(i) for i in range(10))

        def test_oom_kill(self):
            # Task 3 allocates numpy arrays past mem_limit: the kernel kills
            # its worker in its memory cgroup, and only task 3 is lost.
            probe = safepool.Pool(1, mem_limit="200MiB")
            mode = probe.memory_mode
            probe.terminate()
            if not mode.startswith("cgroup"):
                skip_or_fail(self, "no memory cgroups here (%s)" % mode)
            with parallel_backend("safepool", n_jobs=2, mem_limit="200MiB"):
                out = Parallel(batch_size=4)(delayed(helpers.numpy_hog_at)(i) for i in range(8))
            self.assertIsInstance(out[3], safepool.WorkerDied)
            self.assertEqual(out[3].cause, "oom")
            self.assertGreater(out[3].peak_rss, 100 << 20)
            self.assertEqual([v for i, v in enumerate(out) if i != 3], [i for i in range(8) if i != 3])

        def test_one_pool_for_a_parallel_block(self):
            with Parallel(backend="safepool", n_jobs=2) as parallel:
                first = set(parallel(delayed(helpers.pid_of)(i) for i in range(20)))
                second = set(parallel(delayed(helpers.pid_of)(i) for i in range(20)))
            self.assertTrue(first & second, "the second call ran on other workers: %s %s" % (first, second))
            self.assertNotIn(os.getpid(), first | second)

        def test_exception_then_another_call_in_a_parallel_block(self):
            # A task that raises makes the backend start a new pool for the
            # block's next call, with the block's keywords (which joblib
            # 1.5 renamed: the backend used to fail with AttributeError).
            with Parallel(backend="safepool", n_jobs=2) as parallel:
                with self.assertRaises(ValueError):
                    parallel(delayed(helpers.fail_at)(i) for i in range(10))
                self.assertEqual(parallel(delayed(helpers.square)(i) for i in range(6)), [0, 1, 4, 9, 16, 25])

        def test_results_as_a_generator(self):
            # joblib 1.3 and later: return_as="generator" (and, from 1.4,
            # "generator_unordered") needs a backend that takes each
            # batch's outcome in the thread that completes it; the backend
            # used to be refused ("does not support return_as=generator").
            # joblib 1.2 has no return_as.
            if not hasattr(joblib.parallel.ParallelBackendBase, "supports_retrieve_callback"):
                with self.assertRaises(TypeError):
                    Parallel(backend="safepool", n_jobs=2, return_as="generator")
                return
            with Parallel(backend="safepool", n_jobs=2, return_as="generator") as parallel:
                out = parallel(delayed(helpers.kill_self_at)(i) for i in range(12))
                self.assertNotIsInstance(out, list)
                out = list(out)
                self.assertIsInstance(out[7], safepool.WorkerDied)
                self.assertEqual(out[:7] + out[8:], [i * i for i in range(12) if i != 7])
                got = []
                with self.assertRaises(ValueError):
                    for v in parallel(delayed(helpers.fail_at)(i, at=9) for i in range(12)):
                        got.append(v)
                self.assertLess(len(got), 9)
            unordered = Parallel(backend="safepool", n_jobs=2, return_as="generator_unordered")
            self.assertEqual(sorted(unordered(delayed(helpers.sleep_for)(x) for x in (0.3, 0.1, 0.2, 0))),
                             [0, 0.1, 0.2, 0.3])

        def test_a_parallel_in_a_task_runs_on_the_nested_backend(self):
            # As under loky and multiprocessing: threads at the first level
            # of nesting, not a loky pool of processes in every worker.
            with parallel_backend("safepool", n_jobs=2):
                out = Parallel()(delayed(helpers.active_joblib_backend)(i) for i in range(4))
            self.assertEqual(out, [("ThreadingBackend", 1)] * 4)

        def test_n_jobs(self):
            backend = safepool.joblib.SafepoolBackend()
            self.assertEqual(backend.effective_n_jobs(-1), joblib.cpu_count())
            self.assertEqual(backend.effective_n_jobs(None), 1)
            with self.assertRaises(ValueError):
                backend.effective_n_jobs(0)
            with self.assertRaises(ValueError):
                safepool.joblib.SafepoolBackend(deaths="ignore")


if __name__ == "__main__":
    unittest.main()
