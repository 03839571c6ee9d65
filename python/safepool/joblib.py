"""A joblib backend: joblib.Parallel's tasks run on a safepool.Pool.

Importing this module registers the backend under the name "safepool"::

    import joblib
    import safepool.joblib  # noqa: F401

    with joblib.parallel_backend("safepool", n_jobs=4, mem_limit="2GiB", retries=1):
        results = joblib.Parallel()(joblib.delayed(f)(x) for x in xs)

(``joblib.parallel_config(backend="safepool", ...)`` in joblib 1.3 and
later.) ``import safepool`` does not register it: that would import joblib
in every program and worker that imports safepool.

The keywords after n_jobs are safepool.Pool's (mem_limit, retries,
on_worker_death, timeout, mem_budget...), and ``deaths``:

- A task whose worker dies (OOM kill, signal, segfault, timeout) costs that
  task only. It is retried as the pool's policy says; if it still fails,
  with deaths="return" (the default) its place in the results holds the
  safepool.WorkerDied exception, which says why it died, and the other
  results come back; with deaths="raise", Parallel raises it.
- A task that raises makes Parallel raise its exception, as with joblib's
  own backends.

Unlike loky, whose worker death breaks the whole call with
TerminatedWorkerError, only the task that was running is charged, even when
joblib batched several tasks together: the worker records which one ran.
"""
from __future__ import annotations

import queue
from typing import Any, Optional

import joblib
from joblib.parallel import AutoBatchingMixin, ParallelBackendBase, register_parallel_backend

from .pool import Pool

__all__ = ["SafepoolBackend"]

DEATHS = ("return", "raise")

# joblib 1.3 and later take a batch's outcome in the thread that completes
# it (the backend's supports_retrieve_callback and retrieve_result_callback),
# which return_as="generator" and "generator_unordered" need; joblib 1.2
# calls get() on the object apply_async returned, from its own thread.
_RETRIEVE = hasattr(ParallelBackendBase, "supports_retrieve_callback")


