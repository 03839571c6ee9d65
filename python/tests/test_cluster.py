"""Pool(nats=URL): the items run on the agents of a safepool server
(docs/cluster.md), real processes: a server, two agents, their workers."""
import functools
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import unittest

import safepool
from safepool import _oob

from . import cluster_helpers, helpers
from .support import PYTHON_DIR, skip_or_fail

BINARY = os.path.join(PYTHON_DIR, "safepool", "_bin", "safepool")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ClusterTest(unittest.TestCase):
    def setUp(self):
        if not os.access(BINARY, os.X_OK):
            skip_or_fail(self, "no safepool binary at %s (go build -o %s ./cmd/safepool)" % (BINARY, BINARY))
        # A nats= pool sends this process's later tasks in band: the other
        # tests' pools must not.
        in_band = _oob.IN_BAND[0]
        self.addCleanup(_oob.IN_BAND.__setitem__, 0, in_band)
        self.dir = tempfile.mkdtemp(prefix="safepool-cluster-")
        self.addCleanup(shutil.rmtree, self.dir, True)
        self.procs = []
        self.addCleanup(self._stop_all)
        port = _free_port()
        self.url = "nats://127.0.0.1:%d" % port
        self.server = self._start("server", [BINARY, "server", "--store", os.path.join(self.dir, "store"),
                                             "--listen", "127.0.0.1:%d" % port])
        deadline = time.monotonic() + 20
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), 0.5).close()
                break
            except OSError:
                if self.server.poll() is not None or time.monotonic() > deadline:
                    self.fail("the server did not start: %s" % self._log("server"))
                time.sleep(0.05)
        self.agents = [self._start("agent%d" % i, [BINARY, "agent", "--nats", self.url, "-j", "2",
                                                   "--name", "a%d" % i]) for i in range(2)]

    def _start(self, name, argv):
        env = dict(os.environ)
        # The agents' workers import safepool and the tests' functions.
        env["PYTHONPATH"] = PYTHON_DIR + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        log = open(os.path.join(self.dir, name + ".log"), "wb")
        p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=env,
                             start_new_session=True)
        log.close()
        self.procs.append(p)
        return p

    def _log(self, name):
        with open(os.path.join(self.dir, name + ".log"), "rb") as f:
            return f.read().decode(errors="replace")

    def _stop_all(self):
        # Agents first, then the server; each is a session leader, and its
        # group (its workers) goes with it.
        for p in reversed(self.procs):
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
                try:
                    p.wait(10)
                except subprocess.TimeoutExpired:
                    pass
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except OSError:
                pass
            p.wait()

    def _kill_running(self, agent, marks):
        """SIGKILL agent and its workers as soon as it starts an item, so
        that it dies holding one (an item takes 0.2 s)."""
        suffix = ".%d" % agent.pid
        before = {n for n in os.listdir(marks) if n.endswith(suffix)}
        deadline = time.monotonic() + 30
        while not {n for n in os.listdir(marks) if n.endswith(suffix)} - before:
            if time.monotonic() > deadline:
                self.fail("agent %d started no item: %s" % (agent.pid, self._log("agent0")))
            time.sleep(0.005)
        os.killpg(agent.pid, signal.SIGKILL)

    def test_map_on_two_agents(self):
        with safepool.Pool(2, nats=self.url) as pool:
            self.assertEqual(pool.map(cluster_helpers.slow_square, range(50)), [x * x for x in range(50)])
            # An exception comes back as it does from local workers.
            with self.assertRaisesRegex(ValueError, "no 3"):
                pool.map(cluster_helpers.fail_on, range(5))
            # Both agents took items.
            agents = {pid for _, pid in pool.map(cluster_helpers.where, range(40))}
        self.assertEqual(agents, {a.pid for a in self.agents})
        with safepool.Executor(2, nats=self.url) as ex:
            self.assertEqual(list(ex.map(cluster_helpers.slow_square, range(10))), [x * x for x in range(10)])

    def test_no_server(self):
        with self.assertRaisesRegex(safepool.BrokenPool, "no NATS server answers at nats://127.0.0.1:1"):
            with safepool.Pool(1, nats="nats://127.0.0.1:1") as pool:
                pool.map(abs, [1])
        with self.assertRaisesRegex(ValueError, "initializer"):
            safepool.Pool(1, nats=self.url, initializer=print)

    def test_retry_on(self):
        counter = os.path.join(self.dir, "calls")
        with safepool.Pool(1, nats=self.url, retries=2, retry_on=(ConnectionError,)) as pool:
            self.assertEqual(pool.apply(helpers.fail_first, (counter, 2)), 3)
        os.unlink(counter)
        with safepool.Pool(1, nats=self.url, retries=1, retry_on=ConnectionError) as pool:
            with self.assertRaises(ConnectionError):
                pool.apply(helpers.fail_first, (counter, 2))

    def test_worker_deaths(self):
        marker = os.path.join(self.dir, "killed")
        with safepool.Pool(2, nats=self.url, retries=1) as pool:
            # A worker killed once: its item runs again, under the run's
            # policy, on some agent.
            out = pool.starmap(helpers.kill_once, [(i, marker) for i in range(10)])
            self.assertEqual(out, [i * i for i in range(10)])
            self.assertTrue(os.path.exists(marker))
        with safepool.Pool(2, nats=self.url) as pool:
            with self.assertRaises(safepool.WorkerDied) as cm:
                pool.map(helpers.kill_self_at, range(10))
            self.assertEqual(cm.exception.task_args, 7)
        pool = safepool.Pool(2, nats=self.url, on_worker_death="abort")
        try:
            with self.assertRaises(safepool.WorkerDied):
                pool.map(helpers.kill_self_at, range(40), chunksize=1)
            with self.assertRaises(safepool.BrokenPool):
                pool.map(helpers.square, range(3))
        finally:
            pool.terminate()

    def test_output_too_large(self):
        # A result too large for a NATS message fails its item only, with
        # the cause output-lost; its worker did not die, and the message
        # says what happened.
        with safepool.Pool(1, nats=self.url) as pool:
            with self.assertRaises(safepool.WorkerDied) as cm:
                pool.apply(bytes, (2_000_000,))
            self.assertEqual(cm.exception.cause, "output-lost")
            self.assertIn("the output of bytes(2000000) was lost (output-lost)", str(cm.exception))
            self.assertNotIn("worker died", str(cm.exception))
            self.assertEqual(pool.map(bytes, [1, 2]), [bytes(1), bytes(2)])
        # Nor is it a worker death for on_worker_death="abort".
        with safepool.Pool(1, nats=self.url, on_worker_death="abort") as pool:
            with self.assertRaises(safepool.WorkerDied) as cm:
                pool.apply(bytes, (2_000_000,))
            self.assertEqual(cm.exception.cause, "output-lost")
            self.assertEqual(pool.map(bytes, [1, 2]), [bytes(1), bytes(2)])

    def test_timeout_grace(self):
        # The pool's timeout_grace is the run's, in place of each agent's
        # own (3 s here): 0 SIGKILLs a task past its timeout at once, and
        # its SIGTERM handler never runs; without one, the agent's grace
        # lets the handler run.
        for grace, cleans in [(0, False), (None, True)]:
            marker = os.path.join(self.dir, "marker-%s" % grace)
            started = os.path.join(self.dir, "started-%s" % grace)
            with safepool.Pool(1, nats=self.url, timeout=2, timeout_grace=grace) as pool:
                with self.assertRaises(safepool.TaskTimeout) as cm:
                    pool.apply(helpers.clean_up_on_sigterm, (marker, started))
            self.assertEqual(cm.exception.cause, "timeout")
            self.assertTrue(os.path.exists(started), "the task never ran")
            self.assertEqual(os.path.exists(marker), cleans,
                             "timeout_grace=%s: the SIGTERM handler ran: %s" % (grace, os.path.exists(marker)))

    def test_agent_killed_mid_run(self):
        marks = os.path.join(self.dir, "marks")
        os.mkdir(marks)
        f = functools.partial(cluster_helpers.marked_square, marks=marks)
        out = []
        with safepool.Pool(2, nats=self.url) as pool:
            for i, r in enumerate(pool.imap(f, range(50))):
                out.append(r)
                if i == 5:
                    self._kill_running(self.agents[0], marks)
        self.assertEqual(out, [x * x for x in range(50)])
        self.agents[0].wait()
        # The items the killed agent was running ran again on the other.
        ran = {}
        for name in os.listdir(marks):
            x, agent = name.split(".")
            ran.setdefault(int(x), set()).add(int(agent))
        both = [x for x, agents in ran.items() if len(agents) == 2]
        self.assertTrue(both, ran)


if __name__ == "__main__":
    unittest.main()
