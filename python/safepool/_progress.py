"""Progress of one call (map, imap, Executor.map) on standard error.

With tqdm importable, a tqdm bar; otherwise one plain line, rewritten in
place at most MIN_INTERVAL apart and ended with a newline when the call
ends. The pool's reader thread counts items as they settle; the display is
made from there.
"""
import sys
import threading
import time

MIN_INTERVAL = 0.25  # seconds between two renderings of the plain line


def make(progress, total, desc: str = ""):
    """A Progress for a call made with progress=..., or None when it is
    false. total is the number of items, or None when unknown."""
    if not progress:
        return None
    try:
        import tqdm  # type: ignore
    except ImportError:
        return LineProgress(total, desc)
    return TqdmProgress(tqdm, total, desc)


class LineProgress:
    """One line on stderr: "desc: 12/40 tasks done, 1 failed"."""

    def __init__(self, total, desc: str, stream=None):
        self.total = total
        self.desc = desc or "safepool"
        self.stream = stream if stream is not None else sys.stderr
        self.done = 0
        self.failed = 0
        self.closed = False
        self._lock = threading.Lock()
        self._last = 0.0  # when the line was last rendered (monotonic)
        self._start = time.monotonic()

    def _line(self) -> str:
        # done counts the items settled, the failed ones too; the line
        # says "done" of those that succeeded, as safepool's summary does,
        # and counts the failed ones apart: "9/10 tasks done, 1 failed".
        done = self.done - self.failed
        if self.total is None:
            count = "%d tasks done" % done
        else:
            count = "%d/%d tasks done" % (done, self.total)
        if self.failed:
            count += ", %d failed" % self.failed
        return "\r%s: %s (%.1fs)" % (self.desc, count, time.monotonic() - self._start)

    def _write(self, text: str):
        try:
            self.stream.write(text)
            self.stream.flush()
        except (OSError, ValueError):
            pass  # stderr closed: the work goes on without a display

    def update(self, n: int, failed: int = 0):
        """Count n more items settled, failed of them failed."""
        with self._lock:
            if self.closed:
                return
            self.done += n
            self.failed += failed
            now = time.monotonic()
            if now - self._last < MIN_INTERVAL:
                return
            self._last = now
            self._write(self._line())

    def close(self):
        """Render the last state and end the line. Idempotent."""
        with self._lock:
            if self.closed:
                return
            self.closed = True
            self._write(self._line() + "\n")


class TqdmProgress:
    """A tqdm bar; tqdm rate-limits its own rendering."""

    def __init__(self, tqdm, total, desc: str):
        self.bar = tqdm.tqdm(total=total, desc=desc or None, unit="task", file=sys.stderr)
        self.failed = 0
        self.closed = False
        self._lock = threading.Lock()

    def update(self, n: int, failed: int = 0):
        with self._lock:
            if self.closed:
                return
            if failed:
                self.failed += failed
                self.bar.set_postfix(failed=self.failed, refresh=False)
            self.bar.update(n)

    def close(self):
        with self._lock:
            if self.closed:
                return
            self.closed = True
            self.bar.close()
