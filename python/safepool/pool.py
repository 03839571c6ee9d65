"""safepool.Pool: a drop-in for multiprocessing.Pool that survives the OOM killer."""
from __future__ import annotations

import sys
import warnings

from . import _launch
from ._options import EngineOptions, check_chunksize, check_context, parse_memory, parse_size

# Pool() starts the binary before it imports the rest of the client (see
# _launch), so this module imports it only where it is used: _core, _jobs,
# and typing, which only the annotations name.
TYPE_CHECKING = False

# The least work, in seconds, that a batch of a map holds when the time per
# item of its function is known (from the function's earlier batches) and
# chunksize is not given. Whatever its size, a batch costs the pool about a
# quarter of a millisecond of CPU (through the binary to a worker and back,
# in the client, the binary and the worker): quick items in multiprocessing's
# chunks of a quarter of a share spend more on that than on the work. A map
# whose work is less than this a worker runs in one batch a worker; longer
# maps keep multiprocessing's chunks, which spread uneven work.
BATCH_WORK = 0.002
if TYPE_CHECKING:
    from typing import Any, Callable, Iterable, List, Optional, Union

    from ._jobs import AsyncResult, IterResult

__all__ = ["Pool", "FailedTask", "parse_size"]

# The states of a pool, with multiprocessing.pool's names and values.
RUN, CLOSE, TERMINATE = "RUN", "CLOSE", "TERMINATE"


def check_max_tasks(value, name: str):
    """Return value (None or a positive int) or raise ValueError, as
    multiprocessing.Pool does for maxtasksperchild."""
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise ValueError("%s must be a positive int or None, not %r" % (name, value))
    return value


def _total(iterable):
    """The number of items of iterable if it knows it, else None."""
    try:
        return len(iterable)
    except Exception:
        return None


def __getattr__(name):
    # FailedTask is a typing.NamedTuple, defined with the errors on first use.
    if name == "FailedTask":
        from .errors import FailedTask
        return FailedTask
    raise AttributeError("module %r has no attribute %r" % (__name__, name))


