"""Large buffers out of band: pickle protocol 5 through memory files.

A task's arguments and a batch's results are pickled with protocol 5. The
buffers that pickle hands to its buffer_callback (numpy arrays, and the
bytes, bytearrays and memoryviews that encode() wraps) of at least THRESHOLD
bytes do not go into the pickle, and so not through the pipes to and from
the supervisor: they travel through anonymous memory files (memfd) that the
receiver opens through /proc/<pid>/fd/<n> of the process that holds them
(same user; no file system name, nothing in /dev/shm).

Arguments, client to worker (one copy): the client writes the big buffers
into a memory file of the task's own. The worker maps it copy-on-write
(MAP_PRIVATE) and unpickles over the mapping: numpy arrays are not copied
again, and writing to them touches only the worker's private copy.

Results, worker to client (two copies, no pipe): the client owns one sparse
memory file, its inbox, and gives each task a region of REGION bytes in it.
The worker writes its big result buffers into the task's region, and the
client copies them out and punches the region empty when it unpickles the
result. (The client copies rather than maps because the pages were charged
to the worker that wrote them, and its memory group must not carry them.)

Lifetime rule: every memory file is created and held by the client, and
only the client closes it. A task's argument file is closed, and its inbox
region punched empty, when the client releases the task's Ticket: when it
decodes the result, or when the ticket is garbage collected (the task failed,
was cancelled, or the pool ended), or when the client process ends. Workers
hold no descriptor past the call that opened it: a worker's mapping of its
arguments lives as long as the objects unpickled over it, and goes with the
worker. So a worker that dies in the middle of a task leaves nothing, and a
retried task's arguments are still there for the next worker. The inbox
itself is closed when the client process ends.

The direct path: a pickle of at least DIRECT bytes (a batch of many items,
a list of results) does not go through the supervisor either. It travels as
one more buffer, the last, in the task's argument file or in the task's inbox
region, and the frame that the supervisor relays carries only the header that
names it (the envelope byte is DIRECT_ENVELOPE). The supervisor still sees
every frame, so its per-item record, the running-item page and blame are the
same; only the bytes take another way. The receiver unpickles the pickle
where it lies, through a mapping (the client's is read-only and goes once
the result is unpickled: unpickling copies what it keeps, so the pages
that the worker wrote are not kept). A smaller pickle stays in the frame:
below DIRECT, a memory file costs more than the copies it saves.

Where results go in a batch's region: the region is cut into one slot per
item of the batch (its items are numbered in the payload, which every worker
that runs some of them gets whole), and the result of the items from index i
to j goes only in the slots i to j. After a death the supervisor splits the
batch and runs its parts on other workers at once; their items differ, and
so do their slots, so none overwrites a result that a frame already named and
the client has not read yet. A result that does not fit in its slots goes in
band, through the pipes.

The payload format: a plain pickle (first byte 0x80), or ENVELOPE followed
by a header (see _TASK and _RESULT) and the pickle, or DIRECT_ENVELOPE
followed by the header alone (its last span is the pickle). Small payloads
carry only the header naming the inbox region.
"""
import copyreg
import errno
import io
import mmap
import os
import struct
import sys
from _thread import allocate_lock

try:
    from _pickle import dumps as _pdumps, loads as _loads, PickleBuffer, Pickler
except ImportError:  # an interpreter without the C accelerator
    from pickle import dumps as _pdumps, loads as _loads, PickleBuffer, Pickler

# Buffers of at least this many bytes go out of band.
THRESHOLD = int(os.environ.get("SAFEPOOL_OOB_THRESHOLD", 1 << 20))

ENVELOPE = 0x01
# The envelope of a payload whose pickle is out of band too: its last span.
DIRECT_ENVELOPE = 0x02
# Pickles of at least this many bytes go out of band (the direct path).
DIRECT = int(os.environ.get("SAFEPOOL_DIRECT_THRESHOLD", 64 << 10))
# A task: envelope byte, client pid, inbox fd, inbox inode, region, argument
# file fd, its inode, its size, number of buffers; then (offset, length) per
# buffer and the pickle.
_TASK = struct.Struct("<BIiQQiQQI")
# A result: envelope byte, region, number of buffers; then (offset, length)
# per buffer (from the region's start) and the pickle.
_RESULT = struct.Struct("<BQI")
_SPAN = struct.Struct("<QQ")

