"""The direct result path: a range's values from a worker to its client
without the supervisor's relay.

The client of a pool makes one pipe, whose write end every worker of the
pool opens through /proc/<client pid>/fd/<n> (as it opens the client's
memory files: same user, the client dumpable). When a worker of a map has
the values of a range of a batch's items, it first writes them to this
pipe, then sends the binary an items frame for the range whose output is
the one byte SENT: the binary records the range as answered, as for any
items frame, and relays the frame to the client, which has (or finds in the
pipe) the values already. So the supervisor's per-item record and blame do
not change, and the client need not wait for the supervisor to be woken,
read the values, and write them again.

Records: a range's output (the pickle that would have gone in its items
frame) is cut into pieces of at most PIPE_BUF bytes with their header, so
that each is one write, whole in the pipe whatever the other workers write
(POSIX makes writes of at most PIPE_BUF bytes to a pipe atomic). A worker
killed between two pieces of a record leaves a record that is never
complete; its items run again (the binary never got their items frame), and
the client drops the pieces with the batch. A worker killed after the whole
record and before its items frame leaves the values delivered, and the
binary runs the items again (uncharged, but for the one in the running-item
page, which is charged): the client keeps the first values it got for an
item and ignores the others.

Only what the client can take without the supervisor goes this way: the
values of a range in one plain pickle (no buffers in the client's inbox,
where a rerun could overwrite them before the client read them) of at most
LIMIT bytes. Everything else (errors, failed items, retries, big results)
still comes from the binary.
"""
import os
import struct

# The environment variable that tells workers where the pipe is:
# "<client pid>:<fd>:<inode>".
ENV = "SAFEPOOL_PY_DIRECT"
# The output of an items frame whose values went directly to the client.
SENT = b"\x03"
# A piece: its data's size, its number, the record's number of pieces, the
# worker's pid, the batch's inbox region, the range's first index and count,
# the start and end of the range's run (Unix seconds); then the data.
PIECE = struct.Struct("<HHHxxIQIIdd")
PIPE_BUF = 4096
_DATA = PIPE_BUF - PIECE.size
# The largest output sent directly (a record of LIMIT / _DATA pieces).
LIMIT = 256 << 10

# ---- the client's side ---------------------------------------------------------


def make_pipe():
    """The client's pipe: (read end, write end, the value of ENV); the
    read end is non-blocking. Raises OSError where it cannot be made."""
    r, w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
    try:
        try:
            import fcntl
            # Room for a batch's values from each of several workers, so
            # that they seldom wait for the client to read (1 MiB is the
            # most an unprivileged process may ask for by default).
            fcntl.fcntl(w, fcntl.F_SETPIPE_SZ, 1 << 20)
        except (OSError, AttributeError, ImportError):
            pass
        os.set_blocking(w, True)
        return r, w, "%d:%d:%d" % (os.getpid(), w, os.fstat(w).st_ino)
    except BaseException:
        os.close(r)
        os.close(w)
        raise


class Assembler:
    """Cuts what the client reads from its pipe into records, and joins
    each record's pieces. Used by the client's reader thread only."""

    def __init__(self):
        self._rest = b""  # the start of a piece cut by a read
        # (pid, region, index, count) -> [pieces left, [data of each piece]]
        self._open = {}

    def feed(self, data):
        """Take what was read; yield (region, index, count, pid, start,
        end, output) for each record it completes."""
        if self._rest:
            data = self._rest + data
            self._rest = b""
        at, n = 0, len(data)
        head = PIECE.size
        unpack = PIECE.unpack_from
        while n - at >= head:
            size, k, m, pid, region, index, count, start, end = unpack(data, at)
            if n - at - head < size:
                break
            body = data[at + head:at + head + size]
            at += head + size
            if m == 1:
                yield region, index, count, pid, start, end, body
                continue
            key = (pid, region, index, count)
            rec = self._open.get(key)
            if rec is None or k == 0:
                # A new record (a worker's earlier one for the same range,
                # if any, was cut by its death: it is dropped).
                rec = self._open[key] = [m, [None] * m]
            if k < m and rec[1][k] is None:
                rec[1][k] = body
                rec[0] -= 1
            if rec[0] == 0:
                del self._open[key]
                yield region, index, count, pid, start, end, b"".join(rec[1])
        if at < n:
            self._rest = data[at:]

    def drop(self, region):
        """Forget the incomplete records of a batch that has ended."""
        if self._open:
            for key in [key for key in self._open if key[1] == region]:
                del self._open[key]


# ---- the worker's side ---------------------------------------------------------

_pipe = [None]  # this worker's descriptor of its client's pipe; -1: none


def _open():
    spec = os.environ.get(ENV)
    fd = -1
    if spec:
        from safepool._oob import open_fd
        try:
            pid, n, ino = (int(x) for x in spec.split(":"))
            # O_NONBLOCK for the open alone: a pipe opened for writing waits
            # for a reader, and fails at once without one (the client is gone).
            fd = open_fd(pid, n, ino, os.O_WRONLY | os.O_NONBLOCK)
            os.set_blocking(fd, True)
        except (OSError, ValueError):
            fd = -1
    _pipe[0] = fd
    return fd


def send(output, region, index, count, start, end):
    """Write output, the values of count items from index on of the batch
    whose inbox region is region, to the client's pipe. Report whether it
    went; False when the worker has no pipe to its client (it then sends
    the values to the binary)."""
    fd = _pipe[0]
    if fd is None:
        fd = _open()
    if fd < 0 or len(output) > LIMIT:
        return False
    m = max(1, -(-len(output) // _DATA))
    pid = os.getpid()
    write, pack = os.write, PIECE.pack
    view = memoryview(output)
    try:
        for k in range(m):
            body = view[k * _DATA:(k + 1) * _DATA]
            # One write of at most PIPE_BUF bytes: whole in the pipe, never
            # mixed with another worker's.
            write(fd, pack(len(body), k, m, pid, region, index, count, start, end) + body)
    except OSError:
        # The client is gone (or its pipe broke) after some pieces: the
        # record is never complete, and the values go to the binary.
        os.close(fd)
        _pipe[0] = -1
        return False
    return True
