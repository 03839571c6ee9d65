"""The direct result path: a map's values from a worker to its client
without the supervisor's relay.

Each worker has a pipe of its own to the client. When a worker of a map
has the values of a range of a batch's items, it first writes them to its
pipe, as one record, then sends the binary an items frame for the range
whose output is the one byte SENT: the binary records the range as
answered, as for any items frame, and relays the frame to the client,
which has the values already (or finds them in the pipe then: they were
written before the frame). So the supervisor's per-item record and blame
do not change, and the client need not wait for the supervisor to be woken,
to read the values and to write them again.

How a worker's pipe reaches the client: the client makes one pipe, its
door, whose write end workers open through /proc/<client pid>/fd/<n> (as
they open its memory files: same user, the client dumpable). A worker
makes its pipe, writes one byte into it, and writes the pipe's number and
inode through the door (16 bytes: one atomic write, never mixed with
another worker's). The client opens the pipe's read end through
/proc/<worker pid>/fd/<n> and reads the byte. The worker sends values its
way only once the byte is gone (the client reads the pipe), and only when
the pipe has room for the whole record (a write that cannot block), so
that a client that does not read never stalls a worker: the values then
go to the binary, as before.

Deaths: a worker killed before it wrote a record has delivered nothing,
and the binary runs the items again. One killed after the record and
before its items frame has delivered the values, and the binary still
runs the items again (uncharged, but for the one in the running-item page,
which is charged): the client keeps the first values it got for an item
and ignores the others. The client reads a dead worker's pipe to its end
(end of file: the worker held its only write end) and closes it; a record
cut short there has no items frame, and is dropped.

Only what the client can take without the supervisor goes this way: the
values of a range in one plain pickle (no buffers in the client's inbox,
where a rerun could overwrite them before the client read them) of at most
LIMIT bytes. Everything else (errors, failed items, retries, big results)
still comes from the binary.
"""
import os
import struct

# The environment variable that tells workers where the door is:
# "<client pid>:<fd>:<inode>".
ENV = "SAFEPOOL_PY_DIRECT"
# The output of an items frame whose values went directly to the client.
SENT = b"\x03"
# What a worker writes through the door: its pid, the number and the
# inode of its pipe's read end.
ANNOUNCE = struct.Struct("<iiQ")
# A record on a worker's pipe: its output's size, the batch's inbox region,
# the range's first index and count, the start and end of the range's run
# (Unix seconds); then the output.
RECORD = struct.Struct("<IQIIdd")
# The largest output sent directly.
LIMIT = 256 << 10
_PAGE = 4096

# ---- the client's side ---------------------------------------------------------


def make_door():
    """The client's door: (read end, write end, the value of ENV); the
    read end is non-blocking. Raises OSError where it cannot be made."""
    r, w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
    try:
        return r, w, "%d:%d:%d" % (os.getpid(), w, os.fstat(w).st_ino)
    except BaseException:
        os.close(r)
        os.close(w)
        raise


class Receiver:
    """The client's end of the direct path: its door and the workers'
    pipes, registered in poll (a select.poll of the reader thread, the only
    thread that uses a Receiver)."""

    def __init__(self, door: int, poll):
        self.door = door
        self._poll = poll
        poll.register(door, 1)  # POLLIN
        self._door_rest = b""
        # a worker's pipe -> [what was read of a record not whole yet,
        # whether the pipe's first byte is still to be skipped, the
        # worker's pid]
        self._pipes = {}

    def ready(self, fd, settle):
        """Read fd, which poll reported: the door or a worker's pipe;
        settle(pid, region, index, count, start, end, output) each
        record, pid being its worker's."""
        if fd == self.door:
            self._read_door()
        elif fd in self._pipes:
            self._read_pipe(fd, settle)

    def drain(self, settle):
        """Read everything that is in the door and the pipes now."""
        if self.door >= 0:
            self._read_door()
        for fd in list(self._pipes):
            self._read_pipe(fd, settle)

    def close(self):
        for fd in list(self._pipes) + ([self.door] if self.door >= 0 else []):
            try:
                os.close(fd)
            except OSError:
                pass
        self._pipes.clear()
        self.door = -1

    def _read_door(self):
        while True:
            try:
                data = os.read(self.door, 64 << 10)
            except BlockingIOError:
                return
            if not data:
                # No writer left: the pool is ending (_launch closed its
                # end); no worker can announce a pipe any more.
                self._poll.unregister(self.door)
                os.close(self.door)
                self.door = -1
                return
            data = self._door_rest + data
            size = ANNOUNCE.size
            end = len(data) - len(data) % size
            self._door_rest = data[end:]
            for pid, fd, ino in ANNOUNCE.iter_unpack(data[:end]):
                self._open(pid, fd, ino)

    def _open(self, pid, fd, ino):
        from ._oob import open_fd
        try:
            own = open_fd(pid, fd, ino, os.O_RDONLY | os.O_NONBLOCK)
        except OSError:
            return  # the worker is gone already, or this process may not: it sends to the binary
        self._pipes[own] = [b"", True, pid]
        self._poll.register(own, 1)

    def _read_pipe(self, fd, settle):
        state = self._pipes[fd]
        head = RECORD.size
        while True:
            try:
                data = os.read(fd, 1 << 20)
            except BlockingIOError:
                return
            if not data:
                # The worker is gone: what is left is a record cut short,
                # whose items it never told the binary of.
                del self._pipes[fd]
                self._poll.unregister(fd)
                os.close(fd)
                return
            if state[1]:
                data = data[1:]  # the byte the worker put first
                state[1] = False
            if state[0]:
                data = state[0] + data
            at, n = 0, len(data)
            while n - at >= head:
                size, region, index, count, start, end = RECORD.unpack_from(data, at)
                if n - at - head < size:
                    break
                settle(state[2], region, index, count, start, end, data[at + head:at + head + size])
                at += head + size
            state[0] = data[at:] if at < n else b""