# True once this process made a pool whose workers run on other machines
# (Pool(nats=URL)), which cannot open its memory files: from then on its
# tasks' payloads go in band, and their workers send results in band.
IN_BAND = [False]

# Each task's region of the inbox; a result's buffers must fit in it.
REGION = 1 << 40
# Region numbers go round after this many (2**63 bytes is the file size limit).
_REGIONS = (1 << 62) // REGION
_ALIGN = 64

# The walk that wraps bytes, bytearrays and memoryviews visits at most this
# many objects: big buffers deep inside huge structures stay in band.
_WALK_BUDGET = 10000


# ---- read-only numpy arrays ----------------------------------------------------

# multiprocessing pickles with the interpreter's default protocol, which is
# 4 before Python 3.14: numpy then copies every array, read-only or not, and
# it arrives writable. With protocol 5, which safepool uses, a read-only
# array's buffer arrives read-only: an argument or a result made with
# numpy.frombuffer(bytes), say, came read-only where multiprocessing's is
# writable, and writing to it raised. So where the default is below 5, a
# read-only array arrives as a writable copy, as multiprocessing's does.
def _writable_copies():
    """Whether read-only arrays must arrive as writable copies. pickle is
    imported here, only once there are arrays to send: a worker's start
    imports no more than it needs."""
    import pickle

    return pickle.DEFAULT_PROTOCOL < 5


def _writable_array(buf, dtype, shape, order):
    """The unpickling of a read-only array (see _reduce_array), as numpy's
    own _frombuffer but writable. A buffer that came out of band lies in
    memory of this process's own, a private copy already: the worker's
    copy-on-write mapping of its argument file, or what the client copied
    out of its inbox. The array is a writable view of it, not a second
    copy (pickle made buf a read-only view of the same bytes). One in an
    argument file mapped read-only (a data size limit, see _map_arguments)
    stays read-only. Any other (bytes, from the pickle) is copied."""
    import numpy
    flat = numpy.frombuffer(buf, dtype="u1")
    under = getattr(buf, "obj", None)
    if isinstance(under, (bytearray, mmap.mmap)):
        whole = numpy.frombuffer(under, dtype="u1")
        at = flat.__array_interface__["data"][0] - whole.__array_interface__["data"][0]
        if whole.flags.writeable and 0 <= at <= whole.size - flat.size:
            flat = whole[at:at + flat.size]
    if not flat.flags.writeable and not isinstance(under, mmap.mmap):
        flat = numpy.frombuffer(bytearray(buf), dtype="u1")
    return flat.view(dtype).reshape(shape, order=order)


def _reduce_array(a):
    """numpy.ndarray's reduction for protocol 5, but for a read-only array
    whose buffer would go as it is: that one arrives writable."""
    rv = a.__reduce_ex__(5)
    if not a.flags.writeable and type(rv[1][0]) is PickleBuffer:
        return _writable_array, rv[1]
    return rv


def array_table():
    """The dispatch table that makes read-only numpy arrays arrive
    writable, as multiprocessing's do (see _writable_copies); None where
    none is needed (numpy not imported: no arrays to pickle)."""
    numpy = sys.modules.get("numpy")
    if numpy is None or not hasattr(numpy, "ndarray") or not _writable_copies():
        return None
    # A plain dict: the C pickler reads it without calling Python code;
    # copied each time, as copyreg.pickle may add to copyreg's.
    table = copyreg.dispatch_table.copy()
    table.setdefault(numpy.ndarray, _reduce_array)  # the program's own reduction first
    return table


def pickler(cls, file, protocol, buffer_callback=None):
    """An instance of cls (a Python subclass of pickle.Pickler) with the
    array_table, if any."""
    p = cls.__new__(cls)
    table = array_table()
    if table is not None:
        p.dispatch_table = table  # read by Pickler.__init__
    p.__init__(file, protocol, buffer_callback=buffer_callback)
    return p


class _Pickler(Pickler):
    pass


