"""The worker process of a safepool.Pool.

The ``safepool`` binary starts it as ``python3 -c "from safepool.worker
import main; main()"`` and speaks the framed worker protocol of
docs/protocol.md to it on fds 3 and 4, version 4: a task is a batch of
items (calls of the user's function). Before it calls the function on an
item, the worker marks the item in the running-item page that the binary
gave it (fd 5), a write to memory: when the worker dies, the binary reads
there which item killed it. It sends the values of a run of
items as one pickled list in one items frame (at the end of the batch, or
after HOLD seconds); an exception is answered alone, with an item frame, or
an item-error frame for an exception that the pool is to retry. Without a
page it speaks version 2: a start frame before each item.

The worker is spawned fresh, never forked. Before it answers ``ready`` it
takes the client's ``sys.path`` and ``sys.argv``, imports the client's
``__main__`` script under the name ``__mp_main__`` (so that functions
defined there can be unpickled, as with multiprocessing's spawn), and runs
the pool's initializer.

A pool's start waits for its workers' start, so this module imports only
what the interpreter has already loaded, plus struct and the pickle
accelerator: not json, runpy or the pickle module (which imports re), unless
the parent's main module needs runpy.
"""
import os
import sys
import time
from time import monotonic as _monotonic, time as _time

try:
    from _pickle import dumps as _dumps, loads
except ImportError:  # an interpreter without the C accelerator
    from pickle import dumps as _dumps, loads

from safepool._protocol import (APPLY, BATCH, BATCH_RANGE, ERROR, ERROR_RECORD, FRAMED, HEADER,  # noqa: F401
                                INDEX, ITEM, ITEM_ERROR, ITEMS, MAP, OK, PAGE_FD, PAGE_NONE, PAGE_PAUSED,
                                PAGE_POS, PAGE_SIZE, PAGE_WORD, RAISED, RANGE, READY, READY_PAYLOAD, READY_PAYLOAD_V2,
                                RESULT, STAR, START, TASK, CLOCK_ENV, CLOCK_SIZE, clock_now, page_word)
from safepool import _oob  # big buffers out of band
from safepool import _direct  # a range's values straight to the client


def dumps(obj) -> bytes:
    """pickle.dumps with the highest protocol."""
    return _dumps(obj, -1)


def main_attr(qualname: str):
    """Return what qualname names in this process's __main__ module: how a
    class or function of the client's __main__, sent by value to a worker
    that could not import it, comes back to the client by name."""
    obj = sys.modules["__main__"]
    for part in qualname.split("."):
        obj = getattr(obj, part)
    return obj


def rebuild_exception(cls, args, state):
    """The exception of class cls with args and state (its __dict__, or
    None), made without calling cls's __init__: how an exception whose
    __init__ takes other arguments than its args, which pickle cannot make
    again, reaches the client as itself."""
    e = cls.__new__(cls, *args)
    e.args = args
    if state:
        e.__dict__.update(state)
    return e


def dumps_main_by_name(obj) -> bytes:
    """Pickle obj, sending the classes and functions of __main__ by name
    without looking them up here. The worker's __main__ may not have them
    (they came by value, with cloudpickle, from a client whose main module
    workers cannot import); the client's has. What is local to a function
    has no such name, and fails to pickle here. Exceptions are sent to be
    made again without their __init__ (rebuild_exception)."""
    import io
    import pickle

    function = type(main_attr)

    class Pickler(pickle.Pickler):
        def reducer_override(self, o):
            if isinstance(o, (type, function)) and getattr(o, "__module__", None) in ("__main__", "__mp_main__"):
                if "<locals>" in o.__qualname__:
                    return NotImplemented  # pickle says "Can't pickle local object"
                return main_attr, (o.__qualname__,)
            if isinstance(o, BaseException):
                return rebuild_exception, (type(o), o.args, getattr(o, "__dict__", None) or None)
            return NotImplemented

    buf = io.BytesIO()
    Pickler(buf, pickle.HIGHEST_PROTOCOL).dump(obj)
    return buf.getvalue()


def call_pickled(fn_bytes: bytes, args, kwargs):
    """Call the pickled function fn_bytes: how a batch whose items call
    different functions, or a function sent by value (a joblib batch),
    runs, each pickled as safepool pickles a task's function. The last one
    is kept: a batch's items share one."""
    last = _last_pickled
    if last[0] is not fn_bytes and last[0] != fn_bytes:
        last[1] = None
        last[1], last[0] = loads(fn_bytes), fn_bytes
    return last[1](*args, **kwargs)


