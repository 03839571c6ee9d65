"""Task functions for the tests: they must live in an importable module."""
import os
import signal
import time

_initialized = None


def square(x):
    return x * x


def add(a, b):
    return a + b


def kill_self_at(x, at=7):
    """Kill the worker with SIGKILL on item `at`."""
    if x == at:
        os.kill(os.getpid(), signal.SIGKILL)
    return x * x


def kill_once(x, marker, at=3):
    """Kill the worker on item `at` the first time only (marker file)."""
    if x == at:
        try:
            fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            return x * x
        os.close(fd)
        os.kill(os.getpid(), signal.SIGKILL)
    return x * x


def hog_at(x, at=3):
    """Allocate memory without bound on item `at`, until killed."""
    if x == at:
        hog = []
        while True:
            hog.append(bytearray(8 << 20))  # touched: bytearray zero-fills
    return x * x


def fail_at(x, at=2):
    if x == at:
        raise ValueError("bad item %d" % x)
    return x


class Unpicklable(Exception):
    def __init__(self, a, b):  # pickles but does not unpickle: __init__ needs two args
        super().__init__("%s-%s" % (a, b))
        self.lock = __import__("threading").Lock()


def raise_unpicklable(x):
    raise Unpicklable(x, x)


class HTTPFailure(Exception):
    """An exception whose __init__ takes other arguments than its args (as
    many libraries' do): pickle sends it, and cannot make it again."""

    def __init__(self, status, body):
        super().__init__("HTTP %d: %s" % (status, body))
        self.status = status
        self.body = body


def raise_http_failure(status):
    raise HTTPFailure(status, "not here")


class NoText(Exception):
    """An exception whose str() fails."""

    def __str__(self):
        raise RuntimeError("no text")


def raise_no_text(x):
    raise NoText(x)


def sleep_then_square(x):
    """Sleep x seconds, then return x * x."""
    time.sleep(x)
    return x * x


def sleep_for(seconds):
    time.sleep(seconds)
    return seconds


def fail_at_value(seconds):
    """sleep_for, but a negative value raises ValueError."""
    if seconds < 0:
        raise ValueError("negative: %r" % seconds)
    return sleep_for(seconds)


def pid_of(_=None):
    return os.getpid()


def init(directory, value):
    """An initializer: records its pid in directory and sets a global."""
    global _initialized
    _initialized = value
    with open(os.path.join(directory, str(os.getpid())), "a") as f:
        f.write("x")


def initialized(_=None):
    return _initialized, os.getpid()


def length(b):
    return len(b)


def print_and_return(x):
    print("task output", x, flush=True)
    return x


def bad_init():
    raise RuntimeError("initializer failed")


def loaded(names):
    """Which of the modules named are imported in this process."""
    import sys
    return sorted(n for n in names if n in sys.modules)


def argv(_=None):
    import sys
    return list(sys.argv)


def hold(started, release):
    """Create the file started, then wait until the file release exists
    (at most 120 s); return "released"."""
    with open(started, "w"):
        pass
    deadline = time.monotonic() + 120
    while not os.path.exists(release):
        if time.monotonic() > deadline:
            return "timed out"
        time.sleep(0.01)
    return "released"


def kill_every_20th(x, directory, together=4):
    """Kill the worker with SIGKILL on every item x with x % 20 == 7. The
    first `together` such items wait for each other (their pids are
    recorded in directory; at most 30 s), so that those workers die at once."""
    if x % 20 == 7:
        open(os.path.join(directory, str(os.getpid())), "w").close()
        deadline = time.monotonic() + 30
        while len(os.listdir(directory)) < together and time.monotonic() < deadline:
            time.sleep(0.005)
        os.kill(os.getpid(), signal.SIGKILL)
    return x * x


def identity(x):
    return x


def negate(x):
    return -x


def raise_with(message):
    raise ValueError(message)


def span(seconds):
    """Sleep; return when this ran, as (start, end) in Unix seconds."""
    start = time.time()
    time.sleep(seconds)
    return start, time.time()


def meet(_item, directory, n, limit=60.0):
    """Record this call in directory, then wait until n calls have (at most
    limit seconds); report whether they all met, so ran at the same time."""
    open(os.path.join(directory, "%d-%d" % (os.getpid(), time.monotonic_ns())), "w").close()
    deadline = time.monotonic() + limit
    while len(os.listdir(directory)) < n:
        if time.monotonic() > deadline:
            return False
        time.sleep(0.005)
    return True


def raise_until(directory, times, value):
    """Raise ValueError the first `times` calls (counted by files in
    directory), then return value."""
    n = len(os.listdir(directory))
    open(os.path.join(directory, "%d-%d" % (os.getpid(), time.monotonic_ns())), "w").close()
    if n < times:
        raise ValueError("call %d fails" % (n + 1))
    return value


def kill_self():
    os.kill(os.getpid(), signal.SIGKILL)


