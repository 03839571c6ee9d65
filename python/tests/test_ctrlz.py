"""Ctrl-Z stops the whole program: while a program that uses a pool is
stopped (SIGTSTP from the terminal, SIGTTIN, SIGTTOU or SIGSTOP), the pool's
workers are stopped too and its tasks' timeouts (soft_timeout included) do
not run, nor does the time stopped count against the wait_timeout of
the items queued; fg (SIGCONT) lets everything go on. The binary and its
workers, in a session of their own, used to run on while the program
looked suspended."""
import json
import os
import pty
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
import unittest
import uuid

import safepool
from tests.support import PYTHON_DIR, child_env, skip_or_fail, wait_gone

SCRIPT = """
import json, os, signal, sys, time
import safepool

def tick(path):
    # 30 lines of the worker's pid, 50 ms apart: 1.5 s of work.
    for _ in range(30):
        with open(path, "a") as f:
            f.write("%d\\n" % os.getpid())
        time.sleep(0.05)
    with open(path) as f:
        return len(f.read().split())

if __name__ == "__main__":
    mode, d = sys.argv[1], sys.argv[2]
    with open(os.path.join(d, "pid"), "w") as f:
        f.write(str(os.getpid()))
    if mode == "own-handler":
        # A program's own Ctrl-Z handler, which tidies up and then stops.
        def on_tstp(signum, frame):
            open(os.path.join(d, "handled"), "w").close()
            os.kill(os.getpid(), signal.SIGSTOP)
        signal.signal(signal.SIGTSTP, on_tstp)
    paths = [os.path.join(d, n) for n in "ab"]
    # The time stopped must not count against the timeout of 3 s (or
    # the soft one).
    limit = {"soft_timeout" if mode == "soft" else "timeout": 3.0}
    with safepool.Pool(2, **limit) as pool:
        r = pool.map_async(tick, paths, chunksize=1)
        while not r.ready():
            time.sleep(0.02)
        result = json.dumps(r.get())
    with open(os.path.join(d, "result.tmp"), "w") as f:
        f.write(result)
    os.rename(os.path.join(d, "result.tmp"), os.path.join(d, "result"))
    print(result, flush=True)
"""

WAIT_SCRIPT = """
import json, os, sys, time
import safepool

def busy(path, seconds):
    with open(path, "w") as f:
        f.write(str(os.getpid()))
    time.sleep(seconds)

if __name__ == "__main__":
    d, seconds = sys.argv[1], float(sys.argv[2])
    with open(os.path.join(d, "pid"), "w") as f:
        f.write(str(os.getpid()))
    with safepool.Pool(1) as pool:
        pool.apply(abs, (1,))  # the worker is up
        b = pool.apply_async(busy, (os.path.join(d, "busy"), seconds))
        # More items than the binary takes ahead (its max_pending): some
        # wait in the binary and the worker, the others in this process.
        late = [pool.apply_async(abs, (-i,), wait_timeout=3) for i in range(120)]
        b.get()
        out = []
        for r in late:
            try:
                r.get()
                out.append("done")
            except safepool.WaitTimeout:
                out.append("wait-timeout")
    print(json.dumps(out), flush=True)
"""

# Starts the program in a process group of its own, as a shell with job
# control starts a job: its parent (the test) is in another group of the
# session, so the kernel stops it on SIGTSTP (an orphaned group ignores it).
_NEW_GROUP = "import os, sys; os.setpgid(0, 0); os.execv(sys.executable, [sys.executable] + sys.argv[1:])"


def state(pid: int) -> str:
    """The state letter of process pid ("R", "S", "T"...), or "" if gone."""
    try:
        with open("/proc/%d/stat" % pid) as f:
            return f.read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return ""


def wait_until(what: str, cond, limit: float = 10.0):
    """Wait for cond, limit seconds at most (a bound against hangs, not a
    speed requirement)."""
    deadline = time.monotonic() + limit
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError("%s: not within %gs" % (what, limit))
        time.sleep(0.01)


