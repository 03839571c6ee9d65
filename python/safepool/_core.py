"""The client side of the bridge protocol: one safepool binary per pool.

A _Core takes over a ``safepool __bridge`` process that _launch started,
with its two pipes, sends it the pool's configuration and then the items of
the jobs (map, imap, apply_async calls), and turns the results it sends
back into per-item outcomes for the jobs that own them. The binary applies
the pool's whole policy to each item (retries after a worker death or an
exception, backoff, the memory governor's OOM retry, poison, abort); the
client only delivers what it says, with the attempts it reports.

A job's items travel in chunks: a chunk is pickled once and sent as one
batch frame, which the binary's pool runs as one batch task whose items
each keep their own fate, and whose done items come back together in one
items frame. Which item a worker was running when it died is the pool's
business: each answer names its item.

Threads: the caller's threads create jobs and queue chunks; one writer
thread pickles and sends chunks (so that no thread that handles results ever
blocks on a full pipe); one reader thread receives results and settles
items, from the binary's pipe and from the workers' own pipes, which bring
a map's values straight to this process (_direct). Both are daemons and end when the binary's pipes close. A caller
that will wait for its results (Pool.map) writes its chunks itself, in the
writer's role, when no other thread holds it (send_queued): its first chunk
leaves without waiting for the writer thread to wake.

Flow control: the writer keeps at most the binary's max_pending batches
sent without all their results; the others wait here. The binary reads
frames only while its queue has room, so a client that sent more could not
get an abort frame read until a task ends, and with every worker busy for
long, terminate() would hang behind a full pipe.
"""
from __future__ import annotations

import _signal
import atexit
import collections
import gc
import io
import json
import os
import pickle
import sys
import threading
import time
import warnings
import weakref

from ._options import format_size
from ._pickling import dumps_function, dumps_payload  # noqa: F401  (dumps_function: the jobs' import)
from ._protocol import (APPLY, BATCH_HEAD, ERROR_RECORD, HEADER, ITEM_ENTRY, K_ABORT, K_BATCH,  # noqa: F401
                        K_CLOSE, K_END, K_ITEMS, K_NOTICE, K_READY, K_RESULT, META_LEN, MAP, OK, RAISED, STAR,
                        clock_now)
from . import _direct, _oob  # a map's values straight from its workers; big buffers out of band

_live_cores = weakref.WeakSet()

# The causes of attempts that did not end in a worker death.
# Causes of an attempt whose worker did not die: output-lost is an output
# that could not reach the client (a result too large for a NATS message).
_NOT_DEATHS = frozenset(("", "task-error", "preempted", "cancelled", "output-lost"))

# A function's time per item (Pool.map's batch size) is learnt from ranges
# of at least this many items, where a frame's own cost is small, for the
# functions of this many recent maps.
PER_ITEM_SPAN = 64
PER_ITEM_FUNCTIONS = 32

# The batches sent and not answered hold at most about this many bytes per
# worker (their payloads and argument files, which hold a copy of every
# big argument), beside the binary's bound in batches; but there are always
# one more of them than the workers, however big. imap reads its input
# ahead by the same bound (_jobs.IterResult).
AHEAD_BYTES = 32 << 20

# The records of failed and killed tasks (failed_tasks, killed_tasks) keep
# their tasks' arguments, but big ones (arrays and bytes of some MiB) only
# up to this many bytes in all: past it, the oldest records' arguments
# become Ellipsis, so that a long-lived pool whose tasks fail now and then
# does not keep every failed array.
KEEP_ARGS_BYTES = 64 << 20


class _Records:
    """Task records that hold their task's arguments (at index at), with
    the big ones bounded by KEEP_ARGS_BYTES. Guarded by its core's lock."""

    def __init__(self, at: int):
        self._at = at
        self._records: list[tuple] = []
        self._big = collections.deque()  # (index in _records, bytes) of records with big arguments
        self._bytes = 0

    def append(self, record: tuple):
        n = _oob.big_bytes(record[self._at])
        if n:
            self._big.append((len(self._records), n))
            self._bytes += n
        self._records.append(record)
        while self._bytes > KEEP_ARGS_BYTES:
            i, n = self._big.popleft()
            self._bytes -= n
            r = self._records[i]
            self._records[i] = r[:self._at] + (...,) + r[self._at + 1:]

    def extend(self, records):
        for r in records:
            self.append(r)

    def __iter__(self):
        return iter(self._records)


def _at_exit():
    cores = list(_live_cores)
    interrupted = type(getattr(sys, "last_exc", None) or getattr(sys, "last_value", None)) is KeyboardInterrupt
    for core in cores:
        if core.finish_at_exit and not interrupted and not core.forked():
            # An Executor the program still holds, never shut down: as
            # ProcessPoolExecutor's at the interpreter's exit, its futures
            # run to their end (a script that submits work with done
            # callbacks and ends lost it all, cancelled). Not after Ctrl-C.
            # Unlike shutdown(), the input of a map whose iterator is still
            # held is not read on: an endless one would never let the
            # program end.
            # As ProcessPoolExecutor's, it takes no new futures from here
            # on (a done callback that submits the next one would keep the
            # program from ever ending).
            core.exiting = True
            try:
                if core.closer is not None:
                    # shutdown(wait=False), or an Executor dropped without
                    # shutdown: its close goes on to its end.
                    core.closer.join()
                else:
                    core.wait_submitted()
            except BaseException:
                pass  # a second Ctrl-C: stop at once
        # The threads that still wait for its items are daemon threads (the
        # interpreter joined the others before its exit handlers): they are
        # left waiting, as multiprocessing's are, and frozen with the
        # interpreter. Woken with TaskCancelled, a daemon thread that printed
        # its traceback while the interpreter shut down could abort it
        # ("Fatal Python error: _enter_buffered_busy", exit status 134).
        core.at_exit = True
        core.terminate(wait=1.0)  # not in a child that fork copied this process into: see terminate
    if cores:
        _keep_interrupt_exit()


def _keep_interrupt_exit():
    """Let a program that ends on an unhandled KeyboardInterrupt still end
    by SIGINT, as the interpreter makes it, rather than with status 1.

    CPython records the unhandled interrupt in a flag that every exec() or
    eval() of source text clears and sets again only if that code raises
    KeyboardInterrupt; the flag is read after the exit handlers. Terminating
    a pool cancels its tasks, which imports the errors module in the reader
    thread, and its NamedTuples are made with eval: a shell loop or make
    then saw exit status 1 and went on after Ctrl-C. Running source text
    that raises KeyboardInterrupt sets the flag again."""
    last = getattr(sys, "last_exc", None) or getattr(sys, "last_value", None)
    if type(last) is KeyboardInterrupt and not hasattr(sys, "ps1") and not sys.flags.interactive:
        try:
            exec("raise KeyboardInterrupt")
        except KeyboardInterrupt:
            pass


atexit.register(_at_exit)


def _limits():
    """The module of the time limits' exceptions."""
    from . import _limits
    return _limits


def _errors():
    """The errors module, imported where a task fails: it imports
    concurrent.futures and typing, which a pool that runs well never needs."""
    from . import errors
    return errors


def _pool_clock(word):
    """A function that reads the pool clock whose word is word, in seconds."""
    monotonic_ns = time.monotonic_ns
    return lambda: clock_now(word, monotonic_ns)


class _Chunk:
    """Items of one job, written to the binary together."""

    __slots__ = ("job", "positions", "items", "start_by")

    def __init__(self, job, positions, items, start_by=0.0):
        self.job = job
        self.positions = positions  # a range, or a list of positions in the job
        self.items = items
        # The time after which the items that have not started are skipped
        # (wait_timeout), or 0: set when the chunk is submitted. It is a
        # reading of the pool clock (_Core._wait_now), or Unix time without
        # one.
        self.start_by = start_by

    def split(self, n: int) -> "_Chunk":
        """Keep the first n items; return a chunk of the others."""
        rest = _Chunk(self.job, self.positions[n:], self.items[n:], self.start_by)
        self.positions, self.items = self.positions[:n], self.items[:n]
        return rest