_last_pickled = [None, None]  # call_pickled's last pickle and function


def unpack_strings(packed: str) -> list:
    """Decode a list of strings packed by safepool._launch.pack_strings:
    each is its length, a colon and itself."""
    out = []
    i = 0
    while i < len(packed):
        colon = packed.index(":", i)
        n = int(packed[i:colon])
        out.append(packed[colon + 1:colon + 1 + n])
        i = colon + 1 + n
    return out


def _run_main_path(path):
    """Run the parent's main script as module __mp_main__, and make it
    __main__ too, as runpy.run_path(path, run_name="__mp_main__") would,
    without importing runpy: a plain .py file is compiled and run here."""
    if not path.endswith(".py") or not os.path.isfile(path):
        # A directory or zip file with a __main__.py, or compiled code.
        import runpy
        content = runpy.run_path(path, run_name="__mp_main__")
        main = type(sys)("__mp_main__")
        main.__dict__.update(content)
        sys.modules["__main__"] = sys.modules["__mp_main__"] = main
        return
    with open(path, "rb") as f:
        source = f.read()
    code = compile(source, path, "exec", dont_inherit=True)
    main = type(sys)("__mp_main__")
    main.__dict__.update(__file__=path, __cached__=None, __loader__=None, __package__="", __spec__=None)
    # Both names from the start, as multiprocessing's spawn has them when it
    # runs the script: importing multiprocessing (or joblib, which does) for
    # the first time sets sys.modules["__mp_main__"] to sys.modules["__main__"],
    # which would otherwise be this process's -c module, and the script's
    # functions and classes could not be pickled here by name (a task that
    # pickles a dataclass of the script, or starts a multiprocessing pool of
    # its functions).
    worker_main = sys.modules.get("__main__")
    sys.modules["__main__"] = sys.modules["__mp_main__"] = main
    try:
        exec(code, main.__dict__)
    except BaseException:
        del sys.modules["__mp_main__"]
        if worker_main is not None:
            sys.modules["__main__"] = worker_main
        raise
    # The script may have set either name meanwhile.
    sys.modules["__main__"] = sys.modules["__mp_main__"] = main


# True while the client's main script runs here as __mp_main__: a pool made
# then is a script's own, made outside `if __name__ == "__main__":`, and
# would start workers that run the script again (safepool._launch refuses).
_IMPORTING_MAIN = False


def _fix_main():
    """Import the client's main module as __mp_main__ and alias __main__."""
    global _IMPORTING_MAIN
    spec = os.environ.get("SAFEPOOL_PY_MAIN")
    if not spec:
        return
    _IMPORTING_MAIN = True
    try:
        _import_main(spec)
    finally:
        _IMPORTING_MAIN = False


def _import_main(spec):
    """Import the main module that spec (SAFEPOOL_PY_MAIN) names."""
    kind, _, value = spec.partition(":")
    if kind == "path":
        if not os.path.isfile(value):
            # The client sends only real scripts; anything else is not the
            # program, whatever a file of that name holds.
            sys.exit("safepool.worker: the main script %r is not a file" % value)
        _run_main_path(value)
    elif kind == "name":
        import runpy
        content = runpy.run_module(value, run_name="__mp_main__", alter_sys=True)
        main = type(sys)("__mp_main__")
        main.__dict__.update(content)
        sys.modules["__main__"] = sys.modules["__mp_main__"] = main


def _packed_env(name):
    """The packed strings of the environment variable name, or of the file
    that name + "_FILE" names when they were too long for the environment
    (safepool._launch.ENV_STRING_MAX), or None."""
    value = os.environ.get(name)
    if value is None:
        path = os.environ.get(name + "_FILE")
        if path:
            with open(path, "rb") as f:
                value = os.fsdecode(f.read())
    return value