def hog(limit_mib=4096):
    """Allocate memory (touched) without bound, until killed; stop at
    limit_mib so that a run without a memory limit ends too."""
    held = []
    for _ in range(limit_mib // 8):
        held.append(bytearray(8 << 20))
    return len(held)


def touch(path, value=None):
    """Create the file path; return value."""
    open(path, "w").close()
    return value


def numpy_hog_at(x, at=3):
    """Sum of a numpy array of x ones; on item `at`, allocate arrays of
    64 MiB (touched) without bound, until killed."""
    import numpy as np
    if x == at:
        held = []
        while True:
            held.append(np.ones(64 << 20, dtype=np.uint8))
    return int(np.ones(x).sum())


def soft_sleep(seconds, catch):
    """Sleep; with catch, stop early at the soft time limit and return "caught"."""
    from safepool import SoftTimeLimitExceeded
    try:
        time.sleep(seconds)
    except SoftTimeLimitExceeded:
        if not catch:
            raise
        return "caught"
    return "slept"


def fail_first(counter, times, exc=ConnectionError):
    """Raise exc the first `times` calls (counted in the file counter); then
    return the number of calls."""
    with open(counter, "a") as f:
        f.write("x")
    with open(counter) as f:
        n = len(f.read())
    if n <= times:
        raise exc("call %d" % n)
    return n


def span(seconds):
    """Sleep; return (start, end) in Unix seconds."""
    start = time.time()
    time.sleep(seconds)
    return start, time.time()


def touch(path):
    """Create the file path; return its name."""
    open(path, "w").close()
    return path


def rendezvous(directory, n, wait):
    """Wait until n tasks (this one included) have called this with
    directory, or for wait seconds; return (start, end, met)."""
    start = time.time()
    open(os.path.join(directory, str(os.getpid()) + "-" + str(start)), "w").close()
    met = False
    while time.time() < start + wait:
        if len(os.listdir(directory)) >= n:
            met = True
            break
        time.sleep(0.01)
    return start, time.time(), met


def die_once_at_after(d, seconds, x, at=3):
    """die_once_at, for items that take seconds before item at."""
    if x < at:
        time.sleep(seconds)
    return die_once_at(d, x, at)


def die_once_at_each(d, ats, x):
    """Note a run of item x in d; on each item of ats, the first time, kill
    the worker with SIGKILL mid-task."""
    with open(os.path.join(d, "ran-%d" % x), "a") as f:
        f.write("x")
    mark = os.path.join(d, "died-%d" % x)
    if x in ats and not os.path.exists(mark):
        open(mark, "w").close()
        os.kill(os.getpid(), signal.SIGKILL)
    return x * x


def die_once_at(d, x, at=3):
    """Note a run of item x in d; on item `at`, the first time, kill the
    worker with SIGKILL mid-task."""
    with open(os.path.join(d, "ran-%d" % x), "a") as f:
        f.write("x")
    if x == at and not os.path.exists(os.path.join(d, "died")):
        open(os.path.join(d, "died"), "w").close()
        os.kill(os.getpid(), signal.SIGKILL)
    return x * x


class Doubled(list):
    """A list whose iteration gives each item doubled."""

    def __iter__(self):
        for x in list.__iter__(self):
            yield 2 * x


def clean_up_on_sigterm(marker, started):
    """Install a SIGTERM handler that writes the file marker and exits, write
    the file started, and sleep: a task that cleans up when its timeout's
    SIGTERM comes."""
    def on_term(signum, frame):
        with open(marker, "w") as f:
            f.write("cleaned up")
        os._exit(0)
    signal.signal(signal.SIGTERM, on_term)
    with open(started, "w"):
        pass
    time.sleep(60)
    return "not timed out"


def stop_at(x, at=1):
    """x, but raise StopIteration at x == at."""
    if x == at:
        raise StopIteration("task %d" % x)
    return x


def child_sees_worker_environment(_=None):
    """What a program that a task starts finds of the worker's pipes in
    its environment: the names of the SAFEPOOL_ variables it was given."""
    import subprocess
    import sys
    out = subprocess.run(
        [sys.executable, "-c", "import os; print(sorted(k for k in os.environ if k in "
         "('SAFEPOOL_PROTOCOL', 'SAFEPOOL_TASK_FD', 'SAFEPOOL_RESULT_FD', 'SAFEPOOL_PAGE_FD')))"],
        capture_output=True, text=True, check=True)
    return out.stdout.strip()


def pin_gpu(gpus):
    """An initializer that pins this worker to the GPU of its slot, as
    docs/python.md shows."""
    import safepool
    os.environ["CUDA_VISIBLE_DEVICES"] = gpus[safepool.worker_slot() - 1]


def slot_info(_=None):
    """Return this worker's slot, its pinned GPU and its pid."""
    import safepool
    return safepool.worker_slot(), os.environ.get("CUDA_VISIBLE_DEVICES"), os.getpid()


def big_result_noted(args):
    """Note index i as started in directory d (a file named i), then return
    size bytes."""
    i, d, size = args
    open(os.path.join(d, str(i)), "w").close()
    return bytes(size)


class HoldsPool:
    """An object that holds a pool, whose bound method is mapped on it."""

    def __init__(self, pool):
        self.pool = pool

    def work(self, x):
        return x


def active_joblib_backend(_):
    """The class name and nesting level of joblib's active backend in the
    task that calls it."""
    from joblib.parallel import get_active_backend
    backend, _ = get_active_backend()
    return type(backend).__name__, getattr(backend, "nesting_level", None)
