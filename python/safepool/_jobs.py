"""Jobs: the calls (map, imap, apply_async, submit) whose items a pool runs."""
from __future__ import annotations

import collections
import itertools
import threading
import time
import weakref

from . import _oob
from ._core import AHEAD_BYTES, APPLY, _Chunk, dumps_function

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Callable, Iterable, Optional

_job_ids = itertools.count(1)

ERRORS = ("raise", "return")
# SafePool's: a task whose worker died gives None; other failures raise.
KILLED_NONE = "killed-none"


def check_errors(errors: str):
    if errors not in ERRORS:
        raise ValueError("errors must be 'raise' or 'return', not %r" % (errors,))


def _killed(e) -> bool:
    from .errors import WorkerDied
    return isinstance(e, WorkerDied)


def raised_failures(failed: dict, errors: str) -> dict:
    """The failures (position -> exception) that a call with this errors
    mode raises."""
    if errors == "return" or not failed:
        return {}
    if errors == KILLED_NONE:
        return {p: e for p, e in failed.items() if not _killed(e)}
    return failed


class _Job:
    """What every job has: its function and how items are passed."""

    # windowed says that the job's chunks count against the core's ahead
    # bound (an Executor's futures, which run once sent).
    windowed = False
    # encoding_errors says that a result the worker could not send fails
    # with multiprocessing.pool.MaybeEncodingError (Pool's calls), not with
    # the pickling error itself (an Executor's futures).
    encoding_errors = True
    # opts are the call's own options (_options.call_options), or None.
    opts = None
    # shown maps the pickled functions of the joblib backend's items sent
    # by value, call_pickled(pickled, args, kwargs), to the functions they
    # are, for reports (_core.task_view); None for other jobs.
    shown = None

    def __init__(self, core, fn: Callable, mode: int):
        if not callable(fn):
            raise TypeError("%r is not callable" % (fn,))
        self.id = next(_job_ids)
        self.core = core
        self.fn = fn
        self.mode = mode
        self.fn_bytes = dumps_function(fn, core.main_importable)
        # What the batches carry: fn_bytes, or a big one shared (_oob.function_ref).
        self.fn_send = _oob.function_ref(self.fn_bytes)

    def release_function(self):
        """Close the job's shared function, if it has one: no batch of the
        job is left to run (a worker that runs one again, after a death,
        gives values that the client no longer takes)."""
        close = getattr(getattr(self, "fn_send", None), "close", None)
        if close is not None:
            try:
                close()
            except Exception:
                pass

    def __del__(self):
        self.release_function()

    def on_send(self) -> bool:
        """Called before the job's chunk is sent; False drops it."""
        return True

    def cancel_unsent(self) -> bool:
        """Cancel the job's items of a chunk that was never sent, and report
        whether that settled them; False: the core fails them with
        TaskCancelled."""
        return False

    def observe(self, start: float, end: float, count: int) -> None:
        """Called with the start and the end of count items that succeeded
        one after another."""

    def fail_many(self, positions, excs) -> None:
        """Settle the items at positions as failed, each with its exception
        in excs."""
        settle = self.settle
        for pos, exc in zip(positions, excs):
            settle(pos, False, exc)

    def sent(self, count: int, nbytes: int) -> None:
        """Called when a batch of count items is sent, with its size in
        bytes: its payload and its argument file."""


def report_callback_error():
    """Print the exception being handled, which a callback raised, on
    standard error."""
    import sys
    import traceback
    print("safepool: exception in a result callback:", file=sys.stderr)
    traceback.print_exc()


def timeout_error() -> Exception:
    """multiprocessing.TimeoutError, which get() and next() raise on timeout
    as multiprocessing's do. multiprocessing is imported only then."""
    from multiprocessing import TimeoutError
    return TimeoutError()


def pick_failure(failed: dict) -> BaseException:
    """The exception that a call raises: the first failure in input order,
    preferring a task's own failure to a cancellation."""
    from .errors import TaskCancelled
    own = [p for p, e in failed.items() if not isinstance(e, TaskCancelled)]
    return failed[min(own) if own else min(failed)]


