"""No worker or supervisor outlives a pool: terminate, Ctrl-C, SIGKILLed
parent, a pool dropped without close. And imap reads its input lazily with
flat memory, and an imap abandoned half way leaves no thread behind."""
import gc
import itertools
import json
import os
import signal
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
import unittest
import uuid
import warnings
import weakref

import safepool
from tests import helpers
from tests.support import PYTHON_DIR, child_env, processes_with, python_sigint_default, run_client, wait_gone

SCRIPT = """
import sys, time, safepool
from tests import helpers
if __name__ == "__main__":
    mode = sys.argv[1]
    if mode == "executor":
        with safepool.Executor(2) as ex:
            futures = [ex.submit(helpers.sleep_for, 60) for _ in range(8)]
            time.sleep(1)  # the workers are up and running the first two
            print("running", flush=True)
            futures[0].result()
    if mode in ("dropped", "nowait"):
        def start():
            ex = safepool.Executor(2)
            [ex.submit(helpers.sleep_for, 60) for _ in range(8)]
            time.sleep(1)
            if mode == "nowait":
                ex.shutdown(wait=False)
        start()  # the program's exit waits for the futures
        print("running", flush=True)
        sys.exit()
    pool = safepool.Pool(2)
    pool.apply(helpers.square, (2,))  # the workers are up
    r = pool.map_async(helpers.sleep_for, [60] * 4, chunksize=1)
    print("running", flush=True)
    if mode == "with":
        with pool:
            r.get()
    else:
        r.get()
"""


def vmrss() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


class NoOrphans(unittest.TestCase):
    def test_terminate(self):
        marker = "safepool-test-" + uuid.uuid4().hex
        os.environ["SAFEPOOL_TEST_MARKER"] = marker
        try:
            pool = safepool.Pool(2)
        finally:
            del os.environ["SAFEPOOL_TEST_MARKER"]
        pool.map(helpers.square, range(10))
        r = pool.map_async(helpers.sleep_for, [60, 60])
        me = {os.getpid()}
        self.assertGreaterEqual(len(processes_with(marker, me)), 3)  # the binary and two workers
        pool.terminate()
        self.assertEqual(wait_gone(marker, me), [])
        with self.assertRaises(safepool.TaskCancelled):
            r.get(timeout=30)

    def _run_script(self, mode, sig):
        marker = "safepool-test-" + uuid.uuid4().hex
        d = tempfile.mkdtemp()
        script = os.path.join(d, "parent.py")
        with open(script, "w") as f:
            f.write(textwrap.dedent(SCRIPT))
        # The script gets SIGINT as a program run from a terminal does.
        proc = subprocess.Popen(python_sigint_default(script, mode), env=child_env(SAFEPOOL_TEST_MARKER=marker),
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=os.path.dirname(d))
        try:
            line = proc.stdout.readline()
            self.assertEqual(line.strip(), b"running", proc.stderr.read() if not line else line)
            self.assertGreaterEqual(len(processes_with(marker, {proc.pid})), 3)
            proc.send_signal(sig)
            proc.wait(timeout=60)
            self.assertEqual(wait_gone(marker), [])
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            proc.stdout.close()
            proc.stderr.close()
        return proc.returncode

    def test_ctrl_c(self):
        # The program ends by SIGINT, as one whose KeyboardInterrupt went
        # unhandled does (multiprocessing's too), so that a shell loop or
        # make that runs it stops at Ctrl-C. Cancelling the pool's tasks at
        # exit must not turn that into exit status 1.
        code = self._run_script("plain", signal.SIGINT)
        self.assertEqual(code, -signal.SIGINT)

    def test_ctrl_c_in_with_block(self):
        code = self._run_script("with", signal.SIGINT)
        self.assertEqual(code, -signal.SIGINT)

    def test_ctrl_c_at_exit_waiting_for_executor(self):
        # The exit of a program whose Executor was dropped or shut down
        # with wait=False waits for its futures, as with
        # ProcessPoolExecutor, but a Ctrl-C stops the wait: it came while
        # the interpreter joined the thread that closed the executor,
        # which printed it and ignored it ("Exception ignored in: <module
        # 'threading'>"), and the program ran every future to its end (here
        # four minutes) as if no Ctrl-C had come.
        for mode in ("dropped", "nowait"):
            with self.subTest(mode=mode):
                start = time.monotonic()
                self._run_script(mode, signal.SIGINT)
                self.assertLess(time.monotonic() - start, 40)

    def test_sigkilled_parent(self):
        code = self._run_script("plain", signal.SIGKILL)
        self.assertEqual(code, -signal.SIGKILL)

    def test_ctrl_c_in_executor_with_block(self):
        # Ctrl-C in an Executor's with block stops the executor at once, as
        # in a Pool's: concurrent.futures' block waited for every future
        # submitted (here four minutes of them) before the program could
        # end by its KeyboardInterrupt.
        start = time.monotonic()
        code = self._run_script("executor", signal.SIGINT)
        self.assertEqual(code, -signal.SIGINT)
        self.assertLess(time.monotonic() - start, 40)


