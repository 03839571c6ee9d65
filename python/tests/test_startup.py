"""What a pool's start costs: the modules the client and the workers import,
and what the binary and the workers inherit. A pool's start is timed by
bench/python; these tests only keep the imports from growing back."""
import os
import subprocess
import sys
import unittest

import safepool
from tests import helpers
from tests.support import child_env

# Modules that cost milliseconds to import and that a pool that runs well
# does not need: the client imports them where a task fails or a timeout
# expires, the worker never imports them.
HEAVY = ["concurrent.futures", "multiprocessing", "typing", "subprocess", "shutil", "logging"]
WORKER_HEAVY = HEAVY + ["json", "runpy", "pickle", "pkgutil", "importlib.util", "safepool.pool", "safepool._core"]

# The interpreter's site module may have imported some of them before
# (a .pth file that imports a package, say): those do not count.
SCRIPT = """
import sys
before = set(sys.modules)
import safepool
from tests import helpers
if __name__ == "__main__":
    with safepool.Pool(2) as pool:
        print(pool.map(helpers.square, range(10)) == [i * i for i in range(10)])
        print(sorted(set(helpers.loaded(%r)) - before))
        print(sorted(set(pool.apply(helpers.loaded, (%r,))) - before))
    print(sorted(set(helpers.loaded(%r)) - before))
"""


class Imports(unittest.TestCase):
    def test_client_and_worker_import_little(self):
        code = SCRIPT % (HEAVY, WORKER_HEAVY, ["concurrent.futures", "multiprocessing"])
        out = subprocess.run([sys.executable, "-c", code], env=child_env(), capture_output=True, text=True,
                             timeout=120, cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        self.assertEqual(out.returncode, 0, out.stderr)
        ok, client, worker, after = out.stdout.splitlines()
        self.assertEqual(ok, "True")
        self.assertEqual(client, "[]", "the client imported these")
        self.assertEqual(worker, "[]", "a worker imported these")
        self.assertEqual(after, "[]", "terminate imported these")


class Inherited(unittest.TestCase):
    def test_worker_gets_parent_argv(self):
        # As with multiprocessing's spawn: the worker sees the parent's sys.argv.
        with safepool.Pool(1) as pool:
            self.assertEqual(pool.apply(helpers.argv), sys.argv)

    def test_binary_gets_no_inheritable_descriptor(self):
        # As subprocess's close_fds: a descriptor that this process lets
        # children inherit does not reach the binary (nor its workers).
        r, w = os.pipe()
        high = os.dup2(w, 60)
        os.set_inheritable(high, True)
        try:
            with safepool.Pool(1) as pool:
                pid = pool._core.pid
                held = set()
                for fd in os.listdir("/proc/%d/fd" % pid):
                    try:
                        held.add(os.readlink("/proc/%d/fd/%s" % (pid, fd)))
                    except OSError:
                        pass
                self.assertNotIn(os.readlink("/proc/self/fd/%d" % w), held)
        finally:
            for fd in (r, w, high):
                os.close(fd)

    def test_inheritable_descriptor_above_the_limit(self):
        # A program may hold an inheritable descriptor above its limit of
        # open files (inherited, or opened before it lowered the limit):
        # posix_spawn refuses to close it (EBADF), which made every pool
        # fail to start with "Bad file descriptor".
        code = (
            "import os, resource, safepool\n"
            "from tests import helpers\n"
            "r, w = os.pipe()\n"
            "os.dup2(w, 200, inheritable=True)\n"
            "resource.setrlimit(resource.RLIMIT_NOFILE, (64, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))\n"
            "with safepool.Pool(2) as pool:\n"
            "    print(pool.map(helpers.square, range(5)))\n"
            "    print(os.path.exists('/proc/%d/fd/200' % pool._core.pid), os.get_inheritable(200))\n")
        out = subprocess.run([sys.executable, "-c", code], env=child_env(), cwd=os.path.dirname(
            os.path.dirname(os.path.abspath(__file__))), capture_output=True, text=True, timeout=120)
        self.assertEqual(out.returncode, 0, out.stderr)
        # Nor does it reach the binary; it stays inheritable for the program's other children.
        self.assertEqual(out.stdout, "[0, 1, 4, 9, 16]\nFalse True\n")


if __name__ == "__main__":
    unittest.main()
