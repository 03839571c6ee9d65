"""Task functions for test_array_kinds: they must live in an importable
module."""


def writable_after_write(a):
    """Whether the array argument a is writable in this worker, after
    adding 1 to it in place if it is (as a task that works in place does):
    (writable, a's sum afterwards)."""
    if a.dtype.names is not None:  # a record array: no sum, no +=
        if a.flags.writeable:
            a[a.dtype.names[0]] += 1
        return a.flags.writeable, 0.0
    if not a.flags.writeable:
        return False, float(a.sum())
    a += 1
    return True, float(a.sum())


def read_only_result(n):
    """A read-only array of n float64, 0 to n-1, made as numpy.frombuffer
    of bytes makes one (data read from a file or a socket)."""
    import numpy
    return numpy.frombuffer(numpy.arange(n, dtype="f8").tobytes(), dtype="f8")


def read_only_results(n):
    """Two read-only arrays of n float64 each, C and Fortran order, and a
    writable one, in one result."""
    import numpy
    c = read_only_result(n * 2).reshape(2, n)
    f = numpy.asfortranarray(numpy.arange(n * 2, dtype="f8").reshape(2, n))
    f.flags.writeable = False
    w = numpy.arange(n, dtype="f8")
    return {"c": c, "f": f, "w": w}


def argument_place(a):
    """Where a big array argument lies in this worker: (whether in the
    task's argument file, as mapped, not copied; whether writable)."""
    from tests.shared_helpers import mapped_from
    return mapped_from(a, "memfd:safepool-args"), a.flags.writeable


def write_through_first(pair):
    """Write through the first reference of pair (a tuple, list or dict of
    two that refer to one array or bytearray, as the caller made it) and
    read through the second: (whether they are one object, the second's
    first element after the write)."""
    if isinstance(pair, dict):
        pair = [pair["x"], pair["y"]]
    first, second = pair[0], pair[1]
    first[0] = 99
    return first is second, int(second[0])


def holds_itself(x):
    """For a list or dict that holds itself at index 1 or key "self", and a
    big bytes at 0 or "b": (whether it still holds itself, the size of the
    bytes)."""
    if isinstance(x, dict):
        return x["self"] is x, len(x["b"])
    return x[1] is x, len(x[0])
