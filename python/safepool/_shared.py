"""Shared read-only data: safepool.share() and safepool.share_file().

share(obj) copies a bytes-like object or a numpy array once into an
anonymous memory file (memfd), sealed against writing, growing and
shrinking; share_file(path) opens a file (a regular file is mapped as it is;
anything else, a pipe or a /proc file, is read into a memory file). Both
return a Shared: a small handle that pickles as the client's pid, its
descriptor number and the file's inode. Wherever it is unpickled (a task's
arguments, the initializer's), it opens as a read-only view of the file
mapped with PROT_READ and MAP_SHARED, without a copy: a memoryview, or a
numpy array of the shared array's dtype, shape and order when numpy is
importable. A worker opens the client's descriptor through
/proc/<client pid>/fd/<n> (the same user may: the ptrace read check), once:
the mapping is cached while the client's descriptor is open, so every task
that gets the handle gets the same pages (sweep() forgets the closed ones).

Lifetime: the client's descriptor is the segment's owner. It is closed by
Shared.close() (or the with statement), or when the client process ends,
however it ends, SIGKILL included; never by garbage collection, since a
pickled handle may be on its way to a worker. The pages are freed when the
last descriptor and the last mapping are gone: the client's and those of
workers still running (which the supervisor kills when the client ends).
Nothing has a name: nothing is left in /dev/shm, and no resource tracker
is involved.

Memory: the pages are written once, by the client, and are charged to it
(its memory cgroup, if any); workers that map them add shared pages to
their RSS but no private memory, and no charge to their own cgroup.
"""
import fcntl
import mmap
import os
import stat
import threading

from ._oob import dumpable, open_fd

_SEALS = 0
for _name in ("F_SEAL_SEAL", "F_SEAL_SHRINK", "F_SEAL_GROW", "F_SEAL_WRITE"):
    _SEALS |= getattr(fcntl, _name, 0)

_live = {}  # id -> Shared: open handles, closed only by close() or exit
_lock = threading.Lock()
_maps = {}  # (pid, inode) -> (fd, mmap): the segments this process has opened


class Shared:
    """A handle on data shared read-only with the pool's workers. Pass it to
    tasks or to the initializer: there it opens as a read-only memoryview or
    numpy array, without a copy. open() gives the same view here. The
    segment lives until close() or the end of this process."""

    __slots__ = ("pid", "fd", "ino", "size", "meta")

    def __init__(self, fd, size, meta):
        if not dumpable():
            os.close(fd)
            raise OSError("safepool cannot share data from this process: it is not dumpable "
                          "(prctl PR_SET_DUMPABLE 0, or a change of user), so its workers could not "
                          "open the data through /proc")
        self.pid = os.getpid()
        self.fd = fd
        self.ino = os.fstat(fd).st_ino
        self.size = size
        # ("buffer", format, shape) or ("ndarray", dtype, shape, order),
        # dtype as numpy's str or descr.
        self.meta = meta
        with _lock:
            _live[id(self)] = self

    @property
    def nbytes(self) -> int:
        """The size of the shared data in bytes."""
        return self.size

    @property
    def closed(self) -> bool:
        """Whether close() was called."""
        return self.fd < 0

    def open(self):
        """The read-only view of the data, in this process."""
        if self.fd < 0:
            raise ValueError("the shared data is closed")
        return _attach(self.pid, self.fd, self.ino, self.size, self.meta)

    def close(self):
        """Close this process's descriptor. Workers that have opened the data
        let go of their mapping after their batch, unless objects there
        still use it; workers that have not can no longer open it, so
        close after the last task that uses it (or never: the end of the
        process closes it)."""
        with _lock:
            _live.pop(id(self), None)
            # This process's own mapping (open()) goes with the last view.
            _maps.pop((self.pid, self.ino), None)
            fd, self.fd = self.fd, -1
        if fd >= 0:
            os.close(fd)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __reduce__(self):
        if self.fd < 0:
            raise ValueError("cannot send closed shared data to a worker")
        return _attach, (self.pid, self.fd, self.ino, self.size, self.meta)

    def __repr__(self):
        return "<safepool.Shared %s of %d bytes%s>" % (
            self.meta[0], self.size, " (closed)" if self.fd < 0 else "")