class _Sent:
    """A chunk sent as one batch: its items, and which of them are settled."""

    __slots__ = ("job", "positions", "items", "ticket", "left", "settled", "size")

    def __init__(self, job, positions, items, ticket, size=0):
        self.job = job
        self.size = size  # its bytes as sent: its payload and its argument file
        self.positions = positions  # a range, or a list of positions in the job
        self.items = items
        self.ticket = ticket  # the payload's _oob.Ticket: kept until every item has its result
        # Items the binary has not answered: the batch is the binary's until
        # then (its window, its ticket), even when the values of its items
        # came straight from their workers (_direct) and are settled.
        self.left = len(items)
        self.settled = bytearray(len(items))  # 1 for each item settled


class _Deferred:
    """Hold back SIGINT's handler (KeyboardInterrupt) while the main thread
    queues and writes a map's chunks (Pool.map writes them itself, in the
    writer's role: see _Core._pump), and run it when the block is left.

    A SIGINT that comes in the block is recorded; pending() reports it, so
    that the writing stops after the frame it is in and leaves the rest to
    the writer thread. Other threads, which never get KeyboardInterrupt,
    and a SIGINT whose handler is not a Python function, are left as
    they are."""

    __slots__ = ("old", "got")

    def __init__(self):
        self.old = None
        self.got = None

    def pending(self) -> bool:
        return self.got is not None

    def _record(self, signum, frame):
        self.got = (signum, frame)

    # The C module's functions: the signal module's wrappers, which convert
    # to and from enums, cost 13 µs a map where these cost 0.3.
    def __enter__(self, _signal=_signal):
        if threading.current_thread() is threading.main_thread():
            old = _signal.getsignal(_signal.SIGINT)
            if callable(old):
                _signal.signal(_signal.SIGINT, self._record)
                self.old = old
        return self

    def __exit__(self, *exc, _signal=_signal):
        old = self.old
        if old is None:
            return
        _signal.signal(_signal.SIGINT, old)
        got, self.got = self.got, None
        if got is not None:
            old(*got)  # raises KeyboardInterrupt with the default handler