class InterruptedStart(unittest.TestCase):
    """Ctrl-C (KeyboardInterrupt) while a pool or an executor starts, in a
    program that goes on (a notebook, a loop that catches it), leaves no
    binary and no worker behind. The binary used to run on with its workers
    until the program exited: the half-made pool's reader thread kept its
    pipe to the binary open."""

    def _interrupt_starts(self, make, tries=30):
        marker = "safepool-test-" + uuid.uuid4().hex
        os.environ["SAFEPOOL_TEST_MARKER"] = marker
        old = signal.signal(signal.SIGALRM, signal.default_int_handler)
        interrupted = 0
        try:
            for i in range(tries):
                # From 1 ms to 60 ms into the start, which takes tens of ms.
                signal.setitimer(signal.ITIMER_REAL, 0.001 + 0.002 * i)
                try:
                    try:
                        made = make()
                    finally:
                        signal.setitimer(signal.ITIMER_REAL, 0)
                except KeyboardInterrupt:
                    interrupted += 1
                    continue
                made.terminate() if hasattr(made, "terminate") else made.shutdown(cancel_futures=True)
                if hasattr(made, "join"):
                    made.join()
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, old)
            del os.environ["SAFEPOOL_TEST_MARKER"]
        self.assertGreater(interrupted, 0)
        self.assertEqual(wait_gone(marker, {os.getpid()}), [],
                         "processes left after %d interrupted starts" % interrupted)

    def test_pool(self):
        self._interrupt_starts(lambda: safepool.Pool(2))

    def test_executor(self):
        from safepool.executor import Executor
        self._interrupt_starts(lambda: Executor(2))

    def test_no_client_thread_left(self):
        # When the interrupted start returns, no thread of the client runs
        # on. The reader thread, left to see the binary's end, went on into
        # the program's exit from an unhandled Ctrl-C; making the BrokenPool
        # of a start that ended early imports concurrent.futures, whose
        # eval() clears the interpreter's record of the interrupt, and the
        # program ended with exit status 1 instead of by SIGINT (one time
        # in ten, Ctrl-C just after a script's start). Here the binary's
        # stand-in never answers, exits when its input closes, and leaves
        # a child that keeps the pipe to the client open a second more.
        d = tempfile.mkdtemp()
        self.addCleanup(lambda: __import__("shutil").rmtree(d))
        binary = os.path.join(d, "safepool")
        with open(binary, "w") as f:
            f.write("#!/bin/sh\nsleep 1 3<&- &\ncat <&3 >/dev/null\n")
        os.chmod(binary, 0o755)
        old_bin = os.environ.get("SAFEPOOL_BIN")
        os.environ["SAFEPOOL_BIN"] = binary
        old = signal.signal(signal.SIGALRM, signal.default_int_handler)
        before = set(threading.enumerate())
        try:
            signal.setitimer(signal.ITIMER_REAL, 0.3)
            with self.assertRaises(KeyboardInterrupt):
                try:
                    safepool.Pool(2)
                finally:
                    signal.setitimer(signal.ITIMER_REAL, 0)
            left = [t.name for t in set(threading.enumerate()) - before if t.is_alive()]
        finally:
            signal.signal(signal.SIGALRM, old)
            if old_bin is None:
                del os.environ["SAFEPOOL_BIN"]
            else:
                os.environ["SAFEPOOL_BIN"] = old_bin
        self.assertEqual(left, [])


