"""Task functions for test_journal: importable by the workers."""
import os


def square_once(x):
    """x*x, noting the call in $JOURNAL_TEST_DIR/calls; 3 fails until the
    file fixed exists there."""
    d = os.environ["JOURNAL_TEST_DIR"]
    with open(os.path.join(d, "calls"), "a") as f:
        f.write("%d\n" % x)
    if x == 3 and not os.path.exists(os.path.join(d, "fixed")):
        raise ValueError("three")
    return x * x


def die_on_three(x):
    """x*x; the worker process exits 3 at x == 3."""
    if x == 3:
        os._exit(3)
    return x * x


class Scaler:
    """x*k, noting the call in $JOURNAL_TEST_DIR/calls; apply and the
    instance itself (__call__) are the task functions."""

    def __init__(self, k):
        self.k = k

    def apply(self, x):
        return self(x)

    def __call__(self, x):
        with open(os.path.join(os.environ["JOURNAL_TEST_DIR"], "calls"), "a") as f:
            f.write("%d\n" % x)
        return x * self.k


def scaler(k):
    """A closure: x*k."""
    def scale(x):
        return x * k
    return scale


def quick_then_stuck(x):
    """x*x at once for x < 2; for larger x, never returns (sleeps)."""
    if x >= 2:
        import time
        time.sleep(600)
    return x * x


def stuck_first(x):
    """x*x at once, but for x == 0, which never returns (sleeps)."""
    if x == 0:
        import time
        time.sleep(600)
    return x * x


def imap_and_print(path, func, n):
    """imap func over range(n) with journal path, printing each result as
    it comes: the test kills this program while some still run."""
    import safepool
    with safepool.Pool(2, journal=path) as pool:
        for v in pool.imap(func, range(n)):
            print(v, flush=True)


class Versioned:
    """A result that unpickles only in the version it was made in: the
    content of $JOURNAL_TEST_DIR/version, as a class renamed since
    would fail."""

    def __init__(self, x):
        self.x = x
        self.version = _version()

    def __setstate__(self, state):
        if state["version"] != _version():
            raise AttributeError("Versioned of version %s, now %s" % (state["version"], _version()))
        self.__dict__.update(state)


def _version():
    try:
        with open(os.path.join(os.environ["JOURNAL_TEST_DIR"], "version")) as f:
            return f.read()
    except FileNotFoundError:
        return ""


def versioned(x):
    """Versioned(x), noting the call in $JOURNAL_TEST_DIR/calls."""
    with open(os.path.join(os.environ["JOURNAL_TEST_DIR"], "calls"), "a") as f:
        f.write("%d\n" % x)
    return Versioned(x)


if __name__ == "__main__":
    import sys
    imap_and_print(sys.argv[1], globals()[sys.argv[2]], int(sys.argv[3]))