def _setup():
    pythonpath = os.environ.pop("SAFEPOOL_PY_PYTHONPATH", None)
    if pythonpath is not None:
        # The client's own: the directory of safepool that the client put
        # in front for this worker's start is not for the programs that
        # tasks start (another Python, a tool of another environment,
        # which would import this environment's packages first).
        pythonpath = unpack_strings(pythonpath)
        if pythonpath:
            os.environ["PYTHONPATH"] = pythonpath[0]
        else:
            os.environ.pop("PYTHONPATH", None)
    paths = _packed_env("SAFEPOOL_PY_SYSPATH")
    if paths:
        # The client's sys.path, in its order, as multiprocessing's spawn
        # sets it; then this interpreter's own entries that it lacks, but
        # not the working directory ("") that `python3 -c` put first: a
        # module of the directory the program was started from (a data
        # directory's calendar.py, say) must not hide the standard
        # library's from the tasks when the client does not see it.
        client = unpack_strings(paths)
        sys.path[:] = client + [p for p in sys.path if p and p not in client]
    argv = _packed_env("SAFEPOOL_PY_ARGV")
    if argv is not None:
        sys.argv = unpack_strings(argv)
    _fix_main()
    authkey = os.environ.pop("SAFEPOOL_PY_AUTHKEY", None)
    if authkey:
        # The client's multiprocessing key, before any task or initializer
        # can unpickle a Manager's proxy, which connects with it.
        import multiprocessing.process
        multiprocessing.process.current_process().authkey = bytes.fromhex(authkey)
    init = os.environ.get("SAFEPOOL_PY_INIT")
    if init:
        with open(init, "rb") as f:
            initializer, initargs = loads(f.read())
        initializer(*initargs)


def _exc_record(e):
    import traceback
    tb = "".join(traceback.format_exception(type(e), e, e.__traceback__))
    try:
        data = dumps(e)
        loads(data)  # some exceptions pickle but do not unpickle: their __init__ takes other arguments
    except Exception:
        try:
            # Made again from its class, args and attributes, without its
            # __init__. Its class may be the client's __main__'s, sent by
            # value: the client unpickles it (or reports it if it cannot).
            data = dumps_main_by_name(e)
        except Exception:
            data = None
    try:
        text = "%s: %s" % (type(e).__name__, e)
    except Exception:  # its __str__ fails; the traceback's text says so too
        text = "%s: <exception str() failed>" % type(e).__name__
    return (data, tb, text)


def _short_repr(v, limit=1000) -> str:
    try:
        r = repr(v)
    except Exception as e:
        r = "<unrepresentable %s: %s>" % (type(v).__name__, e)
    return r if len(r) <= limit else r[:limit - 3] + "..."


class _SoftLimit:
    """A task's soft time limit: SIGALRM, from an ITIMER_REAL timer armed
    for each item, raises SoftTimeLimitExceeded in this (the main) thread.

    The time the pool kept the worker stopped (Ctrl-Z of the program,
    Pool.Pause), which the binary adds up in the running-item page, does
    not count: a timer that fires after a pause is armed again for the
    time paused since the item started."""

    def __init__(self, paused):
        """paused is the page's time paused as a one-word memoryview, or
        None without a page."""
        import _signal
        from safepool._limits import SoftTimeLimitExceeded
        self._signal = _signal
        self._exc = SoftTimeLimitExceeded
        self._paused = paused
        self.armed = 0.0  # the limit of the running item; 0: none
        self._start = 0.0  # when it was armed (monotonic seconds)
        self._base = 0  # the time paused then, in nanoseconds
        _signal.signal(_signal.SIGALRM, self._fire)

    def _fire(self, signum, frame):
        limit = self.armed
        if not limit:
            return
        if self._paused is not None:
            # The binary writes the time paused before it continues the
            # worker, so it is whole by the time this runs.
            left = self._start + limit + (self._paused[0] - self._base) / 1e9 - _monotonic()
            if left > 0.001:
                self._signal.setitimer(self._signal.ITIMER_REAL, left)
                return
        self.armed = 0.0
        raise self._exc("the task ran longer than its soft time limit of %gs" % limit)

    def arm(self, seconds):
        signal = self._signal
        if signal.getsignal(signal.SIGALRM) != self._fire:
            # An earlier task of this worker took SIGALRM (its own alarm,
            # a library's timeout): that task loses its soft limit, not
            # every later one.
            signal.signal(signal.SIGALRM, self._fire)
        self.armed = seconds
        if self._paused is not None:
            self._base = self._paused[0]
        self._start = _monotonic()
        self._signal.setitimer(self._signal.ITIMER_REAL, seconds)

    def disarm(self):
        self.armed = 0.0
        self._signal.setitimer(self._signal.ITIMER_REAL, 0)


