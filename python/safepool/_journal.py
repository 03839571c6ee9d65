"""Pool(journal=..., resume=True): the journal of map and imap calls, in the
SQLite database that `safepool run --journal` and `safepool map --journal`
write (internal/journal/schema.sql; a copy is journal_schema.sql, and a Go
test checks that they are the same).

Each map or imap call is a run of kind 'python' whose command is the
function's qualified name. A task's key is the SHA-256 of the function's
name and the pickled argument, so a call resumed with resume=True skips the
arguments an earlier call of the same function finished, whatever their
place, and returns their results from the journal (pickled in task.output).
A task's rows are written as it settles, from the pool's thread (also
when its result waits, in input order, behind a task that still runs),
and committed at most every 150 ms, and at the latest 150 ms after they
came, from a timer's thread while no other comes: a SIGKILL loses at most
the results of that interval, which run again.
"""

import collections
import hashlib
import json
import os
import pickle
import sqlite3
import sys
import threading
import time
import types
import weakref

_FLUSH_EVERY = 0.15
_SCHEMA_VERSION = 3  # the user_version of journal_schema.sql
_INPUT_MAX = 256


def _schema() -> str:
    with open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "journal_schema.sql")) as f:
        return f.read()


def qualname(func) -> str:
    """The name a function is known by in the journal: module.qualname for
    a function that has a name of its own, importable. Other callables (a
    lambda, a closure or nested function, a bound method, a partial, an
    instance with __call__) share their qualname with others that compute
    something else (every lambda of a module is <lambda>, scaler(2) and
    scaler(3) are both scaler.<locals>.f, and a callable instance's repr
    holds its address): their name is followed by a digest of the callable
    as the pool sends it, code, closure and state, so that resume never
    takes one's results for another's."""
    module = getattr(func, "__module__", None) or type(func).__module__ or "?"
    name = getattr(func, "__qualname__", None) or getattr(func, "__name__", None)
    if isinstance(func, types.FunctionType) and name and "<" not in name:
        return "%s.%s" % (module, name)
    if not name:
        name = type(func).__qualname__
    return "%s.%s#%s" % (module, name, _digest(func))


def _digest(func) -> str:
    """A digest of func by value: its pickle, or cloudpickle's."""
    try:
        data = _canonical_dumps(func)
    except Exception:
        try:
            import cloudpickle  # type: ignore
            data = cloudpickle.dumps(func, protocol=4)
        except Exception:
            # Not sendable to a worker either: the call fails there.
            data = repr(func).encode("utf-8", "surrogatepass")
    return hashlib.sha256(data).hexdigest()[:16]


def key(name: str, arg) -> str:
    """The key of func(arg): hex SHA-256 of the name and the pickled arg."""
    h = hashlib.sha256()
    h.update(b"python\0")
    h.update(name.encode("utf-8", "surrogatepass"))
    h.update(b"\0")
    h.update(_canonical_dumps(arg))
    return h.hexdigest()


class _CanonicalPickler(pickle.Pickler):
    """A pickler whose sets and frozensets list their elements in the order
    of their own pickles: a set's order follows its elements' hashes,
    which for strings and bytes change from one interpreter to the next
    (PYTHONHASHSEED), so that the same argument had another key in the run
    that resumes, and ran again. Other objects pickle as they do with
    pickle.dumps. (persistent_id, unlike reducer_override, is asked about
    every object, sets included.)"""

    def persistent_id(self, obj):
        if type(obj) in (set, frozenset):
            return (type(obj).__name__, tuple(sorted(_canonical_dumps(e) for e in obj)))
        return None


def _canonical_dumps(obj) -> bytes:
    import io
    buf = io.BytesIO()
    _CanonicalPickler(buf, protocol=4).dump(obj)
    return buf.getvalue()


