"""What data and ML scripts do in their tasks, run as scripts are run
(`python3 script.py`): pickle what the script defines, start pools of their
own, and the like."""
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import unittest

from tests.support import child_env


def run_script(test, source, args=(), python=None, timeout=120, env_drop=(), cwd=None, stdout=None, env=None):
    """Run source, dedented, as script.py in a directory of its own (and
    there, or in cwd), and return its CompletedProcess. env_drop: variables
    of this process's environment that the script does not get; env: more
    variables; stdout: a file for its stdout (else it is captured)."""
    extra = env or {}
    d = tempfile.mkdtemp()
    test.addCleanup(shutil.rmtree, d)
    script = os.path.join(d, "script.py")
    with open(script, "w") as f:
        f.write(textwrap.dedent(source))
    env = child_env(**extra)
    for name in env_drop:
        env.pop(name, None)
    return subprocess.run((python or [sys.executable]) + [script, *args], env=env, cwd=cwd or d,
                          stdout=stdout or subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=timeout)


def run_script_to_file(test, source):
    """Run source as run_script does, its stdout a file and without
    PYTHONUNBUFFERED, as `python3 script.py > log.txt` from a shell;
    return its CompletedProcess and the lines of its stdout."""
    d = tempfile.mkdtemp()
    test.addCleanup(shutil.rmtree, d)
    log = os.path.join(d, "log.txt")
    with open(log, "w") as f:
        out = run_script(test, source, env_drop=("PYTHONUNBUFFERED",), stdout=f)
    with open(log) as f:
        return out, f.read().splitlines()


class ScriptThatImportsMultiprocessing(unittest.TestCase):
    # Importing multiprocessing for the first time (joblib does, at its
    # import) sets sys.modules["__mp_main__"] to sys.modules["__main__"].
    # A worker runs the script as __mp_main__; when that import came from
    # the script, __mp_main__ was the worker's own -c module from then on,
    # and nothing the script defines could be pickled by name in a task.
    def test_a_task_pickles_what_the_script_defines(self):
        out = run_script(self, """
                import multiprocessing
                import pickle
                from dataclasses import dataclass
                import safepool

                @dataclass
                class Record:
                    x: int

                def square(x):
                    return x * x

                def save(x):
                    return pickle.loads(pickle.dumps(Record(x))).x

                def nested(n):
                    with multiprocessing.Pool(2) as pool:
                        return sum(pool.map(square, range(n)))

                if __name__ == "__main__":
                    with safepool.Pool(2) as pool:
                        print("save", pool.map(save, range(3), errors="return"))
                        print("nested", pool.map(nested, [3, 4], errors="return"))
            """)
        self.assertEqual(out.returncode, 0, out.stderr)
        self.assertEqual(out.stdout.splitlines(), ["save [0, 1, 2]", "nested [5, 14]"])



class PrintsOfTasksInAFile(unittest.TestCase):
    # Run as `python3 script.py > log.txt`, a worker's stdout is a file,
    # which Python buffers in blocks of 8 KiB. What its tasks printed
    # stayed in the worker's buffer until the worker exited normally, so
    # the with block's terminate() (SIGTERM) lost all of it, and so did a
    # worker killed by the OOM killer: the lines of the tasks it had
    # finished before.
    SCRIPT = """
        import os
        import sys
        import safepool

        def task(x):
            print("task", x, "printed")
            if x == 5:
                os.kill(os.getpid(), 9)
            return x

        if __name__ == "__main__":
            with safepool.Pool(2) as pool:
                # One worker runs items 0 to 5, one by one, then dies.
                results = pool.map(task, range(6), chunksize=6, errors="return")
                print("map 1 done", flush=True)
                print("results", [type(r).__name__ for r in results], flush=True)
                pool.map(task, range(6, 10))
                print("map 2 done", flush=True)
            print("pool left", flush=True)
    """

    def test_lines_printed_by_tasks_are_written_as_their_results_go(self):
        out, lines = run_script_to_file(self, self.SCRIPT)
        self.assertEqual(out.returncode, 0, out.stderr)
        # Each item's line is there before the line the program printed
        # after its map; the dying item 5 wrote its own line or not.
        for x in range(10):
            if x == 5:
                continue
            self.assertIn("task %d printed" % x, lines, lines)
            self.assertLess(lines.index("task %d printed" % x),
                            lines.index("map 1 done" if x < 5 else "map 2 done"), lines)
        self.assertIn("results ['int', 'int', 'int', 'int', 'int', 'WorkerDied']", lines)
        self.assertEqual(lines[-1], "pool left", lines)


