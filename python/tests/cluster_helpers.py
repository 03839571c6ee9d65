"""Task functions for the cluster tests: the agents import them by name
(tests.cluster_helpers), with the python directory on their PYTHONPATH."""
import os
import time


def slow_square(x, pause=0.0):
    time.sleep(pause)
    return x * x


def where(x):
    """x and the parent of the worker that ran it: its agent."""
    time.sleep(0.05)
    return x, os.getppid()


def fail_on(x, at=3):
    if x == at:
        raise ValueError("no %d" % x)
    return x


def marked_square(x, marks, pause=0.2):
    """x squared, after leaving a file named for x and its agent in marks."""
    open(os.path.join(marks, "%d.%d" % (x, os.getppid())), "w").close()
    time.sleep(pause)
    return x * x
