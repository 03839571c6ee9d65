"""safepool.SafePool: the interface of the SafePool library (a
multiprocessing.Pool that does not hang when a worker is killed), on
safepool.Pool.
"""
from __future__ import annotations

from typing import Any, Callable, Iterable, List, Optional, Tuple, Union

from .errors import WorkerDied
from .pool import Pool

__all__ = ["SafePool", "SubProcessKilledException"]

# SafePool raised SubProcessKilledException when abort_when_killed stopped
# the pool; safepool raises WorkerDied, which says which task died and why.
SubProcessKilledException = WorkerDied

# How many more times retry_killed_tasks=True runs a killed task. SafePool
# retried without a bound, which never ends for a task that dies every time
# (one that needs more memory than it may have).
DEFAULT_KILLED_RETRIES = 3


class SafePool(Pool):
    """A multiprocessing.Pool whose killed workers cost only their task, with
    the interface of the SafePool library.

    By default a task whose worker is killed (by the OOM killer, a signal, a
    segfault, a timeout, or any other death) is skipped: its result is None
    in map, starmap, imap, imap_unordered and apply, and the other results
    come back. An exception raised by a task is raised as multiprocessing
    raises it.

    Args:
        processes, initializer, initargs, maxtasksperchild: as
            multiprocessing.Pool's.
        retry_killed_tasks: run a killed task again: True means up to 3
            more times (retries=N sets another count), an int is the count.
            A task killed every time ends with None, like a skipped one.
            This takes precedence over abort_when_killed, as in SafePool.
        abort_when_killed: stop the pool at the first killed task: the
            call raises SubProcessKilledException (safepool.WorkerDied,
            with the task, its cause and its peak memory), the other tasks
            are cancelled, and the pool accepts no more.
        **kwargs: the keywords of safepool.Pool (mem_limit, timeout,
            mem_budget, ...), except on_worker_death, which the two above
            decide.
    """

    def __init__(self, processes: Optional[int] = None, initializer: Optional[Callable] = None,
                 initargs: Iterable = (), maxtasksperchild: Optional[int] = None,
                 retry_killed_tasks: Union[bool, int] = False, abort_when_killed: bool = False, **kwargs: Any):
        if "on_worker_death" in kwargs:
            raise TypeError("SafePool takes retry_killed_tasks and abort_when_killed, not on_worker_death "
                            "(safepool.Pool takes that)")
        if retry_killed_tasks is not False and retry_killed_tasks is not None:
            retries = kwargs.pop("retries", None)
            if retry_killed_tasks is True:
                retries = DEFAULT_KILLED_RETRIES if retries is None else retries
            elif isinstance(retry_killed_tasks, int) and retry_killed_tasks >= 0:
                retries = retry_killed_tasks
            else:
                raise ValueError("retry_killed_tasks must be True, False or a count of retries, not %r"
                                 % (retry_killed_tasks,))
            kwargs["retries"] = retries
            kwargs["on_worker_death"] = "retry"
            self._abort = False
        elif abort_when_killed:
            kwargs["on_worker_death"] = "abort"
            self._abort = True
        else:
            kwargs["on_worker_death"] = "skip"
            self._abort = False
        super().__init__(processes, initializer, initargs, maxtasksperchild, **kwargs)

    def _errors(self, errors: str) -> str:
        from ._jobs import KILLED_NONE, check_errors
        check_errors(errors)
        if errors == "raise" and not self._abort:
            return KILLED_NONE
        return errors

    def get_killed_tasks(self) -> List[Tuple[Callable, tuple]]:
        """List the tasks whose worker was killed, as (function, args)
        tuples, in the order of their first death: once per task, whether or
        not a retry then succeeded. args is (item,) for map, the item's
        tuple for starmap and the positional arguments for apply."""
        from ._core import APPLY, MAP
        out = []
        for fn, mode, item in self._core.killed_tasks():
            if mode == MAP:
                args = (item,)
            elif mode == APPLY:
                args = tuple(item[0])
            else:
                args = tuple(item)
            out.append((fn, args))
        return out