def _check_file(path):
    """Refuses a path that is not a regular file: SQLite takes a device or
    FIFO for an empty database, and makes its files beside it (in /dev,
    for /dev/null) before failing with "disk I/O error"."""
    import stat
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return
    mode = st.st_mode
    if stat.S_ISREG(mode) and st.st_nlink > 1:
        # Its span file, where runs take their lock (_lock_command) and
        # safepool run and map keep outputs, is beside the name given.
        raise ValueError("journal %s has %d names (hard links), and a journal's lock and records of output are in"
                         " the span file beside the name it is given (%s-spans): a run through another name"
                         " would find none of them; keep one name (remove the other links), or copy the file"
                         " and its span file" % (path, st.st_nlink, os.path.basename(path)))
    if not stat.S_ISREG(mode):
        kind = ("a directory" if stat.S_ISDIR(mode) else "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode)
                else "a FIFO" if stat.S_ISFIFO(mode) else "a socket" if stat.S_ISSOCK(mode) else "something else")
        raise ValueError("journal %s is not a regular file but %s: name a file" % (path, kind))


class Journal:
    """One Pool's journal: the path, whether to resume, and the pool's
    figures for the run rows."""

    def __init__(self, path, resume: bool = False, resume_failed: bool = False):
        if not isinstance(path, (str, bytes, os.PathLike)):
            raise TypeError("journal must be a path, not %r" % (path,))
        self.path = os.fspath(path)
        _check_file(self.path)
        self.resume = bool(resume)
        self.resume_failed = bool(resume_failed)
        # The functions this pool's calls have run: a pool without resume
        # starts a batch over at its first call of a function, and its
        # later calls of it continue that batch (see _Call).
        self._called = set()
        self._called_lock = threading.Lock()
        # The command locks this pool's calls hold, by function: [file,
        # how many calls hold it] (see _lock_command).
        self._held = {}
        # Open once now, so that a path that cannot be written fails here.
        self._connect().close()

    def _connect(self):
        created = not os.path.lexists(self.path)
        if not created and not _can_write(self.path):
            # SQLite would open it read-only, and make the WAL and its
            # shared memory beside it, this user's, before it failed to
            # write: left behind, in a directory that others write too
            # (/tmp), its owner can open the journal no more ("attempt
            # to write a readonly database").
            raise sqlite3.OperationalError("cannot open the journal %s: %s cannot be written (permission denied):"
                                           " a pool adds its records to its journal" % (self.path, self.path))
        try:
            return self._setup()
        except sqlite3.Error as e:
            error = _open_error(e, self.path)  # while the file is there
            if created:
                _remove_unmade(self.path)
            raise error from e

    def _setup(self):
        # The pool's imap reads its input in a thread of its own: _Call
        # takes its lock around every use of the connection.
        db = sqlite3.connect(self.path, timeout=10, isolation_level=None, check_same_thread=False)
        try:
            # The version before WAL mode, which changes the file.
            (version,) = db.execute("PRAGMA user_version").fetchone()
            if version > _SCHEMA_VERSION:
                raise ValueError("journal %s was made by a newer safepool (schema version %d)" % (self.path, version))
            if 0 < version < _SCHEMA_VERSION:
                raise ValueError("journal %s was made by an older safepool (schema version %d, this one writes %d):"
                                 " use a new journal file" % (self.path, version, _SCHEMA_VERSION))
            if version == 0:
                # A journal's schema sets user_version before its tables:
                # a version 0 file with any is another program's.
                (objects,) = db.execute("SELECT count(*) FROM sqlite_master").fetchone()
                if objects:
                    raise ValueError("journal %s is not a safepool journal: a SQLite database of something else"
                                     " (it has tables, and no journal's schema version): name a new file" % self.path)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            db.executescript(_schema())
        except BaseException:
            db.close()
            raise
        return db

    def _hold(self, name):
        """Takes the lock of calls of name in the journal for a call, and
        returns what releases it (once, however often it is called).
        Calls of the pool share one lock: only another process's, or
        another pool's, is refused."""
        with self._called_lock:
            held = self._held.get(name)
            if held is None:
                held = self._held[name] = [_lock_command(self.path, name), 0]
            held[1] += 1
        released = []

        def release():
            with self._called_lock:
                if released:
                    return
                released.append(True)
                held[1] -= 1
                if held[1] == 0:
                    if self._held.get(name) is held:
                        del self._held[name]
                    if held[0] is not None:
                        held[0].close()
        return release

    def imap(self, pool, func, iterable, chunksize, ordered, errors, progress):
        """pool.imap(func, iterable) through the journal: an iterator of
        results in input order. Results come in order even when not
        ordered: the journal matches them to their inputs by order."""
        return _Results(_Call(self, pool, func).run(iterable, chunksize, ordered, progress), errors)


