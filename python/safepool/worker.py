"""The worker process of a safepool.Pool.

The ``safepool`` binary starts it as ``python3 -c "from safepool.worker
import main; main()"`` and speaks the framed worker protocol of
docs/protocol.md to it on fds 3 and 4. Each task is a batch of items (one
call of the user's function per item); the worker answers with the results
of the whole batch. Before each item it stores the item's index in its blame
file, a small memory-mapped file that outlives the process, so that when the
worker dies in the middle of a batch the pool knows which item killed it.

The worker is spawned fresh, never forked. Before it answers ``ready`` it
takes the client's ``sys.path`` and ``sys.argv``, imports the client's
``__main__`` script under the name ``__mp_main__`` (so that functions
defined there can be unpickled, as with multiprocessing's spawn), and runs
the pool's initializer.

A pool's start waits for its workers' start, so this module imports only
what the interpreter has already loaded, plus struct, mmap and the pickle
accelerator: not json, runpy or the pickle module (which imports re), unless
the parent's main module needs runpy.
"""
import mmap
import os
import struct
import sys
import time

try:
    from _pickle import dumps as _dumps, loads
except ImportError:  # an interpreter without the C accelerator
    from pickle import dumps as _dumps, loads

from safepool import _oob  # HOOK(oob)

HEADER = struct.Struct(">IBQ")
READY, TASK, START, RESULT, ERROR = 1, 2, 3, 4, 5

# Modes of a batch: how each item is passed to the function.
MAP, STAR, APPLY = 0, 1, 2
# Tags of a batch's answer.
OK, BATCH_ERROR = 0, 1

_BLAME = struct.Struct("<QQ")


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


def dumps_main_by_name(obj) -> bytes:
    """Pickle obj, sending the classes and functions of __main__ by name
    without looking them up here. The worker's __main__ may not have them
    (they came by value, with cloudpickle, from a client whose main module
    workers cannot import); the client's has."""
    import io
    import pickle

    function = type(main_attr)

    class Pickler(pickle.Pickler):
        def reducer_override(self, o):
            if isinstance(o, (type, function)) and getattr(o, "__module__", None) in ("__main__", "__mp_main__"):
                return main_attr, (o.__qualname__,)
            return NotImplemented

    buf = io.BytesIO()
    Pickler(buf, pickle.HIGHEST_PROTOCOL).dump(obj)
    return buf.getvalue()


def call_pickled(fn_bytes: bytes, args, kwargs):
    """Call the pickled function fn_bytes: how a batch whose items call
    different functions (a joblib batch) runs, each pickled as safepool
    pickles a task's function."""
    return loads(fn_bytes)(*args, **kwargs)


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
    sys.modules["__mp_main__"] = main
    try:
        exec(code, main.__dict__)
    except BaseException:
        del sys.modules["__mp_main__"]
        raise
    sys.modules["__main__"] = main


def _fix_main():
    """Import the client's main module as __mp_main__ and alias __main__."""
    spec = os.environ.get("SAFEPOOL_PY_MAIN")
    if not spec:
        return
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


def _setup():
    paths = os.environ.get("SAFEPOOL_PY_SYSPATH")
    if paths:
        for p in reversed(unpack_strings(paths)):
            if p not in sys.path:
                sys.path.insert(0, p)
    argv = os.environ.get("SAFEPOOL_PY_ARGV")
    if argv is not None:
        sys.argv = unpack_strings(argv)
    _fix_main()
    init = os.environ.get("SAFEPOOL_PY_INIT")
    if init:
        with open(init, "rb") as f:
            initializer, initargs = loads(f.read())
        initializer(*initargs)


