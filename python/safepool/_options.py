"""The options that Pool and Executor share beyond multiprocessing's: sizes,
the start-method context, and the engine's memory governor and retry policy.

Checked here, once, before the binary starts; imports nothing that the
interpreter has not already loaded (see _launch).
"""

_UNITS = {"": 1, "b": 1, "k": 1000, "kb": 1000, "kib": 1024, "m": 1000 ** 2, "mb": 1000 ** 2,
          "mib": 1024 ** 2, "g": 1000 ** 3, "gb": 1000 ** 3, "gib": 1024 ** 3, "t": 1000 ** 4,
          "tb": 1000 ** 4, "tib": 1024 ** 4}


def parse_size(size) -> int:
    """Return a memory size in bytes: an int, or a string such as "512MiB"
    or "2GB". None means 0 (no limit)."""
    if size is None:
        return 0
    if isinstance(size, bool):
        raise TypeError("a memory size must be an int or a string such as '2GiB', not a bool")
    if isinstance(size, int):
        if size < 0:
            raise ValueError("a memory size must not be negative")
        return size
    if isinstance(size, float):
        # A number of bytes: 0.5 was taken for 0 (no limit), 1.5 for 1.
        if not (size >= 0 and size.is_integer()):
            raise ValueError("a memory size in bytes must be a whole number, not %r (or a string such as '512MiB')"
                             % (size,))
        return int(size)
    import re
    m = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([a-zA-Z]*)\s*", str(size))
    if not m or m.group(2).lower() not in _UNITS:
        raise ValueError("bad memory size %r (want bytes, or a number with KiB, MiB, GiB, KB, MB, GB...)"
                         % (size,))
    return int(float(m.group(1)) * _UNITS[m.group(2).lower()])


# The least a worker's memory limit, the governor's budget or a task's
# memory need may be (the engine's pool.MinMemory).
MIN_MEMORY = 1 << 20


def parse_memory(size, name: str) -> int:
    """parse_size(size), for the option name of a memory amount that is 0
    (none) or at least MIN_MEMORY, which the binary would refuse in its own
    words."""
    n = parse_size(size)
    if 0 < n < MIN_MEMORY:
        raise ValueError("%s=%r is below the least a worker needs, 1 MiB (a size without a unit is in bytes:"
                         " '512MiB', '2GiB')" % (name, size))
    return n


_SUFFIXES = ("KiB", "MiB", "GiB", "TiB", "PiB", "EiB")


def format_size(n: int) -> str:
    """Render n bytes as the binary's messages do (internal/bytesize):
    "312 B", "800 KiB", "1.9 GiB", "64 MiB". One decimal is shown below 10
    units unless the value is whole, rounded as shown before the form is
    chosen, so that a size reads the same in the client's words and in the
    binary's."""
    n = int(n)
    if n < 1024:
        return "%d B" % n
    f, i = float(n), -1
    while f >= 1024 and i < len(_SUFFIXES) - 1:
        f /= 1024
        i += 1

    def half_up(x):  # Go's math.Round, for x >= 0
        return float(int(x + 0.5))
    r = half_up(f * 10) / 10
    if r >= 10:
        r = half_up(f)
    if r >= 1024 and i < len(_SUFFIXES) - 1:
        r /= 1024
        i += 1
    if r == int(r):
        return "%d %s" % (r, _SUFFIXES[i])
    return "%.1f %s" % (r, _SUFFIXES[i])


def check_chunksize(chunksize):
    """Return chunksize, None or an int of at least 1, or raise: TypeError
    for what is not an integer, ValueError below 1. Checked in the calling
    thread, for every call that takes one: an imap's input is read by a
    thread of its own, which would otherwise meet a bad chunksize where no
    caller sees it (a negative one never let it submit anything, and the
    iterator waited forever)."""
    if chunksize is None:
        return None
    import operator
    try:
        n = operator.index(chunksize)
    except TypeError:
        raise TypeError("chunksize must be an int or None, not %s" % type(chunksize).__name__) from None
    if n < 1:
        raise ValueError("chunksize must be at least 1, not %d" % n)
    return n