class SafepoolBackend(AutoBatchingMixin, ParallelBackendBase):
    """joblib's ParallelBackend on a safepool.Pool: one pool per Parallel
    call, or per ``with Parallel(...) as parallel:`` block."""

    supports_timeout = True
    supports_sharedmem = False
    uses_threads = False
    supports_retrieve_callback = _RETRIEVE

    def __init__(self, nesting_level: Optional[int] = None, inner_max_num_threads: Optional[int] = None,
                 deaths: str = "return", **pool_kwargs: Any):
        super().__init__(nesting_level=nesting_level, inner_max_num_threads=inner_max_num_threads)
        if deaths not in DEATHS:
            raise ValueError("deaths must be 'return' or 'raise', not %r" % (deaths,))
        self.deaths = deaths
        self.pool_kwargs = pool_kwargs
        self._pool: Optional[Pool] = None
        self._n_jobs = 1

    def effective_n_jobs(self, n_jobs):
        """As joblib's process backends: -1 means every CPU, -2 all but
        one, None means 1."""
        if n_jobs == 0:
            raise ValueError("n_jobs == 0 in Parallel has no meaning")
        if n_jobs is None:
            return 1
        if n_jobs < 0:
            return max(joblib.cpu_count() + 1 + n_jobs, 1)
        return n_jobs

    def configure(self, n_jobs=1, parallel=None, prefer=None, require=None, **backend_args):
        # Even with one job the tasks run in a worker process: that is what
        # keeps an OOM kill away from this one.
        self.parallel = parallel
        n = self.effective_n_jobs(n_jobs)
        if self._pool is not None and n != self._n_jobs:
            self.terminate()  # a pool of the size asked for starts at the next batch
        self._n_jobs = n
        return n

    def _get_pool(self) -> Pool:
        if self._pool is None:
            kwargs = self.pool_kwargs
            if kwargs.get("initializer") is None:
                # A Parallel inside a task runs as joblib's process backends
                # run it: on the nested backend (threads at the first level
                # of nesting), not on a pool of processes of its own in
                # every worker. joblib's batches set it as they run; the
                # items of a batch here are sent one by one.
                kwargs = dict(kwargs, initializer=_use_nested_backend, initargs=self.get_nested_backend())
            self._pool = Pool(self._n_jobs, **kwargs)
        return self._pool

    def apply_async(self, func, callback=None):
        """Run joblib's batch func (its items, (function, args, kwargs),
        one by one), and call callback with the batch's results."""
        from ._core import APPLY, STAR
        from ._pickling import dumps_function, has_cloudpickle, uses_main
        pool = self._get_pool()
        items = getattr(func, "items", None)
        # As loky does, what the program's __main__ defines goes by value
        # with cloudpickle when it is importable: a function defined in
        # the script's `if __name__ == "__main__":` block, or one that
        # uses globals set there, which a worker importing the script
        # (as __mp_main__) would not find.
        by_name = pool._core.main_importable and not has_cloudpickle()
        fns = {} if items is None else {id(f): f for f, _, _ in items}
        shown = None
        if items is None:  # not a BatchedCalls: one call
            fn, mode, args = func, APPLY, [((), {})]
        elif len(fns) == 1 and (by_name or not uses_main(items[0][0])):
            fn, mode, args = items[0][0], APPLY, [(tuple(a), dict(kw)) for _, a, kw in items]
        else:
            from .worker import call_pickled
            fn, mode = call_pickled, STAR
            pickled = {k: dumps_function(f, by_name) for k, f in fns.items()}
            args = [(pickled[id(f)], tuple(a), dict(kw)) for f, a, kw in items]
            shown = {pickled[k]: f for k, f in fns.items()}  # a death names f, not call_pickled
        result = _BatchResult(self.deaths, callback, single=items is None)
        result.res = pool._map_async(fn, args, len(args) or 1, mode, result.completed, None, "return",
                                     shown=shown)
        return result

    # joblib 1.5 and later name it submit (apply_async is deprecated there).
    submit = apply_async

    def retrieve_result_callback(self, out):
        """joblib 1.3 and later: the batch's results, from out (what
        apply_async returned, which the callback is called with), or
        raise its failure. Called in the thread that completed it."""
        return out.outcome()

    def terminate(self):
        """Stop the pool: its workers are killed."""
        if self._pool is not None:
            self._pool.terminate()
            self._pool = None

    def abort_everything(self, ensure_ready=True):
        """A task raised: stop the rest at once. ensure_ready: the next
        batches get a new pool."""
        self.terminate()
        parallel = getattr(self, "parallel", None)
        # joblib before 1.3 keeps the batches it had cut from the failed
        # call's input and not yet sent (Parallel._ready_batches), and sends
        # them first at the block's next call, whose results then began
        # with the failed call's. They belong to the call that failed.
        ready = getattr(parallel, "_ready_batches", None)
        while ready is not None:
            try:
                ready.get_nowait()
            except queue.Empty:
                break
        if ensure_ready and parallel is not None:
            # joblib 1.5 renamed _backend_args _backend_kwargs.
            kwargs = getattr(parallel, "_backend_kwargs", None)
            if kwargs is None:
                kwargs = getattr(parallel, "_backend_args", {})
            self.configure(n_jobs=parallel.n_jobs, parallel=parallel, **kwargs)


def _use_nested_backend(backend, n_jobs):
    """A worker's initializer: make backend, with n_jobs, the default
    backend of the worker's tasks (its main thread's), as joblib's batches
    do while they run (BatchedCalls)."""
    joblib.parallel_backend(backend, n_jobs=n_jobs)


class _BatchResult:
    """What apply_async returns: joblib calls get(timeout)."""

    def __init__(self, deaths: str, callback, single: bool):
        self.deaths = deaths
        self.callback = callback
        self.single = single
        self.res = None
        self.values = None  # the batch's results, once completed

    def _raised(self, values):
        """The exception that get() raises, or None: the first failure
        other than a worker's death that deaths="return" keeps in place."""
        from .errors import WorkerDied
        for v in values:
            if isinstance(v, BaseException) and not (self.deaths == "return" and isinstance(v, WorkerDied)):
                return v
        return None

    def completed(self, values):
        # From the pool's thread: tell joblib the batch is done, which
        # dispatches the next one. joblib 1.3 and later take the outcome
        # from this call (retrieve_result_callback), failure included: a
        # batch whose callback never came would be waited for forever.
        # joblib 1.2 stops at the get() of a batch that will raise, and is
        # not told of it here.
        self.values = values
        if self.callback is None:
            return
        if _RETRIEVE:
            self.callback(self)
        elif self._raised(values) is None:
            self.callback(values[0] if self.single else values)

    def outcome(self):
        """The results of the completed batch, or raise its failure."""
        e = self._raised(self.values)
        if e is not None:
            raise e
        return self.values[0] if self.single else self.values

    def get(self, timeout=None):
        self.values = self.res.get(timeout)
        return self.outcome()


register_parallel_backend("safepool", SafepoolBackend)