_soft = []  # the worker's _SoftLimit, made on first use
_paused = [None]  # the running-item page's time paused (a one-word view), or None: no page
_clock = [None]  # the pool clock's word (a one-word view), or None: none (_open_clock)


def _open_clock():
    """Map the pool clock that the client names in CLOCK_ENV, which
    wait_timeout counts on (docs/protocol.md). Without it (the client made
    none, or this process cannot open the client's file), the clock read is
    CLOCK_MONOTONIC, as the binary's clock of a pool never paused."""
    path = os.environ.get(CLOCK_ENV)
    if not path:
        return
    try:
        import mmap
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            _clock[0] = memoryview(mmap.mmap(fd, CLOCK_SIZE, prot=mmap.PROT_READ)).cast("Q")
        finally:
            os.close(fd)
    except (OSError, ValueError):
        pass


def _wait_record(limit):
    from safepool._limits import WaitTimeout
    try:
        raise WaitTimeout("the task could not start within its wait_timeout of %gs" % limit)
    except WaitTimeout as e:
        return _exc_record(e)


def _function(fn_bytes, fns):
    """The function pickled as fn_bytes, unpickled once per worker while
    it is among the last 33 functions, of FUNCTIONS_BYTES in all. A big
    function comes as a read-only memoryview of a memory file that the
    client shares (_oob.function_ref): known by its mapping, which every
    batch that carries it gets, rather than by a hash of its bytes."""
    key = fn_bytes.obj if type(fn_bytes) is memoryview else fn_bytes
    fn = fns.get(key)
    if fn is None:
        try:
            fn = loads(fn_bytes)
        except AttributeError as e:
            main = sys.modules.get("__mp_main__")
            if main is None or "'__mp_main__'" not in str(e):
                raise
            # The client's main script has it, this import of the script
            # does not: it is defined under the script's main guard.
            raise AttributeError(
                "%s: workers import the main script %s without running its `if __name__ == "
                "\"__main__\":` block, so a function defined in that block is not found; define it "
                "at the top level of the script, or in a module" % (e, getattr(main, "__file__", ""))) from None
        if len(fns) > 32 or _fns_bytes[0] + len(fn_bytes) > FUNCTIONS_BYTES:
            fns.clear()
            _fns_bytes[0] = 0
        fns[key] = fn
        _fns_bytes[0] += len(fn_bytes)
    return fn


def _run_item(payload, fns):
    """Run one task; return the kind and payload of its answer."""
    mode, fn_bytes, item, *extra = _oob.worker_decode(payload)
    return _call(mode, _function(fn_bytes, fns), item, extra[0] if extra else None)



def _batch_head(payload):
    """The item indexes of a batch frame, and where its payload starts:
    a range for the compact form (BATCH_RANGE in its count, then the first
    index), else the list of indexes."""
    (m,) = INDEX.unpack_from(payload)
    if m & BATCH_RANGE:
        (first,) = INDEX.unpack_from(payload, 4)
        return range(first, first + (m & ~BATCH_RANGE)), 8
    indexes = INDEX_ARRAY(m).unpack_from(payload, 4) if m != 1 else INDEX.unpack_from(payload, 4)
    return indexes, 4 + 4 * m


def _unrunnable(task_id, indexes, e, write, flush):
    """Answer every item of a batch that cannot run (its function cannot be
    unpickled, say) with why."""
    pack, pack_index = HEADER.pack, INDEX.pack
    out = dumps((RAISED, _exc_record(e)))
    for i in indexes:
        write(pack(4, START, task_id) + pack_index(i) + pack(4 + len(out), ITEM, task_id) + pack_index(i))
        write(out)
    flush()


# How long a worker that marks its items in the page may hold answers
# before it sends them: the work a death loses (its items run again,
# uncharged), and how late an item's result may reach the client. An item
# that takes longer is sent alone, as soon as it is done; quicker ones go
# in ranges of this much work, where a frame's cost is lost in the noise.
# The exceptions of a task that end its worker (see _leave) rather than
# being its answer. Any other exception, a BaseException too (asyncio's
# CancelledError, GeneratorExit, a class of the caller's own), is the
# task's answer, as in ProcessPoolExecutor.
LEAVING = (SystemExit, KeyboardInterrupt)

HOLD = 0.002