class InterpreterOptions(unittest.TestCase):
    # `python3 -O -W ignore script.py`: multiprocessing's spawn gives its
    # workers the interpreter's options; safepool's workers ran without
    # them, with their asserts on and every warning the user silenced.
    def test_workers_get_the_options_of_the_interpreter(self):
        out = run_script(self, """
                import sys
                import warnings
                import safepool

                def task(x):
                    warnings.warn("a warning the user silenced")
                    return (sys.flags.optimize, sys.flags.dev_mode, "utf8" in sys._xoptions, __debug__,
                            type(sys.stdout.buffer).__name__)

                if __name__ == "__main__":
                    with safepool.Pool(1) as pool:
                        print(pool.apply(task, (1,)))
            """, python=[sys.executable, "-O", "-W", "ignore::UserWarning", "-X", "dev", "-X", "utf8", "-u"],
            env_drop=("PYTHONUNBUFFERED",))
        self.assertEqual(out.returncode, 0, out.stderr)
        self.assertEqual(out.stdout.splitlines(), ["(1, True, True, False, 'FileIO')"])
        self.assertNotIn("a warning the user silenced", out.stderr)
        self.assertNotIn("ResourceWarning", out.stderr)

    def test_warnings_as_errors_leave_the_workers_quiet(self):
        # Under -W error and -X dev (here from the environment, which
        # workers always had), a worker's own pipes, which it left to the
        # interpreter to close, made each worker print an unclosed file's
        # ResourceWarning, as an error, at its exit.
        out = run_script(self, """
                import safepool

                def square(x):
                    return x * x

                if __name__ == "__main__":
                    pool = safepool.Pool(2, max_tasks_per_child=2)
                    print(pool.map(square, range(6)))
                    pool.close()
                    pool.join()
            """, env={"PYTHONWARNINGS": "error", "PYTHONDEVMODE": "1"})
        self.assertEqual(out.returncode, 0, out.stderr)
        self.assertEqual(out.stdout.splitlines(), ["[0, 1, 4, 9, 16, 25]"])
        self.assertEqual(out.stderr, "")


class ModulesOfTheWorkingDirectory(unittest.TestCase):
    # `cd data && python3 ~/proj/script.py`: the program's sys.path has the
    # script's directory, not the working directory. Its workers ran
    # `python3 -c`, which put the working directory ("") in front of the
    # standard library, so a calendar.py there was imported by the tasks
    # instead of the standard library's.
    def test_tasks_import_what_the_program_would(self):
        d = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, d)
        with open(os.path.join(d, "calendar.py"), "w") as f:
            f.write("raise ImportError('the calendar.py of the working directory')\n")
        out = run_script(self, """
                import sys
                import safepool

                def task(x):
                    import calendar
                    return calendar.isleap(x)

                if __name__ == "__main__":
                    with safepool.Pool(1) as pool:
                        print(pool.map(task, [2024, 2023], errors="return"))
            """, cwd=d)
        self.assertEqual(out.returncode, 0, out.stderr)
        self.assertEqual(out.stdout.splitlines(), ["[True, False]"])


class EnvironmentOfTheTasks(unittest.TestCase):
    # The client puts safepool's directory in front of PYTHONPATH for the
    # workers' start. The tasks kept it, and so did every program they
    # started: another Python, or a tool of another environment, then
    # imported this environment's packages before its own.
    def test_tasks_and_their_programs_get_the_client_pythonpath(self):
        from tests.support import PYTHON_DIR
        out = run_script(self, """
                import os
                import subprocess
                import sys
                sys.path.insert(0, sys.argv[1])  # safepool, not through PYTHONPATH
                import safepool

                def task(x):
                    child = subprocess.run([sys.executable, "-c", "import os; print(os.environ.get('PYTHONPATH'))"],
                                           capture_output=True, text=True).stdout.strip()
                    return os.environ.get("PYTHONPATH"), child

                if __name__ == "__main__":
                    with safepool.Pool(1) as pool:
                        print(pool.apply(task, (1,)))
            """, args=[PYTHON_DIR], env_drop=("PYTHONPATH",))
        self.assertEqual(out.returncode, 0, out.stderr)
        self.assertEqual(out.stdout.splitlines(), ["(None, 'None')"])