class _Blame:
    """The worker's blame file: the task id and the index of the running item."""

    def __init__(self):
        self.mm = None
        d = os.environ.get("SAFEPOOL_BLAME_DIR")
        if not d:
            return
        try:
            fd = os.open(os.path.join(d, str(os.getpid())), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            try:
                os.ftruncate(fd, _BLAME.size)
                self.mm = mmap.mmap(fd, _BLAME.size)
            finally:
                os.close(fd)
        except OSError:
            self.mm = None

    def remove(self):
        d = os.environ.get("SAFEPOOL_BLAME_DIR")
        if self.mm is not None and d:
            try:
                os.unlink(os.path.join(d, str(os.getpid())))
            except OSError:
                pass


def _exc_record(e):
    import traceback
    tb = "".join(traceback.format_exception(type(e), e, e.__traceback__))
    try:
        data = dumps(e)
        loads(data)  # some exceptions pickle but do not unpickle
    except Exception:
        try:
            # Its class may be the client's __main__'s, sent by value: the
            # client unpickles it (or reports it if it cannot).
            data = dumps_main_by_name(e)
        except Exception:
            data = None
    return (data, tb, "%s: %s" % (type(e).__name__, e))


def _short_repr(v, limit=1000) -> str:
    try:
        r = repr(v)
    except Exception as e:
        r = "<unrepresentable %s: %s>" % (type(v).__name__, e)
    return r if len(r) <= limit else r[:limit - 3] + "..."


class _SoftLimit:
    """A task's soft time limit: SIGALRM, from an ITIMER_REAL timer armed
    for each item, raises SoftTimeLimitExceeded in this (the main) thread."""

    def __init__(self):
        import _signal
        from safepool._limits import SoftTimeLimitExceeded
        self._signal = _signal
        self._exc = SoftTimeLimitExceeded
        self.armed = 0.0  # the limit of the running item; 0: none
        _signal.signal(_signal.SIGALRM, self._fire)

    def _fire(self, signum, frame):
        limit, self.armed = self.armed, 0.0
        if limit:
            raise self._exc("the task ran longer than its soft time limit of %gs" % limit)

    def arm(self, seconds):
        self.armed = seconds
        self._signal.setitimer(self._signal.ITIMER_REAL, seconds)

    def disarm(self):
        self.armed = 0.0
        self._signal.setitimer(self._signal.ITIMER_REAL, 0)


_soft = []  # the worker's _SoftLimit, made on first use


def _wait_record(limit):
    from safepool._limits import WaitTimeout
    try:
        raise WaitTimeout("the task could not start within its wait_timeout of %gs" % limit)
    except WaitTimeout as e:
        return _exc_record(e)


def _run_batch(task_id, payload, blame, fns):
    mode, fn_bytes, items, *extra = _oob.worker_decode(payload)  # HOOK(oob)
    # The batch's limits: "soft" (seconds per item), and "start_by" (Unix
    # time) and "wait" (seconds) for items that must not start late.
    limits = extra[0] if extra else {}
    soft = limits.get("soft") or 0.0
    start_by = limits.get("start_by") or 0.0
    if soft and not _soft:
        _soft.append(_SoftLimit())
    fn = fns.get(fn_bytes)
    if fn is None:
        fn = loads(fn_bytes)
        if len(fns) > 32:
            fns.clear()
        fns[fn_bytes] = fn
    n = len(items)
    values = [None] * n
    ends = [0.0] * n
    errors = None
    mm = blame.mm
    now = time.time
    start = now()
    if mm is not None:
        mm[8:16] = b"\0" * 8
        struct.pack_into("<Q", mm, 0, task_id)
    pack = struct.pack_into
    for i, item in enumerate(items):
        if mm is not None:
            pack("<Q", mm, 8, i)
        if start_by and now() > start_by:
            if errors is None:
                errors = {}
            errors[i] = _wait_record(limits.get("wait", 0.0))
            ends[i] = now()
            continue
        try:
            if soft:
                _soft[0].arm(soft)
            if mode == MAP:
                values[i] = fn(item)
            elif mode == STAR:
                values[i] = fn(*item)
            else:
                values[i] = fn(*item[0], **item[1])
            if soft:
                _soft[0].disarm()
        except Exception as e:
            if soft:
                _soft[0].disarm()
            if errors is None:
                errors = {}
            errors[i] = _exc_record(e)
        ends[i] = now()
    try:
        return _oob.worker_encode((OK, values, errors, ends, start))  # HOOK(oob)
    except Exception:
        pass
    try:
        return dumps_main_by_name((OK, values, errors, ends, start))
    except Exception:
        # Some result cannot be pickled: report it on that item only.
        if errors is None:
            errors = {}
        for i, v in enumerate(values):
            if i in errors:
                continue
            try:
                dumps_main_by_name(v)
            except Exception as e:
                # The client may report it as multiprocessing does, with
                # the value's repr (MaybeEncodingError).
                errors[i] = _exc_record(e) + (_short_repr(v),)
                values[i] = None
        return dumps_main_by_name((OK, values, errors, ends, start))


def main():
    if os.environ.get("SAFEPOOL_PROTOCOL") != "framed/1":
        sys.exit("safepool.worker: started without SAFEPOOL_PROTOCOL=framed/1; "
                 "it is run by the safepool binary, not by hand")
    tasks = os.fdopen(int(os.environ.get("SAFEPOOL_TASK_FD", "3")), "rb")
    results = os.fdopen(int(os.environ.get("SAFEPOOL_RESULT_FD", "4")), "wb")
    os.set_inheritable(tasks.fileno(), False)
    os.set_inheritable(results.fileno(), False)
    _setup()
    blame = _Blame()
    fns = {}

    def send(kind, task_id, payload=b""):
        results.write(HEADER.pack(len(payload), kind, task_id))
        if payload:
            results.write(payload)
        results.flush()

    send(READY, 0, b'{"version":1,"sdk":"python"}')
    read = tasks.read
    while True:
        header = read(HEADER.size)
        if not header:
            break
        if len(header) != HEADER.size:
            sys.exit("safepool.worker: protocol error: cut header")
        length, kind, task_id = HEADER.unpack(header)
        payload = read(length) if length else b""
        if kind != TASK or len(payload) != length:
            sys.exit("safepool.worker: protocol error: kind %d" % kind)
        send(START, task_id)
        try:
            out = _run_batch(task_id, payload, blame, fns)
        except Exception as e:
            # The batch as a whole failed (its function cannot be unpickled,
            # say): every item gets this exception.
            out = dumps((BATCH_ERROR, _exc_record(e)))
        send(RESULT, task_id, out)
    results.flush()
    blame.remove()


if __name__ == "__main__":
    main()
