"""Task functions for test_shared: they must live in an importable module."""
import os
import signal
import time

_table = None


def identity(x):
    return x


def mapped_from(obj, name):
    """Whether obj's memory lies in a mapping of the memory file named name
    (safepool-args, safepool-shared) in this process."""
    if hasattr(obj, "__array_interface__"):
        addr = obj.__array_interface__["data"][0]
    else:
        import numpy
        addr = numpy.frombuffer(obj, dtype="u1").__array_interface__["data"][0]
    with open("/proc/self/maps") as f:
        for line in f:
            if name in line:
                lo, hi = (int(x, 16) for x in line.split()[0].split("-"))
                if lo <= addr < hi:
                    return True
    return False


def arg_info(x):
    """What a worker sees of a big array argument: whether it lies in the
    task's argument memory file, whether it is writable, and its sum after
    a write to it (the write must stay in this worker)."""
    in_memfd = mapped_from(x, "memfd:safepool-args")
    writable = x.flags.writeable
    if writable:
        x[...] = 1
    return in_memfd, writable, float(x.sum())


def big_result(n):
    import numpy
    return numpy.full(n, 7, dtype="u1")


def fds_named(pid, prefix="/memfd:"):
    out = []
    try:
        names = os.listdir("/proc/%d/fd" % pid)
    except OSError:
        return out
    for n in names:
        try:
            target = os.readlink("/proc/%d/fd/%s" % (pid, n))
        except OSError:
            continue
        if target.startswith(prefix):
            out.append(target)
    return out


def shared_info(h):
    """What a worker sees of a shared handle: its contents, whether it is
    read-only, and whether it lies in the shared memory file (no copy)."""
    import numpy
    if isinstance(h, memoryview):
        return h.tobytes(), h.format, h.shape, h.readonly, mapped_from(h, "memfd:safepool-shared") if h.nbytes else True
    return (numpy.array(h, copy=True), not h.flags.writeable, h.flags.f_contiguous,
            mapped_from(h, "memfd:safepool-shared") if h.size else True)


def file_info(h):
    import numpy
    if isinstance(h, memoryview):
        return h.tobytes(), h.readonly
    return numpy.array(h, copy=True), not h.flags.writeable


def remember(table):
    global _table
    _table = table


def lookup(i):
    return int(_table[i])


def row_sum(h, i):
    return float(h[i].sum())


def row_sum_or_die(h, i, at):
    s = float(h[i].sum())
    if i == at:
        os.kill(os.getpid(), signal.SIGKILL)
    return s


def hold(x, marker, seconds=60.0):
    """Hold the argument x (in flight), signal it by creating marker, and
    sleep."""
    with open(marker + ".%d" % os.getpid(), "w"):
        pass
    time.sleep(seconds)
    return 0


def charges(h):
    """Read all of the shared array h, then return this worker's anonymous
    memory (what safepool's private-memory accounting counts), its shared
    memory, and the usage of its own memory cgroup if it has one (else
    None), in bytes."""
    float(h.sum())
    status = {}
    with open("/proc/self/status") as f:
        for line in f:
            k, _, v = line.partition(":")
            if k in ("RssAnon", "RssShmem", "VmSwap"):
                status[k] = int(v.split()[0]) * 1024
    usage = None
    with open("/proc/self/cgroup") as f:
        for line in f:
            _, ctrl, path = line.rstrip("\n").split(":", 2)
            if "/safepool-" in path and ("memory" in ctrl.split(",") or ctrl == ""):
                for name in ("/sys/fs/cgroup/memory%s/memory.usage_in_bytes" % path,
                             "/sys/fs/cgroup%s/memory.current" % path):
                    try:
                        with open(name) as g:
                            usage = int(g.read())
                        break
                    except OSError:
                        pass
    return status["RssAnon"] + status.get("VmSwap", 0), status["RssShmem"], usage


def big_result_of(v):
    """A 1 MiB array filled with v: the results of a batch's items differ."""
    import numpy
    return numpy.full(1 << 20, v, dtype="u1")