class ManyArguments(unittest.TestCase):
    # `python3 script.py inputs/*.json`: workers get the script's sys.argv
    # (its top level may read it), which went in one environment variable.
    # Past 128 KiB exec refuses such a string (E2BIG), and the pool could
    # not start: "cannot start the safepool binary: Argument list too long".
    def test_a_script_run_on_thousands_of_files(self):
        files = ["inputs/2024/some-directory/record-%06d.json" % i for i in range(5000)]
        self.assertGreater(sum(map(len, files)), 200 << 10)
        out = run_script(self, """
                import sys
                import safepool

                def argv(x):
                    return sys.argv

                if __name__ == "__main__":
                    # One item per worker, each worker new.
                    with safepool.Pool(1, maxtasksperchild=1) as pool:
                        got = pool.map(argv, range(2), chunksize=1)
                    print(len(sys.argv), all(a == sys.argv for a in got))
            """, args=files)
        self.assertEqual(out.returncode, 0, out.stderr[-3000:])
        self.assertEqual(out.stdout.splitlines(), ["5001 True"])


class PackageMainWithoutCloudpickle(unittest.TestCase):
    # `python3 -m pkg` runs pkg/__main__.py, which workers never import
    # (it often runs the program at its top level). Without cloudpickle,
    # what it defines cannot be sent; the message said that the program
    # had no script file, "read from standard input, or run with -c or
    # interactively", which was none of these.
    def test_the_message_names_the_package_main(self):
        from tests.support import python_without, skip_or_fail
        python = python_without("cloudpickle")
        if python is None:
            skip_or_fail(self, "every Python here has cloudpickle, even without site-packages")
        d = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, d)
        os.mkdir(os.path.join(d, "pkg"))
        open(os.path.join(d, "pkg", "__init__.py"), "w").close()
        with open(os.path.join(d, "pkg", "__main__.py"), "w") as f:
            f.write(textwrap.dedent("""
                import safepool

                def double(x):
                    return 2 * x

                with safepool.Pool(1) as pool:
                    try:
                        pool.map(double, range(3))
                    except TypeError as e:
                        print(e)
            """))
        out = subprocess.run(python + ["-m", "pkg"], env=child_env(), cwd=d, capture_output=True, text=True,
                             timeout=120)
        self.assertEqual(out.returncode, 0, out.stderr)
        self.assertIn("it is %s, the __main__.py of a package" % os.path.join(d, "pkg", "__main__.py"), out.stdout)
        self.assertNotIn("standard input", out.stdout)


class PrintsBeforeResults(unittest.TestCase):
    # The line a task printed is in the file before the line the program
    # prints for its result, also when the result is bigger than the
    # result pipe's buffer (20 KB here), whose frame goes out as it is
    # written.
    def test_each_task_line_comes_before_its_result_line(self):
        out, lines = run_script_to_file(self, """
                import safepool

                def task(x):
                    print("task", x)
                    return "y" * 20000

                if __name__ == "__main__":
                    with safepool.Pool(2) as pool:
                        for i, r in enumerate(pool.imap(task, range(200))):
                            print("result", i, flush=True)
            """)
        self.assertEqual(out.returncode, 0, out.stderr)
        seen, early = set(), []
        for line in lines:
            what, x = line.split()
            if what == "task":
                seen.add(x)
            elif x not in seen:
                early.append(x)
        self.assertEqual(len(seen), 200)
        self.assertEqual(early, [])


class PoolInADaemonThread(unittest.TestCase):
    def test_the_program_ends_quietly(self):
        # A daemon thread still in a map when the program ends: the exit
        # handler terminated the pool and woke the thread with
        # TaskCancelled, whose traceback was printed while the interpreter
        # shut down (in 3 of 5 runs), or aborted it ("Fatal Python error:
        # _enter_buffered_busy", exit status 134, in 3 of 12). As with
        # multiprocessing, the thread is left waiting and frozen.
        for run in range(6):
            out = run_script(self, """
                    import threading, time
                    import safepool

                    def slow(x):
                        time.sleep(1)
                        return x

                    def work():
                        with safepool.Pool(2) as pool:
                            pool.map(slow, range(40))

                    if __name__ == "__main__":
                        threading.Thread(target=work, daemon=True).start()
                        time.sleep(1.5)
                        print("main done")
                    """)
            self.assertEqual((out.returncode, out.stdout, out.stderr), (0, "main done\n", ""), "run %d" % run)


if __name__ == "__main__":
    unittest.main()
