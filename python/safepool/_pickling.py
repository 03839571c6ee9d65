"""Pickling the code that workers run: task functions and the initializer.

The standard pickle sends functions and classes by reference (module and
name), which a worker resolves by importing. Two cases need more:

- a lambda, a nested function or a closure has no importable name;
- a function defined in the parent's __main__ module, when workers cannot
  import that module because the program has no script file (it was read
  from standard input, or run with -c or interactively). pickle accepts it,
  but a worker could not resolve it.

For both, cloudpickle is used when it is importable: it sends such code by
value. Without it, a TypeError says what to do.
"""
import pickle

from ._oob import _pdumps5, pickler

_MAIN_MODULES = ("__main__", "__mp_main__")


class _FromMain(Exception):
    """Raised inside the checking pickler: obj is __main__'s."""

    def __init__(self, obj):
        super().__init__(obj)
        self.obj = obj


class _MainChecker(pickle.Pickler):
    """A pickler that refuses the functions and classes of __main__."""

    def reducer_override(self, obj):
        if isinstance(obj, type) or callable(obj) and hasattr(obj, "__code__"):
            if getattr(obj, "__module__", None) in _MAIN_MODULES:
                raise _FromMain(obj)
        return NotImplemented


def _dumps_checked(obj) -> bytes:
    import io
    buf = io.BytesIO()
    pickler(_MainChecker, buf, pickle.HIGHEST_PROTOCOL).dump(obj)
    return buf.getvalue()


def _why_no_main() -> str:
    """Why workers do not import this program's main module (see
    _launch.main_spec), for the messages above."""
    import sys
    main = sys.modules.get("__main__")
    spec = getattr(main, "__spec__", None)
    name = getattr(spec, "name", None) or ""
    if name == "__main__" or name.endswith(".__main__"):
        # python3 -m pkg, or a directory or zip file run as a program:
        # such a __main__.py often runs the program at its top level, and
        # workers never run it (as multiprocessing's spawn does not).
        return ("it is %s, the __main__.py of a package, directory or zip file run as a program, which "
                "workers do not run" % (getattr(spec, "origin", None) or getattr(main, "__file__", None) or name))
    return ("this program has no script file (it was read from standard input, or run with -c or "
            "interactively)")


def uses_main(obj) -> bool:
    """Report whether pickling obj sends a function or class of __main__
    by reference (its name), as the standard pickle does. False when obj
    does not pickle at all: its pickling says why."""
    try:
        _dumps_checked(obj)
    except _FromMain:
        return True
    except Exception:
        return False
    return False


def has_cloudpickle() -> bool:
    """Report whether cloudpickle is importable."""
    return _cloudpickle() is not None


def _cloudpickle():
    try:
        import cloudpickle  # type: ignore
    except ImportError:
        return None
    return cloudpickle


def _pickles(obj) -> bool:
    """Report whether the standard pickle takes obj."""
    try:
        pickle.dumps(obj, pickle.HIGHEST_PROTOCOL)
    except Exception:
        return False
    return True


def dumps_code(obj, shown, main_importable: bool = True) -> bytes:
    """Pickle obj (a function, or a tuple holding functions) for a worker.
    shown is what error messages name. main_importable says whether workers
    import the parent's __main__ module (see _launch.main_spec)."""
    try:
        if main_importable:
            return _pdumps5(obj)
        return _dumps_checked(obj)
    except _FromMain as e:
        cp = _cloudpickle()
        if cp is None:
            what = "it is defined" if e.obj is shown else "it uses %r, defined" % (e.obj,)
            raise TypeError(
                "cannot send %r to a worker process: %s in the main module, which "
                "workers cannot import because %s. Define it in a module "
                "that the program imports, or install cloudpickle, which safepool then uses to "
                "send it by value." % (shown, what, _why_no_main())) from None
        return cp.dumps(obj, pickle.HIGHEST_PROTOCOL)
    except Exception as e:
        first = e
    cp = _cloudpickle()
    if cp is None:
        if obj is not shown and _pickles(shown):
            # The function goes by name: what fails is beside it (an
            # initializer's initargs, say), which no advice about
            # functions would mend.
            raise first
        method = getattr(shown, "__func__", None)
        if method is not None and _pickles(method):
            # A bound method goes by its function's name and its object:
            # what fails is the object (one that holds the pool, say).
            raise first
        raise TypeError(
            "cannot send %r to a worker process: the standard pickle sends functions by "
            "name, and this one has no importable name (a lambda, a nested function or a "
            "closure). Define it at the top level of a module, or install cloudpickle, "
            "which safepool uses when it is importable. (pickle said: %s)" % (shown, first)) from None
    return cp.dumps(obj, pickle.HIGHEST_PROTOCOL)


def dumps_function(fn, main_importable: bool = True) -> bytes:
    """Pickle fn by reference, or by value with cloudpickle when it is a
    lambda or a closure, or defined in a __main__ module that workers do not
    import, and cloudpickle is importable."""
    return dumps_code(fn, fn, main_importable)


def dumps_payload(obj, main_importable: bool = True) -> bytes:
    """Pickle a batch (its items, which may hold functions or instances of
    classes) for a worker. When workers do not import the parent's __main__
    module, what is defined there is sent by value with cloudpickle if it is
    importable; otherwise a TypeError says what to do, instead of a worker
    failing to find it. Other pickling errors are raised as they are."""
    if main_importable:
        return _pdumps5(obj)
    try:
        return _dumps_checked(obj)
    except _FromMain as e:
        cp = _cloudpickle()
        if cp is None:
            raise TypeError(
                "cannot send %r to a worker process: it is defined in the main module, which workers "
                "cannot import because %s. Define it in a module that the program "
                "imports, or install cloudpickle, which safepool then uses to send it by value."
                % (e.obj, _why_no_main())) from None
        return cp.dumps(obj, pickle.HIGHEST_PROTOCOL)