class _Call:
    """One map or imap call: its run row and its tasks."""

    def __init__(self, journal: Journal, pool, func):
        self.j = journal
        self.pool = pool
        self.name = qualname(func)
        self.func = func
        # Connected first, as its checks make nothing beside a journal
        # this program may not write; the lock's span file might be.
        self.db = journal._connect()
        try:
            self.release = journal._hold(self.name)
        except BaseException:
            self.db.close()
            raise
        # Also when the call is dropped before its first result.
        weakref.finalize(self, self.release)
        # Guards db, seen, last, placed and error; the pool's threads
        # write the rows of the tasks that settle (settled) under it.
        self.lock = threading.RLock()
        resumed = journal.resume or journal.resume_failed
        with journal._called_lock:
            again = self.name in journal._called
            journal._called.add(self.name)
        # The run's resumed column says whether it continues the batch of
        # the runs before it, where a later resume=True begins to look:
        # a call that skips what they finished, and also a later call of a
        # function that this pool already called without resume. Written
        # as 0, such a call began a batch of its own, and resume=True then
        # ran the work of the program's earlier calls of it again.
        cur = self.db.execute(
            "INSERT INTO run (started, kind, command, argv, workers, memory_mode, mem_budget, mem_limit, resumed)"
            " VALUES (?, 'python', ?, ?, ?, ?, NULL, NULL, ?)",
            (time.time_ns(), self.name, json.dumps(sys.argv), pool._core.processes, str(getattr(pool, "memory_mode", "") or ""),
             1 if resumed or again else 0))
        self.run_id = cur.lastrowid
        self.lookup = None
        if resumed:
            self.db.execute("CREATE INDEX IF NOT EXISTS task_key ON task(key, state)")
            (base,) = self.db.execute(
                "SELECT max(id) FROM run WHERE kind = 'python' AND command = ? AND resumed = 0 AND id < ?",
                (self.name, self.run_id)).fetchone()
            states = "'done'" if journal.resume_failed else "'done', 'failed', 'poison'"
            self.lookup = ("SELECT state, cause, output FROM task WHERE key = ? AND state IN (%s) AND run_id IN"
                           " (SELECT id FROM run WHERE kind = 'python' AND command = ? AND id >= %d AND id < %d)"
                           " ORDER BY state <> 'done', run_id, id LIMIT 1 OFFSET ?"
                           % (states, base or 0, self.run_id))
        self.seen = {}
        self.said_unreadable = False
        self.rows = []
        self.last = time.monotonic()
        # Rows written since the last commit; the timer that commits them
        # (owned by the call: ended in run's finally); closed once the
        # call has committed for the last time.
        self.dirty = False
        self.timer = None
        self.closed = False
        # The pending inputs by their place among those the pool gets:
        # (seq, key, arg) until their task settles; how many it got; and
        # the first error writing a settled task's rows, for the caller.
        self.placed = {}
        self.fed = 0
        self.error = None
        self.db.execute("BEGIN")

    def finished(self, k):
        """(state, cause, output) of an earlier run's task of key k, or None."""
        if self.lookup is None:
            return None
        with self.lock:
            n = self.seen.get(k, 0)
            row = self.db.execute(self.lookup, (k, self.name, n)).fetchone()
            if row is not None:
                self.seen[k] = n + 1
            return row

    def write(self, sql, args):
        with self.lock:
            try:
                self.db.execute(sql, args)
                now = time.monotonic()
                if now - self.last >= _FLUSH_EVERY:
                    self._commit(now)
                    return
            except sqlite3.Error as e:
                raise _named(e, self.j.path) from e
            self.dirty = True
            if self.timer is None:
                # Committed by the timer if nothing comes after it in
                # time: the next result may be hours away.
                self.timer = threading.Timer(_FLUSH_EVERY - (now - self.last), self._flush)
                self.timer.daemon = True
                self.timer.start()

    def _commit(self, now):
        """Commits what was written; under self.lock."""
        # SQLite may have rolled the transaction back as a write failed
        # (a full disk): then there is nothing to commit.
        if self.db.in_transaction:
            self.db.execute("COMMIT")
        self.db.execute("BEGIN")
        self.last = now
        self.dirty = False

    def _flush(self):
        """The timer's: commits what waits, unless the call has ended."""
        with self.lock:
            self.timer = None
            if self.dirty and not self.closed:
                try:
                    self._commit(time.monotonic())
                except sqlite3.Error as e:  # the caller gets it, as settled's
                    if self.error is None:
                        self.error = _named(e, self.j.path)

    def unreadable(self, e):
        """Says once per call that results of earlier runs no longer
        unpickle (e, the first error), and that their tasks run again."""
        if self.said_unreadable:
            return
        self.said_unreadable = True
        import warnings
        warnings.warn("safepool: the journal %s holds results of earlier calls of %s that no longer unpickle"
                      " (%s: %s): their tasks run again" % (self.j.path, self.name, type(e).__name__, e),
                      RuntimeWarning)

    def task(self, seq, k, arg, state, cause=None, attempts=0, output=None, peak=None):
        self.write("INSERT INTO task (run_id, id, key, input, state, attempts, cause, peak, output, ended)"
                   " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                   (self.run_id, seq, k, _short(arg), state, attempts, cause, peak or None, output, time.time_ns()))

    def attempts(self, seq, history):
        """Rows of attempt for a failed task's attempts (TaskFailed.history)."""
        for a in history:
            self.write("INSERT INTO attempt (run_id, task_id, number, worker_pid, started, ended, cause,"
                       " exit_code, signal, peak, message) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                       (self.run_id, seq, a.number, a.pid, int(a.start * 1e9), int(a.end * 1e9), a.cause or "",
                        a.exit_code if a.exit_code >= 0 else None, a.signal or None, a.peak_rss or None,
                        a.message or None))

    def settled(self, pos, ok, value):
        """The pool's, from its threads: records the task of the pos-th
        input it got as it settles, also when results wait in order
        behind one that still runs (a kill then loses none of them)."""
        try:
            with self.lock:
                if self.closed:
                    return
                seq, k, arg = self.placed.pop(pos)
                self.record(seq, k, arg, value)
        except Exception as e:  # the pool's thread must go on: the caller gets it
            with self.lock:
                if self.error is None:
                    self.error = e

    def record(self, seq, k, arg, value):
        """Rows of the task seq, of key k and argument arg, that ended with
        value (an exception when it failed)."""
        if isinstance(value, BaseException):
            cause = getattr(value, "cause", None) or type(value).__name__
            state = "poison" if cause == "poison" else "failed"
            history = getattr(value, "history", None) or ()
            peak = max([a.peak_rss for a in history] + [getattr(value, "peak_rss", 0) or 0])
            self.task(seq, k, arg, state, cause, getattr(value, "attempts", 1) or 1, peak=peak)
            self.attempts(seq, history)
        else:
            self.task(seq, k, arg, "done", None, 1, pickle.dumps(value, protocol=4))

    def run(self, iterable, chunksize, ordered, progress):
        from .errors import TaskFailed
        # Inputs in order: ("skip", value or exception) or ("run",).
        # The pool pulls the pending ones through pending(), and settled
        # records their tasks as they end; its results come in the same
        # order (ordered) and are matched here.
        entries = collections.deque()
        status = 1
        # Whether an error leaves the call: one in closing the journal
        # below must not hide it (a full disk fails both).
        raising = False
        try:
            def pending():
                for seq, arg in enumerate(iterable, 1):
                    k = key(self.name, arg)
                    row = self.finished(k)
                    bad = None
                    while row is not None and row[0] == "done":
                        try:
                            value = pickle.loads(row[2]) if row[2] is not None else None
                            break
                        except Exception as e:
                            # Its class or module renamed or gone since:
                            # the result is of no use. Another run's may
                            # be (one that ran the task again), or the
                            # task runs again, as a lost one does.
                            bad = e
                            row = self.finished(k)
                    if row is None and bad is not None:
                        self.unreadable(bad)
                    if row is None:
                        entries.append(("run",))
                        with self.lock:
                            self.placed[self.fed] = (seq, k, arg)
                            self.fed += 1
                        yield arg
                        continue
                    state, cause, output = row
                    self.task(seq, k, arg, "skipped", cause if state != "done" else None)
                    if state == "done":
                        entries.append(("skip", value))
                    else:
                        entries.append(("skip", TaskFailed(
                            "task failed in an earlier run (%s); resume_failed=True runs it again" % (cause or state),
                            cause=cause or state, task_args=arg, function=self.func)))

            results = self.pool._imap(self.func, pending(), chunksize, True, "return", progress,
                                      on_settle=self.settled)
            failed = False
            it = iter(results)
            while True:
                while entries and entries[0][0] == "skip":
                    value = entries.popleft()[1]
                    failed = failed or isinstance(value, BaseException)
                    yield value
                try:
                    value = next(it)
                except StopIteration:
                    # The input has ended: what is left was skipped.
                    while entries:
                        v = entries.popleft()[1]
                        failed = failed or isinstance(v, BaseException)
                        yield v
                    break
                # Skipped inputs the pool pulled before this one come first.
                while entries[0][0] == "skip":
                    v = entries.popleft()[1]
                    failed = failed or isinstance(v, BaseException)
                    yield v
                entries.popleft()  # settled recorded its task
                with self.lock:
                    error, self.error = self.error, None
                if error is not None:
                    raise error
                failed = failed or isinstance(value, BaseException)
                yield value
            status = 1 if failed else 0
        except BaseException:
            raising = True
            raise
        finally:
            with self.lock:
                self.closed = True
                timer, self.timer = self.timer, None
                if timer is not None:
                    timer.cancel()
                try:
                    if self.db.in_transaction:
                        self.db.execute("COMMIT")
                    self.db.execute("UPDATE run SET ended = ?, exit_status = ? WHERE id = ?",
                                    (time.time_ns(), status, self.run_id))
                except sqlite3.Error as e:
                    if not raising:
                        raise _named(e, self.j.path) from e
                finally:
                    self.db.close()
                    self.release()
            if timer is not None:
                timer.join()  # it may have started: it finds the call closed