class AsyncResult:
    """The result of apply_async, map_async and starmap_async, as in
    multiprocessing.pool.AsyncResult."""

    def __init__(self, core, fn, mode, n: int, single: bool, callback, error_callback, errors: str,
                 progress=None, pool=None):
        # The pool that made it, kept until the result is ready, as
        # multiprocessing's results keep theirs: a pool dropped by the
        # program is terminated (Pool.__del__), and one made for a single
        # call, Pool().map_async(...), must live until its result is in.
        # (The job's chunks, queued and sent, keep the job and this.)
        self._pool = pool
        self._single = single
        self._callback = callback
        self._error_callback = error_callback
        self._errors = errors
        self._progress = progress  # a _progress.Progress, or None
        self._event = threading.Event()
        self._job = _ListJob(core, fn, mode, n, self)
        if n == 0:
            self._finish()

    def ready(self) -> bool:
        """Report whether the call has completed."""
        return self._event.is_set()

    def successful(self) -> bool:
        """Report whether the call completed without a failed task. Raises
        ValueError if it has not completed yet."""
        if not self.ready():
            raise ValueError("%r not ready" % self)
        return not self._job.failed

    def wait(self, timeout: Optional[float] = None) -> None:
        """Wait until the result is available or timeout seconds pass.
        Raise RuntimeError in a result callback of the same pool (see
        _Core.forbid_wait)."""
        if not self._event.is_set():
            self._job.core.forbid_wait()
        self._event.wait(timeout)

    def get(self, timeout: Optional[float] = None) -> Any:
        """Return the result when it arrives. If a task failed, raise its
        exception (safepool.WorkerDied when its worker died) unless
        errors="return" was given, in which case exceptions stand in place
        of the failed results. Raise multiprocessing.TimeoutError if it does
        not arrive within timeout seconds, and RuntimeError in a result
        callback of the same pool (see _Core.forbid_wait)."""
        if not self._event.is_set():
            self._job.core.forbid_wait()
        if not self._event.wait(timeout):
            raise timeout_error()
        return self._value()

    def _value(self):
        job = self._job
        job.make_values()
        if job.failed:
            raised = raised_failures(job.failed, self._errors)
            if raised:
                raise pick_failure(raised)
            values = list(job.values)
            if self._errors == "return":
                for p, e in job.failed.items():
                    values[p] = e
        else:
            values = job.values
        return values[0] if self._single else values

    def _finish(self):
        job = self._job
        if self._progress is not None:
            self._progress.close()
        try:
            raised = raised_failures(job.failed, self._errors)
            if raised:
                if self._error_callback is not None:
                    self._error_callback(pick_failure(raised))
            elif self._callback is not None:
                self._callback(self._value())
        except BaseException:
            # A callback that raises (even SystemExit) must not stop the
            # thread that delivers every result; report it as an uncaught
            # exception in a thread.
            report_callback_error()
        finally:
            self._pool = None
            self._event.set()
            job.values_ready()


MapResult = AsyncResult
ApplyResult = AsyncResult