def _pdumps5(obj, buffer_callback=None):
    """pickle.dumps(obj, 5, buffer_callback=buffer_callback) with the
    array_table, if any."""
    if array_table() is None:
        return _pdumps(obj, 5, buffer_callback=buffer_callback)
    buf = io.BytesIO()
    pickler(_Pickler, buf, 5, buffer_callback).dump(obj)
    return buf.getvalue()


# ---- wrapping what pickle keeps in band ---------------------------------------

def _memoryview_of(buf, fmt, shape):
    return memoryview(buf).cast("B").cast(fmt, shape)


class _Bytes:
    """bytes or bytearray sent out of band when large (in band otherwise)."""
    __slots__ = ("obj",)

    def __init__(self, obj):
        self.obj = obj

    def __reduce_ex__(self, protocol):
        return type(self.obj), (PickleBuffer(self.obj),)


class _View:
    """A memoryview, which pickle refuses: sent as its bytes, and rebuilt
    with its format and shape."""
    __slots__ = ("obj",)

    def __init__(self, obj):
        self.obj = obj

    def __reduce_ex__(self, protocol):
        mv = self.obj
        fmt, shape = mv.format, mv.shape
        raw = mv if mv.c_contiguous else memoryview(mv.tobytes())
        try:
            raw.cast("B").cast(fmt, shape)  # what the receiver does
        except (TypeError, ValueError):
            fmt, shape = "B", (mv.nbytes,)  # a format cast cannot make: as bytes
        return _memoryview_of, (PickleBuffer(raw), fmt, shape)


def _is_ndarray(t):
    return t.__name__ == "ndarray" and t.__module__ == "numpy"


def _wrap(obj, budget, memo=None):
    """obj with its big bytes and bytearrays, its memoryviews and its big
    non-contiguous numpy arrays made ready for protocol 5, looking into
    lists, tuples and dicts. budget is a one-item list counting down.

    memo maps the id of each object walked to what it became (itself, or
    its copy): an object met twice becomes one copy, which pickle sends
    once, so that the receiver gets one object where it is referred to
    twice, as with pickle alone (two copies of an array that a task
    writes through one name and reads through another gave it the old
    values). A list or dict is in memo as its copy while its items are
    walked: one that holds itself holds its copy, and the walk ends."""
    if memo is None:
        memo = {}
    key = id(obj)
    if key in memo:
        return memo[key]
    budget[0] -= 1
    t = type(obj)
    if t is bytes or t is bytearray:
        w = _Bytes(obj) if len(obj) >= THRESHOLD else obj
    elif t is memoryview:
        w = _View(obj)
    elif t is list or t is dict:
        out = [] if t is list else {}
        memo[key] = out  # filled below if an item changes
        changes = []
        for k, v in (enumerate(obj) if t is list else obj.items()):
            if budget[0] <= 0:
                break
            tv = type(v)
            if tv is int or tv is float or tv is str or v is None:
                budget[0] -= 1
                continue
            wv = _wrap(v, budget, memo)
            if wv is not v:
                changes.append((k, wv))
        if changes:
            if t is list:
                out.extend(obj)
            else:
                out.update(obj)
            for k, wv in changes:
                out[k] = wv
            w = out
        else:
            w = obj
    elif t is tuple:
        memo[key] = obj  # a tuple cannot be made before its items
        items = [_wrap(v, budget, memo) if budget[0] > 0 else v for v in obj]
        w = tuple(items) if any(a is not b for a, b in zip(items, obj)) else obj
    elif _is_ndarray(t) and obj.nbytes >= THRESHOLD and not obj.dtype.hasobject \
            and not (obj.flags.c_contiguous or obj.flags.f_contiguous):
        import numpy
        w = numpy.ascontiguousarray(obj)  # as pickling it would
    else:
        return obj
    memo[key] = w
    return w