def _run_batch_page(task_id, payload, write, flush, page, words):
    """Run the items of a batch frame (framed/4): mark each item in the
    running-item page before it runs (a write to memory, which the binary
    reads when the worker dies), and send the values of a range of items in
    one items frame, one pickled list: at the end of the batch, at most
    HOLD seconds after the range began, and before an item that raised.
    The binary charges a death to the item in the page; items run but whose
    answers were not sent run again, uncharged. page is the page as uint32
    words, words as uint64 words (the batch's id, and the mark and bias)."""
    pack, pack_index = HEADER.pack, INDEX.pack
    indexes, at = _batch_head(payload)
    words[PAGE_WORD] = page_word(PAGE_NONE, 0)
    words[0] = task_id
    words[PAGE_WORD] = page_word(0, 0)
    write(pack(4, START, task_id) + pack_index(indexes[0]))
    flush()
    try:
        mode, fn_bytes, items, *extra = _oob.worker_decode(memoryview(payload)[at:])
        _oob.worker_slots(len(items))
        fn = _function(fn_bytes, _fns)
        limits = extra[0] if extra else None
    except Exception as e:
        _unrunnable(task_id, indexes, e, write, flush)
        return
    n = len(indexes)
    base = indexes[0]
    if indexes[-1] - base != n - 1:
        # Not a range (the engine sends none such): each item answered
        # alone, with its start frame.
        _run_batch(task_id, payload, write, flush)
        return
    fast = mode == MAP and not limits
    now = _monotonic
    since = [_time()]  # when the range of the values held began (Unix time)
    values = []
    first = 0  # the position of the first value held
    pos = 0
    send_at = now() + HOLD

    def send_values(upto):
        # The values of positions first..upto-1 in one frame, after what
        # the items printed (a frame bigger than the pipe's buffer is
        # written at once, before the flush).
        _flush_output()
        count = upto - first
        if count == 1:
            try:
                out = _oob.worker_encode((OK, values[0]), indexes[first])
            except Exception:
                out = _answer(values[0])
            write(pack(4 + len(out), ITEM, task_id) + pack_index(indexes[first]))
            write(out)
        elif count:
            try:
                out = _oob.worker_encode((OK, values), indexes[first], count)
            except Exception:
                # Some value cannot be sent: each goes alone, and says so.
                for k, v in enumerate(values):
                    try:
                        o = _oob.worker_encode((OK, v), indexes[first + k])
                    except Exception:
                        o = _answer(v)
                    write(pack(4 + len(o), ITEM, task_id) + pack_index(indexes[first + k]))
                    write(o)
                return
            reply = _oob._reply[0]
            if fast and reply is not None and out[0] == 0x80:
                # The values go to the client first, then the binary is
                # told the range is answered (SENT): a death between the
                # two leaves the values delivered and the items run again,
                # and the client keeps the first values (_direct).
                t = _time()
                if _direct.send(out, reply[3], indexes[first], count, since[0], t):
                    write(pack(9, ITEMS, task_id) + RANGE.pack(indexes[first], count) + _direct.SENT)
                    since[0] = t
                    values.clear()
                    return
            write(pack(8 + len(out), ITEMS, task_id) + RANGE.pack(indexes[first], count))
            write(out)
        values.clear()

    if fast:
        # The common case, a map's items with no limits, runs in blocks
        # with nothing but the mark and the call for each item; the clock
        # is read between blocks. A block doubles while blocks are quick
        # (up to 1024 items), and is 1 item long after a slow one.
        append = values.append
        mark = PAGE_POS
        last, step = now(), 1
        # A range of numbers that fit the page's mark marks each item by
        # its number, with the first's as the bias (the page then names
        # position number - bias): the loop needs no counter of its own.
        bias = items[base] if type(items) is range and items.step == 1 else -1
        if 0 <= bias and items[base + n - 1] < PAGE_NONE:
            words[PAGE_WORD] = page_word(bias, bias)  # still position 0
        else:
            bias = -1
        while pos < n:
            stop = pos + step if pos + step < n else n
            try:
                # A block's items come from a slice of the payload's (a
                # range's slice is a range): no index arithmetic or
                # subscript for each item, only the mark and the call.
                if bias >= 0:
                    for x in items[base + pos:base + stop]:
                        page[mark] = x
                        append(fn(x))
                else:
                    for pos, x in enumerate(items[base + pos:base + stop], pos):
                        page[mark] = pos
                        append(fn(x))
            except BaseException as e:
                if isinstance(e, LEAVING):
                    raise
                if bias >= 0:
                    pos = x - bias
                # The values before the item that raised go first.
                send_values(pos)
                out = dumps((RAISED, _exc_record(e)))
                write(pack(4 + len(out), ITEM, task_id) + pack_index(indexes[pos]))
                write(out)
                flush()
                pos += 1
                first, send_at = pos, now() + HOLD
                last, step = now(), 1
                since[0] = _time()
                continue
            pos = stop
            t = now()
            if t >= send_at:
                send_values(pos)
                flush()
                first, send_at = pos, t + HOLD
            step = step * 2 if step < 1024 and t - last < HOLD / 16 else 1
            last = t
        send_values(n)
        flush()
        return
    for pos in range(n):
        page[PAGE_POS] = pos
        kind, out = _invoke(mode, fn, items[indexes[pos]], limits)
        if kind is None:
            values.append(out)
            if now() < send_at:
                continue
            send_values(pos + 1)
            flush()
            first, send_at = pos + 1, now() + HOLD
            continue
        # An exception: the values before go first, then its answer.
        send_values(pos)
        write(pack(4 + len(out), ITEM if kind == RESULT else ITEM_ERROR, task_id) + pack_index(indexes[pos]))
        write(out)
        flush()
        first, send_at = pos + 1, now() + HOLD
    send_values(n)
    flush()


