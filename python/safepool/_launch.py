"""Starting a pool's safepool binary, first thing.

A pool's start is dominated by processes that start one after the other:
the binary, then its workers (fresh interpreters that import the parent's
main script). So Pool() checks its arguments, starts the binary and sends
it the pool's configuration (the hello frame of the bridge protocol, see
docs/protocol.md) before it imports the rest of the client (threads,
pickle, JSON); those imports then run while the binary and its workers
start. This module imports nothing that the interpreter has not already
loaded.
"""
import _thread
import os
import sys
import time

from . import _binary, _direct

POLICIES = ("skip", "retry", "abort")

# What the worker (safepool.worker) reads from its environment.
ENV_SYSPATH = "SAFEPOOL_PY_SYSPATH"  # the parent's sys.path, packed (pack_strings)
ENV_ARGV = "SAFEPOOL_PY_ARGV"  # the parent's sys.argv, packed
ENV_MAIN = "SAFEPOOL_PY_MAIN"  # "path:<file>" or "name:<module>": the parent's main module
ENV_INIT = "SAFEPOOL_PY_INIT"  # the path of a file holding the pickled (initializer, initargs)
ENV_AUTHKEY = "SAFEPOOL_PY_AUTHKEY"  # multiprocessing's authentication key of this process, in hex
# A packed value longer than this (sys.argv of a script run on thousands of
# files, `script.py inputs/*.json`) goes in a file that the variable's name
# with _FILE appended names: exec refuses an environment string above 128
# KiB (MAX_ARG_STRLEN) with E2BIG, and the whole environment and arguments
# above ARG_MAX, so that neither the binary nor its workers could start.
ENV_STRING_MAX = 32 << 10
# The client's PYTHONPATH, packed: none (unset) or one string. Workers get
# the package's directory in front of it, to import safepool.worker, and
# set it back for the tasks and the programs they start.
ENV_PYTHONPATH = "SAFEPOOL_PY_PYTHONPATH"

# The worker's entry point. -c rather than -m: running a module with -m
# imports runpy and pkgutil, which cost a worker about 10 ms at start.
WORKER_CODE = "from safepool.worker import main; main()"

_SIGKILL = 9  # the signal module would import enum

from ._protocol import BRIDGE_VERSION, CLOCK_ENV, CLOCK_SIZE, K_HELLO

# How many tasks (items) the binary sends a worker ahead of its answers.
PIPELINE = 2


def pack_strings(strings) -> str:
    """Encode a list of strings in one environment variable: each as its
    length, a colon and itself. safepool.worker.unpack_strings decodes it
    without importing json."""
    return "".join("%d:%s" % (len(s), s) for s in strings)


def main_spec():
    """Say how workers can import the parent's __main__ module, as
    multiprocessing's spawn start method does: "name:<module>",
    "path:<file>", or None when there is nothing to import.

    A path is given only for a real script: an existing regular file. A
    program read from standard input has __file__ "<stdin>", and one run
    with -c or interactively has none; a file of that name in the working
    directory is not the program, and anyone who can write there could
    have put it there."""
    main = sys.modules.get("__main__")
    if main is None:
        return None
    spec = getattr(main, "__spec__", None)
    name = getattr(spec, "name", None)
    if name:
        if name == "__main__" or name.endswith(".__main__"):
            return None
        return "name:" + name
    path = getattr(main, "__file__", None)
    if not isinstance(path, str) or not path or path in ("<stdin>", "<string>", "-c"):
        return None
    if path.startswith("<") and path.endswith(">"):
        return None  # a pseudo-file name, such as <input>
    path = os.path.normpath(os.path.abspath(path))
    if not os.path.isfile(path):
        return None
    if os.path.splitext(os.path.basename(path))[0] == "ipython":
        return None
    return "path:" + path


