"""Task functions for test_direct: they must live in an importable module."""
import os
import signal
import threading
import time


def text(i, n):
    """A str of n characters that names i: in band in its pickle, so a big
    one makes a big pickle (the direct path), not an out-of-band buffer."""
    head = "%d:" % i
    return head + "x" * (n - len(head))


def length(s):
    return len(s)


def total(xs):
    return sum(xs)


def _inbox_fd():
    for n in os.listdir("/proc/self/fd"):
        try:
            if os.readlink("/proc/self/fd/" + n).startswith("/memfd:safepool-inbox"):
                return int(n)
        except OSError:
            continue
    return None


def _kill_when_writing():
    # Watch this worker's inbox descriptor (the worker opens it to write
    # its first out-of-band result): once the region holds some of the
    # result's pages, the worker dies, in the middle of the write.
    while True:
        fd = _inbox_fd()
        if fd is not None and os.fstat(fd).st_blocks > 0:
            os.kill(os.getpid(), signal.SIGKILL)
        time.sleep(0.0002)


def die_writing_once(directory, i, n):
    """text(i, n), except that the first call for i kills its worker while
    it writes the result into the client's inbox."""
    marker = os.path.join(directory, "w%d" % i)
    if not os.path.exists(marker):
        with open(marker, "w"):
            pass
        threading.Thread(target=_kill_when_writing, daemon=True).start()
    return text(i, n)


def text_or_die_once(directory, at, i, n):
    """text(i, n); the first call for at kills its worker."""
    if i == at:
        marker = os.path.join(directory, "d%d" % i)
        if not os.path.exists(marker):
            with open(marker, "w"):
                pass
            os.kill(os.getpid(), signal.SIGKILL)
    return text(i, n)


def die_around_send(d, when, at, x):
    """Note a run of item x in d and return (x * x, this worker's pid). On
    item `at`, the first time, make this worker die with SIGKILL the next
    time it sends a range's values straight to the client (safepool._direct):
    `when` is "before" (nothing written) or "after" (the values written,
    the binary not yet told). A file "killed-WHEN" says that it did."""
    with open(os.path.join(d, "ran-%d" % x), "a") as f:
        f.write("x")
    if x == at and not os.path.exists(os.path.join(d, "armed")):
        open(os.path.join(d, "armed"), "w").close()
        from safepool import _direct
        send = _direct.send

        def dying_send(*args):
            if when == "before":
                open(os.path.join(d, "killed-before"), "w").close()
                os.kill(os.getpid(), signal.SIGKILL)
            went = send(*args)
            if went:
                open(os.path.join(d, "killed-after"), "w").close()
                os.kill(os.getpid(), signal.SIGKILL)
            return went
        _direct.send = dying_send
    return x * x, os.getpid()


def hold_long():
    """A pool's initializer: this worker sends a range's values at the
    range's end, however long its items take (not after safepool.worker's
    HOLD of 2 ms, which a loaded machine can pass in the middle of a few
    items), so that a test knows which send is a range's and which item
    the page marks last."""
    import safepool.worker
    safepool.worker.HOLD = 3600.0


def not_dumpable():
    """A pool's initializer: /proc/<pid>/fd of this worker is closed to
    other processes of its user (PR_SET_DUMPABLE 0), so its client cannot
    open the worker's pipe of the direct path."""
    import ctypes
    ctypes.CDLL(None).prctl(4, 0, 0, 0, 0)


def square(x):
    return x * x


def pipe_state(_=None):
    """Whether this worker has a pipe of the direct path, and whether its
    client has read it (the byte put first in it is gone)."""
    from safepool import _direct
    pipe = _direct._pipe[0]
    return bool(pipe), bool(pipe and (pipe[3] or _direct._unread(pipe[0]) == 0))
