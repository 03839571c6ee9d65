"""Test support: CI rules and process scans."""
import os
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