class _Core:
    """One pool's binary, its pipes and the bookkeeping of items."""

    def __init__(self, launch, *, ahead: int = 0):
        """Take over launch (a started _launch.Launch, which sent the hello)
        and wait until its binary is ready. On failure, stop it and raise.

        ahead bounds the items of windowed jobs (an Executor's futures)
        sent without a result; 0 means no bound other than the binary's."""
        launch.taken = True  # this object ends the binary from here on
        try:
            self._take_over(launch, ahead)
        except BaseException:
            # Ctrl-C (KeyboardInterrupt) while the binary starts, in a
            # program that goes on: no pool owns the binary, and the reader
            # thread would keep this object, and the pipe to the binary,
            # open until the program exits, the binary and its workers
            # running all along. Closing the pipe makes the binary kill
            # its workers and exit.
            if getattr(self, "_out", None) is None:
                launch.abandon()
            else:
                self._release()
                if not self._proc.wait(5.0):
                    self._proc.kill()
                    self._proc.wait()
                # The reader thread, which ends at the binary's end of
                # file, makes the BrokenPool of a start that ended early:
                # importing concurrent.futures runs eval(), which clears
                # the interpreter's record of an unhandled Ctrl-C. Made
                # while the program was on its way out, it ended with
                # status 1 rather than by SIGINT.
                reader = getattr(self, "_reader", None)
                if reader is not None and reader is not threading.current_thread():
                    reader.join(5.0)
            raise

    def _take_over(self, launch, ahead):
        """__init__'s work."""
        self.processes = launch.processes
        self._one_item_batches = getattr(launch, "one_item_batches", False)
        self.retries = launch.retries
        self.policy = launch.policy
        self.timeout = launch.timeout
        # Items a worker runs before it is replaced (0: no limit); the
        # binary does not cut a batch at it (see _jobs.IterResult).
        self.max_tasks_per_child = getattr(launch, "max_tasks_per_child", 0)
        # The pool's defaults of the per-call limits (a job's opts override them).
        self.soft_timeout = launch.options.soft_timeout
        self.retry_on = launch.options.retry_on
        self.wait_timeout = launch.options.wait_timeout
        # What wait_timeout counts: the pool clock, which stands still while
        # the binary keeps the pool paused for this process stopped (Ctrl-Z),
        # or Unix time without one (nats=, where the workers are other
        # machines'). The worker checks the same clock (_limits_of).
        self._clock = launch.clock
        self._wait_now = _pool_clock(launch.clock) if launch.clock is not None else time.time
        # Every exception is retried by the binary (not only retry_on's).
        self.retry_all = launch.options.task_error_retries > 0
        self._launch = launch
        self._proc = launch.proc
        # The process that owns the binary. A child that the program forks
        # inherits this object (and runs the exit handler, and drops its
        # pools) but not the pool: it must not stop it.
        self._owner_pid = os.getpid()
        self.main_importable = launch.main is not None  # workers import the parent's __main__

        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)  # writer's queue and job completion
        self._queue = []  # guarded by _lock: chunks to send, in order (a list used as FIFO via _qhead)
        self._qhead = 0
        # guarded by _lock: the number of a batch's first item -> its _Sent
        self._inflight: dict[int, _Sent] = {}
        self._window = 0  # most batches in _inflight (the binary's max_pending); 0: no limit
        # guarded by _lock: the bytes of the batches in _inflight (_Sent.size),
        # and their bound (AHEAD_BYTES).
        self._inflight_bytes = 0
        self._bytes_window = AHEAD_BYTES * max(self.processes, 1)
        self._ahead = ahead  # most items of windowed jobs in _inflight; 0: no limit
        self._ahead_used = 0  # guarded by _lock: items of windowed jobs in _inflight
        self._next_id = 1  # only the thread in the writer's role uses it
        # guarded by _lock: a thread writes to the binary (the writer thread,
        # or a caller in send_queued); only it takes chunks from the queue.
        self._writing = False
        self._outstanding = 0  # guarded by _lock: items submitted and not settled
        self._control = []  # guarded by _lock: control frames for the writer (close, abort)
        self._stopping = False  # guarded by _lock: no more items are sent
        self._draining = False  # guarded by _lock: no new chunks are accepted; those sent go on
        # guarded by _lock: the threads that read an imap's input (_jobs._feed)
        # and have not ended, and whether they must read all of it now (the
        # pool is closing: see close).
        self._feeders = 0
        self._read_all = False
        self._broken: BaseException | None = None  # why the pool cannot run tasks
        self._ended = threading.Event()  # the end frame or end of file arrived
        # terminate() killed the binary, which had not ended within its
        # wait: what it left is cancelled, not broken. (Not _killed, the
        # records of killed_tasks, which are never false.)
        self._binary_killed = False
        self._ready = threading.Event()
        self._ready_info: dict = {}
        self._end_info: dict = {}
        self._failed = _Records(1)  # guarded by _lock: (fn, item, cause, attempts)
        self._killed = _Records(2)  # guarded by _lock: (fn, mode, item) of items whose worker died
        self._abort_reason: BaseException | None = None  # set by the abort policy
        self._aborted: list[tuple] = []  # the reader thread's: (job, pos, item) cancelled by the pool
        # guarded by _lock: (job id, positions, start, end, pid, peak) of the items done
        self._stats: list[tuple] = []
        # guarded by _lock: the recent seconds per item of the functions (by
        # _function_key of their pickles) of the last PER_ITEM_FUNCTIONS maps,
        # from the ranges of at least PER_ITEM_SPAN items that their workers
        # answered.
        self._per_item: dict = {}
        # Called (from the reader thread) with the BrokenPool error when the
        # pool breaks; the Executor logs it, as ProcessPoolExecutor does.
        self.on_broken = None
        # Whether the program's exit finishes the queued work (an Executor's,
        # as ProcessPoolExecutor's) rather than terminate the pool.
        self.finish_at_exit = False
        self.exiting = False  # the program's exit handler has begun with this pool (see _at_exit)
        self.at_exit = False  # the exit handler terminates it: items are not cancelled (see _at_exit)
        # The thread of close_in_background, which the program's exit waits for.
        self.closer = None

        self._out = io.open(launch.to_fd, "wb", buffering=256 << 10)
        self._in_fd = launch.from_fd
        # The read end of the door of the direct path, through which
        # workers announce the pipes that send a map's values straight to
        # this process (_direct), or -1; the reader thread's, which reads
        # it and the pipes beside the binary's pipe (_receiver).
        direct = getattr(launch, "direct", None)
        self._direct_fd = direct[0] if direct else -1
        self._receiver = None
        # guarded by _lock: items settled with values that came straight
        # from a worker, whose answer from the binary has not been read.
        self._early = 0
        # guarded by _lock: a batch's inbox region -> its first item's
        # number, for the batches in _inflight that have a region (the
        # direct records name their batch by its region).
        self._regions: dict[int, int] = {}
        self._reader = threading.Thread(target=self._read_loop, name="safepool-reader", daemon=True)
        self._reader.start()
        self._ready.wait()
        if self._broken is not None:
            self.terminate(wait=5.0)
            raise self._broken
        self._window = int(self._ready_info.get("max_pending") or 0)
        workers = self._ready_info.get("workers")
        if isinstance(workers, int) and 0 < workers < self.processes:
            # A limit (open files, processes) left room for fewer workers:
            # chunks are sized for the workers that run.
            self.processes = workers
        for notice in self._ready_info.get("notices") or ():
            warnings.warn("safepool: " + notice, RuntimeWarning, stacklevel=_caller_level())
        self._writer = threading.Thread(target=self._write_loop, name="safepool-writer", daemon=True)
        self._writer.start()
        _live_cores.add(self)

    # ---- properties -------------------------------------------------------

    @property
    def memory_mode(self) -> str:
        return self._ready_info.get("memory_mode", "")

    @property
    def pid(self) -> int:
        return self._proc.pid

    # ---- submission --------------------------------------------------------

    def check_running(self):
        if self._broken is not None:
            raise _errors().BrokenPool(str(self._broken)) from self._broken
        if self._abort_reason is not None:
            raise _errors().BrokenPool("the pool aborted: %s" % self._abort_reason) from self._abort_reason
        if self._stopping:
            raise ValueError("Pool not running")

    def forbid_wait(self):
        """Raise RuntimeError in this pool's reader thread, where result
        callbacks run: a wait there for the pool's results would never end
        (that thread delivers them), and every later call of the pool would
        hang with it."""
        if threading.current_thread() is self._reader:
            raise RuntimeError(
                "cannot wait for the pool's results in a result callback: callbacks run in the thread that "
                "delivers the results, which would wait forever. Submit with apply_async or map_async from "
                "the callback, without waiting, or wait in another thread")

    def accepting(self) -> bool:
        """Report whether new chunks are still accepted."""
        return not (self._stopping or self._draining)

    def reading_all(self) -> bool:
        """Report whether the imaps' inputs must be read to their end
        without waiting for their consumers (the pool is closing)."""
        return self._read_all

    def feeder_started(self):
        """Count a thread that reads an imap's input (see close)."""
        with self._lock:
            self._feeders += 1

    def feeder_ended(self):
        """Count a thread that reads an imap's input out."""
        with self._lock:
            self._feeders -= 1
            if self._feeders == 0:
                self._cond.notify_all()

    def submit(self, chunk: _Chunk, wake: bool = True):
        """Queue chunk's items to be sent. wake=False leaves the writer
        thread asleep: the caller then calls send_queued."""
        wait = self.option(chunk.job, "wait_timeout", self.wait_timeout)
        if wait:
            chunk.start_by = self._wait_now() + wait
        with self._lock:
            self._outstanding += len(chunk.items)
            if self._stopping or self._broken is not None or self._draining:
                reason = self._broken
            else:
                self._queue.append(chunk)
                if wake:
                    self._cond.notify_all()
                return
        self._cancel(chunk.job, chunk.positions, chunk.items, reason)

    @staticmethod
    def option(job, name, default):
        """The value of the call option name for job's items: the job's own
        (apply_async and submit's keywords) or else default, the pool's."""
        opts = job.opts
        if opts is not None:
            value = opts.get(name)
            if value is not None:
                return value
        return default

    # ---- writer thread -----------------------------------------------------

    def _write_frame(self, kind: int, ident: int, payload: bytes):
        self._out.write(HEADER.pack(len(payload), kind, ident))
        self._out.write(payload)

    def _take_locked(self):
        """The writer's next piece of work: ("control", kind), ("chunk",
        chunk), ("wait", None) or ("exit", None). A chunk is one batch, sent
        while the window has room for a batch; a windowed job's chunk is cut
        to the room its items have. Called with _lock held."""
        if self._control:
            return "control", self._control.pop(0)
        room = 1 << 30 if not self._window or len(self._inflight) < self._window else 0
        if self._inflight_bytes >= self._bytes_window and len(self._inflight) > self.processes:
            room = 0  # big batches: the reader notifies when one is answered
        if room <= 0 or self._qhead >= len(self._queue):
            if self._out is None or self._ended.is_set():
                return "exit", None
            return "wait", None  # the reader or a submitter notifies
        chunk = self._queue[self._qhead]
        if chunk.job.windowed and self._ahead:
            room = min(room, self._ahead - self._ahead_used)
            if room <= 0:
                if self._out is None or self._ended.is_set():
                    return "exit", None
                return "wait", None  # the reader notifies when a result frees room
        if len(chunk.items) > room:
            self._queue[self._qhead] = chunk.split(room)
        else:
            self._queue[self._qhead] = None
            self._qhead += 1
            if self._qhead > 1024 and self._qhead * 2 > len(self._queue):
                del self._queue[:self._qhead]
                self._qhead = 0
        if chunk.job.windowed:
            self._ahead_used += len(chunk.items)  # given back by _take, or by _send_chunk
        return "chunk", chunk

    def _next_locked(self):
        """_take_locked, with a chunk taken while the pool stops turned
        into ("cancel", chunk). Called with _lock held."""
        what, arg = self._take_locked()
        if what == "chunk" and self._stopping:
            what = "cancel"
            if arg.job.windowed:
                self._ahead_used -= len(arg.items)
        return what, arg

    def _write_loop(self):
        # The writer thread: it sends what the callers leave (chunks that
        # the window had no room for, those queued by threads that do not
        # write, control frames) while no caller writes.
        while True:
            with self._lock:
                what, arg = ("wait", None) if self._writing else self._next_locked()
                if what == "exit":
                    return
                if what == "wait":
                    self._cond.wait()
                    continue
                self._writing = True
            if not self._pump(what, arg):
                return

    def send_queued(self, stop=None):
        """Send the queued chunks from this thread, as the writer thread
        would, unless a thread is writing already: a caller that is about
        to wait for its results (Pool.map) so saves the writer thread's
        wake-up, and its first chunk leaves at once. The reader thread
        never writes (see _pump). stop, if given, is called after each
        frame: when it returns true, the rest is left to the writer
        thread."""
        with self._lock:
            if self._writing or threading.current_thread() is self._reader:
                self._cond.notify_all()  # the writer thread's, then
                return
            what, arg = self._next_locked()
            if what == "wait" or what == "exit":
                self._cond.notify_all()  # what is queued is the writer thread's
                return
            self._writing = True
        self._pump(what, arg, stop)

    def _pump(self, what, arg, stop=None) -> bool:
        """Do what (from _next_locked), then the rest of what can be sent
        now (until stop() is true, if stop is given); flush, and give up
        the writer's role (_writing), which the calling thread holds.
        Report whether the binary can still be written to.

        Nothing here may be cut short by an exception raised in the middle
        (a KeyboardInterrupt, in a caller's main thread): a chunk half
        pickled would be lost, a frame half written would corrupt the
        stream, and the role would never be given back, which left every
        later call of the pool waiting forever. A caller defers SIGINT
        around it (interrupts_deferred).

        The lock is never held while writing: a write may block until the
        binary reads, which it may do only after this process has read its
        results, which needs the lock; so the reader thread never writes."""
        ok = True
        try:
            while True:
                if what == "control":
                    self._write_frame(arg, 0, b"")
                elif what == "cancel":
                    self._cancel(arg.job, arg.positions, arg.items, None)
                else:
                    self._send_chunk(arg)
                if stop is not None and stop():
                    break  # the rest is the writer thread's
                with self._lock:
                    what, arg = self._next_locked()
                if what == "wait" or what == "exit":
                    break
            self._out.flush()
        except (OSError, ValueError, AttributeError):
            ok = False  # the binary is gone (or our end closed); the reader reports it
        with self._lock:
            self._writing = False
            if self._control or self._qhead < len(self._queue) or self._out is None or self._ended.is_set():
                # What came while this thread wrote is the writer thread's
                # (and so is exiting).
                self._cond.notify_all()
        return ok

    def interrupts_deferred(self):
        """A context in which this thread's SIGINT is held back, and
        delivered when it is left: see _Deferred."""
        return _Deferred()

    def _limits_of(self, job, start_by):
        """The limits that go with each of job's items to the worker."""
        limits = {}
        soft = self.option(job, "soft_timeout", self.soft_timeout)
        if soft:
            limits["soft"] = soft
        if start_by:
            limits["run_by" if self._clock is not None else "start_by"] = start_by
            limits["wait"] = self.option(job, "wait_timeout", self.wait_timeout)
        if self.retry_all:
            limits["retry"] = True
        retry_on = self.option(job, "retry_on", self.retry_on)
        if retry_on:
            limits["retry_on"] = retry_on
        return limits

    def _send_chunk(self, chunk: _Chunk):
        """Pickle and write the items of chunk as one batch task (a batch of
        one item each with nats)."""
        while self._one_item_batches and len(chunk.items) > 1:
            rest = chunk.split(1)
            self._send_chunk(chunk)
            chunk = rest
        job = chunk.job
        n = len(chunk.items)
        if not job.on_send():  # a future cancelled while queued
            with self._lock:
                self._give_back(job, n)
                self._outstanding -= n
                self._cond.notify_all()
            return
        if chunk.start_by and self._wait_now() > chunk.start_by:
            # It waited here past its wait_timeout: it never runs.
            with self._lock:
                self._give_back(job, n)
            self._fail_waited(job, chunk.positions, chunk.items)
            return
        limits = self._limits_of(job, chunk.start_by)
        positions, items = chunk.positions, chunk.items
        if not isinstance(items, range):
            items = list(items)
        if not isinstance(positions, range):
            positions = list(positions)
        try:
            # One pickle for the chunk: the binary runs it as one batch task,
            # whose items each keep their own fate.
            payload, ticket = self._encode(job, items, limits)
        except Exception:
            positions, items = self._picklable(job, list(positions), items, limits)
            if not items:
                return
            try:
                payload, ticket = self._encode(job, items, limits)
            except Exception as e:
                with self._lock:
                    self._give_back(job, len(items))
                for pos in positions:
                    self._settle(job, pos, False, e)
                return
        n = len(items)
        size = len(payload) + (ticket.size if ticket is not None else 0)
        job.sent(n, size)
        # Task numbers must follow each other without gaps: number only
        # what is written, and record it before the answer can come. The
        # batch holds its ticket until every item of it has its result.
        ident = self._next_id
        self._next_id += n
        with self._lock:
            self._inflight[ident] = _Sent(job, positions, items, ticket, size)
            self._inflight_bytes += size
            if ticket is not None:
                self._regions[ticket.region] = ident
        # The call's own timeout and memory hint go to the engine with the
        # task (docs/protocol.md, batch).
        meta = {name: job.opts[name] for name in ("timeout", "mem") if job.opts and job.opts.get(name)}
        meta = json.dumps(meta).encode() if meta else b""
        write = self._out.write
        write(HEADER.pack(BATCH_HEAD.size + len(meta) + len(payload), K_BATCH, ident))
        write(BATCH_HEAD.pack(n, len(meta)) + meta)
        write(payload)

    def _encode(self, job, items, limits):
        """The payload of a batch of job's items, and its ticket."""
        head = (job.mode, job.fn_send, items)
        return _oob.encode(head + (limits,) if limits else head, self.main_importable)

    def _picklable(self, job, positions, items, limits):
        """The positions and items that pickle; the others fail with the
        pickling error itself, as with multiprocessing."""
        keep_pos, keep = [], []
        for pos, item in zip(positions, items):
            try:
                self._encode(job, [item], limits)
            except Exception as e:
                if hasattr(e, "add_note"):  # Python 3.11: say which of many items it was
                    e.add_note("safepool: the arguments of %s, item %d of the call, cannot be sent to a worker"
                               % (_call_repr(job, item), pos))
                with self._lock:
                    self._give_back(job, 1)
                self._settle(job, pos, False, e)
                continue
            keep_pos.append(pos)
            keep.append(item)
        return keep_pos, keep

    def _give_back(self, job, n: int):
        """Return the room of n items of job that were taken and not sent.
        Called with _lock held."""
        if job.windowed and self._ahead:
            self._ahead_used -= n
            self._cond.notify_all()

    def _take(self, base: int, index: int, count: int, answered: bool = True):
        """Mark the count items from index on of the batch whose first item
        is numbered base as settled, and wake the writer if that makes room.
        Return (its _Sent, None) when none of them was settled before, or
        (its _Sent, the indexes of those that were not), or (None, ()) for
        an unknown batch. answered says that the binary answered them (its
        frame); False for values that came straight from a worker, which
        leave the batch to the binary. Called with _lock held."""
        sent = self._inflight.get(base)
        if sent is None:
            return None, ()
        answers = count
        flags = sent.settled
        fresh = None
        if flags.find(1, index, index + count) >= 0:
            if flags.find(0, index, index + count) < 0:
                # All settled before (their values came straight from a
                # worker, _on_direct): the binary's answer of a range.
                fresh = []
            else:
                fresh = [k for k in range(index, index + count) if not flags[k]]
                for k in fresh:
                    flags[k] = 1
            count = len(fresh)
        else:
            flags[index:index + count] = b"\1" * count
        if sent.job.windowed and count:
            self._ahead_used -= count
            if self._ahead_used < self._ahead <= self._ahead_used + count:
                self._cond.notify_all()
        if not answered:
            return sent, fresh
        sent.left -= answers
        if sent.left <= 0:
            del self._inflight[base]
            if sent.ticket is not None and self._regions.get(sent.ticket.region) == base:
                del self._regions[sent.ticket.region]
            was = self._inflight_bytes
            self._inflight_bytes -= sent.size
            if len(self._inflight) + 1 == self._window or \
                    self._inflight_bytes < self._bytes_window <= was:
                self._cond.notify_all()
        return sent, fresh

    def _send_control(self, kind: int):
        with self._lock:
            self._control.append(kind)
            self._cond.notify_all()

    # ---- reader thread -----------------------------------------------------

    def _read_loop(self):
        try:
            for kind, ident, payload in self._frames():
                if kind == K_RESULT:
                    # A batch of one item (the binary runs them as tasks
                    # with nats), numbered ident.
                    (n,) = META_LEN.unpack_from(payload)
                    meta = json.loads(payload[4:4 + n])
                    with self._lock:
                        sent, fresh = self._take(ident, 0, 1)
                    if sent is not None and sent.ticket is not None:
                        sent.ticket.dirty = True  # one item a batch: no reason to save the punch
                    if sent is not None and fresh is None:
                        self._on_result(sent.job, sent.positions[0], sent.items[0], meta,
                                        memoryview(payload)[4 + n:], sent.ticket)
                    # Hold nothing of the task while waiting for the next
                    # frame: its arguments and results are the caller's.
                    sent = meta = payload = None
                elif kind == K_ITEMS:
                    self._on_items(ident, payload)
                    payload = None
                elif kind == K_NOTICE:
                    # Something the user should change, such as a max_rss
                    # below what a worker holds once started; once a pool.
                    warnings.warn("safepool: " + bytes(payload).decode("utf-8", "replace"), RuntimeWarning)
                elif kind == K_READY:
                    self._ready_info = json.loads(payload)
                    self._ready.set()
                elif kind == K_END:
                    self._end_info = json.loads(payload)
                    if not self._ready.is_set():
                        self._broken = _errors().BrokenPool("the safepool binary cannot start the pool: %s"
                                                  % self._end_info.get("error", "unknown error"))
                    break
        except BaseException as e:  # a bug here must not hang the pool, nor pass for the binary's exit
            if self._broken is None:
                self._broken = _errors().BrokenPool("the safepool client failed reading results: %r" % e)
        finally:
            try:
                # Values that workers sent before the binary ended are
                # delivered; then the rest is settled as the end says.
                self._drain_direct()
            except Exception:
                pass
            self._on_end()
            try:
                os.close(self._in_fd)
            except OSError:
                pass
            if self._receiver is not None:
                self._receiver.close()
            elif self._direct_fd >= 0:
                os.close(self._direct_fd)
            self._direct_fd = -1

    def _frames(self):
        """Yield (kind, id, payload) for each frame from the binary until
        its pipe ends, handling the workers' direct records in between."""
        fd = self._in_fd
        poll = None
        if self._direct_fd >= 0:
            import select
            poll = select.poll()
            poll.register(fd, select.POLLIN)
            self._receiver = _direct.Receiver(self._direct_fd, poll)
        size = HEADER.size
        unpack = HEADER.unpack_from
        read = os.read
        buf = b""
        while True:
            at, n = 0, len(buf)
            while n - at >= size:
                length, kind, ident = unpack(buf, at)
                end = at + size + length
                if end > n:
                    break
                yield kind, ident, buf[at + size:end]
                at = end
            if at:
                buf = buf[at:]
            if len(buf) >= size:
                # A frame that is not whole yet: a big one is read into
                # its own buffer, without copying what came before again
                # and again.
                length, kind, ident = unpack(buf)
                if length > 1 << 20:
                    payload = bytearray(length)
                    got = len(buf) - size
                    payload[:got] = buf[size:]
                    buf = b""
                    view = memoryview(payload)
                    while got < length:
                        if poll is not None:
                            self._wait_readable(poll, fd)
                        k = os.readv(fd, [view[got:]])
                        if k == 0:
                            return
                        got += k
                    view.release()
                    yield kind, ident, payload
                    continue
            if poll is not None:
                self._wait_readable(poll, fd)
            data = read(fd, 256 << 10)
            if not data:
                return
            buf = buf + data if buf else data

    def _wait_readable(self, poll, fd):
        """Wait until the binary's pipe fd has something to read, settling
        the direct records that come meanwhile."""
        receiver, settle = self._receiver, self._on_direct
        while True:
            ready = False
            for f, _ in poll.poll():
                if f == fd:
                    ready = True
                else:
                    receiver.ready(f, settle)
            if ready:
                return

    def _drain_direct(self):
        """Read and settle what the workers sent straight to this process
        (_direct) and is in their pipes now."""
        if self._receiver is not None:
            self._receiver.drain(self._on_direct)

    def _on_direct(self, pid, region, index, count, start, end, output):
        """Settle the count items from index on of the batch of region with
        output, their values, sent by worker pid straight to this process:
        the first values of an item win; an item settled already (its
        values came before, from a worker that died before it told the
        binary) is not settled again."""
        with self._lock:
            base = self._regions.get(region)
            sent = self._inflight.get(base) if base is not None else None
            if sent is None or index + count > len(sent.items):
                return
            sent, fresh = self._take(base, index, count, answered=False)
            self._early += count if fresh is None else len(fresh)
        if fresh is not None and not fresh:
            return
        job = sent.job
        try:
            tag, values = _oob.decode(output)
        except Exception as e:
            tag, values = None, e
        if tag == OK and len(values) == count:
            self._settle_range(job, sent.positions, index, count, values, fresh, start, end, None)
            return
        exc = _errors().RemoteError("cannot unpickle the results: %r" % (values,), cause="task-error",
                                    attempts=1, function=job.fn)
        for k in (range(index, index + count) if fresh is None else fresh):
            self._settle(job, sent.positions[k], False, exc)

    def _on_end(self):
        """The binary sent its end frame or exited: settle everything left."""
        if not self._end_info and self._broken is None and not self._binary_killed:
            code = self._proc.poll()
            if not self._ready.is_set():
                # A binary older than this client (bridge/1) refuses its
                # hello without an end frame: it printed why on stderr.
                self._broken = _errors().BrokenPool(
                    "the safepool binary exited before it was ready%s; if it printed that the client "
                    "speaks another version, install the client and the binary from the same release"
                    % ("" if code is None else " (status %s)" % code))
            else:
                self._broken = _errors().BrokenPool("the safepool binary exited unexpectedly%s"
                                                    % ("" if code is None else " (status %s)" % code))
        err = self._end_info.get("error")
        reason = self._broken
        if reason is None and err and not self._stopping:
            reason = _errors().BrokenPool(err)
            self._broken = reason
        with self._lock:
            self._stopping = True
            self._early = 0
            items = [(sent.job, sent.positions[k], sent.items[k]) for sent in self._inflight.values()
                     for k, done in enumerate(sent.settled) if not done]
            self._inflight.clear()
            self._regions.clear()
            self._ahead_used = 0
            chunks = [c for c in self._queue[self._qhead:] if c is not None]
            self._queue, self._qhead = [], 0
            items += self._aborted
            self._aborted = []
            self._ended.set()
            self._cond.notify_all()
        self._ready.set()
        by_job = {}  # each job's items failed at once (see _cancel)
        for job, pos, item in items:
            positions, args = by_job.setdefault(job, ([], []))
            positions.append(pos)
            args.append(item)
        for job, (positions, args) in by_job.items():
            self._cancel(job, positions, args, reason)
        for c in chunks:
            self._cancel(c.job, c.positions, c.items, reason)
        if self.on_broken is not None and isinstance(self._broken, _errors().BrokenPool):
            self.on_broken(self._broken)

    def _on_items(self, base: int, payload: bytes):
        """Settle the items of a batch that an items frame reports, all in
        one state: each entry is one item's, or a range's, whose values
        come in one pickled list."""
        (n,) = META_LEN.unpack_from(payload)
        meta = json.loads(payload[4:4 + n])
        at = 4 + n
        (count,) = META_LEN.unpack_from(payload, at)
        at += 4
        entries = list(ITEM_ENTRY.iter_unpack(payload[at:at + count * ITEM_ENTRY.size]))
        at += count * ITEM_ENTRY.size
        if count == 1 and self._settle_one(base, entries[0], meta, payload, at):
            return
        if self._receiver is not None and self._maybe_direct(base, entries, payload, at):
            # Values that workers sent straight to this process go first:
            # they were in their pipes before the binary heard of them (an
            # items frame that says SENT), or before a worker's death that
            # has the binary run them again (the first values win).
            self._drain_direct()
        with self._lock:
            taken = [self._take(base, e[0], e[1] or 1) for e in entries]
        sent = next((t[0] for t in taken if t[0] is not None), None)
        if sent is None:
            return
        # The last frame of the batch: once its results are decoded, the
        # batch's ticket is released (its argument buffers closed, its
        # results' region emptied), before the last item is settled, so
        # that a caller woken by it finds them gone; not left to the
        # collector.
        ticket = sent.ticket if sent.left <= 0 else None
        try:
            self._settle_items(sent, entries, taken, at, payload, meta, ticket)
        finally:
            if ticket is not None:
                ticket.release()
            # The answers of items settled before, with values that came
            # straight from a worker (_on_direct): killed_tasks waits for them.
            early = sum((e[1] or 1) - (len(f) if f is not None else e[1] or 1)
                        for e, (s, f) in zip(entries, taken) if s is not None)
            if early:
                with self._lock:
                    self._early -= early
                    if self._early <= 0:
                        self._cond.notify_all()

    def _settle_one(self, base: int, entry, meta: dict, payload: bytes, at: int) -> bool:
        """Settle the answer of the batch numbered base, of one item, done at
        its first attempt, whose output starts at at in payload: the answer
        of every task of imap(chunksize=1), apply_async and submit, settled
        here without _settle_items' general way. Report False, having done
        nothing, for any other answer."""
        index, span, size, start, end = entry
        attempts = meta.get("attempts")
        if span or meta.get("state") != "done" or not attempts or len(attempts) != 1 or \
                attempts[0].get("cause") != "" or self._stopping:
            return False
        if base not in self._inflight or self._maybe_direct(base, (entry,), payload, at):
            return False  # read without the lock: _take decides
        with self._lock:
            sent, fresh = self._take(base, index, 1)
        if sent is None:
            return True  # an answer of a batch settled and gone: nothing to do
        ticket = sent.ticket if sent.left <= 0 else None
        if fresh is not None:
            # The item was settled already (a batch of one gets no values
            # straight from a worker, whose record _settle_items notes).
            if ticket is not None:
                ticket.release()
            return True
        job, pos = sent.job, sent.positions[index]
        try:
            out = memoryview(payload)[at:at + size]
            if ticket is not None and _oob.out_of_band(out):
                ticket.dirty = True
            last = attempts[0]
            if start:
                last = dict(last, start=start, end=end)
            self._on_result(job, pos, sent.items[index], dict(meta, attempts=[last]), out, ticket)
        finally:
            if ticket is not None:
                ticket.release()
        return True

    def _maybe_direct(self, base: int, entries, payload: bytes, at: int) -> bool:
        """Report whether values of the batch numbered base may have come
        straight from a worker (_direct), so that the items frame of
        entries, whose outputs start at at in payload, must wait for them
        to be read: when an entry's output says SENT, or when the batch has
        more than one item. A worker sends only ranges of two or more
        items that way, so a batch of one never has such values, and its
        frame costs no read of the door and of every worker's pipe."""
        for e in entries:
            size = e[2]
            if size == len(_direct.SENT) and payload[at:at + size] == _direct.SENT:
                return True
            at += size
        sent = self._inflight.get(base)  # read without the lock: a batch gone now needs no values
        return sent is not None and len(sent.items) > 1

    def _settle_items(self, sent, entries, taken, at, payload, meta, ticket):
        """Settle the items of an items frame, whose outputs start at at;
        release ticket, if given, once every result is decoded."""
        view = memoryview(payload)
        attempts = meta.get("attempts") or ()
        job, positions, items = sent.job, sent.positions, sent.items
        fast = meta.get("state") == "done" and len(attempts) == 1
        last = attempts[0] if fast else None
        # The batch's inbox region is punched at release only if a worker
        # may have written it: an attempt that did not end well, or a
        # result that came through it (see _oob.Ticket).
        mark = sent.ticket
        if mark is not None and not fast:
            mark.dirty = True
        decode = _oob.decode
        final = len(entries) - 1
        # Items that the stopping pool cancelled before they ran, all failed
        # at once (see _cancel) rather than each through _on_result, which
        # fails them the same way; an item with a death among its attempts
        # goes there, to be recorded as killed.
        cancelled = self._cancelled_unrun(meta)
        gone = []  # the indexes of those items
        for j, ((index, span, size, start, end), (s, fresh)) in enumerate(zip(entries, taken)):
            out = view[at:at + size]
            at += size
            if mark is not None and _oob.out_of_band(out):
                mark.dirty = True
            if s is None:
                continue
            release = ticket if j == final else None
            if fresh is not None and not fresh:
                # Settled already, with values that came straight from a
                # worker (_on_direct): here is their attempt's record. Or
                # that worker died before it told the binary, which ran
                # them again: the first values stand, and a death that the
                # binary charged to one of them is noted.
                ks = range(index, index + (span or 1))
                with self._lock:
                    if meta.get("state") == "done" and attempts:
                        a = attempts[-1]
                        self._stats.append((job.id, positions[index:index + (span or 1)], start or a.get("start", 0.0),
                                            end or a.get("end", 0.0), a.get("pid", 0), a.get("peak_rss", 0)))
                    if any(a.get("cause") not in _NOT_DEATHS for a in attempts):
                        self._killed.extend((job.fn, job.mode, items[k]) for k in ks)
                continue
            if out == _direct.SENT:
                # Values sent straight to this process, yet not in its pipe
                # (never so, unless a bug): the items fail rather than wait.
                lost = _errors().RemoteError("the results sent straight to the client did not arrive",
                                             cause="protocol", attempts=len(attempts), function=job.fn)
                for k in (range(index, index + (span or 1)) if fresh is None else fresh):
                    self._settle(job, positions[k], False, lost)
                continue
            if span and fast:
                # A range: its values in one list, all returned.
                try:
                    tag, values = decode(out, release)
                except Exception as e:
                    tag, values = None, e
                if tag == OK and len(values) == span:
                    self._settle_range(job, positions, index, span, values, fresh, start, end, last)
                    continue
                exc = _errors().RemoteError("cannot unpickle the results: %r" % (values,), cause="task-error",
                                            attempts=1, function=job.fn)
                for k in (range(index, index + span) if fresh is None else fresh):
                    self._settle(job, positions[k], False, exc)
                continue
            ks = range(index, index + (span or 1)) if fresh is None else fresh
            if cancelled:
                gone.extend(ks)
                continue
            for k in ks:
                m = meta
                if attempts and start:
                    last_run = dict(attempts[-1], start=start, end=end)
                    m = dict(meta, attempts=list(attempts[:-1]) + [last_run])
                self._on_result(job, positions[k], items[k], m, out, release if k == ks[-1] else None)
        if gone:
            self._cancel(job, [positions[k] for k in gone], [items[k] for k in gone], None)

    def _cancelled_unrun(self, meta: dict) -> bool:
        """Report whether the items of an answer of meta are items that the
        stopping pool cancelled, none of whose attempts ended in a death."""
        return (self._stopping and meta.get("state") == "cancelled"
                and all(a.get("cause") in _NOT_DEATHS for a in meta.get("attempts") or ()))

    def _settle_range(self, job, positions, index, span, values, fresh, start, end, last):
        """Settle the span items from index on, done at their first attempt
        with values; fresh, when not None, are the only ones not settled
        yet. last is their attempt's record, or None for values that came
        straight from a worker: their record comes with the binary's
        answer (_settle_items)."""
        ps = positions[index:index + span]
        if fresh is not None:
            keep = set(fresh)
            pairs = [(positions[k], values[k - index]) for k in range(index, index + span) if k in keep]
            ps, values = [p for p, _ in pairs], [v for _, v in pairs]
            if not ps:
                return
        job.observe(start, end, len(ps))
        if isinstance(ps, list) and ps[-1] - ps[0] == len(ps) - 1:
            ps = range(ps[0], ps[-1] + 1)
        job.settle_many(ps, values)
        with self._lock:
            if last is not None:
                self._stats.append((job.id, ps, start, end, last.get("pid", 0), last.get("peak_rss", 0)))
            if span >= PER_ITEM_SPAN and end > start:
                self._note_time_per_item(job.fn_bytes, (end - start) / span)
            self._outstanding -= len(values)
            if self._outstanding == 0:
                self._cond.notify_all()

    def _note_time_per_item(self, fn_bytes: bytes, per: float):
        """Fold per, the seconds per item of a range of the function pickled
        as fn_bytes (from the binary's clock: its run and its answer's way
        back), into its recent time per item. Called with _lock held."""
        key = _function_key(fn_bytes)
        known = self._per_item.pop(key, None)
        self._per_item[key] = per if known is None else (known + per) / 2
        if len(self._per_item) > PER_ITEM_FUNCTIONS:
            del self._per_item[next(iter(self._per_item))]  # the least recently seen

    def time_per_item(self, fn_bytes: bytes) -> float:
        """The recent seconds per item of the function pickled as fn_bytes,
        or 0 when none of its ranges has been answered lately."""
        with self._lock:
            return self._per_item.get(_function_key(fn_bytes), 0.0)

    def _on_result(self, job, pos, item, meta: dict, output, ticket=None):
        state = meta.get("state")
        attempts = meta.get("attempts") or ()
        last = attempts[-1] if attempts else None
        if len(attempts) > 1 or (last is not None and last.get("cause") not in _NOT_DEATHS):
            if any(a.get("cause") not in _NOT_DEATHS for a in attempts):
                with self._lock:
                    self._killed.append((job.fn, job.mode, item))
        if state == "done":
            try:
                tag, value = _oob.decode(output, ticket)
            except Exception as e:
                # A result this process cannot unpickle (its class is not
                # importable here, say) fails the item, not the pool.
                exc = _errors().RemoteError("cannot unpickle the result: %r" % (e,), cause="task-error",
                                            attempts=1, task_args=item, function=job.fn)
                exc.__cause__ = e
                self._settle(job, pos, False, exc)
                return
            if last is not None:
                start, end = last.get("start", 0.0), last.get("end", 0.0)
                job.observe(start, end, 1)
                if tag == OK:
                    # stats() lists the tasks that succeeded: one that
                    # raised is among failed_tasks() instead.
                    with self._lock:
                        self._stats.append((job.id, (pos,), start, end, last.get("pid", 0), last.get("peak_rss", 0)))
            if tag == OK:
                self._settle(job, pos, True, value)
                return
            exc = _rebuild_exception(value, job, item)
            if isinstance(exc, _limits().WaitTimeout):
                with self._lock:
                    self._failed.append((job.fn, item, "wait-timeout", 0))
            else:
                with self._lock:
                    self._failed.append((job.fn, item, "task-error", _charged(attempts) or 1))
            self._settle(job, pos, False, exc)
            return
        cause = (last or {}).get("cause", "") or "cancelled"
        if state == "cancelled" or cause == "cancelled" or self._stopping:
            if self._stopping:
                self._cancel(job, (pos,), (item,), None)
            else:
                # The pool aborted by itself; the end frame will say why.
                self._aborted.append((job, pos, item))
            return
        history = [_attempt(a, a.get("number") or i + 1) for i, a in enumerate(attempts)]
        if cause == "task-error":
            # An exception the pool retried, with no retry left: the payload
            # is its text, NUL and the worker's record of it.
            data = bytes(output)
            k = data.find(ERROR_RECORD)
            if k >= 0:
                try:
                    exc = _rebuild_exception(pickle.loads(data[k + 1:]), job, item)
                except Exception:
                    exc = None
                if exc is not None:
                    with self._lock:
                        self._failed.append((job.fn, item, "task-error", _charged(attempts)))
                    self._settle(job, pos, False, exc)
                    return
            msg = (last or {}).get("message", "")
            self._fail(job, pos, item, _errors().RemoteError, "task-error", "the worker failed the task: " + msg,
                       history)
            return
        # The worker died, and the pool's policy is spent (or it was poison);
        # or its output was lost, which is no death of the pool's policy.
        if self.policy == "abort" and cause not in _NOT_DEATHS:
            # Stop first, so that no task is accepted after the caller saw
            # this failure.
            self.abort(_errors().WorkerDied("%s died (%s)" % (_call_repr(job, item), cause), cause=cause))
        self._fail(job, pos, item, _errors().death(cause), cause,
                   _death_message(job, item, cause, _charged(attempts), last, state), history, state)

    def _fail_waited(self, job, positions, items):
        """Fail items that could not start within their wait_timeout."""
        wait = self.option(job, "wait_timeout", self.wait_timeout)
        for pos, item in zip(positions, items):
            exc = _limits().WaitTimeout("the task could not start within its wait_timeout of %gs" % wait)
            with self._lock:
                self._failed.append((job.fn, item, "wait-timeout", 0))
            self._settle(job, pos, False, exc)

    def _fail(self, job, pos, item, cls, cause, message, history, state="failed"):
        last = history[-1] if history else None
        n = max((a.number for a in history), default=0)
        fn, _, shown = task_view(job, item)
        exc = cls(message, cause=cause, attempts=n, peak_rss=last.peak_rss if last else 0,
                  task_args=shown, function=fn, history=history, state=state)
        with self._lock:
            self._failed.append((fn, shown, cause, n))
        self._settle(job, pos, False, exc)

    def _settle(self, job, pos, ok, value):
        job.settle(pos, ok, value)
        with self._lock:
            self._outstanding -= 1
            if self._outstanding == 0:
                self._cond.notify_all()

    def _cancel(self, job, positions, items, reason: BaseException | None):
        """Fail the items at positions (and of arguments items) of job as
        cancelled, all at once: terminate() cancels every item of a map
        that has not run, and settling them one by one took 7 s for a
        million, while the program waited after its Ctrl-C. Not at the
        program's exit (see _at_exit): the items stay as they are, their
        count of outstanding too, and the binary's end says it is over."""
        if self.at_exit:
            return
        errors = _errors()
        if reason is not None and isinstance(reason, errors.BrokenPool):
            # The pool broke (its workers cannot start, or the binary
            # exited): the tasks fail with why.
            excs = [reason] * len(positions)
        else:
            if reason is None and self._abort_reason is not None:
                # on_worker_death="abort" stopped the pool: say whose death
                # (the tasks of a call made just before it otherwise failed
                # with "the pool stopped", as if terminate() had been called).
                reason = self._abort_reason
                text = "the task was cancelled: the pool aborted: %s" % reason
            else:
                text = "the task was cancelled: the pool %s" % ("stopped" if reason is None else "broke: %s" % reason)
            cancelled, fn = errors.TaskCancelled, job.fn
            # The collector, which the new exceptions would set off again
            # and again, each time over all of them, is held off while
            # they are made (a million took 2.6 s with it, 1 s without).
            collecting = len(items) > 1000 and gc.isenabled()
            if collecting:
                gc.disable()
            try:
                excs = [cancelled(text, cause="cancelled", task_args=item, function=fn, state="cancelled")
                        for item in items]
            finally:
                if collecting:
                    gc.enable()
            if reason is not None:
                for exc in excs:
                    exc.__cause__ = reason
        if not excs:
            return
        job.fail_many(positions, excs)
        with self._lock:
            self._outstanding -= len(excs)
            if self._outstanding == 0:
                self._cond.notify_all()

    # ---- lifecycle ---------------------------------------------------------

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Wait until every submitted item is settled, and every imap's
        input read (as far as its reader goes: see close)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        if self._outstanding > 0 or self._feeders > 0:
            self.forbid_wait()
        with self._lock:
            while self._outstanding > 0 or self._feeders > 0:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return False
                self._cond.wait(remaining)
        return True

    def wait_submitted(self):
        """Wait until every item submitted is settled, or the binary has
        ended. Unlike wait_idle, the imaps' inputs are not read on (see
        _at_exit)."""
        with self._lock:
            while self._outstanding > 0 and not self._ended.is_set():
                self._cond.wait()

    def cancel_pending(self):
        """Accept no new chunks, and cancel those not sent yet, as
        Executor.shutdown(cancel_futures=True) does: their pending futures
        are cancelled (Future.cancel), other items fail with TaskCancelled.
        Items sent already go on (the pool may still run them again after
        a worker death: their futures are running)."""
        with self._lock:
            self._draining = True
            # The windowed chunks that the ahead bound lets the writer send
            # now count as started, as those in ProcessPoolExecutor's call
            # queue do: they are sent and run. Otherwise whether any future
            # survives would depend on whether the writer thread ran yet.
            room = max(self._ahead - self._ahead_used, 0) if self._ahead else 0
            keep, unsent = [], []
            for c in self._queue[self._qhead:]:
                if c is None:
                    continue
                if c.job.windowed and room > 0:
                    keep.append(c)
                    room -= 1
                else:
                    unsent.append(c)
            self._queue = keep
            self._qhead = 0
        for c in unsent:
            if c.job.cancel_unsent():
                with self._lock:
                    self._outstanding -= len(c.items)
                    self._cond.notify_all()
            else:
                self._cancel(c.job, c.positions, c.items, None)

    def forked(self) -> bool:
        """Report whether this is a copy, made by fork, in a child of the
        process that owns the pool: a copy has none of the pool's threads,
        and its binary is the parent's."""
        return os.getpid() != self._owner_pid

    def close(self):
        """Finish the queued work, then stop the binary and its workers.
        A forked copy does nothing (see forked).

        The work includes the rest of the input of every imap and
        Executor.map whose iterator is still held: as multiprocessing's
        join() and ProcessPoolExecutor's shutdown() do, all of it is run,
        and its results wait in the iterator. Its reader stops waiting for
        the consumer (who may read only after this returns) and reads the
        input to its end. Without this, the pattern `it = pool.imap(...);
        pool.close(); pool.join(); list(it)` lost all but the first few
        results, without an error."""
        if self.forked():
            return
        with self._lock:
            self._read_all = True
        self.wait_idle()
        with self._lock:
            self._stopping = True
        self._send_control(K_CLOSE)
        self._finish(None)

    def close_in_background(self):
        """Run close in a thread of its own, which the program's exit waits
        for (_at_exit), as Executor.shutdown(wait=False) wants.

        Not a non-daemon thread, which the interpreter would join before
        the exit handlers run: a Ctrl-C there is printed and ignored
        ("Exception ignored in: <module 'threading'>"), and the program
        went on waiting for every future submitted. A Ctrl-C while the
        exit handler waits stops the pool at once."""
        t = threading.Thread(target=self.close, name="safepool-shutdown", daemon=True)
        t.start()
        self.closer = t

    def abort(self, reason: BaseException | None = None):
        """Stop at once: cancel queued items, kill running ones."""
        with self._lock:
            if reason is not None and self._abort_reason is None:
                self._abort_reason = reason
            if self._stopping and self._control and self._control[-1] == K_ABORT:
                return
            self._stopping = True
            queued = [c for c in self._queue[self._qhead:] if c is not None]
            self._queue, self._qhead = [], 0
        self._send_control(K_ABORT)
        for c in queued:
            self._cancel(c.job, c.positions, c.items, None)

    def terminate(self, wait: float | None = None):
        """Abort and wait for the binary, which kills its workers, to exit.
        A forked copy does nothing (see forked)."""
        if self.forked():
            return
        if self._ended.is_set() and self._proc.poll() is not None:
            self._release()
            return
        self.abort()
        if threading.current_thread() is self._reader:
            # A result callback stops the pool (an error_callback that
            # terminates it at the first failure). The binary's end can
            # only be seen by this thread once the callback returns: waiting
            # here held every result for 10 s and then killed the binary.
            # Another thread waits, as multiprocessing's terminate does not
            # join its result thread from that thread.
            threading.Thread(target=self._finish, args=(wait if wait is not None else 10.0,),
                             name="safepool-terminate").start()
            return
        self._finish(wait if wait is not None else 10.0)

    def _finish(self, wait: float | None):
        if not self._ended.wait(wait):
            # The binary does not answer: kill it (its workers die with
            # it). Its pipe then breaks, which frees a writer blocked on it;
            # closing our end below would wait for that writer.
            with self._lock:
                self._binary_killed = self._stopping
            self._proc.kill()
        # Closing our end makes the bridge kill whatever is left.
        self._release()
        if not self._proc.wait(wait):
            self._proc.kill()
            self._proc.wait()

    def _release(self):
        with self._lock:
            out, self._out = self._out, None
            self._cond.notify_all()
        if out is None:
            # Released already: terminate() in a result callback and join()
            # (or two terminates) finish from two threads, and a descriptor
            # closed twice may by then be another file's.
            return
        try:
            out.close()
        except OSError:
            pass
        _live_cores.discard(self)
        self._launch.cleanup()
        self._launch.close_clock()

    # ---- reports -----------------------------------------------------------

    def failed_tasks(self):
        with self._lock:
            return list(self._failed)

    def killed_tasks(self):
        """(fn, mode, item) of each item whose worker died at least once,
        in the order of their first death, whether or not a retry then
        succeeded. It first waits for the binary's answers of the items
        settled with values that came straight from their workers: a worker
        that died after it sent them, and before it told the binary, had
        the death charged to one of them."""
        with self._lock:
            while self._early > 0 and not self._ended.is_set():
                self._cond.wait()
            return list(self._killed)

    def stats(self):
        with self._lock:
            items = list(self._stats)
        return [{"job": job_id, "index": pos, "start": start, "end": end, "pid": pid, "peak_rss": peak}
                for job_id, ps, start, end, pid, peak in items for pos in ps]