class _Results:
    """The iterator imap returns: a failed task raises from next() at its
    place (errors="raise"), and iteration may go on after it."""

    def __init__(self, gen, errors):
        self._gen = gen
        self._errors = errors

    def __iter__(self):
        return self

    def __next__(self):
        value = next(self._gen)
        if self._errors == "raise" and isinstance(value, BaseException):
            raise value
        return value


def _named(e: sqlite3.Error, path: str) -> sqlite3.Error:
    """e, of the same type, saying which journal could not be written:
    SQLite's own message (database or disk is full) names no file."""
    return type(e)("writing the journal %s: %s" % (path, e))


def _lock_command(path: str, name: str):
    """Takes the lock that calls of the function name hold in the journal
    at path while they run, and returns the file that holds it, or None
    where no lock can be taken. As safepool run and map do for their
    command (internal/journal: lockCommand), it is a write lock of the
    open file (F_OFD_SETLK) on one byte of the span file beside the
    journal, far past its end, at a place of the name's SHA-256 (where
    safepool report looks, to tell a call that goes on from one whose
    program is gone): two programs that ran the same function on one
    journal at once would each run what it does not have as done.
    Another's holding it raises RuntimeError."""
    import errno
    import fcntl
    import struct
    if not hasattr(fcntl, "F_OFD_SETLK"):
        return None
    digest = hashlib.sha256(b"python\0" + name.encode("utf-8", "surrogatepass")).digest()
    start = (1 << 61) + (int.from_bytes(digest[:8], "little") >> 4)
    try:
        # Beside the file that path names through symbolic links, as
        # safepool run and map take it (internal/journal: SpanFile).
        f = open(os.path.realpath(path) + "-spans", "ab")
    except OSError:
        return None  # taking no lock, as before
    # struct flock: l_type, l_whence, l_start, l_len, l_pid (0 for an
    # open file's lock), padded to its size.
    lock = struct.pack("hhqqi4x", fcntl.F_WRLCK, os.SEEK_SET, start, 1, 0)
    try:
        fcntl.fcntl(f.fileno(), fcntl.F_OFD_SETLK, lock)
    except OSError as e:
        f.close()
        if e.errno in (errno.EAGAIN, errno.EACCES):
            raise RuntimeError("journal %s is in use: a call of %s goes on in another program (or another pool):"
                               " two at once would each run what it does not have as done; wait for it to end,"
                               " or name another journal file" % (path, name)) from None
        return None  # no such locks here (ENOLCK, EINVAL)
    return f