def _memfd(data):
    """A sealed memory file holding the bytes of data (a C-contiguous 'B'
    memoryview)."""
    try:
        fd = os.memfd_create("safepool-shared", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    except AttributeError:
        raise OSError("safepool.share needs os.memfd_create (Linux, Python 3.8 or later)") from None
    try:
        os.ftruncate(fd, data.nbytes)
        off = 0
        while off < data.nbytes:
            off += os.pwrite(fd, data[off:off + (1 << 30)], off)
        if _SEALS:
            try:
                fcntl.fcntl(fd, fcntl.F_ADD_SEALS, _SEALS)
            except OSError:
                pass  # a kernel without sealing: read-only by the mapping alone
    except BaseException:
        os.close(fd)
        raise
    return fd


def _is_ndarray(obj):
    t = type(obj)
    return any(c.__name__ == "ndarray" and c.__module__ == "numpy" for c in t.__mro__)


def _dtype_spec(dtype):
    return dtype.descr if dtype.fields is not None else dtype.str


def _dtype_of(numpy, spec):
    """The dtype of a _dtype_spec. A structured dtype's descr names its
    padding (aligned fields, offsets) as fields without a name, which
    numpy.dtype would make fields named f1, f2...: numpy's .npy reader
    turns them back into offsets."""
    if not isinstance(spec, list):
        return numpy.dtype(spec)
    try:
        from numpy.lib.format import descr_to_dtype
    except ImportError:  # numpy before 1.17
        return numpy.dtype([tuple(f) for f in spec])
    return descr_to_dtype([tuple(f) for f in spec])


def share(obj) -> Shared:
    """Copy obj (bytes, any object with the buffer protocol, or a numpy
    array) once into a sealed anonymous memory file, and return a handle
    that workers open as a read-only view of it, without a copy: a numpy
    array (same dtype, shape and order; a non-contiguous array is made
    C-contiguous) or, for other buffers, a memoryview of the same format and
    shape (flat bytes if the format is one memoryview cannot cast to)."""
    if _is_ndarray(obj):
        import numpy
        if obj.dtype.hasobject:
            raise TypeError("cannot share an array of Python objects; share numbers, or pickle it")
        if isinstance(obj, numpy.ma.MaskedArray):
            raise TypeError("cannot share a masked array: share its data and its mask (.data, .mask) apart")
        order = "F" if obj.flags.f_contiguous and not obj.flags.c_contiguous else "C"
        if not (obj.flags.c_contiguous or obj.flags.f_contiguous):
            obj = numpy.ascontiguousarray(obj)
        # As bytes: the buffer protocol refuses some dtypes (datetimes).
        raw = memoryview((obj.T if order == "F" else obj).reshape(-1).view(numpy.uint8)) if obj.size \
            else memoryview(b"")
        meta = ("ndarray", _dtype_spec(obj.dtype), tuple(obj.shape), order)
    else:
        try:
            mv = memoryview(obj)
        except TypeError:
            raise TypeError("safepool.share takes bytes, an object with the buffer protocol or a numpy "
                            "array, not %s" % type(obj).__name__) from None
        fmt, shape = mv.format, tuple(mv.shape)
        raw = mv.cast("B") if mv.c_contiguous else memoryview(mv.tobytes())
        try:
            raw.cast(fmt, shape)
        except (TypeError, ValueError):
            fmt, shape = "B", (raw.nbytes,)
        meta = ("buffer", fmt, shape)
    return Shared(_memfd(raw), raw.nbytes, meta)


def share_file(path, dtype=None, shape=None) -> Shared:
    """Share the contents of the file at path read-only. A regular file is
    mapped as it is, from the page cache, without a copy: it must not be
    changed or truncated while the pool uses it. Anything else (a pipe, a
    character device, a /proc file) is read once into a sealed memory file.
    Workers open it as a memoryview of bytes, or, given a numpy dtype (and
    optionally a shape, else one dimension), as a read-only numpy array."""
    fd = os.open(os.fspath(path), os.O_RDONLY | os.O_CLOEXEC)
    try:
        st = os.fstat(fd)
        if stat.S_ISREG(st.st_mode) and st.st_size:  # (/proc's files say 0 bytes)
            size = st.st_size
        else:
            chunks = []
            while True:
                b = os.read(fd, 1 << 20)
                if not b:
                    break
                chunks.append(b)
            os.close(fd)
            fd = -1
            data = b"".join(chunks)
            fd = _memfd(memoryview(data))
            size = len(data)
    except BaseException:
        if fd >= 0:
            os.close(fd)
        raise
    if dtype is None:
        meta = ("buffer", "B", (size,))
    else:
        import numpy
        dt = numpy.dtype(dtype)
        if shape is None:
            shape = (size // dt.itemsize,)
        shape = (shape,) if isinstance(shape, int) else tuple(shape)
        need = dt.itemsize
        for n in shape:
            need *= n
        if need > size:
            os.close(fd)
            raise ValueError("%s holds %d bytes, fewer than the %d of shape %s of %s" % (path, size, need, shape, dt))
        meta = ("ndarray", _dtype_spec(dt), shape, "C")
    return Shared(fd, size, meta)


def sweep():
    """Forget the mappings of other processes' segments that they have
    closed (or that went with them): a worker keeps each segment it opened
    mapped for the next tasks that get its handle, but not past the
    client's close(), or a client that shares new data for each map would
    leave all of it in every worker. A mapping that objects still use (an
    initializer's global, say) stays until they go."""
    me = os.getpid()
    with _lock:
        for (pid, ino), (fd, _) in list(_maps.items()):
            if pid == me:
                continue  # this process's own: close() forgets them
            try:
                gone = os.stat("/proc/%d/fd/%d" % (pid, fd)).st_ino != ino
            except OSError:
                gone = True
            if gone:
                del _maps[(pid, ino)]


def _open_shared(pid, fd, ino):
    """open_fd of another process's shared data, with what its loss most
    likely means."""
    try:
        return open_fd(pid, fd, ino)
    except OSError as e:
        if not os.path.exists("/proc/%d" % pid):
            raise
        raise OSError("safepool: the shared data that process %d holds as descriptor %d is gone: it was closed"
                      " (its close(), or the end of its with block) while the pool still sent it, such as in an"
                      " initializer's initargs, which each new worker gets at its start: keep it open until"
                      " the pool has ended (%s)" % (pid, fd, e)) from None


def _attach(pid, fd, ino, size, meta):
    """Open shared data in this process (the unpickling of a Shared)."""
    key = (pid, ino)
    if _maps and key not in _maps:
        sweep()
    with _lock:
        mm = _maps.get(key, (0, None))[1]
        if mm is None and size:
            own = os.dup(fd) if pid == os.getpid() else _open_shared(pid, fd, ino)
            try:
                mm = mmap.mmap(own, size, access=mmap.ACCESS_READ)  # PROT_READ, MAP_SHARED
            finally:
                os.close(own)
            _maps[key] = (fd, mm)
    view = memoryview(mm) if size else memoryview(b"")
    if meta[0] == "ndarray":
        try:
            import numpy
        except ImportError:
            return view  # a worker without numpy gets the bytes
        _, spec, shape, order = meta
        dt = _dtype_of(numpy, spec)
        count = 1
        for n in shape:
            count *= n
        arr = numpy.frombuffer(view, dtype=dt, count=count) if count else numpy.empty(shape, dt)
        arr = arr.reshape(shape, order=order)
        arr.flags.writeable = False
        return arr
    _, fmt, shape = meta
    if fmt == "B" and len(shape) == 1:
        return view
    return view.cast("B").cast(fmt, shape)