def _terminate_dropped(core):
    """Terminate the core of a pool that was dropped, in a thread of its
    own: the collector may run Pool.__del__ in any thread, even one of the
    core's while it holds the core's lock. Not a daemon, so that the
    program's end waits for the binary's exit."""
    try:
        import threading
        threading.Thread(target=core.terminate, name="safepool-dropped").start()
    except Exception:
        pass  # the interpreter is shutting down: its exit handler terminates the pool


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
            safepool.worker_slot() says there which slot, 1 to processes,
            the worker has (one GPU per worker: docs/python.md).
        maxtasksperchild: replace a worker after this many tasks (items;
            multiprocessing counts batches). A batch is never cut at the
            limit: imap then sends batches of one unless given a
            chunksize. Same as max_tasks_per_child.
        context: None, or a start method that means what safepool's
            workers are anyway: "spawn" or "forkserver", by name or as a
            multiprocessing context. "fork" raises ValueError: safepool
            never forks.
        retries: how many more times a task whose worker died is run.
        on_worker_death: "skip" (fail the task, go on), "retry" (run it
            again up to `retries` times, then fail it) or "abort" (the same
            retries, then fail it and stop the pool). None means "retry" if
            retries else "skip".
        timeout: seconds a task may run before its worker is ended
            (SIGTERM to its process group, then SIGKILL after
            timeout_grace) and the task fails with cause "timeout".
        timeout_grace: seconds a task past its timeout (the pool's or its
            call's) has between SIGTERM and SIGKILL, to clean up in a
            SIGTERM handler; None: 3 (with nats, each agent's own
            --timeout-grace), 0: SIGKILL at once. Its cause is "timeout"
            however it then ends.
        mem_limit: each worker's memory cap, in bytes or as "512MiB": the
            worker runs in a memory cgroup of its own, so the kernel kills
            only it, and the task fails with cause "oom".
        max_tasks_per_child: as maxtasksperchild.
        max_rss: replace a worker whose memory exceeds this after a task.
        grace: seconds between SIGTERM and SIGKILL when workers are stopped.
        mem_budget: the memory the workers may use together (bytes or
            "8GiB"); None: the host's memory or the enclosing cgroup's
            limit, less mem_reserve.
        mem_per_task: the expected peak memory of one task, used by the
            governor until peaks are measured, and set aside for each
            task's whole run.
        mem_reserve: memory held back for others; None: a tenth, 64MiB to
            2GiB.
        mem_high: stop the youngest task when more than this percentage of
            the memory is in use (None: 95; 0: never).
        mem_psi: stop the youngest task when memory pressure (PSI full
            avg10, in percent) is above this (None: 40; 0: never).
        no_governor: run `processes` tasks at once whatever memory they
            need: no admission, poison or preemption.
        backoff, max_backoff: seconds before a task is run again (after a
            worker death, or an exception with task_error_retries); the
            delay doubles from backoff (None: 0.05) up to max_backoff
            (None: 5).
        task_error_retries: how many more times a task that raised is run
            before its exception is reported.
        soft_timeout: seconds an item may run before
            safepool.SoftTimeLimitExceeded is raised inside it (the worker
            survives; the task may catch it). Set it below timeout.
        retry_on: an exception class, or a tuple of them: a task that
            raises one is run again, as a task whose worker died, up to
            `retries` more times.
        wait_timeout: seconds an item may wait, from its submission, for
            its start (queued behind others, or for memory); one that
            waited longer never runs and fails with safepool.WaitTimeout.
            The time this program was stopped (Ctrl-Z) does not count.
        nats: a NATS server's URL ("nats://queue:4222"): the items run on
            the safepool agents of that server instead of local workers,
            which need the same Python and your modules importable
            (docs/cluster.md).
        journal: a path: map and imap record each task in this SQLite
            database (the journal of `safepool map --journal`; see
            docs/python.md), one run per call, committed every 150 ms.
        resume: with journal, skip the arguments that an earlier map or
            imap call of the same function finished (done or failed) and
            return their results from the journal: tasks are known by the
            function's name and the pickled argument, not by position.
        resume_failed: like resume, but run the failed ones again.

    apply_async takes timeout, soft_timeout, mem, retry_on and
    wait_timeout for that call alone (see apply_async).
    """

    # How many of the core's futures (AsyncPool) may be sent ahead of the
    # workers; False: no bound but the binary's.
    _futures_ahead = False

    def __init__(self, processes: Optional[int] = None, initializer: Optional[Callable] = None,
                 initargs: Iterable = (), maxtasksperchild: Optional[int] = None, context: Any = None, *,
                 retries: int = 0, on_worker_death: Optional[str] = None, timeout: Optional[float] = None,
                 timeout_grace: Optional[float] = None,
                 mem_limit: Union[int, str, None] = None, max_tasks_per_child: Optional[int] = None,
                 max_rss: Union[int, str, None] = None, grace: Optional[float] = None,
                 mem_budget: Union[int, str, None] = None, mem_per_task: Union[int, str, None] = None,
                 mem_reserve: Union[int, str, None] = None, mem_high: Optional[float] = None,
                 mem_psi: Optional[float] = None, no_governor: bool = False,
                 backoff: Optional[float] = None, max_backoff: Optional[float] = None,
                 task_error_retries: int = 0, soft_timeout: Optional[float] = None,
                 retry_on: Any = None, wait_timeout: Optional[float] = None, nats: Optional[str] = None,
                 journal: Any = None, resume: bool = False, resume_failed: bool = False):
        self._state = None  # no pool to warn about in __del__ if this fails
        self._journal = None
        if journal is None and (resume or resume_failed):
            raise ValueError("resume and resume_failed need journal=PATH")
        check_context(context, "context")
        check_max_tasks(maxtasksperchild, "maxtasksperchild")
        check_max_tasks(max_tasks_per_child, "max_tasks_per_child")
        if maxtasksperchild and max_tasks_per_child and maxtasksperchild != max_tasks_per_child:
            raise ValueError("maxtasksperchild=%r and max_tasks_per_child=%r are one setting: give one"
                             % (maxtasksperchild, max_tasks_per_child))
        options = EngineOptions(mem_budget=mem_budget, mem_per_task=mem_per_task, mem_reserve=mem_reserve,
                                mem_high=mem_high, mem_psi=mem_psi, no_governor=no_governor,
                                backoff=backoff, max_backoff=max_backoff,
                                task_error_retries=task_error_retries, soft_timeout=soft_timeout,
                                retry_on=retry_on, wait_timeout=wait_timeout, nats=nats,
                                timeout_grace=timeout_grace)
        launch = None
        try:
            launch = _launch.Launch(processes, initializer=initializer, initargs=initargs, retries=retries,
                                    on_worker_death=on_worker_death, timeout=timeout,
                                    mem_limit=parse_memory(mem_limit, "mem_limit"),
                                    max_tasks_per_child=max_tasks_per_child or maxtasksperchild,
                                    max_rss=parse_size(max_rss), grace=grace, options=options)
            from ._core import _Core
            ahead = launch.processes + 1 if self._futures_ahead else 0
            self._core = _Core(launch, ahead=ahead)
        except BaseException:
            # Ctrl-C between the binary's start and the pool's taking it:
            # nobody else would end it.
            if launch is not None and not getattr(launch, "taken", False):
                launch.abandon()
            raise
        if journal is not None:
            # Opened once the binary runs: see _options.
            try:
                from ._options import journal_options
                self._journal = journal_options(journal, resume, resume_failed)
            except BaseException:
                self._core.terminate()
                raise
        self._state = RUN

    def __repr__(self):
        return "<%s.%s state=%s processes=%d>" % (type(self).__module__, type(self).__qualname__, self._state,
                                                 self._core.processes if self._state else 0)

    @property
    def _processes(self) -> int:
        """The number of workers, as multiprocessing.Pool's private
        attribute, which programs read to size their chunks."""
        return self._core.processes

    def __reduce__(self):
        # As multiprocessing.Pool: a pool reached from a task's arguments
        # (self.pool, in the object of a bound method mapped) says so,
        # rather than that a lock of its threads cannot be pickled.
        raise NotImplementedError("pool objects cannot be passed between processes or pickled")

    def __del__(self, _warn=warnings.warn, _RUN=RUN, _CLOSE=CLOSE, _finalizing=sys.is_finalizing):
        # As multiprocessing.Pool: a pool that is dropped while it runs is
        # a mistake, which a warning reports, and it is terminated: its
        # binary and workers must not run on until the program exits. No
        # task is lost: a pool is dropped only once it has none queued or
        # running for an AsyncResult, whose job keeps it until it is ready;
        # an imap's iterator keeps it as long as it lives.
        state = getattr(self, "_state", None)
        if state is None or self._core.forked():
            return  # a child that fork copied the program into has only a copy of the pool
        if _finalizing():
            # The interpreter is exiting: its exit handler has terminated
            # the pool, and a thread started now would never run (3.11's
            # Thread.start then waits for it forever).
            return
        if state in (_RUN, _CLOSE):
            _terminate_dropped(self._core)  # first: the warning raises where warnings are errors
        if state == _RUN:
            _warn("unclosed running multiprocessing pool %r" % (self,), ResourceWarning, source=self)

    # ---- submitting ----------------------------------------------------------

    def _check(self):
        if self._state != RUN:
            raise ValueError("Pool not running")
        self._core.check_running()

    def _chunksize(self, n: int, chunksize: Optional[int], fn_bytes: bytes = b"") -> int:
        """The batch size of a map of n items of the function pickled as
        fn_bytes: chunksize if given; else about a quarter of an equal share
        per worker, as multiprocessing does, but no less than BATCH_WORK of
        the function's recent time per item, up to an equal share."""
        if chunksize is not None:
            return chunksize  # checked by the call (check_chunksize)
        workers = self._core.processes
        size = max(-(-n // (workers * 4)), 1)
        per = self._core.time_per_item(fn_bytes)
        if per:
            size = max(size, min(-(-BATCH_WORK // per), -(-n // workers)))
        return int(size)

    def _map_async(self, fn, iterable, chunksize, mode, callback, error_callback, errors, progress=False,
                   wait=False, shown=None):
        from ._core import _Chunk
        from ._jobs import AsyncResult
        self._check()
        chunksize = check_chunksize(chunksize)
        # A range is cut into ranges: a chunk travels as range(a, b), not
        # as the list of its numbers, which the client would make, pickle
        # and keep, and each worker unpickle. A list is sliced, but not a
        # subclass of list: its items are what its own __iter__ gives (as
        # multiprocessing reads them), which slicing would bypass.
        items = iterable if type(iterable) in (list, range) else list(iterable)
        display = None
        if progress:
            from . import _progress
            display = _progress.make(progress, len(items))
        res = AsyncResult(self._core, fn, mode, len(items), False, callback, error_callback, errors, display,
                          pool=self)
        res._job.shown = shown  # before any chunk is sent
        cs = self._chunksize(len(items), chunksize, res._job.fn_bytes)
        if not wait:
            for start in range(0, len(items), cs):
                part = items[start:start + cs]
                self._core.submit(_Chunk(res._job, range(start, start + len(part)), part))
            return res
        # The caller waits for the results: it writes the chunks itself (see
        # _Core.send_queued), with Ctrl-C held back until the frame it is
        # writing is whole; then it leaves the rest to the writer thread.
        with self._core.interrupts_deferred() as deferred:
            for start in range(0, len(items), cs):
                part = items[start:start + cs]
                self._core.submit(_Chunk(res._job, range(start, start + len(part)), part), wake=False)
            self._core.send_queued(deferred.pending)
        return res

    def _journaled_imap(self, func, iterable, chunksize, ordered, errors, progress):
        """imap through the journal (Pool(journal=...)), or None without one."""
        if self._journal is None:
            return None
        self._check()
        chunksize = check_chunksize(chunksize)
        return self._journal.imap(self, func, iterable, chunksize, ordered, errors, progress)

    def _imap(self, func, iterable, chunksize, ordered, errors, progress, on_ready=None, on_settle=None):
        from ._core import MAP
        from ._jobs import IterResult
        self._check()
        chunksize = check_chunksize(chunksize)
        display = None
        if progress:
            from . import _progress
            display = _progress.make(progress, _total(iterable))
        return IterResult(self._core, func, MAP, iterable, chunksize, ordered, errors, progress=display,
                          on_ready=on_ready, pool=self, on_settle=on_settle)

    def apply_async(self, func: Callable, args: Iterable = (), kwds: Optional[dict] = None,
                    callback: Optional[Callable] = None,
                    error_callback: Optional[Callable] = None, *, timeout: Optional[float] = None,
                    soft_timeout: Optional[float] = None, mem: Union[int, str, None] = None,
                    retry_on: Any = None, wait_timeout: Optional[float] = None) -> AsyncResult:
        """Run func(*args, **kwds) in a worker; return an AsyncResult.

        The keywords replace the pool's settings of the same names for this
        call (None: the pool's): timeout (its worker is killed and the task
        fails with cause "timeout"), soft_timeout, retry_on and
        wait_timeout. mem is the memory the task is expected to need (bytes
        or "2GiB"): the memory governor starts it only when that much is
        free within its budget.
        """
        from ._core import APPLY, _Chunk
        from ._jobs import AsyncResult
        from ._options import call_options
        opts = call_options(timeout, soft_timeout, mem, retry_on, wait_timeout)
        self._check()
        res = AsyncResult(self._core, func, APPLY, 1, True, callback, error_callback, self._errors("raise"),
                          pool=self)
        res._job.opts = opts
        self._core.submit(_Chunk(res._job, range(0, 1), [(tuple(args), dict(kwds or {}))]))
        return res

    def apply(self, func: Callable, args: Iterable = (), kwds: Optional[dict] = None) -> Any:
        """Run func(*args, **kwds) in a worker and return its result."""
        return self.apply_async(func, args, kwds).get()

    def _errors(self, errors: str) -> str:
        """The errors mode that a call made with errors uses (SafePool
        changes it)."""
        from ._jobs import check_errors
        check_errors(errors)
        return errors

    def map_async(self, func: Callable, iterable: Iterable, chunksize: Optional[int] = None,
                  callback: Optional[Callable] = None, error_callback: Optional[Callable] = None, *,
                  errors: str = "raise") -> AsyncResult:
        """Like map, but return an AsyncResult."""
        from ._core import MAP
        return self._map_async(func, iterable, chunksize, MAP, callback, error_callback, self._errors(errors))

    def map(self, func: Callable, iterable: Iterable, chunksize: Optional[int] = None, *,
            errors: str = "raise", progress: bool = False) -> List[Any]:
        """Return [func(x) for x in iterable], computed by the workers.

        Items are sent in batches of chunksize (by default about a quarter
        of an equal share per worker, as multiprocessing does, or larger
        ones of at least BATCH_WORK of work, up to an equal share, when the
        function's time per item is known from its earlier batches in this
        pool). When a task
        fails, map raises its exception after the others have finished: the
        first failure in input order, safepool.WorkerDied if its worker died.
        With errors="return", it returns the exceptions in place of the
        failed results instead. progress=True shows the tasks done on
        standard error (a tqdm bar when tqdm is installed).
        """
        if self._journal is not None:
            results = list(self._journaled_imap(func, iterable, chunksize, True, "return", progress))
            if self._errors(errors) == "raise":
                for r in results:
                    if isinstance(r, BaseException):
                        raise r
            return results
        from ._core import MAP
        return self._map_async(func, iterable, chunksize, MAP, None, None, self._errors(errors),
                               progress, wait=True).get()

    def starmap_async(self, func: Callable, iterable: Iterable, chunksize: Optional[int] = None,
                      callback: Optional[Callable] = None, error_callback: Optional[Callable] = None, *,
                      errors: str = "raise") -> AsyncResult:
        """Like starmap, but return an AsyncResult."""
        from ._core import STAR
        return self._map_async(func, iterable, chunksize, STAR, callback, error_callback, self._errors(errors))

    def starmap(self, func: Callable, iterable: Iterable, chunksize: Optional[int] = None, *,
                errors: str = "raise", progress: bool = False) -> List[Any]:
        """Like map, but each item is an argument tuple: func(*item)."""
        from ._core import STAR
        return self._map_async(func, iterable, chunksize, STAR, None, None, self._errors(errors),
                               progress, wait=True).get()

    def imap(self, func: Callable, iterable: Iterable, chunksize: Optional[int] = None, *,
             errors: str = "raise", progress: bool = False) -> IterResult:
        """Return an iterator of func(x) for x in iterable, in order.

        Unlike multiprocessing's, the input is read lazily: only a bounded
        number of items are in flight or waiting to be consumed. chunksize
        None adapts the batch size to how long items take. A failed task
        raises from next() at its place (errors="return" returns it).
        progress=True shows the tasks done on standard error.
        """
        return (self._journaled_imap(func, iterable, chunksize, True, self._errors(errors), progress)
                or self._imap(func, iterable, chunksize, True, self._errors(errors), progress))

    def imap_unordered(self, func: Callable, iterable: Iterable, chunksize: Optional[int] = None, *,
                       errors: str = "raise", progress: bool = False) -> IterResult:
        """Like imap, but results come as they are ready (in input order,
        with a journal, which records and resumes them as imap's)."""
        return (self._journaled_imap(func, iterable, chunksize, False, self._errors(errors), progress)
                or self._imap(func, iterable, chunksize, False, self._errors(errors), progress))

    # ---- lifecycle -------------------------------------------------------------

    def close(self) -> None:
        """Accept no more tasks; the workers exit when the queued ones are done."""
        if self._state == RUN:
            self._state = CLOSE

    def terminate(self) -> None:
        """Stop at once: kill the workers (SIGTERM, then SIGKILL after the
        grace period) and the binary. Unfinished tasks fail with
        safepool.TaskCancelled. Called in a result callback, it returns
        at once, and join() waits for the workers' end."""
        self._state = TERMINATE
        self._core.terminate()

    def join(self) -> None:
        """Wait for the queued tasks and for the workers to exit. Call close
        or terminate first."""
        if self._state == RUN:
            raise ValueError("Pool is still running")
        if self._state == CLOSE:
            self._core.close()
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
        worker during the task, in bytes; 0 if unknown)."""
        return self._core.stats()

    @property
    def memory_mode(self) -> str:
        """How workers' memory is watched: cgroup-v1, cgroup-v2, enclosing-cgroup or no-cgroup."""
        return self._core.memory_mode