CTRL_C_DURING_MAP = """
import os, signal, threading, time, safepool
from tests import helpers
if __name__ == "__main__":
    pool = safepool.Pool(2)
    pool.map(helpers.square, range(4))
    items = [list(range(20000)) for _ in range(300)]  # slow to pickle: map writes them itself
    interrupted = 0
    for delay in (0.005, 0.01, 0.02, 0.04, 0.07, 0.1, 0.15, 0.2):
        timer = threading.Timer(delay, os.kill, (os.getpid(), signal.SIGINT))
        timer.start()
        try:
            try:
                pool.map(len, items, 1)
            finally:
                timer.join()  # a map done before the signal: it comes here
                time.sleep(0.05)
        except KeyboardInterrupt:
            interrupted += 1
    print(interrupted > 0, pool.map(helpers.square, range(5)), flush=True)
    pool.close()
    pool.join()
    print("joined", flush=True)
"""


class CtrlCDuringMap(unittest.TestCase):
    def test_pool_works_after_ctrl_c_in_map(self):
        # Pool.map pickles and writes its batches in the calling thread. A
        # Ctrl-C there used to leave the pool with no thread to write for
        # it (and could lose a batch, or cut a frame short): every later
        # call and join() waited forever. multiprocessing's pool goes on.
        d = tempfile.mkdtemp()
        self.addCleanup(lambda: __import__("shutil").rmtree(d))
        script = os.path.join(d, "parent.py")
        with open(script, "w") as f:
            f.write(CTRL_C_DURING_MAP)
        try:
            out = subprocess.run(python_sigint_default(script), env=child_env(), capture_output=True, text=True,
                                 timeout=120, cwd=PYTHON_DIR)
        except subprocess.TimeoutExpired as e:
            self.fail("the pool hung after Ctrl-C in map: %s" % (e.stdout,))
        self.assertEqual(out.returncode, 0, out.stderr)
        self.assertEqual(out.stdout, "True [0, 1, 4, 9, 16]\njoined\n")