def interpreter_flags() -> list:
    """The command-line options of this interpreter that workers get too,
    as multiprocessing's spawn gives its workers (-O, -W, -X dev, -X
    utf8..., and -u): a script run as `python3 -O -W ignore script.py` runs its
    tasks without asserts and without warnings. Not -E or -I, which would
    make workers ignore the PYTHONPATH by which they import safepool."""
    f = sys.flags
    args = []
    if f.optimize > 0:
        args.append("-" + "O" * f.optimize)
    for name, opt in (("dont_write_bytecode", "B"), ("no_site", "S"), ("no_user_site", "s"),
                      ("safe_path", "P"), ("bytes_warning", "b"), ("verbose", "v")):
        v = int(getattr(f, name, 0))
        if v > 0:
            args.append("-" + opt * v)
    # -u, which sys.flags does not show: the streams are unbuffered.
    import io
    if isinstance(getattr(sys.__stdout__, "buffer", None), io.FileIO):
        args.append("-u")
    warnopts = list(sys.warnoptions)
    # What -b and -X dev add to sys.warnoptions themselves.
    for implied in (("error::BytesWarning" if f.bytes_warning > 1 else "default::BytesWarning")
                    if f.bytes_warning else None,
                    "default" if f.dev_mode else None):
        if implied in warnopts:
            warnopts.remove(implied)
    args.extend("-W" + opt for opt in warnopts)
    xoptions = dict(getattr(sys, "_xoptions", {}))
    if f.dev_mode:
        xoptions["dev"] = True
    for name, value in xoptions.items():
        args.extend(("-X", name if value is True else "%s=%s" % (name, value)))
    return args


def check_options(processes, retries, on_worker_death, initializer):
    """Return (processes, retries, policy) checked and with their defaults
    filled in, or raise ValueError or TypeError."""
    if processes is None:
        processes = os.cpu_count() or 1
    # Checked here, with the argument's name: the binary would refuse what
    # is not an int (or not a number) with a message about its hello that
    # blames a client of another version.
    processes = _count(processes, "processes")
    if processes < 1:
        raise ValueError("processes must be at least 1")
    retries = _count(retries, "retries")
    if on_worker_death is None:
        on_worker_death = "retry" if retries else "skip"
    if on_worker_death not in POLICIES:
        raise ValueError("on_worker_death must be one of %s, not %r" % (", ".join(POLICIES), on_worker_death))
    if retries < 0:
        raise ValueError("retries must not be negative")
    if initializer is not None and not callable(initializer):
        raise TypeError("initializer must be a callable")
    # "abort" retries too, then stops the pool for a task that died on
    # every attempt (GNU parallel's --retries with --halt now,fail=1).
    return processes, (retries if on_worker_death in ("retry", "abort") else 0), on_worker_death


def _count(value, name: str) -> int:
    """value as an int (an int, or an integer such as numpy's), or raise
    TypeError naming the argument."""
    if isinstance(value, bool):
        raise TypeError("%s must be an int, not bool" % name)
    try:
        return value.__index__()  # operator.index, without importing operator
    except (AttributeError, TypeError):
        raise TypeError("%s must be an int, not %s" % (name, type(value).__name__)) from None


def check_seconds(value, name: str) -> float:
    """value (seconds: None, or a finite number of at least 0) as a float,
    0.0 for None, or raise TypeError or ValueError naming the argument."""
    if value is None:
        return 0.0
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError("%s must be a number of seconds or None, not %r" % (name, value))
    if not 0 <= value < float("inf"):  # NaN too
        raise ValueError("%s must be a finite number of seconds of at least 0 (None: the default), not %r"
                         % (name, value))
    return float(value)


def json_string(s: str) -> str:
    """s as a JSON string, in ASCII (as json.dumps escapes it)."""
    out = ['"']
    for ch in s:
        o = ord(ch)
        if ch == '"' or ch == "\\":
            out.append("\\" + ch)
        elif 0x20 <= o < 0x7f:
            out.append(ch)
        elif o > 0xFFFF:
            o -= 0x10000
            out.append("\\u%04x\\u%04x" % (0xD800 + (o >> 10), 0xDC00 + (o & 0x3FF)))
        else:
            out.append("\\u%04x" % o)
    out.append('"')
    return "".join(out)


