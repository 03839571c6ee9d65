"""safepool: process pools that survive the OOM killer.

``safepool.Pool`` is a drop-in for multiprocessing.Pool,
``safepool.Executor`` (also named ``safepool.ProcessPoolExecutor``) for
concurrent.futures.ProcessPoolExecutor and
``safepool.SafePool`` for the SafePool library's class;
``safepool.AsyncPool`` is the same pool for asyncio. Their
workers run under the safepool binary's supervisor, so a worker killed by
the OOM killer, a signal or a segfault fails only the task it was running,
with a precise cause (safepool.WorkerDied), and never hangs the pool.
"""
import sys as _sys

__all__ = ["Pool", "Executor", "ProcessPoolExecutor", "SafePool", "AsyncPool", "TaskFailed", "WorkerDied", "TaskTimeout",
           "TaskCancelled", "RemoteError", "RemoteTraceback", "BrokenPool", "Attempt", "FailedTask",
           "SubProcessKilledException", "parse_size", "SoftTimeLimitExceeded", "WaitTimeout",
           "share", "share_file", "Shared", "worker_slot"]

# The names are imported on first use, so that importing safepool costs
# next to nothing: every worker imports the parent's main script, which
# imports safepool.
_WHERE = {"Pool": "pool", "parse_size": "pool", "Executor": "executor",
          "ProcessPoolExecutor": "executor", "SafePool": "_safepool",
          "SubProcessKilledException": "_safepool", "AsyncPool": "asyncpool",
          "SoftTimeLimitExceeded": "_limits", "WaitTimeout": "_limits",
          "share": "_shared", "share_file": "_shared", "Shared": "_shared"}


def __getattr__(name):
    if name in __all__:
        where = _WHERE.get(name, "errors")
        module = getattr(__import__(__name__ + "." + where), where)
        value = getattr(module, name)
        globals()[name] = value
        return value
    raise AttributeError("module %r has no attribute %r" % (__name__, name))


def worker_slot():
    """Return the number of the worker slot this process runs in, from 1 to
    the pool's ``processes`` (``max_workers``), or None outside a worker.

    Each slot has at most one worker process at a time: a worker that
    replaces one that died (OOM kill, signal, segfault) or was recycled
    (``maxtasksperchild``) has the slot of the one it replaces. So a slot
    can stand for a resource that only one worker may use, such as a GPU,
    read in the initializer or in a task::

        def pin(gpus):
            os.environ["CUDA_VISIBLE_DEVICES"] = gpus[safepool.worker_slot() - 1]

        safepool.Pool(len(gpus), initializer=pin, initargs=(gpus,))

    It is the ``SAFEPOOL_SLOT`` environment variable, which the supervisor
    sets in every worker process (and a process that the worker starts
    inherits), as GNU parallel's ``{%}``; the program of a job of
    ``safepool run`` has it too.
    """
    import os
    value = os.environ.get("SAFEPOOL_SLOT")
    try:
        return int(value) if value else None
    except ValueError:
        return None


def __dir__():
    return sorted(list(globals()) + __all__)


__version__ = "0.1.0"

# Workers import the parent's main script as __mp_main__ (as multiprocessing
# does); objects pickled there by reference to it must resolve here too.
if "__main__" in _sys.modules:
    _sys.modules.setdefault("__mp_main__", _sys.modules["__main__"])