def _charged(attempts) -> int:
    """How many of the attempts were charged: preempted ones share their
    number with the next."""
    return max((a.get("number", 0) for a in attempts), default=0)


def _attempt(a: dict | None, number: int):
    a = a or {}
    return _errors().Attempt(number, a.get("pid", 0), a.get("start", 0.0), a.get("end", 0.0), a.get("cause", ""),
                   a.get("exit_code", -1), a.get("signal", ""), a.get("peak_rss", 0), a.get("message", ""))


def _function_key(fn_bytes: bytes):
    """What _per_item knows a function by: its pickle, or for a big one (a
    lambda or a closure pickled with an array it refers to) its length and
    hash, so that the recent functions' times do not keep their pickles. A
    collision would only size some batches by another function's time."""
    return fn_bytes if len(fn_bytes) <= 4096 else (len(fn_bytes), hash(fn_bytes))


def task_view(job, item):
    """The function, mode and item by which reports show item of job: for
    the joblib backend's items sent by value, call_pickled(pickled, args,
    kwargs), the function they call and its arguments (job.shown), as
    APPLY's item; else job's own."""
    shown = getattr(job, "shown", None)  # a job of _jobs, or one made alike
    if shown and job.mode == STAR and len(item) == 3 and item[0] in shown:
        return shown[item[0]], APPLY, (item[1], item[2])
    return job.fn, job.mode, item