# Start methods whose workers, like safepool's, are fresh interpreters that
# import the parent's main module and inherit none of its state.
SPAWN_LIKE = ("spawn", "forkserver")


def check_context(context, name: str) -> None:
    """Accept a multiprocessing start-method context (or its name) that
    means nothing here, and refuse one that would change what the program
    sees: safepool never forks.

    None, "spawn" and "forkserver" (names or contexts) are accepted and
    change nothing. A default context whose start method was never set is
    accepted too (the program did not ask for fork). "fork", or a context
    of that method, raises ValueError: code written for fork relies on
    workers inheriting the parent's state, and safepool's workers do not.
    """
    if context is None:
        return
    if isinstance(context, str):
        method = context
    else:
        get = getattr(context, "get_start_method", None)
        if get is None:
            raise TypeError("%s must be None, a start method's name or a multiprocessing context, not %r"
                            % (name, context))
        method = get(allow_none=True)
        if method is None:
            return
    if method in SPAWN_LIKE:
        return
    raise ValueError(
        "%s=%r: safepool never forks. Its workers are fresh interpreters started by the safepool "
        "binary, as with the 'spawn' start method: they import your main module and inherit none of "
        "this process's state. Pass %s=None (or a 'spawn' context), and give workers what they need "
        "through initializer/initargs or the task's arguments." % (name, method, name))


