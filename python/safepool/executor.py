"""safepool.Executor: a concurrent.futures.Executor that survives the OOM killer."""
import concurrent.futures
import sys
import threading
import time
from typing import Any, Callable, Iterable, Iterator, Optional, Union

from . import _launch
from ._options import EngineOptions, check_chunksize, check_context, parse_memory, parse_size

__all__ = ["Executor"]


def _log_broken(error: BaseException) -> None:
    # As ProcessPoolExecutor, whose workers log a failing initializer on
    # this logger: here the error says which worker died and how.
    import logging
    logging.getLogger("concurrent.futures").critical("safepool.Executor is broken: %s", error)


class _Future(concurrent.futures.Future):
    """A Future of an Executor, whose result() and exception() raise
    RuntimeError rather than wait forever when a done callback of the same
    executor calls them before it is done (see _Core.forbid_wait), and
    which concurrent.futures.wait() and as_completed() see done as soon as
    it is cancelled."""

    def __init__(self, core):
        super().__init__()
        self._core = core

    def result(self, timeout=None):
        if not self.done():
            self._core.forbid_wait()
        return super().result(timeout)

    def exception(self, timeout=None):
        if not self.done():
            self._core.forbid_wait()
        return super().exception(timeout)

    def cancel(self):
        # Tell wait() and as_completed() at once, not when the future's
        # turn to be sent comes (see _jobs._notify_cancelled).
        if not super().cancel():
            return False
        from ._jobs import _notify_cancelled
        _notify_cancelled(self)
        return True


