"""safepool.Pool: a drop-in for multiprocessing.Pool that survives the OOM killer."""
from __future__ import annotations

from . import _launch

# Pool() starts the binary before it imports the rest of the client (see
# _launch), so this module imports it only where it is used: _core, _jobs,
# and typing, which only the annotations name.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Callable, Iterable, List, Optional, Union

    from ._jobs import AsyncResult, IterResult

__all__ = ["Pool", "FailedTask", "parse_size"]

_UNITS = {"": 1, "b": 1, "k": 1000, "kb": 1000, "kib": 1024, "m": 1000 ** 2, "mb": 1000 ** 2,
          "mib": 1024 ** 2, "g": 1000 ** 3, "gb": 1000 ** 3, "gib": 1024 ** 3, "t": 1000 ** 4,
          "tb": 1000 ** 4, "tib": 1024 ** 4}


def parse_size(size: Union[int, str, None]) -> int:
    """Return a memory size in bytes: an int, or a string such as "512MiB"
    or "2GB". None means 0 (no limit)."""
    if size is None:
        return 0
    if isinstance(size, int):
        if size < 0:
            raise ValueError("a memory size must not be negative")
        return size
    import re
    m = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([a-zA-Z]*)\s*", str(size))
    if not m or m.group(2).lower() not in _UNITS:
        raise ValueError("bad memory size %r (want bytes, or a number with KiB, MiB, GiB, KB, MB, GB...)"
                         % (size,))
    return int(float(m.group(1)) * _UNITS[m.group(2).lower()])


def __getattr__(name):
    # FailedTask is a typing.NamedTuple, defined with the errors on first use.
    if name == "FailedTask":
        from .errors import FailedTask
        return FailedTask
    raise AttributeError("module %r has no attribute %r" % (__name__, name))