# ---- the worker's side ---------------------------------------------------------

# This worker's pipe to its client: [write end, read end (-1 once the
# client has its own), its size in pages, whether the client has read its
# first byte], None before its first use, False where it has none.
_pipe = [None]


_ioctl = []  # (fcntl.ioctl, termios.FIONREAD), imported with the pipe
_INT = struct.Struct("i")


def _fionread() -> int:
    """The FIONREAD request: termios's, whose import costs a worker's start
    about a third of a millisecond, where its generic value is not the
    machine's."""
    machine = os.uname().machine
    if machine in ("x86_64", "aarch64", "riscv64", "s390x", "loongarch64") or machine.startswith(("i", "arm")):
        return 0x541B
    import termios
    return termios.FIONREAD


def _unread(fd) -> int:
    """How many bytes the pipe of fd holds."""
    ioctl, fionread = _ioctl[0]
    return _INT.unpack(ioctl(fd, fionread, b"\0\0\0\0"))[0]


def _open():
    """Make this worker's pipe and tell the client through its door;
    return its _pipe record, or False."""
    spec = os.environ.get(ENV)
    if not spec:
        return False
    from safepool._oob import open_fd
    try:
        pid, n, ino = (int(x) for x in spec.split(":"))
        # O_NONBLOCK: a pipe opened for writing waits for a reader, and
        # fails at once without one (the client is gone); so do the writes.
        door = open_fd(pid, n, ino, os.O_WRONLY | os.O_NONBLOCK)
    except (OSError, ValueError):
        return False
    r = w = -1
    try:
        r, w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        import fcntl
        _ioctl[:] = [(fcntl.ioctl, _fionread())]
        try:
            # Room for big ranges' records (1 MiB is the most an
            # unprivileged process may ask for by default).
            fcntl.fcntl(w, fcntl.F_SETPIPE_SZ, 1 << 20)
        except OSError:
            pass
        pages = fcntl.fcntl(w, fcntl.F_GETPIPE_SZ) // _PAGE
        os.write(w, b"\0")
        os.write(door, ANNOUNCE.pack(os.getpid(), r, os.fstat(r).st_ino))
    except (OSError, AttributeError, ImportError):
        for fd in (r, w):
            if fd >= 0:
                os.close(fd)
        return False
    finally:
        os.close(door)
    return [w, r, pages, False]


def start():
    """Make this worker's pipe to its client, if the client has a door."""
    if _pipe[0] is None:
        _pipe[0] = _open()


def _close(pipe):
    for fd in pipe[:2]:
        if fd >= 0:
            os.close(fd)
    _pipe[0] = False


def send(output, region, index, count, start, end):
    """Write output, the values of count items from index on of the batch
    whose inbox region is region, to the client's pipe. Report whether it
    went; False when it cannot go now without waiting for the client, or
    ever (the worker then sends the values to the binary)."""
    pipe = _pipe[0]
    if pipe is None:
        pipe = _pipe[0] = _open()
    if not pipe or len(output) > LIMIT:
        return False
    w = pipe[0]
    unread = _unread(w)
    if not pipe[3]:
        if unread:
            return False  # the client has not opened the pipe yet
        pipe[3] = True
        os.close(pipe[1])  # the client's end now keeps it open
        pipe[1] = -1
    size = RECORD.size + len(output)
    # Room for the whole record: the bytes held take at most one page more
    # than their size, the record at most one more than its own.
    if unread // _PAGE + size // _PAGE + 3 > pipe[2]:
        return False
    try:
        n = os.write(w, RECORD.pack(len(output), region, index, count, start, end) + output)
    except BlockingIOError:
        return False
    except OSError:
        _close(pipe)  # the client is gone
        return False
    if n != size:
        # Never so with the room checked; but a record cut short would
        # take the next ones with it: the pipe goes (the client drops
        # what it has of it at its end), and so does the direct path.
        _close(pipe)
        return False
    return True
