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


def run_script(test, source, args=(), python=None, timeout=120):
    """Run source, dedented, as script.py in a directory of its own, and
    return its CompletedProcess."""
    d = tempfile.mkdtemp()
    test.addCleanup(shutil.rmtree, d)
    script = os.path.join(d, "script.py")
    with open(script, "w") as f:
        f.write(textwrap.dedent(source))
    return subprocess.run((python or [sys.executable]) + [script, *args], env=child_env(), cwd=d,
                          capture_output=True, text=True, timeout=timeout)


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


if __name__ == "__main__":
    unittest.main()