class Dropped(unittest.TestCase):
    """A pool or executor that the program drops without closing it is
    stopped, as multiprocessing's and concurrent.futures' are: its binary
    and workers do not run on until the program exits."""

    def _marked(self, make):
        marker = "safepool-test-" + uuid.uuid4().hex
        os.environ["SAFEPOOL_TEST_MARKER"] = marker
        try:
            return make(), marker
        finally:
            del os.environ["SAFEPOOL_TEST_MARKER"]

    def test_pool_dropped_while_running(self):
        pool, marker = self._marked(lambda: safepool.Pool(2))
        self.assertEqual(pool.map(helpers.square, range(10)), [x * x for x in range(10)])
        me = {os.getpid()}
        self.assertGreaterEqual(len(processes_with(marker, me)), 3)  # the binary and two workers
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            del pool
            gc.collect()
        self.assertTrue(any(issubclass(w.category, ResourceWarning) for w in caught), caught)
        self.assertEqual(wait_gone(marker, me), [])

    def test_program_ends_with_pools_open(self):
        # The interpreter's exit terminates them (its exit handler); their
        # objects, dropped after it, must not wait for a thread that can no
        # longer run (it hung, as nobody, in Thread.start).
        out = run_client(self, textwrap.dedent("""
            import safepool
            from tests import helpers
            pool = safepool.Pool(1)
            executor = safepool.Executor(1)
            print(pool.map(helpers.square, range(3)), executor.submit(helpers.square, 3).result(), flush=True)
        """), timeout=60)
        self.assertEqual(out.returncode, 0, out.stderr)
        self.assertEqual(out.stdout, "[0, 1, 4] 9\n")

    def test_pool_dropped_where_warnings_are_errors(self):
        # As under `python -W error` or a test runner's filters: the warning
        # raises in __del__, and the pool must still be stopped.
        pool, marker = self._marked(lambda: safepool.Pool(1))
        with warnings.catch_warnings():
            warnings.simplefilter("error", ResourceWarning)
            del pool
            gc.collect()
        self.assertEqual(wait_gone(marker, {os.getpid()}), [])

    def test_pool_kept_by_its_pending_results(self):
        # As multiprocessing's: an AsyncResult keeps its pool until it is
        # ready, so that a pool made for one call is not stopped under it.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ResourceWarning)
            r, marker = self._marked(lambda: safepool.Pool(2).map_async(helpers.sleep_then_square, [0.2] * 4))
            gc.collect()
            self.assertEqual(r.get(timeout=60), [0.2 * 0.2] * 4)
            self.assertEqual(list(safepool.Pool(2).imap(helpers.square, range(5))), [0, 1, 4, 9, 16])
            del r
            gc.collect()
        self.assertEqual(wait_gone(marker, {os.getpid()}), [])

    def test_executor_dropped_finishes_its_futures(self):
        ex, marker = self._marked(lambda: safepool.Executor(2))
        futures = [ex.submit(helpers.sleep_then_square, 0.2) for _ in range(4)]
        del ex
        gc.collect()
        self.assertEqual([f.result(timeout=60) for f in futures], [0.2 * 0.2] * 4)
        self.assertEqual(wait_gone(marker, {os.getpid()}), [])


FORK_SCRIPT = """
import os, sys, safepool
from tests import helpers
if __name__ == "__main__":
    pool = safepool.Pool(2)
    pool.map(helpers.square, range(4))
    pid = os.fork()
    if pid == 0:
        # A child forked by the program (daemon code, a library) that ends
        # normally: its exit handlers run, and the pool, which it
        # inherited as an object, is dropped there.
        with pool:
            pass
        del pool
        sys.exit(0)
    _, status = os.waitpid(pid, 0)
    print(os.waitstatus_to_exitcode(status), pool.map(helpers.square, range(4)), flush=True)
    pool.terminate()
"""


class Forked(unittest.TestCase):
    def test_forked_child_leaves_the_pool_alone(self):
        # The pool is the parent's: a child that inherited it by fork must
        # not stop its binary (it used to SIGKILL it from its exit handler).
        d = tempfile.mkdtemp()
        script = os.path.join(d, "forker.py")
        with open(script, "w") as f:
            f.write(textwrap.dedent(FORK_SCRIPT))
        out = subprocess.run([sys.executable, script], env=child_env(), cwd=PYTHON_DIR, capture_output=True,
                             text=True, timeout=120)
        self.assertEqual(out.returncode, 0, out.stderr)
        self.assertEqual(out.stdout.strip(), "0 [0, 1, 4, 9]", out.stderr)


INIT_SCRIPT = """
import sys, time, safepool
from tests import helpers
if __name__ == "__main__":
    pool = safepool.Pool(2, initializer=helpers.sleep_for, initargs=(0,))
    print(pool.map(helpers.square, range(4)), flush=True)
    sys.stdin.read()
"""