def hello_frame(hello: dict) -> bytes:
    """The hello frame whose payload is hello (ints, floats and lists of
    strings) as JSON, without importing json."""
    members = []
    for k, v in hello.items():
        if isinstance(v, str):
            v = json_string(v)
        elif isinstance(v, list):
            v = "[" + ", ".join(json_string(x) for x in v) + "]"
        elif isinstance(v, bool):
            v = "true" if v else "false"
        else:
            v = repr(v)
        members.append("%s: %s" % (json_string(k), v))
    payload = ("{" + ", ".join(members) + "}").encode()
    return len(payload).to_bytes(4, "big") + K_HELLO.to_bytes(1, "big") + bytes(8) + payload


class Launch:
    """A pool's binary, started and sent the pool's configuration: its
    process, the client's ends of its two pipes, and the options, checked
    before it started.

    The pipes' file descriptors belong to whoever takes them (the pool's
    _Core); until then, abandon() closes them, which makes the binary exit.
    """

    def __init__(self, processes, *, initializer=None, initargs=(), retries=0, on_worker_death=None,
                 timeout=None, mem_limit=0, max_tasks_per_child=None, max_rss=0, grace=None, python=None,
                 options=None):
        """options (a _options.EngineOptions) adds the governor's and the
        retry policy's settings to the hello."""
        worker = sys.modules.get("safepool.worker")
        if worker is not None and getattr(worker, "_IMPORTING_MAIN", False):
            main = getattr(sys.modules.get("__mp_main__"), "__file__", None) or "the main script"
            raise RuntimeError(
                "safepool: a pool was made while a worker was importing %s: each worker runs the main script "
                "again to find your functions, so the code that makes the pool must be under "
                "`if __name__ == \"__main__\":` (as with multiprocessing's spawn)" % main)
        self.processes, self.retries, self.policy = check_options(processes, retries, on_worker_death,
                                                                  initializer)
        self.timeout = timeout
        self.max_tasks_per_child = int(max_tasks_per_child or 0)
        hello = {
            "version": BRIDGE_VERSION,
            # This interpreter's options, not another's (python).
            "command": [python or sys.executable, *(interpreter_flags() if python is None else ()), "-c",
                        WORKER_CODE],
            "workers": self.processes,
            "mem_limit": int(mem_limit or 0),
            "timeout": check_seconds(timeout, "timeout"),
            "max_tasks_per_worker": int(max_tasks_per_child or 0),
            "max_rss": int(max_rss or 0),
            "grace": check_seconds(grace, "grace"),
            "pipeline": PIPELINE,
            # The pool's policy, which the binary applies to every item.
            "retries": self.retries,
            "on_worker_death": self.policy,
        }
        if options is None:
            from ._options import EngineOptions
            options = EngineOptions()
        self.options = options
        hello.update(options.hello())
        # An exception in retry_on (the pool's, or a call's) gets the death
        # retries' budget when it is larger: the binary retries every error
        # frame up to one budget, and the worker sends error frames only for
        # the exceptions to retry (docs/python.md).
        hello["task_error_retries"] = max(options.task_error_retries, self.retries)
        if options.nats:
            # The workers run on the agents, other machines: they get no
            # file of this one (an initializer's, or memory files).
            if initializer is not None:
                raise ValueError("initializer does not work with nats=: the workers run on the agents")
            from . import _oob
            _oob.IN_BAND[0] = True
        # The pool clock, which stands still while the binary keeps the pool
        # paused for this process stopped (Ctrl-Z): what wait_timeout counts.
        # The agents' workers run on other machines, and are never paused.
        self.clock = None  # its word (a one-word memoryview), or None: wait_timeout counts Unix time
        self.clock_fd = -1
        if not options.nats:
            try:
                path, self.clock_fd, self.clock = _make_clock()
            except (AttributeError, OSError, ValueError):
                pass
            else:
                hello["clock"] = path
        frame = hello_frame(hello)
        self.init_file = None  # where the workers read the initializer
        self.init_fd = -1  # the memory file that holds it, or -1: init_file is a named file
        binary = _binary.find_binary()
        env = dict(os.environ)
        pkg_parent = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        env[ENV_PYTHONPATH] = pack_strings([env["PYTHONPATH"]] if "PYTHONPATH" in env else [])
        env["PYTHONPATH"] = pkg_parent + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        self.files = []  # (path, descriptor) of the files of values too long for the environment
        for name, value in ((ENV_SYSPATH, pack_strings([p if p else os.getcwd() for p in sys.path])),
                            (ENV_ARGV, pack_strings(sys.argv))):
            env.pop(name + "_FILE", None)
            if len(value) <= ENV_STRING_MAX:
                env[name] = value
                continue
            env.pop(name, None)
            try:
                path, fd = _write_file("safepool-" + name[len("SAFEPOOL_PY_"):].lower(), os.fsencode(value))
            except BaseException:
                self.cleanup()
                raise
            self.files.append((path, fd))
            env[name + "_FILE"] = path
        env.pop(ENV_MAIN, None)
        env.pop(ENV_INIT, None)
        env.pop(CLOCK_ENV, None)
        env.pop(ENV_AUTHKEY, None)
        mp_process = sys.modules.get("multiprocessing.process")
        if mp_process is not None and not options.nats:
            # This program uses multiprocessing: a Manager's proxies sent
            # to the workers (a Queue for progress, a dict) connect to the
            # manager with this process's key, which multiprocessing's
            # spawn gives its children as well. (Not imported here: its
            # import costs the workers tens of milliseconds each.)
            env[ENV_AUTHKEY] = bytes(mp_process.current_process().authkey).hex()
        if self.clock is not None:
            env[CLOCK_ENV] = hello["clock"]
        # None: workers import no __main__. The agents' workers do not:
        # what it defines goes by value with cloudpickle.
        self.main = main = None if options.nats else main_spec()
        # With nats every item is a task of its own on the agents: the
        # client sends batches of one item.
        self.one_item_batches = bool(options.nats)
        if main:
            env[ENV_MAIN] = main
        if initializer is not None:
            self.init_file, self.init_fd = _write_initializer(initializer, initargs, main is not None)
            env[ENV_INIT] = self.init_file
        # The door through which workers make their ways to send a map's
        # values straight to this process (_direct). A worker that cannot
        # open it (this process is not dumpable) sends them to the binary.
        self.direct = None  # the door's (read end, write end)
        env.pop(_direct.ENV, None)
        if not options.nats:
            try:
                r, w, spec = _direct.make_door()
            except OSError:
                pass
            else:
                self.direct = (r, w)
                env[_direct.ENV] = spec
        try:
            self.proc = Process(binary, env)
        except OSError as e:
            self.cleanup()
            self.close_clock()
            if self.direct is not None:
                os.close(self.direct[0])
                self.direct = None
            from .errors import BrokenPool
            raise BrokenPool("cannot start the safepool binary %s: %s" % (binary, e)) from e
        self.to_fd, self.from_fd = self.proc.to_fd, self.proc.from_fd
        try:
            os.write(self.to_fd, frame)
        except OSError:
            pass  # the binary is gone already: the pool's reader reports it
        except BaseException:
            # Ctrl-C: no pool will own the binary.
            self.abandon()
            raise

    def cleanup(self):
        """Remove (or close) the initializer's file and those of sys.argv and
        sys.path too long for the environment, and close the write end of the
        direct path's door: no worker announces its pipe any more."""
        direct = getattr(self, "direct", None)
        if direct is not None and direct[1] >= 0:
            try:
                os.close(direct[1])
            except OSError:
                pass
            self.direct = (direct[0], -1)
        files = getattr(self, "files", [])
        if self.init_file:
            files.append((self.init_file, self.init_fd))
            self.init_file, self.init_fd = None, -1
        while files:
            path, fd = files.pop()
            try:
                if fd >= 0:
                    os.close(fd)
                else:
                    os.unlink(path)
            except OSError:
                pass

    def close_clock(self):
        """Close this process's descriptor of the pool clock, once no worker
        is to start (workers open it through /proc when they start). The
        mapping, clock, stays readable."""
        if getattr(self, "clock_fd", -1) >= 0:
            try:
                os.close(self.clock_fd)
            except OSError:
                pass
            self.clock_fd = -1

    def abandon(self):
        """Give up on the binary before a pool took it: close the pipes (the
        binary then kills its workers and exits) and reap it."""
        for fd in (self.to_fd, self.from_fd) + ((self.direct[0],) if self.direct else ()):
            try:
                os.close(fd)
            except OSError:
                pass
        if not self.proc.wait(5.0):
            self.proc.kill()
            self.proc.wait()
        self.cleanup()
        self.close_clock()