class _ListJob(_Job):
    """A job whose items are all known at once; results fill a list."""

    def __init__(self, core, fn, mode, n, owner):
        super().__init__(core, fn, mode)
        # The results' list, made when a result comes that is not a whole
        # range's values, or when the job is done (make_values). Until then
        # the lists of ranges' values are kept as they come, in _parts: a
        # map whose batches all come back whole then needs no list of
        # n Nones made before its first batch leaves (some 80 µs for 20000
        # items), nor the copies into it: its result is the first range's
        # list, extended by the others'.
        self.values = None
        self._parts = {}  # guarded by _lock: the position of a range's first item -> its values
        self._n = n
        self.failed = {}
        self._left = n
        self._lock = threading.Lock()
        self._owner = owner

    def make_values(self):
        """Make the results' list if it is not made yet."""
        with self._lock:
            self._values_locked()

    def _values_locked(self):
        """The results' list, made from the ranges' values so far if it is
        not made yet. Called with _lock held."""
        if self.values is not None:
            return self.values
        parts, n = self._parts, self._n
        self._parts = None
        at, out = 0, None
        for start in sorted(parts):
            if start != at:
                break
            part = parts[start]
            at += len(part)
            if out is None:
                out = part
            else:
                out += part
        if out is not None and at == n:
            self.values = out  # the ranges cover the job, in order
            return out
        values = [None] * n
        for start, part in parts.items():
            values[start:start + len(part)] = part
        self.values = values
        return values

    def settle(self, pos, ok, value):
        with self._lock:
            if ok:
                self._values_locked()[pos] = value
            else:
                self.failed[pos] = value
            self._left -= 1
            done = self._left == 0
        progress = self._owner._progress
        if progress is not None:
            progress.update(1, 0 if ok else 1)
        if done:
            self._owner._finish()

    def fail_many(self, positions, excs):
        # One lock and one progress update for them all: terminate() fails
        # every item of a map not yet run at once, a million of them maybe.
        with self._lock:
            self.failed.update(zip(positions, excs))
            self._left -= len(excs)
            done = self._left == 0
        progress = self._owner._progress
        if progress is not None:
            progress.update(len(excs), len(excs))
        if done:
            self._owner._finish()

    def settle_many(self, positions, values):
        """Settle the items at positions with values, a list that the job
        may keep."""
        with self._lock:
            if isinstance(positions, range) and positions.step == 1:
                if self.values is None:
                    self._parts[positions.start] = values
                else:
                    self.values[positions.start:positions.stop] = values
            else:
                out = self._values_locked()
                for p, v in zip(positions, values):
                    out[p] = v
            self._left -= len(values)
            done = self._left == 0
        progress = self._owner._progress
        if progress is not None:
            progress.update(len(values), 0)
        if done:
            self._owner._finish()

    def values_ready(self):
        # Every item has its result: the shared function goes now, not when
        # the collector frees the job and its result, which refer to each
        # other.
        self.release_function()


class _FutureJob(_Job):
    """One submit() call of an Executor: the item's outcome goes to a Future.

    The future is running from when its chunk is sent, as
    ProcessPoolExecutor's are from when they enter its call queue; the
    Executor bounds how many are sent ahead in the same way."""

    windowed = True
    encoding_errors = False

    def __init__(self, core, fn, future):
        super().__init__(core, fn, APPLY)
        self.future = future

    def cancel_unsent(self):
        self.future.cancel()
        _notify_cancelled(self.future)
        return True

    def on_send(self):
        f = self.future
        if f.running():
            return True
        if f.done():
            _notify_cancelled(f)
            return False
        return f.set_running_or_notify_cancel()

    def settle(self, pos, ok, value):
        if self.future.done():
            _notify_cancelled(self.future)
            return
        if not self.future.running():
            if not self.future.set_running_or_notify_cancel():
                return
        try:
            if ok:
                self.future.set_result(value)
            else:
                self.future.set_exception(value)
        except BaseException:
            # A done callback raised what the Future does not catch
            # (SystemExit, say): it must not stop the thread that delivers
            # every result.
            report_callback_error()

    def settle_many(self, positions, values):
        self.settle(0, True, values[0])


def _notify_cancelled(f):
    """Tell the waiters of f, a future that was cancelled, that it is done.

    Future.cancel() wakes result() and runs the done callbacks, but
    concurrent.futures.wait() and as_completed() count a cancelled future
    as done only once its executor calls set_running_or_notify_cancel(), as
    ProcessPoolExecutor does when it meets it in its queue: without this,
    wait() on a future cancelled before it was sent waited forever. Nothing
    happens to a future that is not cancelled or whose waiters were told.

    The state is read under the future's own lock (a reentrant one, which
    set_running_or_notify_cancel takes again): that method logs a critical
    message before it raises on a future whose waiters were told already,
    and the public API cannot tell the two cancelled states apart."""
    with f._condition:
        if f._state == "CANCELLED":
            f.set_running_or_notify_cancel()