def big_bytes(obj, budget=None, seen=None) -> int:
    """The bytes of the buffers in obj that would go out of band (numpy
    arrays, bytes, bytearrays and memoryviews of at least THRESHOLD bytes),
    looking into lists, tuples and dicts as _wrap does, and counting each
    object once."""
    if budget is None:
        budget, seen = [_WALK_BUDGET], set()
    if id(obj) in seen:
        return 0
    seen.add(id(obj))
    budget[0] -= 1
    t = type(obj)
    if t is bytes or t is bytearray or t is memoryview:
        n = obj.nbytes if t is memoryview else len(obj)
        return n if n >= THRESHOLD else 0
    if t is list or t is tuple or t is dict:
        total = 0
        for v in (obj.values() if t is dict else obj):
            if budget[0] <= 0:
                break
            total += big_bytes(v, budget, seen)
        return total
    if any(_is_ndarray(c) for c in t.__mro__) and not obj.dtype.hasobject:
        return obj.nbytes if obj.nbytes >= THRESHOLD else 0
    return 0


def _callback(big):
    def callback(pb):
        raw = pb.raw()
        if raw.nbytes < THRESHOLD:
            return True
        big.append(raw)
        return False
    return callback


def _dumps(obj, big, dump=None):
    """Pickle obj with protocol 5, appending the raw memoryview of each
    buffer of at least THRESHOLD bytes to big and leaving it out. A pickle
    that is still big (bytes in band), or that failed (a memoryview), is
    made again after _wrap: small payloads never pay for the walk."""
    dump = dump or _pdumps5
    try:
        data = dump(obj, buffer_callback=_callback(big))
        if len(data) < THRESHOLD:
            return data
    except TypeError:
        data = None
    wrapped = _wrap(obj, [_WALK_BUDGET])
    if wrapped is obj and data is not None:
        return data  # big, but nothing to take out of band
    del big[:]
    return dump(wrapped, buffer_callback=_callback(big))


def _dumps_checked(obj, big):
    """_dumps for workers that do not import the client's __main__ module:
    what is defined there makes it fall back to _pickling.dumps_payload
    (cloudpickle, or a TypeError saying what to do), in band."""
    from ._pickling import _FromMain, _MainChecker, dumps_payload

    def dump(o, buffer_callback):
        buf = io.BytesIO()
        pickler(_MainChecker, buf, 5, buffer_callback).dump(o)
        return buf.getvalue()
    try:
        return _dumps(obj, big, dump)
    except _FromMain:
        del big[:]
        return dumps_payload(obj, False)


def _layout(bufs):
    """(offset, length) of each buffer laid out with alignment, and the total."""
    spans, off = [], 0
    for b in bufs:
        spans.append((off, b.nbytes))
        off = (off + b.nbytes + _ALIGN - 1) // _ALIGN * _ALIGN
    return spans, off


def _pwrite_all(fd, buf, offset):
    view = memoryview(buf).cast("B")
    while view.nbytes:
        n = os.pwrite(fd, view[:1 << 30], offset)
        view, offset = view[n:], offset + n


def _pread_into(fd, buf, offset):
    view = memoryview(buf)
    while view.nbytes:
        n = os.preadv(fd, [view[:1 << 30]], offset)
        if n == 0:
            raise EOFError("safepool: an out-of-band buffer was cut short")
        view, offset = view[n:], offset + n


def _unknown(data):
    """The error of a payload whose first byte is neither a pickle's (0x80,
    protocol 2 and later) nor an envelope this release knows."""
    return ValueError("safepool: a payload of an unknown format (first byte 0x%02x): the client and its "
                      "workers run different safepool releases; install one release" % data[0])


def dumpable() -> bool:
    """Whether other processes of this user may open this process's
    descriptors through /proc (prctl PR_GET_DUMPABLE)."""
    import ctypes
    return ctypes.CDLL(None).prctl(3, 0, 0, 0, 0) == 1


def open_fd(pid, fd, ino, flags=os.O_RDONLY):
    """Open the file that process pid holds as fd, through /proc, checking
    its inode (fd numbers are reused)."""
    own = os.open("/proc/%d/fd/%d" % (pid, fd), flags | os.O_CLOEXEC)
    try:
        if os.fstat(own).st_ino != ino:
            raise OSError("safepool: descriptor %d of process %d is no longer the memory file" % (fd, pid))
    except BaseException:
        os.close(own)
        raise
    return own


# ---- the client's side ---------------------------------------------------------