def _make_clock():
    """Make the pool clock's file (docs/protocol.md): a memory file of
    CLOCK_SIZE zero bytes, a pool never paused, mapped here. Return the path
    by which the binary and the workers open it (/proc/<pid>/fd/<n>, as the
    memory files of big arguments), its descriptor and its word. A binary
    or worker that cannot open it reads CLOCK_MONOTONIC: the word left 0."""
    import mmap
    fd = os.memfd_create("safepool-clock", os.MFD_CLOEXEC)
    try:
        os.ftruncate(fd, CLOCK_SIZE)
        word = memoryview(mmap.mmap(fd, CLOCK_SIZE, prot=mmap.PROT_READ)).cast("Q")
    except BaseException:
        os.close(fd)
        raise
    return "/proc/%d/fd/%d" % (os.getpid(), fd), fd, word


def _write_initializer(initializer, initargs, main_importable: bool):
    """Write the pickled (initializer, initargs) where the workers read it.
    Return its path and the descriptor by which this process holds it.

    It is a memory file of this process, which workers open through
    /proc/<pid>/fd/<n> (as the memory files of big arguments): it goes with
    this process however that ends, SIGKILL included, where a named file
    would stay behind (with initargs of some GiB, in a /tmp that may be
    memory). A process that is not dumpable, whose descriptors other
    processes cannot open, or a kernel without memfd_create, writes a
    temporary file instead (descriptor -1), which Launch.cleanup removes."""
    from ._pickling import dumps_code
    return _write_file("safepool-init", dumps_code((initializer, tuple(initargs)), initializer, main_importable))


