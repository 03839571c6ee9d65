"""The exceptions of a task's time limits.

Workers raise SoftTimeLimitExceeded inside a task and may report
WaitTimeout, so this module imports nothing: a worker loads it only when a
task has such a limit.
"""


class SoftTimeLimitExceeded(Exception):
    """Raised inside a task that ran longer than its soft_timeout. The task
    may catch it to clean up or return early; the hard timeout, if any,
    still kills the worker later."""


class WaitTimeout(TimeoutError):
    """The task could not start within its wait_timeout of being submitted
    (it waited behind other tasks, or for memory), so it never ran."""
