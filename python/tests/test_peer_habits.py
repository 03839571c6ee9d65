"""Code written for multiprocessing.Pool and ProcessPoolExecutor, ported to
safepool as the docs say, on real processes."""
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
import unittest

import safepool
from tests import helpers
from tests.support import child_env


def run_script(test, source):
    """Run source, dedented, as a main script in a directory of its own."""
    d = tempfile.mkdtemp()
    test.addCleanup(shutil.rmtree, d)
    script = os.path.join(d, "script.py")
    with open(script, "w") as f:
        f.write(textwrap.dedent(source))
    return subprocess.run([sys.executable, script], env=child_env(), capture_output=True, text=True,
                          timeout=120)


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
            self.assertLess(time.monotonic() - t, 10)
        finally:
            pool.terminate()



def make_adder(x):
    return lambda y: x + y


class UnpicklableResult(unittest.TestCase):
    def test_maybe_encoding_error_as_multiprocessing_words_it(self):
        # multiprocessing's MaybeEncodingError holds the result's repr in
        # value and says "Error sending result: '<function ...>'"; its
        # value was the repr of that repr ("'<function ...>'"), quoted twice.
        import multiprocessing.pool
        with safepool.Pool(1) as pool:
            with self.assertRaises(multiprocessing.pool.MaybeEncodingError) as cm:
                pool.apply(make_adder, (1,))
        e = cm.exception
        self.assertTrue(e.value.startswith("<function make_adder.<locals>.<lambda> at 0x"), e.value)
        self.assertTrue(str(e).startswith("Error sending result: '<function make_adder.<locals>"), str(e))
        self.assertEqual(e.args, (e.exc, e.value))



class ManagerProxies(unittest.TestCase):
    def test_a_managers_queue_and_dict_reach_the_workers(self):
        # Progress through a Manager's Queue, results into its dict: the
        # proxies connect to the manager with the program's multiprocessing
        # key, which the workers did not have ("digest sent was rejected").
        out = run_script(self, '''
            import multiprocessing
            import safepool

            def put(q, i):
                q.put(i)
                return i

            def store(d, i):
                d[i] = i * i

            if __name__ == "__main__":
                with multiprocessing.Manager() as m:
                    q, d = m.Queue(), m.dict()
                    with safepool.Executor(2) as ex:
                        print(list(ex.map(put, [q] * 3, range(3))), sorted(q.get() for _ in range(3)))
                    with safepool.Pool(2) as pool:
                        pool.starmap(store, [(d, i) for i in range(3)])
                    print(sorted(d.items()))
        ''')
        self.assertEqual(out.stdout, "[0, 1, 2] [0, 1, 2]\n[(0, 0), (1, 1), (2, 4)]\n", out.stderr)


class ExecutorAtExit(unittest.TestCase):
    def test_futures_of_an_executor_never_shut_down_finish(self):
        # A script that submits its work with done callbacks and ends,
        # holding the executor: ProcessPoolExecutor runs the futures to
        # their end at the interpreter's exit. The exit handler terminated
        # safepool's, and every future failed with TaskCancelled. The
        # endless input of a map whose iterator is still held is not read
        # on, or the program would never end.
        out = run_script(self, """
                import itertools
                import time
                import safepool

                def work(x):
                    time.sleep(0.3)
                    return x * x

                def report(f):
                    try:
                        print("done", f.result(), flush=True)
                    except BaseException as e:
                        print("failed", type(e).__name__, flush=True)

                if __name__ == "__main__":
                    executor = safepool.Executor(2)
                    endless = executor.map(work, itertools.count())
                    next(endless)
                    for x in range(4):
                        executor.submit(work, x).add_done_callback(report)
                    print("end of script", flush=True)
            """)
        self.assertEqual(out.returncode, 0, out.stderr)
        lines = out.stdout.splitlines()
        self.assertEqual(lines[0], "end of script", out.stdout)
        self.assertEqual(sorted(lines[1:]), ["done 0", "done 1", "done 4", "done 9"], out.stdout + out.stderr)

    def test_no_new_futures_once_the_program_exits(self):
        # As ProcessPoolExecutor: from the exit on, submit raises
        # RuntimeError, so a done callback that submits the next future
        # does not keep the program from ending. An exit handler of the
        # program's that submitted got ValueError("Pool not running").
        out = run_script(self, """
                import atexit
                import time

                import safepool

                def submit_at_the_end():
                    try:
                        executor.submit(id, None)
                    except Exception as e:
                        print("at exit:", type(e).__name__, e, flush=True)

                def work(x):
                    time.sleep(0.05)
                    return x

                def chain(f):
                    try:
                        executor.submit(work, f.result() + 1).add_done_callback(chain)
                    except RuntimeError as e:
                        print("chain:", e, flush=True)

                if __name__ == "__main__":
                    # Here, not at the top, which workers run too; before
                    # the pool's exit handler, so it runs after it.
                    atexit.register(submit_at_the_end)
                    executor = safepool.Executor(2)
                    executor.submit(work, 0).add_done_callback(chain)
            """)
        self.assertEqual(out.returncode, 0, out.stderr)
        self.assertEqual(out.stdout.splitlines(),
                         ["chain: cannot schedule new futures after interpreter shutdown",
                          "at exit: RuntimeError cannot schedule new futures after interpreter shutdown"],
                         out.stdout + out.stderr)


class AbortSaysWhy(unittest.TestCase):
    def test_tasks_cancelled_by_an_abort_say_whose_death(self):
        # on_worker_death="abort": the tasks the first death cancels said
        # "the pool stopped", as after terminate(), not why it stopped.
        with safepool.Pool(1, on_worker_death="abort") as pool:
            dies = pool.apply_async(helpers.kill_self)
            after = pool.apply_async(helpers.sleep_for, (0.1,))
            with self.assertRaises(safepool.WorkerDied):
                dies.get(60)
            with self.assertRaises(safepool.TaskCancelled) as cm:
                after.get(60)
        self.assertIn("aborted", str(cm.exception))
        self.assertIn("kill_self() died (signal:SIGKILL)", str(cm.exception))
        self.assertIsInstance(cm.exception.__cause__, safepool.WorkerDied)


if __name__ == "__main__":
    unittest.main()
