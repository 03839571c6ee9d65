"""safepool.Executor: a concurrent.futures.Executor that survives the OOM killer."""
import concurrent.futures
import threading
import time
from typing import Any, Callable, Iterable, Iterator, Optional, Union

from . import _launch
from .pool import parse_size

__all__ = ["Executor"]


class Executor(concurrent.futures.Executor):
    """A concurrent.futures.Executor whose workers may die without breaking it.

    When a worker dies while it runs a task (OOM kill, signal, segfault,
    timeout), only that task's future fails, with safepool.WorkerDied
    (after `retries` more attempts with on_worker_death="retry"); the
    executor replaces the worker and stays usable. With
    on_worker_death="abort" the first death stops the executor instead.
    The other arguments are those of safepool.Pool.
    """

    def __init__(self, max_workers: Optional[int] = None, mp_context: Any = None,
                 initializer: Optional[Callable] = None, initargs: Iterable = (), *,
                 max_tasks_per_child: Optional[int] = None, retries: int = 0,
                 on_worker_death: Optional[str] = None, timeout: Optional[float] = None,
                 mem_limit: Union[int, str, None] = None, max_rss: Union[int, str, None] = None,
                 grace: Optional[float] = None):
        launch = _launch.Launch(max_workers, initializer=initializer, initargs=initargs, retries=retries,
                                on_worker_death=on_worker_death, timeout=timeout, mem_limit=parse_size(mem_limit),
                                max_tasks_per_child=max_tasks_per_child, max_rss=parse_size(max_rss),
                                grace=grace)
        try:
            from ._core import _Core
        except BaseException:
            launch.abandon()
            raise
        # As ProcessPoolExecutor's call queue: at most one future more than
        # there are workers is sent ahead. A future is running once sent, so
        # shutdown(cancel_futures=True) cancels all the others.
        self._core = _Core(launch, ahead=launch.processes + 1)
        self._shutdown = False
        self._lock = threading.Lock()

    def submit(self, fn: Callable, /, *args: Any, **kwargs: Any) -> concurrent.futures.Future:
        """Schedule fn(*args, **kwargs) and return a Future for its result.
        The future fails with safepool.WorkerDied if the worker dies."""
        from ._core import _Chunk
        from ._jobs import _FutureJob
        with self._lock:
            if self._shutdown:
                raise RuntimeError("cannot schedule new futures after shutdown")
            self._core.check_running()
            f = concurrent.futures.Future()
            self._core.submit(_Chunk(_FutureJob(self._core, fn, f), range(0, 1), [(args, kwargs)]))
            return f

    def map(self, fn: Callable, *iterables: Iterable, timeout: Optional[float] = None,
            chunksize: Optional[int] = None, buffersize: Optional[int] = None) -> Iterator[Any]:
        """Return an iterator of fn(*args) for args in zip(*iterables), in order.

        Inputs are read lazily: at most buffersize items (by default a few
        batches per worker) are submitted and not yet consumed. chunksize
        None adapts the batch size to the tasks' duration. A failed task
        raises its exception when its result is reached. timeout bounds the
        whole iteration, as in concurrent.futures.
        """
        with self._lock:
            if self._shutdown:
                raise RuntimeError("cannot schedule new futures after shutdown")
            self._core.check_running()
        if buffersize is not None and buffersize < 1:
            raise ValueError("buffersize must be at least 1")
        from ._core import STAR
        from ._jobs import IterResult
        # multiprocessing.TimeoutError, which only a timeout can raise.
        mp_timeout = ()
        if timeout is not None:
            from multiprocessing import TimeoutError as mp_timeout
        it = IterResult(self._core, fn, STAR, zip(*iterables), chunksize, True, "raise", ahead=buffersize)
        deadline = None if timeout is None else time.monotonic() + timeout

        def results():
            while True:
                remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
                try:
                    v = it.next(remaining)
                except StopIteration:
                    return
                except mp_timeout:
                    raise concurrent.futures.TimeoutError() from None
                yield v

        return results()

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Stop accepting tasks, as ProcessPoolExecutor.shutdown does.

        With cancel_futures, cancel the futures that have not started
        running (their cancelled() is then True); futures that are running
        are not cancelled and run to the end, retries after a worker death
        included. With wait, return when they have finished and the workers
        have exited; otherwise return at once while they finish in the
        background, and the program does not exit before they have.
        """
        with self._lock:
            already = self._shutdown
            self._shutdown = True
        if cancel_futures:
            self._core.cancel_pending()
        if wait:
            self._core.close()
        elif not already:
            # Not a daemon: as with ProcessPoolExecutor, the interpreter
            # waits for the running futures before it exits.
            threading.Thread(target=self._core.close, name="safepool-shutdown").start()

    @property
    def memory_mode(self) -> str:
        """How workers' memory is watched: cgroup-v1, cgroup-v2, enclosing-cgroup or no-cgroup."""
        return self._core.memory_mode

    def failed_tasks(self):
        """List the tasks that failed so far: (function, args, cause, attempts)."""
        from .errors import FailedTask
        return [FailedTask(*t) for t in self._core.failed_tasks()]