class _Inbox:
    """The client's sparse memory file that workers write results into."""

    def __init__(self):
        import ctypes
        libc = ctypes.CDLL(None, use_errno=True)  # the interpreter's C library (ctypes.util imports subprocess)
        self._fallocate = libc.fallocate
        self._fallocate.argtypes = (ctypes.c_int, ctypes.c_int, ctypes.c_longlong, ctypes.c_longlong)
        if not dumpable():
            # Workers could not open this process's descriptors through /proc.
            raise OSError("this process is not dumpable")
        self.pid = os.getpid()
        self.fd = os.memfd_create("safepool-inbox", os.MFD_CLOEXEC)
        self.ino = os.fstat(self.fd).st_ino
        self._next = 0
        self._lock = allocate_lock()
        # The regions of the tickets not yet released. Region numbers go
        # round, and a task may run for as long as millions of others take:
        # its region must not be given again while it runs, or a worker of
        # the new task would write into the old one's results, and values
        # sent straight to this process (_direct), which name their batch
        # by its region, would settle the new task's items.
        self._used = set()

    def region(self):
        """A region that no unreleased ticket holds; free() gives it back."""
        with self._lock:
            # Among len(used) + 1 numbers in a row, one is free.
            for _ in range(len(self._used) + 1):
                self._next = self._next % (_REGIONS - 1) + 1
                if self._next not in self._used:
                    break
            self._used.add(self._next)
            return self._next

    def free(self, region):
        # Without the lock: a ticket's __del__ may run in the middle of
        # region(), in the same thread, and set.discard is atomic.
        self._used.discard(region)

    def punch(self, region):
        # FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE: free the region's pages.
        self._fallocate(self.fd, 0x02 | 0x01, region * REGION, REGION)


_inbox = [None]  # (pid, _Inbox, or False where results stay in band)
_inbox_lock = allocate_lock()


def _client_inbox():
    pid = os.getpid()
    cur = _inbox[0]
    if cur is not None and cur[0] == pid:
        return cur[1]
    with _inbox_lock:
        cur = _inbox[0]
        if cur is None or cur[0] != pid:  # none yet, or a forked child's
            try:
                box = _Inbox()
            except (OSError, AttributeError, ImportError):
                box = False  # no memfd, no fallocate, or not dumpable: all in band
            cur = _inbox[0] = (pid, box)
    return cur[1]


class Ticket:
    """What a task's out-of-band data holds in the client: its argument file
    and its inbox region. release() frees both; garbage collection does too.

    dirty says whether a worker may have written into the region: the client
    sets it when a result came out of band or an item's attempt did not end
    well (a worker can die halfway through writing). A clean region is not
    punched: fallocate through ctypes costs a system call and a hand-off of
    the interpreter's lock for every batch, which on small batches is most
    of what the client does."""
    __slots__ = ("fd", "inbox", "region", "dirty", "size", "__weakref__")

    def __init__(self, fd, inbox, region, size=0):
        self.fd, self.inbox, self.region, self.dirty = fd, inbox, region, False
        self.size = size  # the argument file's bytes

    def release(self):
        fd, self.fd = self.fd, -1
        if fd >= 0:
            os.close(fd)
        box, self.inbox = self.inbox, None
        if box:
            try:
                if self.dirty:
                    box.punch(self.region)
            finally:
                box.free(self.region)  # punched first: a new task finds it empty

    def __del__(self):
        # Dropped without its results (the pool aborted, say): a worker
        # may have been writing.
        self.dirty = True
        try:
            self.release()
        except Exception:
            pass


def out_of_band(output) -> bool:
    """Report whether a worker's result output refers to its inbox region."""
    return len(output) > 0 and (output[0] == ENVELOPE or output[0] == DIRECT_ENVELOPE)