def _run_batch(task_id, payload, write, flush):
    """Run the items of a batch frame that its indexes name, in order
    (framed/2, for a worker without a running-item page). Each item's
    answer and the next item's start frame go in one write, flushed before
    the item runs: when the worker dies, the binary knows which item killed
    it, and has the answers of those before."""
    pack, pack_index = HEADER.pack, INDEX.pack
    indexes, at = _batch_head(payload)
    answer = b""
    try:
        mode, fn_bytes, items, *extra = _oob.worker_decode(memoryview(payload)[at:])
        _oob.worker_slots(len(items))
        fn = _function(fn_bytes, _fns)
        limits = extra[0] if extra else None
    except Exception as e:
        # The batch cannot run (its function cannot be unpickled, say):
        # every item says why.
        out = dumps((RAISED, _exc_record(e)))
        for i in indexes:
            write(pack(4, START, task_id) + pack_index(i) + pack(4 + len(out), ITEM, task_id) + pack_index(i))
            write(out)
        flush()
        return
    fast = mode == MAP and not limits
    encode = _oob.worker_encode
    for i in indexes:
        if answer:
            _flush_output()  # what the item printed, before its answer
        write(answer + pack(4, START, task_id) + pack_index(i))
        flush()
        kind = RESULT
        if fast:
            # The common case, without _call's checks: a map's item, with
            # no limits.
            try:
                value = fn(items[i])
            except BaseException as e:
                if isinstance(e, LEAVING):
                    raise
                out = dumps((RAISED, _exc_record(e)))
            else:
                try:
                    out = encode((OK, value), i)
                except Exception:
                    out = _answer(value)
        else:
            try:
                kind, out = _call(mode, fn, items[i], limits, i)
            except Exception as e:
                kind, out = RESULT, dumps((RAISED, _exc_record(e)))
        answer = pack(4 + len(out), ITEM if kind == RESULT else ITEM_ERROR, task_id) + pack_index(i) + out
    _flush_output()
    write(answer)
    flush()


_index_arrays = {}


def INDEX_ARRAY(m):
    """The struct of m item indexes."""
    s = _index_arrays.get(m)
    if s is None:
        import struct
        s = _index_arrays[m] = struct.Struct(">%dI" % m)
    return s


_fns = {}  # the functions of the tasks run so far, by their pickle
# The bytes of the pickles in _fns. A lambda, a closure or a partial is
# pickled with what it refers to (a model, an array of some hundred MiB),
# each of its kind a new function: past FUNCTIONS_BYTES, _fns keeps only
# the last one, or a pool that maps one such function after another would
# keep them all, and their pickles, in every worker.
_fns_bytes = [0]
FUNCTIONS_BYTES = 16 << 20


def _call(mode, fn, item, limits, index=0):
    """Call fn on item, the index-th of its batch, as mode says; return the
    kind and payload of the answer."""
    kind, out = _invoke(mode, fn, item, limits)
    if kind is not None:
        return kind, out
    try:
        return RESULT, _oob.worker_encode((OK, out), index)
    except Exception:
        return RESULT, _answer(out)