class Executor(concurrent.futures.Executor):
    """A concurrent.futures.Executor whose workers may die without breaking it.

    When a worker dies while it runs a task (OOM kill, signal, segfault,
    timeout), only that task's future fails, with safepool.WorkerDied
    (after `retries` more attempts with on_worker_death="retry"); the
    executor replaces the worker and stays usable. With
    on_worker_death="abort" the first task to die on its last attempt
    (the first death, without `retries`) stops the executor instead.
    mp_context is checked as Pool's context: None, "spawn" or
    "forkserver" (or such a context) change nothing; "fork" raises
    ValueError. The other arguments are those of safepool.Pool.

    As ProcessPoolExecutor's, an executor that is never shut down runs its
    submitted futures to their end before the program exits (unless it
    ends on Ctrl-C); the rest of the input of a map is not read then.
    Leaving a with block shuts it down with wait=True, as
    ProcessPoolExecutor's does, unless KeyboardInterrupt leaves it: then
    the futures not started are cancelled and the running ones fail with
    TaskCancelled at once, as in Pool's block.
    """

    def __init__(self, max_workers: Optional[int] = None, mp_context: Any = None,
                 initializer: Optional[Callable] = None, initargs: Iterable = (), *,
                 max_tasks_per_child: Optional[int] = None, retries: int = 0,
                 on_worker_death: Optional[str] = None, timeout: Optional[float] = None,
                 timeout_grace: Optional[float] = None,
                 mem_limit: Union[int, str, None] = None, max_rss: Union[int, str, None] = None,
                 grace: Optional[float] = None, mem_budget: Union[int, str, None] = None,
                 mem_per_task: Union[int, str, None] = None, mem_reserve: Union[int, str, None] = None,
                 mem_high: Optional[float] = None, mem_psi: Optional[float] = None,
                 no_governor: bool = False, backoff: Optional[float] = None,
                 max_backoff: Optional[float] = None, task_error_retries: int = 0,
                 soft_timeout: Optional[float] = None, retry_on: Any = None,
                 wait_timeout: Optional[float] = None, nats: Optional[str] = None):
        # ProcessPoolExecutor's checks and messages.
        if max_workers is not None and max_workers <= 0:
            raise ValueError("max_workers must be greater than 0")
        if max_tasks_per_child is not None:
            if isinstance(max_tasks_per_child, bool) or not isinstance(max_tasks_per_child, int):
                raise TypeError("max_tasks_per_child must be an integer")
            if max_tasks_per_child <= 0:
                raise ValueError("max_tasks_per_child must be >= 1")
        check_context(mp_context, "mp_context")
        options = EngineOptions(mem_budget=mem_budget, mem_per_task=mem_per_task, mem_reserve=mem_reserve,
                                mem_high=mem_high, mem_psi=mem_psi, no_governor=no_governor,
                                backoff=backoff, max_backoff=max_backoff,
                                task_error_retries=task_error_retries, soft_timeout=soft_timeout,
                                retry_on=retry_on, wait_timeout=wait_timeout, nats=nats,
                                timeout_grace=timeout_grace)
        launch = None
        try:
            launch = _launch.Launch(max_workers, initializer=initializer, initargs=initargs, retries=retries,
                                    on_worker_death=on_worker_death, timeout=timeout,
                                    mem_limit=parse_memory(mem_limit, "mem_limit"), max_tasks_per_child=max_tasks_per_child,
                                    max_rss=parse_size(max_rss), grace=grace, options=options)
            from ._core import _Core
            # As ProcessPoolExecutor's call queue: at most one future more
            # than there are workers is sent ahead. A future is running once
            # sent, so shutdown(cancel_futures=True) cancels all the others.
            self._core = _Core(launch, ahead=launch.processes + 1)
        except BaseException:
            # Ctrl-C between the binary's start and the executor's taking
            # it: nobody else would end it.
            if launch is not None and not getattr(launch, "taken", False):
                launch.abandon()
            raise
        self._core.on_broken = _log_broken
        self._core.finish_at_exit = True  # as ProcessPoolExecutor's: see _core._at_exit
        self._shutdown = False
        self._lock = threading.Lock()

    @property
    def _max_workers(self) -> int:
        """The number of workers, as ProcessPoolExecutor's private
        attribute, which programs read to size their chunks."""
        return self._core.processes

    def __exit__(self, exc_type, exc_val, exc_tb):
        if exc_type is not None and issubclass(exc_type, KeyboardInterrupt):
            # Ctrl-C left the block: stop at once, as Pool's block does.
            # shutdown(wait=True), which concurrent.futures' block calls,
            # waited for every future submitted: a script that had
            # submitted a few hundred long tasks did not end on Ctrl-C
            # until all had run (ProcessPoolExecutor's does not either).
            # Futures not started are cancelled, running ones fail with
            # TaskCancelled.
            with self._lock:
                self._shutdown = True
            self._core.cancel_pending()
            self._core.terminate()
            return False
        return super().__exit__(exc_type, exc_val, exc_tb)

    def __del__(self, _finalizing=sys.is_finalizing):
        # As ProcessPoolExecutor's: an executor dropped without shutdown
        # finishes the futures it has and then stops its workers, in the
        # background.
        if not getattr(self, "_shutdown", True) and not _finalizing():
            # (At the interpreter's exit, the exit handler terminates it,
            # and a thread started then would never run.)
            self._shutdown = True
            try:
                self._core.close_in_background()
            except Exception:
                pass  # the interpreter is shutting down: its exit handler terminates the pool

    def submit(self, fn: Callable, /, *args: Any, **kwargs: Any) -> concurrent.futures.Future:
        """Schedule fn(*args, **kwargs) and return a Future for its result.
        The future fails with safepool.WorkerDied if the worker dies."""
        return self._submit(fn, args, kwargs, None)

    def submit_with(self, fn: Callable, args: Iterable = (), kwargs: Optional[dict] = None, *,
                    timeout: Optional[float] = None, soft_timeout: Optional[float] = None,
                    mem: Union[int, str, None] = None, retry_on: Any = None,
                    wait_timeout: Optional[float] = None) -> concurrent.futures.Future:
        """As submit(fn, *args, **kwargs), with options for this call alone,
        as Pool.apply_async's (submit passes every keyword on to fn)."""
        from ._options import call_options
        return self._submit(fn, tuple(args), dict(kwargs or {}),
                            call_options(timeout, soft_timeout, mem, retry_on, wait_timeout))

    def _submit(self, fn, args, kwargs, opts) -> concurrent.futures.Future:
        from ._core import _Chunk
        from ._jobs import _FutureJob
        with self._lock:
            if self._shutdown:
                raise RuntimeError("cannot schedule new futures after shutdown")
            if self._core.exiting:
                raise RuntimeError("cannot schedule new futures after interpreter shutdown")
            self._core.check_running()
            f = _Future(self._core)
            job = _FutureJob(self._core, fn, f)
            job.opts = opts
            self._core.submit(_Chunk(job, range(0, 1), [(args, kwargs)]))
            return f

    def map(self, fn: Callable, *iterables: Iterable, timeout: Optional[float] = None,
            chunksize: Optional[int] = None, buffersize: Optional[int] = None,
            progress: bool = False) -> Iterator[Any]:
        """Return an iterator of fn(*args) for args in zip(*iterables), in order.

        Inputs are read lazily: at most buffersize items (by default a few
        batches per worker) are submitted and not yet consumed. chunksize
        None adapts the batch size to the tasks' duration. A failed task
        raises its exception when its result is reached. timeout bounds the
        whole iteration, as in concurrent.futures. progress=True shows the
        tasks done on standard error (a tqdm bar when tqdm is installed).
        """
        with self._lock:
            if self._shutdown:
                raise RuntimeError("cannot schedule new futures after shutdown")
            if self._core.exiting:
                raise RuntimeError("cannot schedule new futures after interpreter shutdown")
            self._core.check_running()
        chunksize = check_chunksize(chunksize)
        if buffersize is not None and buffersize < 1:
            raise ValueError("buffersize must be at least 1")
        from ._core import STAR
        from ._jobs import IterResult
        # multiprocessing.TimeoutError, which only a timeout can raise.
        mp_timeout = ()
        if timeout is not None:
            from multiprocessing import TimeoutError as mp_timeout
        display = None
        if progress:
            from . import _progress
            from .pool import _total
            sizes = [_total(i) for i in iterables]
            display = _progress.make(progress, None if None in sizes else min(sizes, default=0))
        it = IterResult(self._core, fn, STAR, zip(*iterables), chunksize, True, "raise", ahead=buffersize,
                        progress=display, pool=self)
        deadline = None if timeout is None else time.monotonic() + timeout

        end = object()

        def results():
            try:
                while True:
                    remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
                    try:
                        # The end of the results is end, not StopIteration:
                        # a task that raised StopIteration raises it here,
                        # which this generator turns into a RuntimeError, as
                        # ProcessPoolExecutor's map does, rather than end
                        # the results there without an error.
                        box = [it.step(remaining, end)]
                    except mp_timeout:
                        raise concurrent.futures.TimeoutError() from None
                    if box[0] is end:
                        return
                    # Yielded from a list, so that this generator holds no
                    # reference to the result while the caller has it.
                    yield box.pop()
            finally:
                # Ended early (a task's exception, the timeout, or the
                # consumer closing it): as ProcessPoolExecutor's map, which
                # then cancels the futures not yet running, the rest of the
                # input never runs, also not in shutdown(), which otherwise
                # runs all of a map still held.
                it.abandon()

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
            # As with ProcessPoolExecutor, the interpreter waits for the
            # running futures before it exits (see _core._at_exit).
            self._core.close_in_background()

    @property
    def memory_mode(self) -> str:
        """How workers' memory is watched: cgroup-v1, cgroup-v2, enclosing-cgroup or no-cgroup."""
        return self._core.memory_mode

    def failed_tasks(self):
        """List the tasks that failed so far: (function, args, cause, attempts)."""
        from .errors import FailedTask
        return [FailedTask(*t) for t in self._core.failed_tasks()]

    def stats(self):
        """Per-task records of the tasks that succeeded so far, as
        Pool.stats gives them: job (a number per submit or map call),
        index (the task's position in its call), start and end (Unix
        seconds), pid (the worker) and peak_rss (bytes; 0 if unknown)."""
        return self._core.stats()

    @property
    def _broken(self):
        """Why the executor cannot run tasks, or False, as
        ProcessPoolExecutor's attribute of that name, which some code reads."""
        try:
            self._core.check_running()
        except ValueError:
            return False  # shut down, not broken
        except Exception as e:
            return str(e)
        return False


# ProcessPoolExecutor is Executor under the standard library's name, so that
# `from concurrent.futures import ProcessPoolExecutor` becomes
# `from safepool import ProcessPoolExecutor` and the code stays as it was.
ProcessPoolExecutor = Executor