def encode(obj, main_importable=True):
    """Pickle a task's payload obj for a worker: returns (payload, ticket).
    The caller keeps ticket while the task may still run (a retry sends the
    same payload), and releases it when the task has ended (decode() does,
    and so does garbage collection)."""
    box = False if IN_BAND[0] else _client_inbox()
    big = []
    if not box:  # no memfd, or workers cannot open this process's: in band
        from ._pickling import dumps_payload
        return (_dumps_inband(obj) if main_importable else dumps_payload(obj, False)), None
    data = _dumps(obj, big) if main_importable else _dumps_checked(obj, big)
    fd, ino, spans, size = -1, 0, (), 0
    direct = len(data) >= DIRECT
    if direct:
        big.append(memoryview(data))  # the pickle goes last
    if big:
        try:
            fd = os.memfd_create("safepool-args", os.MFD_CLOEXEC)
        except OSError:  # out of descriptors, say: in band
            big, direct = [], False
            data = _dumps_inband(obj)
        else:
            spans, size = _layout(big)
            try:
                os.ftruncate(fd, size)
                for (off, _), b in zip(spans, big):
                    _pwrite_all(fd, b, off)
            except BaseException:
                os.close(fd)
                raise
            ino = os.fstat(fd).st_ino
    # The region is taken last, once nothing can fail: the ticket gives it back.
    region = box.region()
    ticket = Ticket(fd, box, region, size)
    head = _TASK.pack(DIRECT_ENVELOPE if direct else ENVELOPE, os.getpid(), box.fd if box else -1,
                      box.ino if box else 0, region, fd, ino, size, len(spans))
    return b"".join([head] + [_SPAN.pack(*s) for s in spans] + ([] if direct else [data])), ticket


def function_ref(fn_bytes):
    """What a job's batches carry for its function pickled as fn_bytes:
    fn_bytes itself, or for one of at least THRESHOLD bytes (a lambda, a
    closure or a partial pickled with the array or the model it refers to)
    a safepool.Shared of it, which each worker maps, rather than a copy in
    every batch's argument file: the client held one for each batch in
    flight. The worker takes the read-only memoryview it opens as for
    bytes. The caller closes the Shared when the job is gone (its batches
    with it: a retry's batch is one of them)."""
    if len(fn_bytes) < THRESHOLD or IN_BAND[0] or not _client_inbox():
        return fn_bytes
    from ._shared import share
    try:
        return share(fn_bytes)
    except OSError:  # out of descriptors, say: in every batch, as before
        return fn_bytes


def _dumps_inband(obj):
    try:
        return _pdumps5(obj)
    except TypeError:  # a memoryview
        return _pdumps5(_wrap(obj, [_WALK_BUDGET]))


def decode(data, ticket=None):
    """Unpickle a worker's result in the client, copying its big buffers out
    of the task's inbox region; then release ticket (the task has ended)."""
    try:
        if not data or (data[0] != ENVELOPE and data[0] != DIRECT_ENVELOPE):
            if data and data[0] < 0x80:
                raise _unknown(data)
            return _loads(data)
        if ticket is not None:
            ticket.dirty = True  # the worker wrote into the region
        env, region, n = _RESULT.unpack_from(data)
        pos = _RESULT.size
        spans = [_SPAN.unpack_from(data, pos + i * _SPAN.size) for i in range(n)]
        pos += n * _SPAN.size
        box = _client_inbox()
        if not box:
            raise OSError("safepool: a result came out of band but this process has no inbox")
        pickled = spans.pop() if env == DIRECT_ENVELOPE else None
        buffers = []
        if spans:
            # The buffers are copied out: the objects unpickled keep them.
            lo = min(off for off, _ in spans)
            end = max(off + length for off, length in spans)
            whole = bytearray(end - lo)
            _pread_into(box.fd, whole, region * REGION + lo)
            view = memoryview(whole)
            buffers = [view[off - lo:off - lo + length] for off, length in spans]
        if pickled is None:
            return _loads(memoryview(data)[pos:], buffers=buffers)
        # The pickle is read where it lies, through a read-only mapping
        # that goes once it is unpickled (unpickling copies what it keeps).
        off, length = pickled
        at = region * REGION + off
        page = at - at % mmap.ALLOCATIONGRANULARITY
        mm = mmap.mmap(box.fd, at - page + length, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ, offset=page)
        try:
            with memoryview(mm) as view:
                return _loads(view[at - page:], buffers=buffers)
        finally:
            try:
                mm.close()
            except BufferError:  # still exported: the collector unmaps it
                pass
    finally:
        if ticket is not None:
            ticket.release()


# ---- the worker's side ---------------------------------------------------------

# The task being run: (client pid, inbox fd, inbox inode, region), or None.
_reply = [None]
# The size of an item's slot in the task's region (see "Where results go").
_slot = [REGION]
_inbox_fds = {}  # (pid, fd, inode) -> this worker's descriptor of that inbox


