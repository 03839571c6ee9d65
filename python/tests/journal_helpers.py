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
