"""Test support: CI rules and process scans."""
import os
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