def _can_write(path: str) -> bool:
    """Whether this process may write the file at path, by its effective
    ids, as opening it would be judged."""
    if os.access in os.supports_effective_ids:
        return os.access(path, os.W_OK, effective_ids=True)
    return os.access(path, os.W_OK)


def _remove_unmade(path: str):
    """Removes the file of a journal that Journal made but could not set
    up, when it is still empty (on a full disk, SQLite leaves it so): left
    behind, it would pass for a journal. A file with anything in it may be
    another program's, made meanwhile, and stays."""
    try:
        st = os.stat(path)
        if st.st_size == 0 and os.path.isfile(path):
            os.remove(path)
    except OSError:
        pass


def _open_error(e: sqlite3.Error, path: str) -> sqlite3.Error:
    """e, of the same type, naming the journal that could not be opened or
    set up and, when the file system tells, why: SQLite's own message
    ("unable to open database file", "attempt to write a readonly
    database", "database or disk is full") names no file and no reason."""
    why = ""
    code = getattr(e, "sqlite_errorcode", None)  # Python 3.11 on
    primary = code & 0xFF if code is not None else None
    if primary in (3, 8, 14) or (primary is None and isinstance(e, sqlite3.OperationalError)):
        why = _open_problem(path)  # SQLITE_PERM, SQLITE_READONLY, SQLITE_CANTOPEN
    if not why and (primary in (10, 13) or (primary is None and isinstance(e, sqlite3.OperationalError))):
        why = _write_limit(path)  # SQLITE_IOERR, SQLITE_FULL
    if primary == 11 or (primary is None and "malformed" in str(e)):  # SQLITE_CORRUPT
        why = "the file is damaged: name a new journal file"
    return type(e)("cannot open the journal %s: %s%s" % (path, e, ": " + why if why else ""))