def _percent(value, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError("%s must be a percentage (a number from 0 to 100), not %r" % (name, value))
    if not 0 <= value <= 100:
        raise ValueError("%s must be a percentage from 0 to 100, not %r" % (name, value))
    return float(value)


def _seconds(value, name: str, default: float) -> float:
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError("%s must be a number of seconds, not %r" % (name, value))
    if value < 0:
        raise ValueError("%s must not be negative" % name)
    return float(value)


def _grace(value, name: str):
    """A grace in seconds: None (the binary's default), or a finite number
    of at least 0."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError("%s must be a number of seconds, not %r" % (name, value))
    if value < 0:
        raise ValueError("%s must not be negative (0 sends SIGKILL at once; None is the default, 3 s), not %r"
                         % (name, value))
    if value != value or value == float("inf"):
        raise ValueError("%s must be a finite number of seconds, not %r" % (name, value))
    return float(value)


def check_retry_on(value, name: str = "retry_on") -> tuple:
    """Return value (an exception class or a tuple of them; None: none) as a tuple."""
    if value is None:
        return ()
    if isinstance(value, type):
        value = (value,)
    if not isinstance(value, tuple) or not all(isinstance(c, type) and issubclass(c, BaseException)
                                               for c in value):
        raise TypeError("%s must be an exception class or a tuple of them, not %r" % (name, value))
    return value


def _limit(value, name: str):
    """A per-call limit in seconds: None (the pool's), or a positive number."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError("%s must be a number of seconds, not %r" % (name, value))
    if value <= 0:
        raise ValueError("%s must be positive" % name)
    return float(value)


def call_options(timeout=None, soft_timeout=None, mem=None, retry_on=None, wait_timeout=None):
    """The options of one apply_async or submit call, checked, as a dict
    (None when none is given): what the client sends with the task
    (timeout, mem, soft_timeout) and applies itself (retry_on,
    wait_timeout)."""
    opts = {}
    for name, value in (("timeout", timeout), ("soft_timeout", soft_timeout), ("wait_timeout", wait_timeout)):
        value = _limit(value, name)
        if value is not None:
            opts[name] = value
    if mem is not None:
        opts["mem"] = parse_size(mem)
    if retry_on is not None:
        opts["retry_on"] = check_retry_on(retry_on)
    return opts or None


class EngineOptions:
    """The memory governor's settings and the retry policy's timing, as the
    command line's flags of the same names (docs/memory.md, docs/cli.md).

    The binary applies all of them to every item (a task of its pool),
    but the defaults of the per-call limits soft_timeout, retry_on and
    wait_timeout, which go to the worker with each item.
    """

    DEFAULT_BACKOFF = 0.05  # seconds; the engine's default too
    DEFAULT_MAX_BACKOFF = 5.0

    def __init__(self, *, mem_budget=None, mem_per_task=None, mem_reserve=None, mem_high=None,
                 mem_psi=None, no_governor=False, backoff=None, max_backoff=None, task_error_retries=0,
                 soft_timeout=None, retry_on=None, wait_timeout=None, nats=None, timeout_grace=None):
        self.mem_budget = parse_memory(mem_budget, "mem_budget")
        self.mem_per_task = parse_memory(mem_per_task, "mem_per_task")
        self.mem_reserve = parse_size(mem_reserve)
        # As the command line: a percentage, 0 turns the trigger off, and
        # the engine's zero value means its default.
        if mem_high is None:
            self.preempt_above = 0.0
        else:
            high = _percent(mem_high, "mem_high")
            if 0 < high < 1:
                # A fraction given for a percentage, as the command line's
                # --mem-high says: the binary refused it in its own words.
                raise ValueError("mem_high is a percentage: %r would stop tasks whenever %r%% of memory is in use"
                                 " (for %g%%, give %g)" % (mem_high, mem_high, high * 100, high * 100))
            self.preempt_above = high / 100 if high else -1.0
        if mem_psi is None:
            self.preempt_psi = 0.0
        else:
            psi = _percent(mem_psi, "mem_psi")
            self.preempt_psi = psi if psi else -1.0
        self.no_governor = bool(no_governor)
        self.backoff = _seconds(backoff, "backoff", self.DEFAULT_BACKOFF)
        self.max_backoff = _seconds(max_backoff, "max_backoff", self.DEFAULT_MAX_BACKOFF)
        if isinstance(task_error_retries, bool) or not isinstance(task_error_retries, int):
            raise TypeError("task_error_retries must be an int, not %r" % (task_error_retries,))
        if task_error_retries < 0:
            raise ValueError("task_error_retries must not be negative")
        self.task_error_retries = task_error_retries
        # Seconds between SIGTERM and SIGKILL for a task past its timeout;
        # None: the binary's default (3 s), 0: SIGKILL at once.
        self.timeout_grace = _grace(timeout_grace, "timeout_grace")
        # The pool's defaults of the per-call limits, which go with each
        # item to its worker (see call_options).
        self.soft_timeout = _limit(soft_timeout, "soft_timeout") or 0.0
        self.retry_on = check_retry_on(retry_on)
        self.wait_timeout = _limit(wait_timeout, "wait_timeout") or 0.0
        # The NATS server whose agents run the items (docs/cluster.md), or
        # None: local workers.
        if nats is not None and (not isinstance(nats, str) or not nats.strip()):
            raise TypeError("nats must be a NATS server's URL such as 'nats://host:4222', not %r" % (nats,))
        self.nats = nats

    def hello(self) -> dict:
        """The members of the bridge's hello frame (internal/bridge Hello)."""
        return {
            "no_governor": self.no_governor,
            "mem_budget": self.mem_budget,
            "mem_reserve": self.mem_reserve,
            "mem_per_task": self.mem_per_task,
            "preempt_above": self.preempt_above,
            "preempt_psi": self.preempt_psi,
            "backoff": self.backoff,
            "max_backoff": self.max_backoff,
            "task_error_retries": self.task_error_retries,
        } | ({"nats": self.nats} if self.nats else {}) | (
            # Absent, not 0, for the default: 0 is SIGKILL at once.
            {"timeout_grace": self.timeout_grace} if self.timeout_grace is not None else {})


def journal_options(journal, resume, resume_failed):
    """Return the journal (safepool._journal.Journal) that Pool's journal=,
    resume= and resume_failed= ask for. It imports sqlite3: call it once
    the binary has started."""
    from ._journal import Journal
    return Journal(journal, resume=resume, resume_failed=resume_failed)