class CtrlZ(unittest.TestCase):
    def script(self):
        """Write the program in a new directory; return both."""
        d = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, d, True)
        script = os.path.join(d, "prog.py")
        with open(script, "w") as f:
            f.write(textwrap.dedent(SCRIPT))
        self.marker = "safepool-test-" + uuid.uuid4().hex
        self.files = [os.path.join(d, n) for n in "ab"]
        return script, d

    def start(self, mode="plain"):
        """Start the program; return it and its directory, once both tasks
        are ticking."""
        script, d = self.script()
        proc = subprocess.Popen([sys.executable, "-c", _NEW_GROUP, script, mode, d],
                                env=child_env(SAFEPOOL_TEST_MARKER=self.marker), cwd=PYTHON_DIR,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.addCleanup(self._end, proc)
        wait_until("both tasks ticking", lambda: all(self.ticks(f) >= 4 for f in self.files), 30)
        return proc, d

    def _end(self, proc):
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()
        proc.stderr.close()

    @staticmethod
    def ticks(path: str) -> int:
        try:
            with open(path) as f:
                return len(f.read().split())
        except FileNotFoundError:
            return 0

    @staticmethod
    def worker(path: str) -> int:
        with open(path) as f:
            return int(f.read().split()[0])

    def assert_stopped(self, proc):
        """The program (a Popen, or its pid) is stopped; check that its
        workers are, and that they make no progress for longer than the
        tasks' timeout."""
        pid = getattr(proc, "pid", proc)
        wait_until("the program stopped", lambda: state(pid) == "T")
        for f in self.files:
            pid = self.worker(f)
            wait_until("worker %d stopped (it is %r)" % (pid, state(pid)), lambda: state(pid) == "T", 5)
        before = [self.ticks(f) for f in self.files]
        self.assertLess(max(before), 30, "a task ended before the program stopped: nothing to check")
        time.sleep(3.5)
        after = [self.ticks(f) for f in self.files]
        self.assertEqual(after, before, "the tasks ticked on while the program was stopped")

    def assert_done(self, proc):
        out, err = proc.communicate(timeout=60)
        self.assertEqual(proc.returncode, 0, err.decode(errors="replace")[-3000:])
        # Every tick, and no timeout: the time stopped did not count.
        self.assertEqual(json.loads(out), [30, 30], err.decode(errors="replace")[-3000:])

    def test_terminal_ctrl_z(self):
        # A real terminal and a real shell: Ctrl-Z typed at bash, then fg.
        bash = shutil.which("bash")
        if bash is None:
            skip_or_fail(self, "bash is not installed")
        script, d = self.script()
        env = child_env(SAFEPOOL_TEST_MARKER=self.marker, PS1="$ ", TERM="dumb")
        shell, master = pty.fork()
        if shell == 0:
            try:
                os.chdir(PYTHON_DIR)
                os.execve(bash, [bash, "--norc", "--noprofile", "-i"], env)
            finally:
                os._exit(127)
        out = []
        reader = threading.Thread(target=self._drain, args=(master, out), daemon=True)
        reader.start()

        def end():
            try:
                os.kill(shell, signal.SIGKILL)
            except ProcessLookupError:
                pass
            os.waitpid(shell, 0)
            reader.join(10)
            os.close(master)
            wait_gone(self.marker)
        self.addCleanup(end)

        def typed(text: bytes):
            os.write(master, text)

        typed(("%s %s plain %s\n" % (sys.executable, script, d)).encode())
        wait_until("both tasks ticking", lambda: all(self.ticks(f) >= 4 for f in self.files), 30)
        with open(os.path.join(d, "pid")) as f:
            pid = int(f.read())
        typed(b"\x1a")  # Ctrl-Z
        self.assert_stopped(pid)
        typed(b"fg\n")
        result = os.path.join(d, "result")
        wait_until("the program's result (terminal: %r)" % b"".join(out)[-2000:], lambda: os.path.exists(result), 30)
        with open(result) as f:
            self.assertEqual(json.loads(f.read()), [30, 30])
        typed(b"exit\n")

    @staticmethod
    def _drain(fd: int, out: list):
        """Read the terminal's output until it closes, so that it never
        fills up."""
        while True:
            try:
                b = os.read(fd, 4096)
            except OSError:
                return
            if not b:
                return
            out.append(b)

    def test_stop_signals(self):
        # Ctrl-Z, and the stops of a background job that reads from or
        # writes to its terminal, reach the job's process group.
        for sig in (signal.SIGTSTP, signal.SIGTTIN, signal.SIGTTOU):
            with self.subTest(signal=sig.name):
                proc, _ = self.start()
                os.killpg(proc.pid, sig)
                self.assert_stopped(proc)
                os.killpg(proc.pid, signal.SIGCONT)
                self.assert_done(proc)

    def test_sigstop(self):
        # kill -STOP of the program alone, which no handler can catch.
        proc, _ = self.start()
        os.kill(proc.pid, signal.SIGSTOP)
        self.assert_stopped(proc)
        os.kill(proc.pid, signal.SIGCONT)
        self.assert_done(proc)

    def test_soft_timeout(self):
        # The workers' own clock of soft_timeout does not count the time
        # stopped either.
        proc, _ = self.start("soft")
        os.killpg(proc.pid, signal.SIGTSTP)
        self.assert_stopped(proc)
        os.killpg(proc.pid, signal.SIGCONT)
        self.assert_done(proc)

    def test_own_handler(self):
        # A program with its own SIGTSTP handler keeps it: the handler runs,
        # and the stop it makes stops the pool.
        proc, d = self.start("own-handler")
        os.killpg(proc.pid, signal.SIGTSTP)
        self.assert_stopped(proc)
        self.assertTrue(os.path.exists(os.path.join(d, "handled")), "the program's handler did not run")
        os.killpg(proc.pid, signal.SIGCONT)
        self.assert_done(proc)

    def test_killed_while_stopped(self):
        # The program is killed while stopped (kill -9 %1): its binary and
        # stopped workers go too.
        proc, _ = self.start()
        os.killpg(proc.pid, signal.SIGTSTP)
        wait_until("the program stopped", lambda: state(proc.pid) == "T")
        for f in self.files:
            pid = self.worker(f)
            wait_until("worker %d stopped" % pid, lambda: state(pid) == "T", 5)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        self.assertEqual(wait_gone(self.marker), [])

    def run_waiting(self, seconds: float, stop: float):
        """Run WAIT_SCRIPT: a task of seconds on the pool's one worker, and
        120 items with a wait_timeout of 3 s queued behind it; stop the
        program for stop seconds (0: not at all) once the task runs. Return
        the items' outcomes."""
        d = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, d, True)
        script = os.path.join(d, "prog.py")
        with open(script, "w") as f:
            f.write(textwrap.dedent(WAIT_SCRIPT))
        marker = "safepool-test-" + uuid.uuid4().hex
        proc = subprocess.Popen([sys.executable, "-c", _NEW_GROUP, script, d, str(seconds)],
                                env=child_env(SAFEPOOL_TEST_MARKER=marker), cwd=PYTHON_DIR,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.addCleanup(wait_gone, marker)
        self.addCleanup(self._end, proc)
        busy = os.path.join(d, "busy")
        if stop:
            wait_until("the task running", lambda: os.path.exists(busy) and os.path.getsize(busy) > 0, 30)
            os.kill(proc.pid, signal.SIGSTOP)
            wait_until("the program stopped", lambda: state(proc.pid) == "T")
            with open(busy) as f:
                worker = int(f.read())
            wait_until("the worker stopped", lambda: state(worker) == "T", 5)
            time.sleep(stop)
            os.kill(proc.pid, signal.SIGCONT)
        out, err = proc.communicate(timeout=60)
        self.assertEqual(proc.returncode, 0, err.decode(errors="replace")[-3000:])
        return json.loads(out)

    def test_wait_timeout_stopped(self):
        # Stopped 4.5 s with items queued whose wait_timeout is 3 s behind a
        # task of 1 s: they waited about 1 s of the pool's time, and run. The
        # time stopped used to count, and every one failed.
        got = self.run_waiting(1.0, 4.5)
        self.assertEqual(got, ["done"] * 120, "items failed for the time the program was stopped")

    def test_wait_timeout_not_stopped(self):
        # The control: behind a task of 4.5 s, never stopped, they wait too
        # long.
        got = self.run_waiting(4.5, 0)
        self.assertEqual(got, ["wait-timeout"] * 120)

    def test_no_handler_installed(self):
        # The client follows stops without a signal handler of its own.
        sigs = (signal.SIGTSTP, signal.SIGTTIN, signal.SIGTTOU, signal.SIGCONT)
        before = [signal.getsignal(s) for s in sigs]
        with safepool.Pool(1) as pool:
            self.assertEqual(pool.apply(abs, (-1,)), 1)
            self.assertEqual([signal.getsignal(s) for s in sigs], before)


class PoolClock(unittest.TestCase):
    def test_reading(self):
        # The pool clock's word (docs/protocol.md): the time paused while the
        # pool runs, the reading itself (bit 63 set) while it is paused.
        from array import array
        from safepool._protocol import CLOCK_PAUSED, clock_now
        tests = [
            ("never paused", 0, 5_000_000_000, 5.0),
            ("ran on after a pause", 2_000_000_000, 5_000_000_000, 3.0),
            ("paused", CLOCK_PAUSED | 1_500_000_000, 5_000_000_000, 1.5),
        ]
        for name, word, now, want in tests:
            with self.subTest(name):
                view = memoryview(array("Q", [word])).cast("B").cast("Q")
                self.assertEqual(clock_now(view, lambda: now), want)
        self.assertEqual(clock_now(None, lambda: 7_000_000_000), 7.0)


if __name__ == "__main__":
    unittest.main()