def _open_problem(path: str) -> str:
    """Why the journal at path cannot be opened to write, or "" when the
    file system does not tell."""
    d = os.path.dirname(os.path.abspath(path))
    if not os.path.exists(d):
        return "the directory %s does not exist" % d
    if not os.path.isdir(d):
        return "%s is not a directory" % d
    if os.path.exists(path) and not os.access(path, os.W_OK):
        return "%s cannot be written (permission denied)" % path
    # SQLite makes the WAL and its shared memory beside the journal, also
    # to read one that exists.
    if not os.access(d, os.W_OK | os.X_OK):
        return "no file can be made in %s (permission denied), where the journal needs its WAL beside it" % d
    return ""


def _write_limit(path: str) -> str:
    """Why files of the journal at path may no longer grow (the file size
    limit or a full file system), or ""."""
    try:
        import resource
        cur = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
        if cur != resource.RLIM_INFINITY:
            for f in (path, path + "-wal", path + "-journal"):
                if os.path.exists(f) and os.path.getsize(f) + (64 << 10) > cur:
                    return "%s has reached the file size limit (ulimit -f) of %d bytes" % (os.path.basename(f), cur)
    except (ImportError, OSError, ValueError):
        pass
    d = os.path.dirname(os.path.abspath(path))
    try:
        st = os.statvfs(d)
        if st.f_bavail * st.f_frsize < (1 << 20):
            return "no space left on the file system of %s" % d
    except OSError:
        pass
    return ""


def _short(arg) -> bytes:
    text = arg if isinstance(arg, (str, bytes)) else repr(arg)
    if isinstance(text, str):
        text = text.encode("utf-8", "backslashreplace")
    return text[:_INPUT_MAX]
