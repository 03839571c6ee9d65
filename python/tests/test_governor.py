"""The engine's memory governor applies to Python tasks: a task OOM-killed
beside neighbours runs again with fewer and succeeds; one killed while it
ran alone with the whole budget ends poison; one killed alone because the
program that uses the pool held the memory it lacked fails, and says so. Needs root and memory cgroups
(skipped elsewhere, a failure under CI=true)."""
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import unittest

import safepool
from tests import helpers
from tests.support import PYTHON_DIR, child_env, skip_or_fail


def _memory_cgroup_base():
    """The directory of this process's memory cgroup (v1, or v2 with the
    memory controller), or None."""
    try:
        with open("/proc/self/cgroup") as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    for line in lines:
        _, ctrl, path = line.split(":", 2)
        if "memory" in ctrl.split(","):
            base = "/sys/fs/cgroup/memory" + path
            return base if os.path.isdir(base) else None
    for line in lines:
        if line.startswith("0::"):
            base = "/sys/fs/cgroup" + line[3:]
            try:
                with open(os.path.join(base, "cgroup.controllers")) as f:
                    if "memory" in f.read().split():
                        return base
            except OSError:
                pass
    return None


class _Wall:
    """A memory cgroup limited to limit bytes, as a container's."""

    def __init__(self, test, limit):
        base = _memory_cgroup_base()
        if os.geteuid() != 0 or base is None:
            skip_or_fail(test, "needs root and a writable memory cgroup")
        self.path = os.path.join(base, "safepool-test-wall-%d" % os.getpid())
        try:
            os.mkdir(self.path)
        except OSError as e:
            skip_or_fail(test, "cannot make a memory cgroup: %s" % e)
        v1 = os.path.exists(os.path.join(self.path, "memory.limit_in_bytes"))
        with open(os.path.join(self.path, "memory.limit_in_bytes" if v1 else "memory.max"), "w") as f:
            f.write(str(limit))
        test.addCleanup(self.remove)

    def remove(self):
        try:
            with open(os.path.join(self.path, "cgroup.procs")) as f:
                for pid in f.read().split():
                    try:
                        os.kill(int(pid), 9)
                    except OSError:
                        pass
        except OSError:
            pass
        for _ in range(100):
            try:
                os.rmdir(self.path)
                return
            except FileNotFoundError:
                return
            except OSError:
                time.sleep(0.1)

    def run(self, argv, **kw):
        """Run argv inside the cgroup: a shell that moves itself in first."""
        cmd = 'echo $$ > "$1/cgroup.procs" && shift && exec "$@"'
        return subprocess.run(["sh", "-c", cmd, "sh", self.path] + argv, **kw)


class OOMRetry(unittest.TestCase):
    def test_killed_beside_neighbours_runs_again_with_fewer(self):
        # A wall of 520 MiB: the 3 neighbours hold 80 MiB each, the big task
        # grows to 304 MiB (the pool is told a task needs 80 MiB, so that they
        # start together). Together they pass the wall, and the kernel
        # kills the biggest, the big task; the governor runs it again when
        # its need fits beside what runs, that is with fewer neighbours.
        wall = _Wall(self, 520 << 20)
        d = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, d)
        out = wall.run([sys.executable, "-m", "tests.oom_scenario", d, "304", "80"], cwd=PYTHON_DIR,
                       env=child_env(), capture_output=True, text=True, timeout=180)
        self.assertEqual(out.returncode, 0, out.stderr[-3000:])
        res = json.loads(out.stdout.strip().splitlines()[-1])
        if not res["memory_mode"].startswith("cgroup"):
            skip_or_fail(self, "no memory cgroups here (%s)" % res["memory_mode"])
        self.assertEqual(res.get("result"), 304, res)
        self.assertEqual(res["neighbours"], [80, 80, 80])
        self.assertEqual(res["killed"], 1, "want the big task killed once, and no neighbour: %s" % res)
        seen = res["seen"]
        self.assertGreaterEqual(len(seen), 2, "want an OOM kill then a retry: %s" % res)
        self.assertEqual(seen[0], 3, "the first attempt should run beside 3 neighbours: %s" % res)
        self.assertLess(seen[-1], 3, "the last attempt should run with fewer neighbours: %s" % res)

    def test_killed_alone_is_poison(self):
        pool = safepool.Pool(4, mem_budget="150MiB", mem_high=0, mem_psi=0)
        self.addCleanup(pool.terminate)
        if not pool.memory_mode.startswith("cgroup"):
            skip_or_fail(self, "no memory cgroups here (%s): the governor is off" % pool.memory_mode)
        with self.assertRaises(safepool.WorkerDied) as cm:
            pool.apply(helpers.hog, (600,))
        e = cm.exception
        self.assertEqual(e.cause, "oom")
        self.assertEqual(e.state, "poison")
        self.assertGreaterEqual(e.attempts, 1, e.history)
        self.assertTrue(all(a.cause == "oom" for a in e.history), e.history)
        self.assertIn("poison", str(e))
        self.assertIn("running alone with the whole memory budget", str(e))
        self.assertEqual([(f.cause, f.attempts) for f in pool.failed_tasks()], [("oom", e.attempts)])
        # The pool goes on.
        self.assertEqual(pool.apply(helpers.square, (5,)), 25)


class ClientHeld(unittest.TestCase):
    def test_memory_the_client_holds_is_not_the_task_s_fault(self):
        # A wall of 600 MiB: the program that uses the pool holds 360 MiB
        # in its own arrays, and its task grows to 300 MiB, within the
        # pool's budget of 536 MiB. The OOM killer takes the task even while
        # it runs alone: the client's memory, not the task, is why. It fails
        # (it is not poison, which says it could never fit), and the message
        # says what the others held and what that left it.
        wall = _Wall(self, 600 << 20)
        out = wall.run([sys.executable, "-m", "tests.client_held_scenario", "360", "300"], cwd=PYTHON_DIR,
                       env=child_env(), capture_output=True, text=True, timeout=180)
        self.assertEqual(out.returncode, 0, out.stderr[-3000:])
        res = json.loads(out.stdout.strip().splitlines()[-1])
        self.assertNotIn("result", res, "want the task killed beside the client's 360 MiB: %s" % res)
        self.assertEqual((res["state"], res["cause"]), ("failed", "oom"), res)
        self.assertLessEqual(res["attempts"], 3, res)
        for want in ("processes other than the pool's workers held ", "of the enclosing cgroup's limit of 600 MiB",
                     "it may fit within the memory budget of 536 MiB when they hold less"):
            self.assertIn(want, res["message"], res)


if __name__ == "__main__":
    unittest.main()