def _invoke(mode, fn, item, limits):
    """Call fn on item as mode says; return (None, its value), or the kind
    and payload of the answer of an exception."""
    # The task's limits: "soft" (seconds), "run_by" (a reading of the pool
    # clock) or "start_by" (Unix time, without a pool clock) and "wait"
    # (seconds) for an item that must not start late, and which exceptions
    # the pool retries: "retry" (all of them) and "retry_on" (classes).
    soft = 0.0
    if limits:
        run_by = limits.get("run_by")
        start_by = limits.get("start_by")
        if (run_by and clock_now(_clock[0], time.monotonic_ns) > run_by) or (start_by and time.time() > start_by):
            return RESULT, dumps((RAISED, _wait_record(limits.get("wait", 0.0))))
        soft = limits.get("soft") or 0.0
        if soft and not _soft:
            _soft.append(_SoftLimit(_paused[0]))
    try:
        if soft:
            _soft[0].arm(soft)
        if mode == MAP:
            value = fn(item)
        elif mode == STAR:
            value = fn(*item)
        else:
            value = fn(*item[0], **item[1])
        if soft:
            _soft[0].disarm()
    except BaseException as e:
        if soft:
            _soft[0].disarm()
        if isinstance(e, LEAVING):
            raise
        record = _exc_record(e)
        if limits and (limits.get("retry") or isinstance(e, limits.get("retry_on") or ())):
            # The pool runs it again, and sends this payload back whole when
            # no retry is left.
            return ERROR, record[2].encode("utf-8", "replace").replace(ERROR_RECORD, b" ") + ERROR_RECORD + \
                dumps(record)
        return RESULT, dumps((RAISED, record))
    return None, value


def _answer(value) -> bytes:
    """The answer of an item whose value pickle could not send as it is."""
    try:
        return dumps_main_by_name((OK, value))
    except Exception as e:
        # The result cannot be pickled. The client may report it as
        # multiprocessing does, with the value's repr (MaybeEncodingError).
        return dumps_main_by_name((RAISED, _exc_record(e) + (_short_repr(value),)))


def main():
    if os.environ.get("SAFEPOOL_PROTOCOL") != FRAMED:
        sys.exit("safepool.worker: started without SAFEPOOL_PROTOCOL=%s; "
                 "it is run by the safepool binary, not by hand" % FRAMED)
    try:
        _serve()
    except BaseException as e:
        _leave(e)


def _leave(e):
    """End the worker at once for e, an exception that left the worker's
    loop: a task's (or the initializer's) sys.exit or KeyboardInterrupt, or
    an error of the worker's own. The process ends as the interpreter would
    end it for e (the exit status of sys.exit's code, the message or the
    traceback on stderr, death by SIGINT for KeyboardInterrupt), but now,
    without the interpreter's shutdown.

    Not the interpreter's exit: the result pipe would close as the
    exception unwound this module, while the shutdown (atexit handlers,
    threads a task left running, a busy machine) can take longer than the
    binary waits for a worker whose pipe closed to die, and it then kills
    it for a protocol error, never learning the exit status. Here the pipe
    closes as the process ends, and the exit status names the cause."""
    import signal
    code = 1
    if isinstance(e, SystemExit):
        if e.code is None:
            code = 0
        elif isinstance(e.code, int):
            code = e.code & 0xFF  # what the kernel keeps of it
        else:
            try:
                print(e.code, file=sys.stderr)
            except BaseException:
                pass
    else:
        try:
            sys.excepthook(type(e), e, e.__traceback__)
        except BaseException:
            pass
    # Not the result pipe: every frame is flushed before a task runs, and
    # what is still buffered is part of a frame that e interrupted.
    for f in (sys.stdout, sys.stderr):
        try:
            if f is not None:
                f.flush()
        except BaseException:
            pass
    if isinstance(e, KeyboardInterrupt):
        # As the interpreter does: die by SIGINT, so that the cause is
        # signal:SIGINT as for a worker interrupted from outside.
        try:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, [signal.SIGINT])
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            os.kill(os.getpid(), signal.SIGINT)
        except BaseException:
            pass
        code = 128 + signal.SIGINT
    os._exit(code)