def worker_decode(payload):
    """Unpickle a task's payload in a worker, mapping its big buffers, and
    remember where its result's big buffers go."""
    if not payload or (payload[0] != ENVELOPE and payload[0] != DIRECT_ENVELOPE):
        _reply[0] = None
        if payload and payload[0] < 0x80:
            raise _unknown(payload)
        return _loads(payload)
    env, pid, box_fd, box_ino, region, fd, ino, size, n = _TASK.unpack_from(payload)
    _reply[0] = (pid, box_fd, box_ino, region) if box_fd >= 0 else None
    _slot[0] = REGION
    pos = _TASK.size
    spans = [_SPAN.unpack_from(payload, pos + i * _SPAN.size) for i in range(n)]
    pos += n * _SPAN.size
    buffers = ()
    if n:
        own = open_fd(pid, fd, ino)
        try:
            mm = _map_arguments(own, size)
        finally:
            os.close(own)
        view = memoryview(mm)
        buffers = [view[off:off + length] for off, length in spans]
    if env == DIRECT_ENVELOPE:
        return _loads(buffers.pop(), buffers=buffers)
    return _loads(memoryview(payload)[pos:], buffers=buffers)


def _data_limit():
    """This worker's data size limit (RLIMIT_DATA) in bytes, or 0 for none."""
    if _data_limit_of[0] is None:
        import resource
        soft = resource.getrlimit(resource.RLIMIT_DATA)[0]
        _data_limit_of[0] = 0 if soft == resource.RLIM_INFINITY else soft
    return _data_limit_of[0]


_data_limit_of = [None]


def _map_arguments(fd, size):
    """Map a task's argument file: copy-on-write, so that its arrays are
    writable and the writes stay here. A worker held to a memory limit
    without a cgroup (a data size limit, docs/memory.md) is charged by the
    kernel for the whole of a writable private mapping at once, pages
    read or not: there an argument file of more than a quarter of the
    limit, or one that the limit refuses, is mapped read-only, which is
    charged for nothing (its arrays are then read-only, as a shared
    array's are)."""
    limit = _data_limit()
    if not limit or size <= limit // 4:
        try:
            return mmap.mmap(fd, size, flags=mmap.MAP_PRIVATE, prot=mmap.PROT_READ | mmap.PROT_WRITE)
        except OSError as e:
            if not limit or e.errno != errno.ENOMEM:
                raise
    return mmap.mmap(fd, size, flags=mmap.MAP_PRIVATE, prot=mmap.PROT_READ)


def worker_slots(count):
    """Cut the running task's region into count slots, one per item of its
    batch (see "Where results go")."""
    _slot[0] = max(REGION // max(count, 1) // 4096 * 4096, 4096)


def _worker_inbox(reply):
    pid, fd, ino, _ = reply
    key = (pid, fd, ino)
    own = _inbox_fds.get(key)
    if own is None:
        own = open_fd(pid, fd, ino, os.O_RDWR)
        _inbox_fds[key] = own
    return own


def worker_encode(obj, index=0, count=1):
    """Pickle the result of count items of a batch from index on in a
    worker, writing its big buffers (and its pickle, when big: the direct
    path) into their slots of the task's inbox region when the client gave
    one."""
    reply = _reply[0]
    if reply is None:
        return _dumps_inband(obj)
    big = []
    data = _dumps(obj, big)
    direct = len(data) >= DIRECT
    if direct:
        big.append(memoryview(data))  # the pickle goes last
    elif not big:
        return data
    spans, size = _layout(big)
    slot = _slot[0]
    cur = index * slot
    spans = [(off + cur, length) for off, length in spans]
    try:
        if size > count * slot or cur + size > REGION:
            raise OSError("result too large for its slots")
        fd = _worker_inbox(reply)
        base = reply[3] * REGION
        for (off, _), b in zip(spans, big):
            _pwrite_all(fd, b, base + off)
    except OSError:
        return _dumps_inband(obj)  # no room, or no access: through the pipe
    head = _RESULT.pack(DIRECT_ENVELOPE if direct else ENVELOPE, reply[3], len(spans))
    return b"".join([head] + [_SPAN.pack(*s) for s in spans] + ([] if direct else [data]))
