"""Exceptions raised by safepool, and the records of failed tasks.

A pool imports this module when a task fails, not before.
"""
import _thread
import sys
from typing import Any, Callable, List, NamedTuple, Optional

__all__ = ["Attempt", "TaskFailed", "WorkerDied", "TaskTimeout", "TaskCancelled", "RemoteError",
           "RemoteTraceback", "BrokenPool", "FailedTask"]


class Attempt(NamedTuple):
    """One run of a task on one worker process."""

    number: int
    """Counts the task's charged attempts from 1."""
    pid: int
    """The worker's process id."""
    start: float
    """When the attempt began (Unix seconds; for a batch, when the batch began)."""
    end: float
    """When it ended."""
    cause: str
    """Why it ended without a result: ``oom``, ``signal:SIGKILL``, ``timeout``..."""
    exit_code: int
    """The worker's exit status if it exited, else -1."""
    signal: str
    """The signal that killed the worker, such as ``SIGKILL``, or ''."""
    peak_rss: int
    """The worker's peak memory in bytes (its cgroup's peak where it has one); 0 if unknown."""
    message: str
    """Detail, such as the tail of the worker's stderr."""


class TaskFailed(Exception):
    """A task did not produce a result.

    Attributes:
        cause: why its last attempt ended: ``oom``, ``signal:SIGKILL``,
            ``segfault``, ``exit:N``, ``timeout``, ``memory-limit``,
            ``protocol``, ``task-error`` or ``cancelled``.
        attempts: how many attempts were charged to the task.
        peak_rss: the peak memory of the worker during the last attempt, in
            bytes, or 0 when unknown.
        task_args: the task's arguments (the item for ``map``, the argument
            tuple for ``starmap`` and ``apply_async``).
        function: the task's function.
        history: every attempt, as :class:`Attempt` records (a preempted
            attempt, which is not charged, shares its number with the next).
        state: the task's terminal state: ``failed``, ``poison`` (killed
            for memory even while it ran alone with the whole memory
            budget, so never run again) or ``cancelled``.
    """

    def __init__(self, message: str, *, cause: str = "", attempts: int = 0, peak_rss: int = 0,
                 task_args: Any = None, function: Any = None, history: Optional[List[Attempt]] = None,
                 state: str = "failed"):
        super().__init__(message)
        self.state = state
        self.cause = cause
        self.attempts = attempts
        self.peak_rss = peak_rss
        self.task_args = task_args
        self.function = function
        self.history = list(history or ())

    def __reduce__(self):
        return (_rebuild, (type(self), self.args[0] if self.args else "", self.__dict__))


def _rebuild(cls, message, state):
    e = cls.__new__(cls)
    Exception.__init__(e, message)
    e.__dict__.update(state)
    return e


class WorkerDied(TaskFailed):
    """The worker process died while it ran the task: killed by the OOM
    killer (``cause == "oom"``), a signal, a segfault or a timeout, or it
    exited. Only the task that was running is charged; the pool replaces the
    worker and goes on."""


if sys.version_info >= (3, 11):
    _TIMEOUTS = (TimeoutError,)  # concurrent.futures.TimeoutError is this one
else:
    from concurrent.futures import TimeoutError as _FuturesTimeout
    _TIMEOUTS = (TimeoutError, _FuturesTimeout)


class TaskTimeout(WorkerDied, *_TIMEOUTS):
    """The task ran longer than its timeout (the pool's, or the call's), so
    its worker was killed: a WorkerDied of cause ``timeout``.

    It is also a TimeoutError (and a concurrent.futures.TimeoutError), as
    the exception of a task that pebble's ProcessPool.schedule(timeout=...)
    stopped is: code that catches TimeoutError around a task's result keeps
    working. (AsyncResult.get(timeout) and an imap's next(timeout) raise
    multiprocessing.TimeoutError when they stop waiting, as
    multiprocessing's do: the task goes on.)"""


def death(cause: str) -> type:
    """The class of the exception of a task whose worker died of cause."""
    return TaskTimeout if cause == "timeout" else WorkerDied



class RemoteError(TaskFailed):
    """The task raised an exception that could not be sent back from the
    worker (it does not pickle). ``str()`` gives its type and message, and its
    ``__cause__`` the remote traceback."""


def remote_traceback(tb: str) -> BaseException:
    """The ``__cause__`` of an exception re-raised from a task, as
    multiprocessing.Pool sets it: a RemoteTraceback whose text (its ``tb``)
    is the worker's traceback, so that the traceback printed shows where in
    the worker the task failed."""
    from multiprocessing.pool import RemoteTraceback
    return RemoteTraceback('\n"""\n%s"""' % tb)


class FailedTask(NamedTuple):
    """A task that failed: raised, or lost its worker."""

    function: Callable
    args: Any
    cause: str
    attempts: int


def _broken_pool():
    import concurrent.futures

    class BrokenPool(concurrent.futures.BrokenExecutor):
        """The pool cannot run tasks: the safepool binary is missing, failed
        to start its workers, or exited."""

    BrokenPool.__module__ = __name__
    BrokenPool.__qualname__ = "BrokenPool"
    return BrokenPool


def _task_cancelled():
    import concurrent.futures

    class TaskCancelled(TaskFailed, concurrent.futures.CancelledError):
        """The task never finished because the pool was terminated or
        aborted. It is also a concurrent.futures.CancelledError, as the
        result of a future that ProcessPoolExecutor's shutdown(
        cancel_futures=True) cancelled is: code that catches that keeps
        working."""

    TaskCancelled.__module__ = __name__
    TaskCancelled.__qualname__ = "TaskCancelled"
    return TaskCancelled


_define_lock = _thread.allocate_lock()


def __getattr__(name):
    # BrokenPool subclasses concurrent.futures.BrokenExecutor, and importing
    # concurrent.futures (with logging) costs more than the rest of a pool's
    # client: it is defined on first use, once (threads may race to it).
    # TaskCancelled subclasses concurrent.futures.CancelledError: the same.
    make = {"BrokenPool": _broken_pool, "TaskCancelled": _task_cancelled}.get(name)
    if make is not None:
        with _define_lock:
            if name not in globals():
                globals()[name] = make()
        return globals()[name]
    if name == "RemoteTraceback":
        # multiprocessing.pool's own class, so that code that checks for it
        # finds it; imported where a task fails, not before.
        from multiprocessing.pool import RemoteTraceback
        globals()["RemoteTraceback"] = RemoteTraceback
        return RemoteTraceback
    raise AttributeError("module %r has no attribute %r" % (__name__, name))