def _flush_output():
    """Write out what tasks printed and Python still buffers: stdout is
    buffered in blocks when it is not a terminal (a script run as `python3
    script.py > log.txt`), and a worker that is killed (by the OOM killer,
    or by SIGTERM when the pool is terminated) loses its buffer."""
    try:
        sys.stdout.flush()
    except Exception:  # None, closed, or a reader gone: as the task's own print would find it
        pass
    try:
        sys.stderr.flush()
    except Exception:
        pass


def _flushing(flush_results):
    """flush_results (the result pipe's flush), preceded by _flush_output:
    each frame goes out after what the items before it printed, so that
    the lines of the tasks whose results were sent are written. (The
    answers also call _flush_output before they are written: a frame
    bigger than the result pipe's buffer goes out as it is written.)"""
    def flush():
        _flush_output()
        flush_results()
    return flush


def _serve():
    """Serve the binary's tasks until it closes the task pipe."""
    tasks = os.fdopen(int(os.environ.get("SAFEPOOL_TASK_FD", "3")), "rb")
    # Not closed by Python, but when the process ends (see the end): a file
    # object that owned it would warn, as an unclosed file, when the
    # interpreter frees it (a ResourceWarning under -X dev, an error under
    # -W error).
    results = open(int(os.environ.get("SAFEPOOL_RESULT_FD", "4")), "wb", closefd=False)
    os.set_inheritable(tasks.fileno(), False)
    os.set_inheritable(results.fileno(), False)
    page_fd = os.environ.get(PAGE_FD)
    # The pipes are not inherited, and neither is their description: a
    # program that a task starts is not this pool's worker, and one that
    # looks for these (a Go worker built with serve, a Python program that
    # runs safepool.worker) would take itself for one.
    for name in ("SAFEPOOL_PROTOCOL", "SAFEPOOL_TASK_FD", "SAFEPOOL_RESULT_FD", PAGE_FD):
        os.environ.pop(name, None)
    _setup()
    _open_clock()
    fns = _fns
    write, pack = results.write, HEADER.pack
    flush = _flushing(results.flush)

    page = page_id = None
    if page_fd:
        try:
            import mmap
            m = mmap.mmap(int(page_fd), PAGE_SIZE)
            os.close(int(page_fd))
            page, page_id = memoryview(m).cast("I"), memoryview(m)[:16].cast("Q")
            _paused[0] = memoryview(m)[8 * PAGE_PAUSED:8 * PAGE_PAUSED + 8].cast("Q")
        except (OSError, ValueError):
            page = None
    if page is not None:
        # The pipe of the direct path (_direct), made now so that the client
        # has it open by the time the first values are ready.
        _direct.start()
    ready = READY_PAYLOAD if page is not None else READY_PAYLOAD_V2
    write(pack(len(ready), READY, 0) + ready)
    flush()
    read = tasks.read
    size = HEADER.size
    while True:
        header = read(size)
        if not header:
            break
        if len(header) != size:
            sys.exit("safepool.worker: protocol error: cut header")
        length, kind, task_id = HEADER.unpack(header)
        payload = read(length) if length else b""
        if len(payload) != length:
            sys.exit("safepool.worker: protocol error: cut payload")
        if kind == BATCH:
            if page is not None:
                _run_batch_page(task_id, payload, write, flush, page, page_id)
            else:
                _run_batch(task_id, payload, write, flush)
            shared = sys.modules.get("safepool._shared")
            if shared is not None and shared._maps:
                shared.sweep()  # let go of the segments the client closed
            continue
        if kind != TASK:
            sys.exit("safepool.worker: protocol error: kind %d" % kind)
        # Before the work, and flushed: when the worker dies, this names
        # the task that was running.
        write(pack(0, START, task_id))
        flush()
        try:
            kind, out = _run_item(payload, fns)
        except Exception as e:
            # The task cannot run (its function cannot be unpickled, say).
            kind, out = RESULT, dumps((RAISED, _exc_record(e)))
        _flush_output()
        write(pack(len(out), kind, task_id))
        write(out)
        flush()
    flush()
    tasks.close()
    # The result pipe stays open until the process ends, through the
    # interpreter's shutdown: the binary takes its end of file for the
    # worker's exit, and kills a worker that lives on 200 ms past it (a
    # protocol fault), which would cut its exit handlers short. The
    # pool's grace bounds the shutdown instead.
    _result_pipe.append(results)


_result_pipe = []  # the result pipe's file, kept open once the tasks end


if __name__ == "__main__":
    main()