def _call_repr(job, item) -> str:
    """Show a task as a call, such as work(7), shortened."""
    fn, mode, item = task_view(job, item)
    name = getattr(fn, "__qualname__", None) or repr(fn)
    try:
        if mode == MAP:
            args = repr(item)
        elif mode == STAR:
            args = ", ".join(repr(a) for a in item)
        else:
            a, kw = item
            args = ", ".join([repr(x) for x in a] + ["%s=%r" % kv for kv in kw.items()])
    except Exception:
        args = "..."
    if len(args) > 60:
        args = args[:57] + "..."
    return "%s(%s)" % (name, args)


def _death_message(job, item, cause, n, last, state="failed") -> str:
    what = ("the output of %s was lost" if cause in _NOT_DEATHS else "the worker died running %s") % (
        _call_repr(job, item),)
    msg = "%s (%s%s) after %d attempt%s" % (
        what, cause, ", poison" if state == "poison" else "", n, "" if n == 1 else "s")
    if last and last.get("peak_rss"):
        msg += ", peak memory " + format_size(last["peak_rss"])
    if last and last.get("message"):
        msg += ": " + last["message"].strip().splitlines()[-1]
    return msg


def _rebuild_exception(record, job, item) -> BaseException:
    """The exception a task raised, from the worker's record of it: (pickled
    exception or None, traceback text, text), and, when it is the error of
    sending the item's result back, the result's repr."""
    data, tb, text = record[:3]
    exc = None
    if data is not None:
        try:
            exc = pickle.loads(data)
        except Exception:
            exc = None
    if not isinstance(exc, BaseException):
        exc = _errors().RemoteError(text, cause="task-error", attempts=1, task_args=item, function=job.fn)
    exc.__cause__ = _errors().remote_traceback(tb)
    if len(record) > 3 and job.encoding_errors:
        # As multiprocessing.Pool reports a result it cannot send.
        from multiprocessing.pool import MaybeEncodingError
        wrapped = MaybeEncodingError(exc, record[3])
        # record[3] is the result's repr already, which is what
        # multiprocessing's value holds: not the repr of that repr.
        wrapped.value = record[3]
        wrapped.args = (wrapped.exc, wrapped.value)
        wrapped.__cause__ = exc
        return wrapped
    return exc


def _caller_level() -> int:
    """The stacklevel of warnings.warn, called from this module, that names
    the first frame outside the safepool package: the user's line that made
    the pool."""
    level, frame = 1, sys._getframe(1)
    package = __name__.rpartition(".")[0]
    while frame is not None and (frame.f_globals.get("__name__") or "").partition(".")[0] == package:
        level, frame = level + 1, frame.f_back
    return level
