"""Test support: CI rules and process scans."""
import os
import shutil
import subprocess
import sys
import time
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
PYTHON_DIR = os.path.dirname(HERE)


def in_ci() -> bool:
    return os.environ.get("CI") == "true"


def skip_or_fail(test: unittest.TestCase, reason: str):
    """Skip, except under CI=true, where the machines can run every test."""
    if in_ci():
        test.fail("cannot run under CI=true: " + reason)
    raise unittest.SkipTest(reason)


def processes_with(marker: str, exclude=()):
    """Pids of live processes whose environment or command line holds marker."""
    found = []
    needle = marker.encode()
    for name in os.listdir("/proc"):
        if not name.isdigit() or int(name) in exclude:
            continue
        for part in ("environ", "cmdline"):
            try:
                with open("/proc/%s/%s" % (name, part), "rb") as f:
                    data = f.read()
            except OSError:
                continue
            if needle in data:
                try:
                    with open("/proc/%s/stat" % name) as f:
                        state = f.read().rsplit(")", 1)[1].split()[0]
                except OSError:
                    break
                if state != "Z":
                    found.append(int(name))
                break
    return found


def wait_gone(marker: str, exclude=(), limit: float = 20.0):
    """Wait until no process carries marker, for at most limit seconds (a
    bound against hangs, not a speed requirement); return those left."""
    deadline = time.monotonic() + limit
    while True:
        left = processes_with(marker, exclude)
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.05)


def child_env(**extra):
    env = dict(os.environ)
    env["PYTHONPATH"] = PYTHON_DIR + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.update(extra)
    return env


# Python code that restores SIGINT to its default disposition and execs
# the interpreter with the rest of its arguments. A process started with
# SIGINT ignored (every background job of a shell without job control, such
# as `./test.sh &` from a script) passes that on to its children, and
# Python then installs no KeyboardInterrupt handler. Popen(restore_signals=
# True) restores SIGPIPE, SIGXFZ and SIGXFSZ only, and preexec_fn is not
# safe in a process with threads; exec keeps a default disposition.
_SIGINT_DEFAULT = ("import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_DFL); "
                   "os.execv(sys.executable, [sys.executable] + sys.argv[1:])")


def python_sigint_default(*args):
    """The argument vector of `python3 args...` started with SIGINT at its
    default, as from a terminal, whatever this process's disposition."""
    return [sys.executable, "-c", _SIGINT_DEFAULT, *args]


DEBIAN_PYTHON = "/usr/bin/python3"


def python_with(module: str):
    """The argument vector of a Python interpreter that can import module:
    this one, or Debian's (where test.sh installs python3-joblib,
    python3-numpy, python3-tqdm...); None if neither can."""
    for argv in ([sys.executable], [DEBIAN_PYTHON]):
        if os.path.exists(argv[0]) and _imports(argv, module):
            return argv
    return None


def python_without(module: str):
    """The argument vector of a Python interpreter that cannot import
    module (without site-packages, if need be), or None."""
    for argv in ([sys.executable], [sys.executable, "-S"]):
        if not _imports(argv, module):
            return argv
    return None


def _imports(argv, module: str) -> bool:
    import subprocess
    r = subprocess.run(argv + ["-c", "import " + module], capture_output=True)
    return r.returncode == 0


def run_tests_under(test: unittest.TestCase, python, module: str):
    """Run the unittest module `module` under the interpreter python (an
    argument vector) in a child process, and fail test with its output if
    any of its tests fails or is skipped under CI=true."""
    import subprocess
    out = subprocess.run(python + ["-m", "unittest", "-v", module], env=child_env(), cwd=PYTHON_DIR,
                         capture_output=True, text=True, timeout=600)
    sys.stderr.write(out.stderr)
    if out.returncode != 0:
        test.fail("%s under %s failed:\n%s" % (module, python[0], out.stderr[-6000:]))
    if in_ci() and "skipped" in out.stderr.splitlines()[-1]:
        test.fail("%s under %s skipped tests under CI=true" % (module, python[0]))


def item_runs(dir):
    """How many times each item ran: the length of its ran-<item> file in
    dir, to which the dying task functions of helpers and direct_helpers
    append a byte each run."""
    out = {}
    for name in os.listdir(dir):
        if name.startswith("ran-"):
            with open(os.path.join(dir, name)) as f:
                out[int(name[4:])] = len(f.read())
    return out


# Debian's interpreter, which nobody may run (one under root's home may not
# be), and the command line that drops root to nobody before it.
SYSTEM_PYTHON = "/usr/bin/python3"
AS_NOBODY = ["setpriv", "--reuid", "65534", "--regid", "65534", "--clear-groups"]


def run_client(test, code, nobody_only=False, timeout=300):
    """Run the client program code from PYTHON_DIR and return its
    CompletedProcess: as nobody under SYSTEM_PYTHON when this process is
    root, else as this user, which nobody_only does not allow (the test is
    then skipped, or fails under CI=true). A program that runs longer than
    timeout seconds is killed, and the test fails."""
    argv = [sys.executable]
    if os.geteuid() == 0:
        if shutil.which("setpriv") is None:
            skip_or_fail(test, "setpriv (util-linux) is not installed")
        if not os.access(SYSTEM_PYTHON, os.X_OK):
            skip_or_fail(test, "%s is not installed" % SYSTEM_PYTHON)
        argv = AS_NOBODY + [SYSTEM_PYTHON]
    elif nobody_only:
        skip_or_fail(test, "needs root to drop to nobody (the other tests run as this user)")
    try:
        return subprocess.run(argv + ["-c", code], env=child_env(HOME="/tmp"), cwd=PYTHON_DIR, capture_output=True,
                              text=True, timeout=timeout)
    except subprocess.TimeoutExpired as e:
        test.fail("the client program ran longer than %gs; its stderr ends: %s" % (timeout, (e.stderr or b"")[-2000:]))