class KilledClient(unittest.TestCase):
    def test_initializer_leaves_no_file(self):
        # The pickled initializer and its arguments (an array of some GiB,
        # say) must not stay behind, in a temporary directory that may be
        # memory, when the program is killed (by the OOM killer too).
        tmp = tempfile.mkdtemp()
        d = tempfile.mkdtemp()
        script = os.path.join(d, "parent.py")
        with open(script, "w") as f:
            f.write(textwrap.dedent(INIT_SCRIPT))
        marker = "safepool-test-" + uuid.uuid4().hex
        proc = subprocess.Popen([sys.executable, script], env=child_env(TMPDIR=tmp, SAFEPOOL_TEST_MARKER=marker),
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=PYTHON_DIR)
        try:
            self.assertEqual(proc.stdout.readline().strip(), b"[0, 1, 4, 9]")
            proc.kill()
            proc.wait(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            for f in (proc.stdin, proc.stdout, proc.stderr):
                f.close()
        self.assertEqual(wait_gone(marker), [])
        self.assertEqual(os.listdir(tmp), [])


class BackgroundJob(unittest.TestCase):
    def test_ctrl_c_tests_pass_with_sigint_ignored(self):
        # A background job of a shell without job control (`./test.sh &`
        # from a script) starts with SIGINT ignored, and children inherit
        # that. The Ctrl-C tests must set what their parent script needs.
        ignore_then_exec = ("import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_IGN); "
                            "os.execv(sys.executable, [sys.executable] + sys.argv[1:])")
        out = subprocess.run([sys.executable, "-c", ignore_then_exec, "-m", "unittest",
                              "tests.test_lifecycle.NoOrphans.test_ctrl_c",
                              "tests.test_lifecycle.NoOrphans.test_ctrl_c_in_with_block"],
                             env=child_env(), cwd=PYTHON_DIR, capture_output=True, text=True, timeout=300)
        self.assertEqual(out.returncode, 0, out.stderr)
        self.assertIn("Ran 2 tests", out.stderr)


class TerminateWithBacklog(unittest.TestCase):
    def test_terminate_with_10000_pending(self):
        # As CPython's test_terminate: many more tasks than the pipes to the
        # binary hold. The bound is far above what terminate takes; it only
        # turns a hang into a failure.
        pool = safepool.Pool(3)
        r = pool.map_async(time.sleep, [300] * 10000, chunksize=1)
        returned = threading.Event()
        t = threading.Thread(target=lambda: (pool.terminate(), returned.set()), daemon=True)
        t.start()
        try:
            self.assertTrue(returned.wait(30), "terminate() hung with 10000 tasks pending")
        finally:
            if not returned.is_set():
                os.kill(pool._core.pid, signal.SIGKILL)  # unblock the hung thread
                t.join(30)
        with self.assertRaises(safepool.TaskCancelled):
            r.get(timeout=30)
        self.assertTrue(r.ready())

    def test_terminate_cancels_a_big_map_at_once(self):
        # Ctrl-C in `with Pool(...) as pool: pool.map(f, big)` waited while
        # every item not run was failed one by one: 7 s for a million
        # items, and past about 1.3 million terminate() gave up waiting for
        # the binary after 10 s and killed it. The items of a map are now
        # failed together (a few calls, not one per item), each with its
        # own TaskCancelled.
        from safepool import _jobs
        n = 200_000
        pool = safepool.Pool(2)
        r = pool.map_async(time.sleep, [0.0001] * n)
        time.sleep(0.5)
        calls = [0]
        settle = _jobs._ListJob.settle

        def counted(job, pos, ok, value):
            calls[0] += 1
            settle(job, pos, ok, value)
        _jobs._ListJob.settle = counted
        try:
            pool.terminate()
            with self.assertRaises(safepool.TaskCancelled):
                r.get(timeout=60)
        finally:
            _jobs._ListJob.settle = settle
        failed = r._job.failed
        self.assertGreater(len(failed), n // 2)
        self.assertTrue(all(isinstance(e, safepool.TaskCancelled) for e in failed.values()))
        self.assertEqual({e.task_args for e in failed.values()}, {0.0001})
        self.assertLess(calls[0], 1000, "items settled one by one")

    def test_terminate_reads_cancelled_items_as_runs(self):
        # The binary sent an entry (28 bytes) for each item that an abort
        # cancelled, which the client read one by one: terminate() of a map
        # of 4 million items took over 10 s, and the binary was killed.
        # Since bridge/5 a run of items cancelled together is one entry.
        from safepool import _core
        from safepool._protocol import META_LEN
        n = 200_000
        pool = safepool.Pool(2)
        r = pool.map_async(time.sleep, [0.0001] * n)
        time.sleep(0.5)
        entries = {}  # state: entries read
        on_items = _core._Core._on_items

        def counted(core, base, payload):
            (k,) = META_LEN.unpack_from(payload)
            state = json.loads(bytes(payload[4:4 + k])).get("state")
            (count,) = META_LEN.unpack_from(payload, 4 + k)
            entries[state] = entries.get(state, 0) + count
            on_items(core, base, payload)
        _core._Core._on_items = counted
        try:
            pool.terminate()
            with self.assertRaises(safepool.TaskCancelled):
                r.get(timeout=60)
        finally:
            _core._Core._on_items = on_items
        failed = r._job.failed
        self.assertGreater(len(failed), n // 2)
        self.assertTrue(all(isinstance(e, safepool.TaskCancelled) for e in failed.values()))
        self.assertLess(entries.get("cancelled", 0), 100,
                        "the binary sent %s entries for %d items cancelled" % (entries, len(failed)))

    def test_terminate_that_kills_the_binary_cancels(self):
        # terminate() kills the binary when it has not ended within its
        # wait (10 s; 1 s at the program's exit): as with a map of 4
        # million items. Its tasks are cancelled by the caller, not lost
        # to a binary that "exited unexpectedly (status -9)".
        pool = safepool.Pool(2)
        pool.apply(helpers.square, (2,))  # the binary is up
        r = pool.map_async(time.sleep, [300] * 10, chunksize=1)
        deadline = time.monotonic() + 30
        while not pool._core._inflight and time.monotonic() < deadline:
            time.sleep(0.01)  # until the binary has some
        pool._core.terminate(wait=0.0)
        with self.assertRaises(safepool.TaskCancelled):
            r.get(timeout=30)
        pool.terminate()
        with self.assertRaises(ValueError):
            pool.map(helpers.square, [1])


class LazyImap(unittest.TestCase):
    def test_100k_items_flat_memory(self):
        pulled = [0]

        def gen():
            for _ in range(100_000):
                pulled[0] += 1
                yield bytes(1024)

        ahead = 0
        with safepool.Pool(2) as pool:
            it = pool.imap(helpers.length, gen())
            for n, v in enumerate(it, 1):
                self.assertEqual(v, 1024)
                ahead = max(ahead, pulled[0] - n)
                if n == 10_000:
                    base = vmrss()
            grown = vmrss() - base
        self.assertEqual(n, 100_000)
        # multiprocessing's imap would read all 100 MB of input ahead.
        self.assertLess(ahead, 12_000)
        self.assertLess(grown, 32 << 20, "parent memory grew by %d bytes" % grown)

    def test_abandoned_imap_leaves_no_thread(self):
        # A loop that stops reading an imap half way (a break, an
        # exception) drops it, and may do so many times over one pool: each
        # time, its input (here endless) and the thread that reads it must
        # go, not stay blocked until the pool ends.
        def feeders():
            return [t for t in threading.enumerate() if t.name == "safepool-imap-feeder"]

        with safepool.Pool(2) as pool:
            inputs = []
            for _ in range(5):
                source = (i for i in itertools.count())
                inputs.append(weakref.ref(source))
                for v in pool.imap(helpers.square, source):
                    if v >= 100:
                        break
                del source
            for _ in range(5):
                it = iter(pool.imap_unordered(helpers.square, itertools.count()))
                next(it)
                del it
            gc.collect()
            deadline = time.monotonic() + 20  # a bound against a hang, not a speed requirement
            while (feeders() or any(r() is not None for r in inputs)) and time.monotonic() < deadline:
                time.sleep(0.05)
            self.assertEqual(feeders(), [])
            self.assertEqual([r() for r in inputs if r() is not None], [])
            self.assertEqual(pool.map(helpers.square, range(5)), [0, 1, 4, 9, 16])


if __name__ == "__main__":
    unittest.main()
