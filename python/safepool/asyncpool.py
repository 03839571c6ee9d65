"""safepool.AsyncPool: safepool.Pool for asyncio code.

The pool is the same (the binary, its workers, the client's threads); the
results reach the event loop through call_soon_threadsafe, so no coroutine
ever blocks the loop and no thread is held per waiting call.
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import functools
from typing import Any, AsyncIterator, Callable, Iterable, List, Optional

from .pool import Pool

__all__ = ["AsyncPool"]


class _FuturesPool(Pool):
    # As Executor: futures are sent at most one more than there are workers
    # ahead, so that a cancelled call whose task was not sent never runs.
    _futures_ahead = True


class AsyncPool:
    """safepool.Pool for asyncio: ``async with safepool.AsyncPool(4) as
    pool``, then ``await pool.apply(f, (x,))``, ``await pool.map(f, xs)``
    or ``async for r in pool.imap(f, xs)``.

    The arguments are safepool.Pool's. The pool starts in ``async with``
    (without blocking the event loop) and is terminated when the block is
    left, as Pool's ``with`` does; ``await pool.close()`` inside the block
    waits for the submitted tasks first.

    A task whose worker dies raises safepool.WorkerDied where it is
    awaited, as Pool's methods raise it. Cancelling a coroutine that awaits
    ``apply`` or ``submit`` cancels its task if no worker has started it
    (at most processes + 1 such tasks are sent ahead of the workers);
    a task that is running runs to its end and its result is dropped.
    Cancelling ``map`` drops its result; its tasks run on.
    """

    def __init__(self, *args: Any, **kwargs: Any):
        self._args, self._kwargs = args, kwargs
        self._pool: Optional[Pool] = None

    async def __aenter__(self) -> "AsyncPool":
        if self._pool is not None:
            raise RuntimeError("the AsyncPool has already been started")
        loop = asyncio.get_running_loop()
        # Starting waits for the binary: not on the event loop's thread.
        self._pool = await loop.run_in_executor(None, functools.partial(_FuturesPool, *self._args,
                                                                        **self._kwargs))
        return self

    async def __aexit__(self, *exc) -> None:
        await self.terminate()

    def _running(self) -> Pool:
        if self._pool is None:
            raise ValueError("the AsyncPool is not started: use `async with AsyncPool(...) as pool`")
        self._pool._check()
        return self._pool

    # ---- calls -----------------------------------------------------------------

    async def submit(self, fn: Callable, /, *args: Any, **kwargs: Any) -> Any:
        """Run fn(*args, **kwargs) in a worker and return its result."""
        from ._core import _Chunk
        from ._jobs import _FutureJob
        pool = self._running()
        f: concurrent.futures.Future = concurrent.futures.Future()
        pool._core.submit(_Chunk(_FutureJob(pool._core, fn, f), range(0, 1), [(args, kwargs)]))
        # wrap_future cancels f when the awaiting coroutine is cancelled; a
        # future not yet sent is then never sent.
        return await asyncio.wrap_future(f)

    async def apply(self, func: Callable, args: Iterable = (), kwds: Optional[dict] = None) -> Any:
        """Run func(*args, **kwds) in a worker and return its result, as
        Pool.apply (args is a tuple of arguments)."""
        return await self.submit(func, *tuple(args), **dict(kwds or {}))

    async def _map(self, func, iterable, chunksize, mode, errors):
        loop = asyncio.get_running_loop()
        done = loop.create_future()

        def deliver(ok, value):  # from the pool's threads
            def set_it():
                if done.done():
                    return  # the awaiting coroutine was cancelled
                if ok:
                    done.set_result(value)
                else:
                    done.set_exception(value)
            try:
                loop.call_soon_threadsafe(set_it)
            except RuntimeError:
                pass  # the loop is closed: nobody waits any more

        pool = self._running()
        pool._map_async(func, iterable, chunksize, mode, functools.partial(deliver, True),
                        functools.partial(deliver, False), pool._errors(errors))
        return await done

    async def map(self, func: Callable, iterable: Iterable, chunksize: Optional[int] = None, *,
                  errors: str = "raise") -> List[Any]:
        """Return [func(x) for x in iterable], as Pool.map."""
        from ._core import MAP
        return await self._map(func, iterable, chunksize, MAP, errors)

    async def starmap(self, func: Callable, iterable: Iterable, chunksize: Optional[int] = None, *,
                      errors: str = "raise") -> List[Any]:
        """Return [func(*args) for args in iterable], as Pool.starmap."""
        from ._core import STAR
        return await self._map(func, iterable, chunksize, STAR, errors)

    def imap(self, func: Callable, iterable: Iterable, chunksize: Optional[int] = None, *,
             errors: str = "raise", progress: bool = False) -> AsyncIterator[Any]:
        """An async iterator of func(x) for x in iterable, in order, as
        Pool.imap: the input (an ordinary iterable) is read lazily, and a
        failed task raises from its step of ``async for``."""
        return _AsyncIter(self._running(), func, iterable, chunksize, True, errors, progress)

    def imap_unordered(self, func: Callable, iterable: Iterable, chunksize: Optional[int] = None, *,
                       errors: str = "raise", progress: bool = False) -> AsyncIterator[Any]:
        """Like imap, but results come as they are ready."""
        return _AsyncIter(self._running(), func, iterable, chunksize, False, errors, progress)

    # ---- lifecycle and reports -------------------------------------------------

    async def close(self) -> None:
        """Accept no more tasks, wait for those submitted, then stop the
        workers (Pool.close and Pool.join)."""
        pool = self._pool
        if pool is None:
            return

        def close_and_join():
            pool.close()
            pool.join()
        await asyncio.get_running_loop().run_in_executor(None, close_and_join)

    async def terminate(self) -> None:
        """Stop at once, as Pool.terminate: unfinished tasks fail with
        safepool.TaskCancelled."""
        pool = self._pool
        if pool is None:
            return
        await asyncio.get_running_loop().run_in_executor(None, pool.terminate)

    def failed_tasks(self):
        """As Pool.failed_tasks."""
        return self._running_or_stopped().failed_tasks()

    def stats(self) -> List[dict]:
        """As Pool.stats."""
        return self._running_or_stopped().stats()

    @property
    def memory_mode(self) -> str:
        """As Pool.memory_mode."""
        return self._running_or_stopped().memory_mode

    def _running_or_stopped(self) -> Pool:
        if self._pool is None:
            raise ValueError("the AsyncPool is not started")
        return self._pool


_END = object()  # the end of an _AsyncIter's results


def _notify(loop, wake):
    """Wake an _AsyncIter's consumer (from the pool's threads)."""
    try:
        loop.call_soon_threadsafe(wake.set)
    except RuntimeError:
        pass  # the loop is closed


class _AsyncIter:
    """The async iterator of AsyncPool.imap: Pool.imap's iterator, polled
    without blocking when the pool says a result may be there."""

    def __init__(self, pool: Pool, func, iterable, chunksize, ordered: bool, errors: str, progress):
        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        # on_ready holds the loop and the event, not this iterator: Pool's
        # iterator would hold this one, which holds it, and a cycle lives
        # until the collector runs. An iterator left half way must go at
        # once (its input is not read on); a pool that closes reads to
        # its end the input of every iterator still alive.
        self._it = pool._imap(func, iterable, chunksize, ordered, pool._errors(errors), progress,
                              on_ready=functools.partial(_notify, self._loop, self._wake))

    def __aiter__(self):
        return self

    async def __anext__(self):
        from multiprocessing import TimeoutError as NotYet
        while True:
            # Cleared before looking: a result that comes after the look
            # sets it again.
            self._wake.clear()
            try:
                # The end is _END, not StopIteration: a task that raised
                # StopIteration raises it here (a RuntimeError once out of
                # this coroutine) rather than end the iteration there.
                value = self._it.step(0, _END)
            except NotYet:
                await self._wake.wait()
                continue
            if value is _END:
                raise StopAsyncIteration
            return value
