"""A pool that runs fewer workers than asked, because a limit leaves room
for fewer (open files, processes), tells its user so with a warning that
names the line that made the pool, and sizes its work for the workers
that run."""
import unittest

from tests.test_script_habits import run_script


class FewerWorkersThanAsked(unittest.TestCase):
    def test_open_file_limit_warns(self):
        out = run_script(self, """
                import resource
                import safepool

                def square(x):
                    return x * x

                if __name__ == "__main__":
                    resource.setrlimit(resource.RLIMIT_NOFILE, (60, 60))
                    with safepool.Pool(8) as pool:
                        print(sum(pool.map(square, range(100))), pool._core.processes)
                """)
        self.assertEqual(out.returncode, 0, out.stderr)
        total, workers = out.stdout.split()
        self.assertEqual(total, "328350")
        self.assertLess(int(workers), 8)
        self.assertRegex(out.stderr, r"script\.py:10: RuntimeWarning: safepool: running %s at once instead of 8: "
                         r"the open-file limit \(ulimit -n\) is 60, " % ("1 worker" if workers == "1" else workers + " workers"))

    def test_no_warning_when_all_run(self):
        out = run_script(self, """
                import safepool

                if __name__ == "__main__":
                    with safepool.Pool(2) as pool:
                        print(pool.apply(abs, (-3,)))
                """)
        self.assertEqual(out.returncode, 0, out.stderr)
        self.assertEqual(out.stdout, "3\n")
        self.assertNotIn("Warning", out.stderr)


if __name__ == "__main__":
    unittest.main()