def _write_file(name: str, data: bytes):
    """Write data in a memory file named name (or, where workers could not
    open it, a temporary file: see _write_initializer). Return the path by
    which workers open it and the descriptor by which this process holds
    it (-1: a named file, to remove)."""
    try:
        from ._oob import dumpable
        if not dumpable():
            raise OSError("not dumpable")
        fd = os.memfd_create(name)
    except (AttributeError, OSError):
        import tempfile
        fd, path = tempfile.mkstemp(prefix=name + "-")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
        except BaseException:
            os.unlink(path)  # a $TMPDIR too small for it, say: leave nothing
            raise
        return path, -1
    try:
        with open(fd, "wb", closefd=False) as f:
            f.write(data)
    except BaseException:
        os.close(fd)
        raise
    return "/proc/%d/fd/%d" % (os.getpid(), fd), fd


class Process:
    """The binary's process, started with posix_spawn, and its two pipes:
    to_fd (frames to the binary) and from_fd (frames from it).

    subprocess.Popen would do, but importing subprocess costs more than the
    rest of the client's start. As Popen(start_new_session=True,
    close_fds=True, stdin=DEVNULL) would, the binary gets a session of its
    own (the terminal's Ctrl-C reaches only this process, which decides), no
    descriptor of this process but stdout, stderr and its two pipes, and
    /dev/null as stdin.
    """

    def __init__(self, binary: str, env: dict):
        import fcntl
        self.returncode = None
        self._lock = _thread.allocate_lock()  # serializes waitpid; a waiter holds it
        to_r, to_w = os.pipe()
        from_r, from_w = os.pipe()
        # The child's ends, at 5 or above, go to 3 and 4 in the child; copies
        # there cannot be overwritten by the dup2 to 3 or 4.
        a = b = -1
        # Inheritable descriptors at or above the limit of open files
        # (inherited, or opened before the program lowered the limit):
        # posix_spawn refuses to close those (EBADF). They are made
        # close-on-exec for the spawn instead, and inheritable again after.
        above = []
        try:
            a = fcntl.fcntl(to_r, fcntl.F_DUPFD_CLOEXEC, 5)
            b = fcntl.fcntl(from_w, fcntl.F_DUPFD_CLOEXEC, 5)
            actions = [(os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
                       (os.POSIX_SPAWN_DUP2, a, 3), (os.POSIX_SPAWN_DUP2, b, 4)]
            limit = os.sysconf("SC_OPEN_MAX")
            for fd in _inheritable_fds():
                if fd >= limit > 0:
                    os.set_inheritable(fd, False)
                    above.append(fd)
                elif fd > 4:
                    actions.append((os.POSIX_SPAWN_CLOSE, fd))
            self.pid = os.posix_spawn(binary, [binary, "__bridge", "--in-fd", "3", "--out-fd", "4"], env,
                                      file_actions=actions, setsid=True)
        except BaseException:
            for fd in (to_w, from_r):
                os.close(fd)
            raise
        finally:
            for fd in above:
                os.set_inheritable(fd, True)
            for fd in (to_r, from_w, a, b):
                if fd >= 0:
                    os.close(fd)
        self.to_fd, self.from_fd = to_w, from_r

    def poll(self):
        """Return the exit status (negative: killed by that signal) if the
        process has exited, else None."""
        if self.returncode is None and self._lock.acquire(False):
            try:
                if self.returncode is None:
                    self._reap(os.WNOHANG)
            finally:
                self._lock.release()
        return self.returncode

    def wait(self, timeout=None) -> bool:
        """Wait for the process to exit, at most timeout seconds (None: no
        limit). Report whether it has exited."""
        if self.returncode is not None:
            return True
        if timeout is None:
            with self._lock:
                if self.returncode is None:
                    self._reap(0)
            return True
        deadline = time.monotonic() + timeout
        if not self._lock.acquire(True, timeout):
            return self.returncode is not None
        try:
            if self.returncode is not None or self._reap(os.WNOHANG):
                return True
            # A pidfd becomes readable when the process exits: no polling.
            pidfd = -1
            try:
                pidfd = os.pidfd_open(self.pid)
            except (AttributeError, OSError):
                pass
            if pidfd >= 0:
                try:
                    import select
                    p = select.poll()
                    p.register(pidfd, select.POLLIN)
                    p.poll(max(0, int(1000 * (deadline - time.monotonic())) + 1))
                finally:
                    os.close(pidfd)
                return self._reap(os.WNOHANG)
            delay = 0.0005
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                time.sleep(min(delay, remaining))
                delay = min(2 * delay, 0.02)
                if self._reap(os.WNOHANG):
                    return True
        finally:
            self._lock.release()

    def _reap(self, flags) -> bool:
        """waitpid once, with _lock held; report whether it has exited."""
        try:
            pid, status = os.waitpid(self.pid, flags)
        except ChildProcessError:
            # Reaped elsewhere (SIGCHLD ignored, say): its status is lost,
            # and Popen says 0 then too.
            self.returncode = 0
            return True
        if pid == self.pid:
            self.returncode = os.waitstatus_to_exitcode(status)
            return True
        return False

    def kill(self):
        """Send SIGKILL to the process unless it has been reaped."""
        if self.returncode is None:
            try:
                os.kill(self.pid, _SIGKILL)
            except ProcessLookupError:
                pass


def _inheritable_fds():
    """The descriptors of this process that a child would inherit."""
    try:
        names = os.listdir("/proc/self/fd")
    except OSError:
        return []
    fds = []
    for name in names:
        fd = int(name)
        try:
            if os.get_inheritable(fd):
                fds.append(fd)
        except OSError:
            pass  # the directory's own descriptor, closed by now
    return fds