class Pool:
    """A process pool with multiprocessing.Pool's interface whose workers may
    die at any moment without hanging it.

    Workers are fresh Python processes (spawned, never forked) run by the
    safepool binary's engine. When a worker dies (OOM kill, signal, segfault,
    timeout, exit), only the task it was running is charged: it is retried,
    skipped or aborts the pool, as on_worker_death says, and a failed task
    raises safepool.WorkerDied, with its cause, attempts and peak memory.
    The other tasks go on, on a new worker.

    Args:
        processes: the number of workers; None means os.cpu_count().
        initializer, initargs: initializer(*initargs) runs once in each
            worker when it starts. A worker whose initializer raises dies,
            and the pool breaks after a few such deaths in a row.
        maxtasksperchild: replace a worker after this many tasks (batches
            of items, as in multiprocessing). Same as max_tasks_per_child.
        context: accepted for compatibility and ignored: workers are always
            spawned.
        retries: how many more times a task whose worker died is run.
        on_worker_death: "skip" (fail the task, go on), "retry" (run it
            again up to `retries` times, then fail it) or "abort" (fail it
            and stop the pool). None means "retry" if retries else "skip".
        timeout: seconds a task may run before its worker is killed and the
            task fails with cause "timeout". Tasks are then sent one at a
            time unless a chunksize is given (the timeout then bounds the
            batch).
        mem_limit: each worker's memory cap, in bytes or as "512MiB": the
            worker runs in a memory cgroup of its own, so the kernel kills
            only it, and the task fails with cause "oom".
        max_tasks_per_child: as maxtasksperchild.
        max_rss: replace a worker whose memory exceeds this after a task.
        grace: seconds between SIGTERM and SIGKILL when workers are stopped.
    """

    def __init__(self, processes: Optional[int] = None, initializer: Optional[Callable] = None,
                 initargs: Iterable = (), maxtasksperchild: Optional[int] = None, context: Any = None, *,
                 retries: int = 0, on_worker_death: Optional[str] = None, timeout: Optional[float] = None,
                 mem_limit: Union[int, str, None] = None, max_tasks_per_child: Optional[int] = None,
                 max_rss: Union[int, str, None] = None, grace: Optional[float] = None):
        launch = _launch.Launch(processes, initializer=initializer, initargs=initargs, retries=retries,
                                on_worker_death=on_worker_death, timeout=timeout,
                                mem_limit=parse_size(mem_limit),
                                max_tasks_per_child=max_tasks_per_child or maxtasksperchild,
                                max_rss=parse_size(max_rss), grace=grace)
        try:
            from ._core import _Core
        except BaseException:
            launch.abandon()
            raise
        self._core = _Core(launch)
        self._state = "run"

    # ---- submitting ----------------------------------------------------------

    def _check(self):
        if self._state != "run":
            raise ValueError("Pool not running")
        self._core.check_running()

    def _chunksize(self, n: int, chunksize: Optional[int]) -> int:
        if chunksize is not None:
            if chunksize < 1:
                raise ValueError("chunksize must be at least 1")
            return chunksize
        if self._core.timeout:
            return 1
        size, extra = divmod(n, self._core.processes * 4)
        return size + 1 if extra else max(size, 1)

    def _map_async(self, fn, iterable, chunksize, mode, callback, error_callback, errors):
        from ._core import _Chunk
        from ._jobs import AsyncResult, check_errors
        self._check()
        check_errors(errors)
        items = iterable if isinstance(iterable, list) else list(iterable)
        res = AsyncResult(self._core, fn, mode, len(items), False, callback, error_callback, errors)
        cs = self._chunksize(len(items), chunksize)
        for start in range(0, len(items), cs):
            part = items[start:start + cs]
            self._core.submit(_Chunk(res._job, range(start, start + len(part)), part))
        return res

    def apply_async(self, func: Callable, args: Iterable = (), kwds: Optional[dict] = None,
                    callback: Optional[Callable] = None,
                    error_callback: Optional[Callable] = None) -> AsyncResult:
        """Run func(*args, **kwds) in a worker; return an AsyncResult."""
        from ._core import APPLY, _Chunk
        from ._jobs import AsyncResult
        self._check()
        res = AsyncResult(self._core, func, APPLY, 1, True, callback, error_callback, "raise")
        self._core.submit(_Chunk(res._job, range(0, 1), [(tuple(args), dict(kwds or {}))]))
        return res

    def apply(self, func: Callable, args: Iterable = (), kwds: Optional[dict] = None) -> Any:
        """Run func(*args, **kwds) in a worker and return its result."""
        return self.apply_async(func, args, kwds).get()

    def map_async(self, func: Callable, iterable: Iterable, chunksize: Optional[int] = None,
                  callback: Optional[Callable] = None, error_callback: Optional[Callable] = None, *,
                  errors: str = "raise") -> AsyncResult:
        """Like map, but return an AsyncResult."""
        from ._core import MAP
        return self._map_async(func, iterable, chunksize, MAP, callback, error_callback, errors)

    def map(self, func: Callable, iterable: Iterable, chunksize: Optional[int] = None, *,
            errors: str = "raise") -> List[Any]:
        """Return [func(x) for x in iterable], computed by the workers.

        Items are sent in batches of chunksize (by default about a quarter
        of an equal share per worker, as multiprocessing does). When a task
        fails, map raises its exception after the others have finished: the
        first failure in input order, safepool.WorkerDied if its worker died.
        With errors="return", it returns the exceptions in place of the
        failed results instead.
        """
        from ._core import MAP
        return self._map_async(func, iterable, chunksize, MAP, None, None, errors).get()

    def starmap_async(self, func: Callable, iterable: Iterable, chunksize: Optional[int] = None,
                      callback: Optional[Callable] = None, error_callback: Optional[Callable] = None, *,
                      errors: str = "raise") -> AsyncResult:
        """Like starmap, but return an AsyncResult."""
        from ._core import STAR
        return self._map_async(func, iterable, chunksize, STAR, callback, error_callback, errors)

    def starmap(self, func: Callable, iterable: Iterable, chunksize: Optional[int] = None, *,
                errors: str = "raise") -> List[Any]:
        """Like map, but each item is an argument tuple: func(*item)."""
        from ._core import STAR
        return self._map_async(func, iterable, chunksize, STAR, None, None, errors).get()

    def imap(self, func: Callable, iterable: Iterable, chunksize: Optional[int] = None, *,
             errors: str = "raise") -> IterResult:
        """Return an iterator of func(x) for x in iterable, in order.

        Unlike multiprocessing's, the input is read lazily: only a bounded
        number of items are in flight or waiting to be consumed. chunksize
        None adapts the batch size to how long items take. A failed task
        raises from next() at its place (errors="return" returns it).
        """
        from ._core import MAP
        from ._jobs import IterResult, check_errors
        self._check()
        check_errors(errors)
        return IterResult(self._core, func, MAP, iterable, chunksize, True, errors)

    def imap_unordered(self, func: Callable, iterable: Iterable, chunksize: Optional[int] = None, *,
                       errors: str = "raise") -> IterResult:
        """Like imap, but results come as they are ready."""
        from ._core import MAP
        from ._jobs import IterResult, check_errors
        self._check()
        check_errors(errors)
        return IterResult(self._core, func, MAP, iterable, chunksize, False, errors)

    # ---- lifecycle -------------------------------------------------------------

    def close(self) -> None:
        """Accept no more tasks; the workers exit when the queued ones are done."""
        if self._state == "run":
            self._state = "close"

    def terminate(self) -> None:
        """Stop at once: kill the workers (SIGTERM, then SIGKILL after the
        grace period) and the binary. Unfinished tasks fail with
        safepool.TaskCancelled."""
        self._state = "terminate"
        self._core.terminate()

    def join(self) -> None:
        """Wait for the queued tasks and for the workers to exit. Call close
        or terminate first."""
        if self._state == "run":
            raise ValueError("Pool is still running")
        if self._state == "close":
            self._core.close()
            self._state = "joined"
        else:
            self._core._finish(10.0)

    def __enter__(self) -> "Pool":
        self._check()
        return self

    def __exit__(self, *exc) -> None:
        # As multiprocessing.Pool: leaving the block terminates the pool.
        self.terminate()

    # ---- reports ---------------------------------------------------------------

    def failed_tasks(self) -> List[FailedTask]:
        """List the tasks that failed so far, in the order they failed, as
        (function, args, cause, attempts): cause is "task-error" for a task
        that raised, and the worker's cause of death ("oom",
        "signal:SIGKILL", ...) for a task whose worker died."""
        from .errors import FailedTask
        return [FailedTask(*t) for t in self._core.failed_tasks()]

    def stats(self) -> List[dict]:
        """Per-task records of the tasks that succeeded so far: job (a number
        per call), index (the task's position in its call), start and end
        (Unix seconds), pid (the worker) and peak_rss (the peak memory of the
        worker during the task's batch, in bytes; 0 if unknown)."""
        return self._core.stats()

    @property
    def memory_mode(self) -> str:
        """How workers' memory is watched: cgroup-v1, cgroup-v2, enclosing-cgroup or no-cgroup."""
        return self._core.memory_mode