def _result_bytes(value) -> int:
    """About the bytes that value holds, counting what makes results big:
    buffers (a numpy array's or a memoryview's nbytes, bytes, bytearray,
    str) on their own or directly in a tuple, a list or a dict's values.
    Other objects count 0: they are not looked into."""
    parts = value.values() if isinstance(value, dict) else value if isinstance(value, (tuple, list)) else (value,)
    total = 0
    for k, v in enumerate(parts):
        if k == 64:
            break  # a long list of small things: they are not what fills memory
        if isinstance(v, (bytes, bytearray, str)):
            total += len(v)
        else:
            nbytes = getattr(v, "nbytes", None)
            if isinstance(nbytes, int):
                total += nbytes
    return total


class IterResult:
    """The iterator returned by imap and imap_unordered.

    It reads its input lazily in a thread of its own: at most a bounded
    number of items are submitted and not yet consumed, so memory stays flat
    for inputs of any length, and a consumer that stops reading stops the
    input. A failed task raises its exception (safepool.WorkerDied when its
    worker died) from next() at its place in the results, and iteration may
    go on after it; with errors="return" the exception is returned instead.
    """

    def __init__(self, core, fn, mode, iterable: Iterable, chunksize: Optional[int], ordered: bool,
                 errors: str, ahead: Optional[int] = None, target: float = 0.02, max_chunk: int = 1024,
                 progress=None, on_ready=None, pool=None, on_settle=None):
        """progress (a _progress.Progress) counts settled items; on_ready,
        if given, is called (from the pool's threads) whenever next() may
        have something new: a result, or the end of the input. on_settle,
        if given, is called (from the pool's threads) with the position,
        ok and value of each item as it settles, before next() can return
        it, also when an earlier item keeps it waiting. pool, the
        pool that made it, is kept as long as the iterator (see
        AsyncResult).

        The iterator is its consumer's alone: neither its job nor the
        thread that reads its input hold it. A consumer that stops reading
        half way (a break out of a for loop) drops it, and then the thread
        ends and lets go of the input (_feed), instead of waiting, with the
        input and the items read ahead, for the pool to stop."""
        self._pool = pool
        self._job = _IterJob(core, fn, mode, self)
        self._progress = progress
        self._on_ready = on_ready
        self._on_settle = on_settle
        self._settled = 0
        self._core = core
        self._ordered = ordered
        self._errors = errors
        self._cond = threading.Condition()
        self._done = {}  # ordered: position -> (ok, value)
        self._queue = collections.deque()  # unordered: (ok, value)
        self._next = 0
        self._fed = 0
        self._consumed = 0
        self._total = None
        self._input_error = None
        self._abandoned = False  # guarded by _cond: abandon() was called
        if chunksize is None and core.max_tasks_per_child:
            # Batches of one, as multiprocessing's imap and
            # ProcessPoolExecutor.map by default: a worker takes a batch
            # while it has run fewer items than its limit, and runs it
            # whole, so batches that grew would run several items in a
            # worker meant to run one (maxtasksperchild=1, to keep each
            # item's state apart).
            chunksize = 1
        self._fixed = chunksize
        self._chunksize = chunksize or 1
        self._per_item = None  # mean seconds per item, from finished chunks
        self._target, self._max_chunk = target, max_chunk
        self._ahead = ahead
        self._item_bytes = 0  # the bytes of an item as sent, of the latest batch
        # About the bytes of a result (_result_bytes), of the latest one
        # settled; guarded by _cond.
        self._result_bytes = 0
        self._results_seen = False  # guarded by _cond: a result was settled
        self._feeder = threading.Thread(target=_feed, args=(weakref.ref(self), core, self._cond, iterable),
                                        name="safepool-imap-feeder", daemon=True)
        core.feeder_started()
        try:
            self._feeder.start()
        except BaseException:
            core.feeder_ended()
            raise

    def _limit(self):
        if self._core.reading_all():
            return 1 << 62  # the pool is closing: the whole input is run (_Core.close)
        if self._ahead is not None:
            return self._ahead
        n = 4 * self._core.processes * self._chunksize
        size = self._item_bytes
        if size:
            # Big items are bounded by their bytes too (AHEAD_BYTES a
            # worker, and a batch a quarter of it): each is held twice
            # until its result is read, as the input's object and as its
            # copy in the task's argument file.
            n = min(n, max(self._core.processes + 1, AHEAD_BYTES * self._core.processes // size))
        if not self._results_seen:
            # The size of the results is not known yet: as few ahead as
            # keep every worker busy, so that the first results, should
            # they be big, are not many.
            n = min(n, (self._core.processes + 1) * self._chunksize)
        size = self._result_bytes
        if size:
            # Big results too: each waits here until it is consumed, so a
            # consumer slower than the workers holds as many as are in
            # flight (a few batches a worker, of arrays of 200 MB say).
            n = min(n, max(self._core.processes + 1, AHEAD_BYTES * self._core.processes // size))
        return n

    def _adapt(self):
        if self._fixed is not None:
            return
        with self._cond:
            per = self._per_item
            size = self._item_bytes
        if per is None:
            return
        want = int(self._target / per) if per > 0 else self._max_chunk
        cap = self._max_chunk if self._ahead is None else max(1, self._ahead // 2)
        if size:
            cap = min(cap, max(1, AHEAD_BYTES // 4 // size))
        self._chunksize = max(1, min(want, 2 * self._chunksize, cap))

    def sent(self, count, nbytes):
        with self._cond:
            self._item_bytes = nbytes // max(count, 1)

    def observe(self, start, end, count):
        if count and end > start:
            per = (end - start) / count
            with self._cond:
                self._per_item = per if self._per_item is None else 0.5 * (self._per_item + per)

    def _put(self, pos, ok, value):
        if self._ordered:
            self._done[pos] = (ok, value)
        else:
            self._queue.append((ok, value))

    def _settle(self, pos, ok, value):
        if self._on_settle is not None:
            self._on_settle(pos, ok, value)
        size = _result_bytes(value) if ok else None
        with self._cond:
            if size is not None:  # a failure says nothing of the results' size
                self._result_bytes = size
            self._results_seen = True
            self._put(pos, ok, value)
            self._settled_more(1, 0 if ok else 1)
            self._cond.notify_all()
        if self._on_ready is not None:
            self._on_ready()

    def _settle_many(self, positions, values):
        if self._on_settle is not None:
            for p, v in zip(positions, values):
                self._on_settle(p, True, v)
        size = _result_bytes(values[0]) if len(values) else 0  # one stands for a range's
        with self._cond:
            self._result_bytes, self._results_seen = size, True
            for p, v in zip(positions, values):
                self._put(p, True, v)
            self._settled_more(len(values), 0)
            self._cond.notify_all()
        if self._on_ready is not None:
            self._on_ready()

    def _settled_more(self, n: int, failed: int):
        """Count n more items settled (0: the input ended), failed of them
        failed, on the progress display, and close it after the last.
        Called with _cond held, so that the display has counted an item
        before the consumer can see it."""
        self._settled += n
        progress = self._progress
        if progress is not None:
            if n:
                progress.update(n, failed)
            if self._total is not None and self._settled >= self._total:
                progress.close()

    def __iter__(self):
        return self

    def abandon(self):
        """Read no more of the input, as when the iterator is dropped: the
        items submitted already run, and their results are kept here."""
        with self._cond:
            self._abandoned = True
            self._cond.notify_all()

    def next(self, timeout: Optional[float] = None):
        """Return the next result, waiting at most timeout seconds (then
        raise multiprocessing.TimeoutError)."""
        return self.step(timeout)

    def step(self, timeout: Optional[float] = None, end: Any = None):
        """As next(), but return end, if it is not None, at the end of the
        results, rather than raise StopIteration: a caller can then tell
        the end from a task that raised StopIteration."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while True:
                if self._ordered and self._next in self._done:
                    ok, value = self._done.pop(self._next)
                    self._next += 1
                    break
                if not self._ordered and self._queue:
                    ok, value = self._queue.popleft()
                    break
                if self._total is not None and self._consumed >= self._total:
                    self._pool = None  # nothing more to come from it
                    if self._input_error is not None:
                        e, self._input_error = self._input_error, None
                        raise e
                    if end is not None:
                        return end
                    raise StopIteration
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    raise timeout_error()
                self._core.forbid_wait()
                self._cond.wait(remaining)
            self._consumed += 1
            self._cond.notify_all()
        if not ok and self._errors != "return":
            if self._errors != KILLED_NONE or not _killed(value):
                try:
                    raise value
                finally:
                    # The exception's traceback holds this frame: without
                    # this, the two would hold each other, and this
                    # iterator, which a consumer that leaves its loop on
                    # the exception drops, would live (and its input be
                    # read on) until the garbage collector found them.
                    value = None
            return None
        return value

    __next__ = next


def _feed(ref, core, cond, iterable):
    """Read the input of the IterResult that ref names and submit its items
    in chunks, keeping at most its limit of them submitted and not consumed
    (no limit once the pool is closing: _Core.close). The thread holds the
    iterator only while it submits: it ends, and drops the input, when the
    iterator is gone (its consumer dropped it), when the pool stops
    accepting items, or at the input's end."""
    try:
        _feed_items(ref, core, cond, iterable)
    finally:
        core.feeder_ended()


def _feed_items(ref, core, cond, iterable):
    self = ref()
    if self is None:
        return
    # The items read go to batch, which sends them; with a batch size that
    # adapts, it also sends what was read once the rest is slow to come.
    batch = _Batch(self._job, core, cond, ref, LINGER if self._fixed is None else 0)
    self = None
    try:
        _feed_batches(ref, core, cond, iterable, batch)
    finally:
        batch.close()


def _feed_batches(ref, core, cond, iterable, batch):
    self = None
    stopped = False  # the pool stopped accepting items before the input's end
    try:
        it = iter(iterable)
        iterable = None
        while True:
            with cond:
                while True:
                    self = ref()
                    if self is not None and self._abandoned:
                        self = None
                    if self is None or not core.accepting():
                        break
                    room = self._limit() - (self._fed - self._consumed)
                    if room > 0:
                        break
                    self = None  # not held while waiting: the consumer may drop it
                    cond.wait(0.2)
            if self is None:
                return  # abandoned: nobody reads what would be submitted
            if not core.accepting():
                stopped = True
                break
            append = batch.begin()
            whole = False
            try:
                for item in itertools.islice(it, max(1, min(self._chunksize, room))):
                    append(item)
                whole = True
            finally:
                # When the input raises, the items read before it run, and
                # their results come before its exception, where batches
                # are the pool's own; with the caller's chunksize, the
                # chunk the input broke off is dropped and the exception
                # comes in its place, as multiprocessing's imap does.
                got = batch.end(send=whole or self._fixed is None)
            if not got:
                break
            self._adapt()
            self = item = append = None
        if stopped:
            # The pool was terminated (or the executor shut down with
            # cancel_futures) before the input's end was seen: what it had
            # left never runs. The consumer must not take the end of the
            # results for the end of the input: it gets TaskCancelled there.
            # (The input is not read on to see whether it had anything
            # left: that could wait forever, for a queue, say.)
            from .errors import TaskCancelled
            self._input_error = TaskCancelled(
                "the pool stopped before the input was read to its end: what it had left, from item %d on, "
                "never ran" % batch.pos, cause="cancelled", function=self._job.fn, state="cancelled")
    except BaseException as e:  # the input raised: the consumer sees it after the results before it
        self = ref()
        if self is None:
            return
        self._input_error = e
    it = None
    if self is None:
        self = ref()
        if self is None:
            return
    with cond:
        self._total = batch.pos
        self._settled_more(0, 0)
        cond.notify_all()
    if self._on_ready is not None:
        self._on_ready()


# How long the first item of an imap's batch may wait for the rest of the
# batch to be read, when the batch size adapts (no chunksize): then what
# was read is sent. An input that gives items slowly, or that waits (a
# queue, fed by the results of this very imap, say), would otherwise hold
# the items read, forever if the next never came, where multiprocessing's
# imap, which sends each item as it reads it, gives their results.
LINGER = 0.005


class _Batch:
    """The items read for an imap's next batch, which the thread that reads
    the input sends when the batch is whole (begin, append each item, end).
    With a linger, a thread of its own sends what was read of a batch once
    the batch is linger seconds old, while the input keeps the reader
    waiting; the reader appends without a lock (list.append is atomic),
    and whoever sends takes the items not yet sent under the lock."""

    def __init__(self, job, core, cond, ref, linger: float):
        self._lock = threading.Condition(threading.Lock())
        self._items = []  # appended by the reader; the batch, from position pos
        self.pos = 0  # guarded by _lock
        self._sent = 0  # guarded by _lock: how many of _items were sent
        self._since = None  # guarded by _lock: when the batch began, while it is read
        self._job, self._core, self._cond, self._ref = job, core, cond, ref
        self._linger = linger
        self._thread = None
        self._closed = False  # guarded by _lock

    def begin(self):
        """Begin a batch; return the function that adds an item to it."""
        if self._linger:
            with self._lock:
                self._since = time.monotonic()
                if self._thread is None:
                    self._thread = threading.Thread(target=self._watch, name="safepool-imap-linger", daemon=True)
                    self._thread.start()
                else:
                    self._lock.notify()
        return self._items.append

    def end(self, send: bool = True) -> int:
        """Send the rest of the batch (unless not send: drop what was not
        sent); return how many items it had."""
        with self._lock:
            self._since = None
            if send:
                self._send_locked()
            else:
                del self._items[self._sent:]
            count = len(self._items)
            del self._items[:]
            self.pos += count
            self._sent = 0
        return count

    def close(self):
        """End the linger thread, if any: nothing more is read."""
        with self._lock:
            self._closed = True
            self._lock.notify()

    def _send_locked(self):
        start, stop = self._sent, len(self._items)
        if stop <= start:
            return
        self._sent = stop
        self._core.submit(_Chunk(self._job, range(self.pos + start, self.pos + stop), self._items[start:stop]))
        owner = self._ref()
        if owner is not None:
            with self._cond:
                owner._fed = self.pos + stop

    def _watch(self):
        with self._lock:
            while not self._closed:
                if self._since is None:
                    self._lock.wait()
                    continue
                left = self._since + self._linger - time.monotonic()
                if left > 0:
                    self._lock.wait(left)
                    continue
                # The batch is linger old: send what was read, and what
                # is read later each linger.
                self._send_locked()
                self._since = time.monotonic()


class _IterJob(_Job):
    """The job of an IterResult, which it holds weakly: results that come
    for an iterator its consumer dropped are dropped."""

    def __init__(self, core, fn, mode, owner):
        super().__init__(core, fn, mode)
        self._owner = weakref.ref(owner)

    def settle(self, pos, ok, value):
        owner = self._owner()
        if owner is not None:
            owner._settle(pos, ok, value)

    def settle_many(self, positions, values):
        owner = self._owner()
        if owner is not None:
            owner._settle_many(positions, values)

    def observe(self, start, end, count):
        owner = self._owner()
        if owner is not None:
            owner.observe(start, end, count)

    def sent(self, count, nbytes):
        owner = self._owner()
        if owner is not None:
            owner.sent(count, nbytes)
