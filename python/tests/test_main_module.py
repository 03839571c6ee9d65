"""Functions and classes defined where workers cannot import them by name:
under `python -c`, in an interactive session (`python -i` reading its
input), or in a notebook-like __main__ module. With cloudpickle they are sent
by value; without it, the error says what to do."""
import subprocess
import textwrap
import unittest

from tests.support import PYTHON_DIR, child_env, python_with, python_without, skip_or_fail

# The same program three ways. It prints one line per check.
BODY = """
import safepool
from tests import helpers

class Point:
    def __init__(self, x):
        self.x = x

def triple(x):
    return 3 * x

def make_point(x):
    return Point(x)

def check(name, call):
    try:
        print(name, "ok", call(), flush=True)
    except TypeError as e:
        print(name, "error", str(e).replace("\\n", " "), flush=True)

pool = safepool.Pool(2)
check("function", lambda: pool.map(triple, range(3)))
check("item", lambda: [p.x for p in pool.map(helpers.identity, [Point(1), Point(2)])])
check("result", lambda: [p.x for p in pool.map(make_point, [5])])
check("executor", lambda: safepool.Executor(1).submit(triple, 7).result())
pool.terminate()
"""

# A notebook (IPython, Jupyter) runs each cell in a __main__ module that
# has no file.
NOTEBOOK = """
import sys, types
main = types.ModuleType("__main__")
main.__dict__["__builtins__"] = __builtins__
sys.modules["__main__"] = main
exec(compile(%r, "<cell>", "exec"), main.__dict__)
""" % BODY


def run(python, how):
    body = textwrap.dedent(BODY)
    if how == "-c":
        args, stdin = ["-c", body], None
    elif how == "-i":
        # Interactive: statements read one by one from standard input;
        # blank lines end the compound ones.
        args, stdin = ["-i"], body.replace("\n\n", "\n\n\n") + "\n"
    else:
        args, stdin = ["-c", NOTEBOOK], None
    out = subprocess.run(python + args, input=stdin, env=child_env(), cwd=PYTHON_DIR, capture_output=True,
                         text=True, timeout=300)
    lines = {}
    for line in out.stdout.splitlines():
        name, _, rest = line.partition(" ")
        lines[name] = rest
    return out, lines


class MainModule(unittest.TestCase):
    def check_with(self, how):
        python = python_with("cloudpickle")
        if python is None:
            skip_or_fail(self, "no Python here has cloudpickle (test.sh installs python3-cloudpickle)")
        out, lines = run(python, how)
        self.assertEqual(lines.get("function"), "ok [0, 3, 6]", out.stderr)
        self.assertEqual(lines.get("item"), "ok [1, 2]", out.stderr)
        self.assertEqual(lines.get("result"), "ok [5]", out.stderr)
        self.assertEqual(lines.get("executor"), "ok 21", out.stderr)

    def check_without(self, how):
        python = python_without("cloudpickle")
        if python is None:
            skip_or_fail(self, "every Python here has cloudpickle, even without site-packages")
        out, lines = run(python, how)
        for name in ("function", "item", "result", "executor"):
            line = lines.get(name, "")
            self.assertTrue(line.startswith("error "), "%s: %r\n%s" % (name, line, out.stderr))
            # Why, and the two ways out.
            self.assertIn("no script file", line)
            self.assertIn("Define it in a module", line)
            self.assertIn("install cloudpickle", line)

    def test_dash_c_with_cloudpickle(self):
        self.check_with("-c")

    def test_dash_c_without_cloudpickle(self):
        self.check_without("-c")

    def test_interactive_with_cloudpickle(self):
        self.check_with("-i")

    def test_interactive_without_cloudpickle(self):
        self.check_without("-i")

    def test_notebook_with_cloudpickle(self):
        self.check_with("notebook")

    def test_notebook_without_cloudpickle(self):
        self.check_without("notebook")


# A script that makes its pool without the `if __name__ == "__main__":`
# guard, as a fork-based multiprocessing script may.
UNGUARDED = """
import safepool

def double(x):
    return 2 * x

with safepool.Pool(2) as pool:
    print(pool.map(double, range(3)))
"""


class Unguarded(unittest.TestCase):
    def test_a_pool_made_while_a_worker_imports_the_script_says_why(self):
        # Each worker runs the script again to find double; the pool it
        # makes there is refused with the reason, and the client's pool
        # breaks with it.
        import os
        import sys
        import tempfile
        with tempfile.TemporaryDirectory() as d:
            script = os.path.join(d, "unguarded.py")
            with open(script, "w") as f:
                f.write(UNGUARDED)
            out = subprocess.run([sys.executable, script], env=child_env(), cwd=d, capture_output=True,
                                 text=True, timeout=120)
        self.assertNotEqual(out.returncode, 0, out.stdout)
        broken = [line for line in out.stderr.splitlines() if line.startswith("safepool.errors.BrokenPool")]
        self.assertEqual(len(broken), 1, out.stderr)
        # The client's error carries the worker's reason.
        self.assertIn("a pool was made while a worker was importing %s" % script, broken[0])
        self.assertIn('if __name__ == "__main__":', broken[0])


if __name__ == "__main__":
    unittest.main()
