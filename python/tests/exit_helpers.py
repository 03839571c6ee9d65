"""Tasks that end their worker, for test_worker_exits: they must live in an
importable module."""
import atexit
import os
import sys
import threading
import time

# How long the slow exit handlers take: far longer than the binary waits
# for a worker whose result pipe closed to die (200 ms), on any machine.
SLOW = 3.0


def exit_slowly(code):
    """sys.exit(code) from a worker whose interpreter shutdown is slow."""
    atexit.register(time.sleep, SLOW)
    sys.exit(code)


def exit_hanging(code):
    """sys.exit(code) from a worker whose exit handler never returns."""
    atexit.register(time.sleep, 3600)
    sys.exit(code)


def exit_with_thread(code):
    """sys.exit(code) with a non-daemon thread still running, which the
    interpreter's shutdown waits for."""
    threading.Thread(target=time.sleep, args=(3600,)).start()
    sys.exit(code)


def interrupt_slowly(x):
    """Raise KeyboardInterrupt from a worker whose shutdown is slow."""
    atexit.register(time.sleep, SLOW)
    raise KeyboardInterrupt("stop at %r" % (x,))


def init_exit_slowly():
    """An initializer that calls sys.exit(7), with a slow shutdown."""
    atexit.register(time.sleep, SLOW)
    sys.exit(7)


def pid(x):
    return os.getpid()


def take_sigalrm(x):
    """Take SIGALRM for the task's own use, and leave it so."""
    import signal
    signal.signal(signal.SIGALRM, signal.SIG_IGN)
    return x


def nap(seconds):
    time.sleep(seconds)
    return os.getpid()


def kill_the_binary(x):
    """SIGKILL the worker's parent, the safepool binary."""
    import signal
    os.kill(os.getppid(), signal.SIGKILL)
    time.sleep(30)


def init_saves_at_exit(directory, seconds):
    """An initializer whose exit handler takes seconds, then writes a file
    named for the worker's pid in directory."""
    def save():
        time.sleep(seconds)
        with open(os.path.join(directory, str(os.getpid())), "w") as f:
            f.write("saved")
    atexit.register(save)


class OwnBaseException(BaseException):
    """An exception of the caller's own that is not an Exception."""


def raise_base(kind):
    """Raise a BaseException that is not an Exception, nor one that ends
    the worker: kind names which."""
    import asyncio
    if kind == "cancelled":
        raise asyncio.CancelledError("the coroutine was cancelled")
    if kind == "generatorexit":
        raise GeneratorExit("closed")
    raise OwnBaseException(kind)


def raise_base_at(x):
    """Return x, but raise OwnBaseException for 2."""
    if x == 2:
        raise OwnBaseException("at %d" % x)
    return x
