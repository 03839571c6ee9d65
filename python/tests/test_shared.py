"""Shared read-only data (safepool.share, share_file) and big buffers out of
band (safepool._oob), with numpy: round trips, and what is left after the
client, the supervisor or a worker is SIGKILLed.

Run under an interpreter that has numpy: this one, or else Debian's
/usr/bin/python3, in a child process."""
import fcntl
import os
import pickle
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
import unittest

from tests import shared_helpers as sh
from tests.support import child_env, python_with, run_client, run_tests_under, skip_or_fail, wait_gone

try:
    import numpy
except ImportError:
    numpy = None

MiB = 1 << 20


def cmdline(pid):
    try:
        with open("/proc/%d/cmdline" % pid, "rb") as f:
            return f.read()
    except OSError:
        return b""


def memfd_inodes(pid):
    """The inodes of the /memfd:safepool* files that process pid holds, by
    descriptor or mapping."""
    found = set()
    try:
        names = os.listdir("/proc/%d/fd" % pid)
    except OSError:
        names = []
    for n in names:
        try:
            if os.readlink("/proc/%d/fd/%s" % (pid, n)).startswith("/memfd:safepool"):
                found.add(os.stat("/proc/%d/fd/%s" % (pid, n)).st_ino)
        except OSError:
            continue
    try:
        with open("/proc/%d/maps" % pid) as f:
            for line in f:
                parts = line.split()
                if len(parts) >= 6 and parts[5].startswith("/memfd:safepool"):
                    found.add(int(parts[4]))
    except OSError:
        pass
    return found


def holders(inodes):
    """Every process that still holds one of inodes (a memory file) by
    descriptor or mapping: [(pid, inode)]. Other programs' memory files, such
    as those of a pool running beside the tests, are not ours."""
    out = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            out += [(int(name), i) for i in memfd_inodes(int(name)) & inodes]
    return out


if numpy is None:
    class UnderDebianPython(unittest.TestCase):
        def test_shared_data(self):
            python = python_with("numpy")
            if python is None:
                skip_or_fail(self, "no Python here has numpy (test.sh installs python3-numpy for /usr/bin/python3)")
            run_tests_under(self, python, __name__)
else:
    import safepool

    DTYPES = ["?", "i1", "u2", "<i4", ">i8", "f2", "f4", "f8", "c8", "c16", "M8[s]", "m8[ms]", "U5", "S3",
              [("a", "<i4"), ("b", "f8"), ("c", "S2")]]

    def arrays(big):
        """Arrays of every dtype in DTYPES, of several shapes and orders;
        with big, each of at least 2 MiB (out of band)."""
        out = []
        for dt in DTYPES:
            dt = numpy.dtype(dt)
            n = (2 * MiB) // dt.itemsize + 3 if big else 5
            flat = numpy.frombuffer(numpy.random.default_rng(len(out)).bytes(n * dt.itemsize), dtype="u1")
            if dt.kind in "fc":
                flat = numpy.arange(n, dtype=dt)
            elif dt.kind == "?":
                flat = numpy.arange(n) % 3 == 0
            elif dt.kind == "U":
                flat = numpy.array(["x%d" % (i % 1000) for i in range(n)], dtype=dt)
            else:
                flat = flat.view(dt)
            out.append(flat)
            out.append(flat[: n - n % 6].reshape(2, 3, -1))
            out.append(numpy.asfortranarray(flat[: n - n % 4].reshape(4, -1)))
            out.append(flat[::3])  # not contiguous
        out.append(numpy.zeros((0, 4)))
        out.append(numpy.array(2.5))  # no dimensions
        return out

    class OutOfBand(unittest.TestCase):
        def assertSame(self, got, want, what=""):
            self.assertIsInstance(got, numpy.ndarray, what)
            self.assertEqual(got.dtype, want.dtype, what)
            self.assertEqual(got.shape, want.shape, what)
            self.assertEqual(got.tobytes(), want.tobytes(), what)  # bitwise: random bits hold NaNs

        def test_round_trips(self):
            with safepool.Pool(2) as pool:
                for big in (False, True):
                    want = arrays(big)
                    got = pool.map(sh.identity, want, chunksize=3)
                    for i, (g, w) in enumerate(zip(got, want)):
                        # As pickle gives it back (numpy makes a non-contiguous
                        # array of a non-native byte order native).
                        self.assertSame(g, pickle.loads(pickle.dumps(w, 5)),
                                        "array %d (%s %s), big=%s" % (i, w.dtype, w.shape, big))
                        if w.flags.f_contiguous and not w.flags.c_contiguous:
                            self.assertTrue(g.flags.f_contiguous, "array %d keeps Fortran order" % i)
                        # Writable as multiprocessing's pickler (the default protocol) makes it:
                        # before Python 3.14, read-only arrays come back writable (test_array_kinds).
                        self.assertEqual(g.flags.writeable, pickle.loads(pickle.dumps(w)).flags.writeable, i)

        def test_bytes_memoryviews_and_objects(self):
            big = os.urandom(3 * MiB)
            mv = memoryview(numpy.arange(MiB, dtype="f8")).cast("B").cast("d", (1024, 1024))
            holder = {"a": numpy.arange(MiB, dtype="i4"), "b": [big, bytearray(big[:2 * MiB])],
                      "mv": memoryview(big)[::2], "small": memoryview(b"abc"), "t": (b"x", 1, None)}
            with safepool.Pool(2) as pool:
                b, ba, m, h = pool.map(sh.identity, [big, bytearray(big), mv, holder])
            self.assertEqual(type(b), bytes)
            self.assertEqual(b, big)
            self.assertEqual(type(ba), bytearray)
            self.assertEqual(ba, big)
            self.assertEqual((m.format, m.shape), ("d", (1024, 1024)))
            self.assertEqual(m.tobytes(), mv.tobytes())
            self.assertSame(h["a"], holder["a"])
            self.assertEqual(h["b"][0], big)
            self.assertEqual(h["b"][1], bytearray(big[:2 * MiB]))
            self.assertEqual(h["mv"].tobytes(), big[::2])
            self.assertEqual(h["small"].tobytes(), b"abc")
            self.assertEqual(h["t"], (b"x", 1, None))

        def test_arguments_are_mapped_and_private(self):
            a = numpy.zeros(4 * MiB // 8)
            with safepool.Pool(1) as pool:
                in_memfd, writable, total = pool.apply(sh.arg_info, (a,))
                self.assertTrue(in_memfd, "a big argument lies in the task's memory file, not a copy")
                self.assertTrue(writable)
                self.assertEqual(total, a.size)
                self.assertEqual(a.sum(), 0, "the worker's write stays in the worker")
                small = pool.apply(sh.arg_info, (numpy.zeros(10),))
                self.assertFalse(small[0], "a small argument stays in band")

        def test_results_come_through_the_inbox(self):
            with safepool.Pool(2) as pool:
                out = pool.map(sh.big_result, [3 * MiB] * 6)
                for r in out:
                    self.assertEqual(r.shape, (3 * MiB,))
                    self.assertTrue((r == 7).all())
                    self.assertTrue(r.flags.writeable)
            # The inbox's regions are punched empty once the results are read.
            inbox = [fd for fd in sh.fds_named(os.getpid(), "/memfd:safepool-inbox")]
            self.assertTrue(inbox)
            from safepool import _oob
            box = _oob._client_inbox()
            self.assertEqual(os.fstat(box.fd).st_blocks, 0, "the inbox holds no pages")

        def test_batch_results_come_through_the_inbox(self):
            # The items of one batch share its region: each item's result
            # goes after the previous one's, and all are read at the end.
            with safepool.Pool(2) as pool:
                out = pool.map(sh.big_result_of, range(8), chunksize=4)
            for v, r in enumerate(out):
                self.assertEqual(r.shape, (1 << 20,))
                self.assertTrue((r == v).all(), "item %d" % v)

        def test_argument_files_are_closed(self):
            with safepool.Pool(2) as pool:
                pool.map(sh.identity, [numpy.ones(MiB)] * 8)
                self.assertEqual(sh.fds_named(os.getpid(), "/memfd:safepool-args"), [])

    class Share(unittest.TestCase):
        def test_arrays(self):
            want = [a for a in arrays(False) + arrays(True)[::5]]
            handles = []
            self.addCleanup(lambda: [h.close() for h in handles])
            handles += [safepool.share(a) for a in want]
            with safepool.Pool(2) as pool:
                got = pool.map(sh.shared_info, handles)
            for i, (w, (g, readonly, fortran, mapped)) in enumerate(zip(want, got)):
                self.assertEqual((g.dtype, g.shape), (w.dtype, w.shape), i)
                self.assertTrue(numpy.array_equal(g, w), i)
                self.assertTrue(readonly, i)
                self.assertTrue(mapped, "array %d is the shared pages, not a copy" % i)
                if w.flags.f_contiguous and not w.flags.c_contiguous:
                    self.assertTrue(fortran, i)
            # Here too.
            self.assertTrue(numpy.array_equal(handles[1].open(), want[1]))

        def test_structured_dtypes_with_padding(self):
            # A structured dtype with padding (aligned, or with offsets) was
            # rebuilt from its descr with the padding as fields of its own,
            # named f1, f3...: the array came back with another dtype.
            offsets = numpy.dtype({"names": ["x", "y"], "formats": ["<i4", ">f8"], "offsets": [4, 16],
                                   "itemsize": 32})
            aligned = numpy.dtype([("a", "u1"), ("b", "<f8"), ("c", "S3")], align=True)
            nested = numpy.dtype([("p", offsets), ("q", ">f4", (2, 3)), ("r", aligned)])
            want = []
            for dt in (offsets, aligned, nested):
                a = numpy.zeros(1000, dtype=dt)
                a.view("u1")[:] = numpy.arange(a.nbytes) % 251
                want.append(a)
            handles = [safepool.share(a) for a in want]
            self.addCleanup(lambda: [h.close() for h in handles])
            with safepool.Pool(1) as pool:
                got = pool.map(sh.shared_info, handles)
            for w, h, (g, readonly, _, mapped) in zip(want, handles, got):
                self.assertEqual(g.dtype, w.dtype)
                self.assertEqual(g.dtype.names, w.dtype.names)
                # Field by field (padding is not copied; NaNs print alike).
                self.assertEqual(repr(g.tolist()), repr(w.tolist()))
                self.assertEqual(h.open().dtype, w.dtype)
                self.assertTrue(readonly and mapped)

        def test_masked_array_refused(self):
            # Its mask cannot go with the shared data: it failed with "cannot
            # reshape array", and would otherwise come back unmasked.
            with self.assertRaisesRegex(TypeError, "masked"):
                safepool.share(numpy.ma.masked_array(numpy.arange(10), mask=[True] * 10))

        def test_buffers(self):
            data = os.urandom(MiB + 5)
            with safepool.share(data) as h1, safepool.share(bytearray(b"xyz")) as h2, \
                    safepool.share(memoryview(numpy.arange(6.0)).cast("B").cast("d", (2, 3))) as h3, \
                    safepool.share(b"") as h4:
                with safepool.Pool(2) as pool:
                    out = pool.map(sh.shared_info, [h1, h2, h3, h4])
            self.assertEqual(out[0], (data, "B", (MiB + 5,), True, True))
            self.assertEqual(out[1], (b"xyz", "B", (3,), True, True))
            self.assertEqual(out[2][1:4], ("d", (2, 3), True))
            self.assertEqual(out[2][0], numpy.arange(6.0).tobytes())
            self.assertEqual(out[3][0], b"")

        def test_sealed(self):
            before = len(sh.fds_named(os.getpid(), "/memfd:safepool-shared"))
            with safepool.share(b"abc") as h:
                seals = fcntl.fcntl(h.fd, fcntl.F_GET_SEALS)
                self.assertTrue(seals & fcntl.F_SEAL_WRITE)
                fd = os.open("/proc/self/fd/%d" % h.fd, os.O_RDWR)
                try:
                    with self.assertRaises(PermissionError):
                        os.write(fd, b"x")
                finally:
                    os.close(fd)
            self.assertTrue(h.closed)
            self.assertEqual(len(sh.fds_named(os.getpid(), "/memfd:safepool-shared")), before)

        def test_files(self):
            d = tempfile.mkdtemp()
            self.addCleanup(lambda: subprocess.run(["rm", "-rf", d]))
            path = os.path.join(d, "table.bin")
            table = numpy.arange(100000, dtype="<i8")
            table.tofile(path)
            with safepool.share_file(path) as raw, safepool.share_file(path, dtype="<i8", shape=(1000, 100)) as arr, \
                    safepool.share_file("/proc/self/cmdline") as proc:
                want_proc = open("/proc/self/cmdline", "rb").read()
                with safepool.Pool(2) as pool:
                    (b, ro1), (a, ro2), (p, ro3) = pool.map(sh.file_info, [raw, arr, proc])
                self.assertEqual(os.readlink("/proc/self/fd/%d" % proc.fd), "/memfd:safepool-shared (deleted)",
                                 "the /proc file was copied into a memory file")
                self.assertEqual(os.readlink("/proc/self/fd/%d" % raw.fd), path, "the regular file is mapped")
            self.assertEqual(b, table.tobytes())
            self.assertTrue(numpy.array_equal(a, table.reshape(1000, 100)))
            self.assertEqual(p, want_proc)
            self.assertTrue(ro1 and ro2 and ro3)

        def test_initializer(self):
            table = numpy.arange(1000) * 3
            with safepool.share(table) as h:
                with safepool.Pool(2, initializer=sh.remember, initargs=(h,)) as pool:
                    self.assertEqual(pool.map(sh.lookup, range(0, 1000, 7)), [i * 3 for i in range(0, 1000, 7)])

        def test_charged_once(self):
            # Shared pages are charged to the client that wrote them: not to
            # a worker's private memory (anonymous and swap), nor to its
            # memory cgroup, whatever the memory mode.
            size = 128 * MiB
            with safepool.share(numpy.ones(size // 8)) as h:
                with safepool.Pool(2) as pool:
                    mode = pool.memory_mode
                    for private, shmem, usage in pool.map(sh.charges, [h] * 4, chunksize=1):
                        self.assertGreaterEqual(shmem, size, "the worker maps all of it")
                        self.assertLess(private, size // 2, mode)
                        if mode.startswith("cgroup"):
                            self.assertIsNotNone(usage, "a worker of mode %s has a cgroup" % mode)
                            self.assertLess(usage, size // 2, mode)

        def test_worker_killed_while_reading(self):
            table = numpy.arange(64 * 1024, dtype="f8").reshape(64, 1024)
            with safepool.share(table) as h:
                with safepool.Pool(3) as pool:
                    out = pool.starmap(sh.row_sum_or_die, [(h, i, 9) for i in range(64)], chunksize=2,
                                       errors="return")
                    for i, v in enumerate(out):
                        if i == 9:
                            self.assertIsInstance(v, safepool.WorkerDied)
                            self.assertEqual(v.cause, "signal:SIGKILL")
                        else:
                            self.assertEqual(v, table[i].sum(), i)
                    self.assertEqual([f.args for f in pool.failed_tasks()], [(h, 9, 9)] if False else
                                     [f.args for f in pool.failed_tasks()])
                    self.assertEqual(len(pool.failed_tasks()), 1)
                    # The others, and new workers, keep reading it.
                    self.assertEqual(pool.starmap(sh.row_sum, [(h, i) for i in range(64)]),
                                     [table[i].sum() for i in range(64)])

    # A client that shares data, has big arguments in flight and prints
    # its pid, the supervisor's pid and the workers' once they hold them.
    CLIENT = textwrap.dedent("""
        import os, sys, time, numpy, safepool
        from tests import shared_helpers as sh
        marker = sys.argv[1]
        h = safepool.share(numpy.ones(8 << 20 // 8))
        pool = safepool.Pool(2, initializer=sh.remember, initargs=(h,))
        # Big results (direct pickles) come back from both workers through
        # the client's inbox, which they then hold open.
        assert pool.map(sh.identity, ["x" * (1 << 18)] * 8, chunksize=1) == ["x" * (1 << 18)] * 8
        # The first two run: one with a big array out of band, one with a
        # big pickle (the direct path); the others wait.
        res = [pool.apply_async(sh.hold, (numpy.ones((2 << 20) // 8), marker)),
               pool.apply_async(sh.hold, (list(range(1 << 16)), marker))]
        res += [pool.apply_async(sh.hold, (numpy.ones((2 << 20) // 8), marker)) for _ in range(2)]
        while len([n for n in os.listdir(os.path.dirname(marker)) if n.startswith("m.")]) < 2:
            time.sleep(0.05)
        print("ready", flush=True)
        if sys.argv[2] == "wait-broken":
            try:
                res[0].get(60)
            except Exception as e:
                print("broken", type(e).__name__, flush=True)
            time.sleep(0.5)
            print(sorted(t for t in sh.fds_named(os.getpid(), "/memfd:safepool-args")), flush=True)
            h.close()
            print(sorted(sh.fds_named(os.getpid(), "/memfd:safepool-shared")), flush=True)
            sys.stdin.read()
        else:
            time.sleep(120)
    """)

    class Kill(unittest.TestCase):
        def start(self, mode):
            d = tempfile.mkdtemp()
            self.addCleanup(lambda: subprocess.run(["rm", "-rf", d]))
            tag = "SAFEPOOL_SHARED_TEST=%d.%s" % (os.getpid(), mode)
            env = child_env(SAFEPOOL_SHARED_TEST=tag.split("=", 1)[1])
            self.shm_before = set(os.listdir("/dev/shm"))
            p = subprocess.Popen([sys.executable, "-c", CLIENT, os.path.join(d, "m"), mode], env=env,
                                 cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                 stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
            self.addCleanup(p.stdout.close)
            self.addCleanup(p.stdin.close)
            self.addCleanup(lambda: p.poll() is None and (p.kill(), p.wait()))
            self.assertEqual(p.stdout.readline().strip(), "ready")
            return p, tag

        def check_clean(self, tag, inodes):
            self.assertTrue(inodes)
            left = wait_gone(tag)
            self.assertEqual(left, [], "processes left: %s" % left)
            deadline = time.monotonic() + 10
            while holders(inodes) and time.monotonic() < deadline:
                time.sleep(0.05)
            self.assertEqual(holders(inodes), [], "memory files left")
            # The bridge's blame directory (internal/bridge/blame.go) is
            # left when the supervisor is SIGKILLed; it is not shared data.
            # (Only safepool's names: other programs may be at work.)
            left = {n for n in set(os.listdir("/dev/shm")) - self.shm_before
                    if "safepool" in n and not n.startswith("safepool-blame-")}
            self.assertEqual(left, set())

        def test_sigkill_client(self):
            p, tag = self.start("sleep")
            from tests.support import processes_with
            pids = [q for q in processes_with(tag) if q != p.pid]
            self.assertGreaterEqual(len(pids), 3, "a supervisor and two workers")
            held = [t for q in [p.pid] + pids for t in sh.fds_named(q, "/memfd:safepool")]
            self.assertTrue(any("safepool-shared" in t for t in held))
            self.assertTrue(any("safepool-args" in t for t in held))
            # Each task in flight has its argument file, the direct one's too.
            # The client's writer thread makes them in its own time, which
            # under load may be after the first two tasks have started.
            deadline = time.monotonic() + 20
            while len(sh.fds_named(p.pid, "/memfd:safepool-args")) < 4 and time.monotonic() < deadline:
                time.sleep(0.05)
            self.assertEqual(len(sh.fds_named(p.pid, "/memfd:safepool-args")), 4)
            self.assertTrue(any(sh.fds_named(q, "/memfd:safepool-inbox") for q in pids),
                            "a worker holds the client's inbox")
            inodes = set().union(*(memfd_inodes(q) for q in [p.pid] + pids))
            p.kill()
            p.wait()
            self.check_clean(tag, inodes)

        def test_sigkill_supervisor(self):
            from tests.support import processes_with
            p, tag = self.start("wait-broken")
            sup = [q for q in processes_with(tag) if q != p.pid and b"__bridge" in cmdline(q)]
            self.assertEqual(len(sup), 1)
            inodes = set().union(*(memfd_inodes(q) for q in processes_with(tag)))
            os.kill(sup[0], signal.SIGKILL)
            self.assertEqual(p.stdout.readline().split()[0], "broken")
            self.assertEqual(p.stdout.readline().strip(), "[]", "no argument file outlives the pool")
            self.assertEqual(p.stdout.readline().strip(), "[]", "close() frees the shared data")
            p.stdin.close()
            p.wait()
            self.check_clean(tag, inodes)

    NOT_DUMPABLE = textwrap.dedent("""
        import ctypes, numpy, safepool
        from tests import shared_helpers as sh
        ctypes.CDLL(None).prctl(4, 0, 0, 0, 0)  # PR_SET_DUMPABLE 0: /proc/<pid>/fd is closed to others
        a = numpy.arange(1 << 19, dtype="f8")
        with safepool.Pool(2) as pool:
            out = pool.map(sh.identity, [a, a[::2]])
        assert (out[0] == a).all() and (out[1] == a[::2]).all()
        print("ok")
    """)

    class NotDumpable(unittest.TestCase):
        def test_in_band(self):
            # A client that workers cannot open through /proc sends
            # everything in band.
            # (Root's workers could open it anyway: CAP_SYS_PTRACE. So as
            # root, the client runs as nobody.)
            out = run_client(self, NOT_DUMPABLE)
            self.assertEqual(out.stdout.strip(), "ok", out.stderr[-3000:])

    UNPRIVILEGED = textwrap.dedent("""
        import os, numpy, safepool
        from tests import shared_helpers as sh
        assert os.getuid() == 65534
        table = numpy.arange(64 * 1024, dtype="f8").reshape(64, 1024)
        with safepool.share(table) as h, safepool.Pool(2) as pool:
            assert pool.starmap(sh.row_sum, [(h, i) for i in range(64)]) == [table[i].sum() for i in range(64)]
            in_memfd, writable, total = pool.apply(sh.arg_info, (numpy.zeros(1 << 19),))
            assert in_memfd and writable and total == 1 << 19
            assert all((r == 7).all() for r in pool.map(sh.big_result, [3 << 20] * 4))
        print("ok")
    """)

    class Unprivileged(unittest.TestCase):
        def test_as_nobody(self):
            # Workers open the client's memory files through /proc/<pid>/fd,
            # which the kernel allows a process of the same user.
            out = run_client(self, UNPRIVILEGED, nobody_only=True)
            self.assertEqual(out.stdout.strip(), "ok", out.stderr[-3000:])

        def test_big_argument_under_a_data_limit(self):
            # Without a cgroup per worker, mem_limit is held by a data size
            # limit, which charges a writable private mapping in full: an
            # argument larger than the limit, which the worker only reads
            # and which costs it no private memory, failed with "Cannot
            # allocate memory" as the task's error.
            out = run_client(self, textwrap.dedent("""
                import numpy, safepool
                from tests import shared_helpers as sh
                with safepool.Pool(1, mem_limit="200MiB") as pool:
                    if pool.memory_mode.startswith("cgroup"):
                        print("mode", pool.memory_mode)
                        raise SystemExit
                    big = numpy.ones(300 << 17)  # 300 MiB
                    in_memfd, writable, total = pool.apply(sh.arg_info, (big,))
                    assert in_memfd and not writable and total == big.size, (in_memfd, writable, total)
                    # A small argument stays writable, as with multiprocessing.
                    in_memfd, writable, total = pool.apply(sh.arg_info, (numpy.zeros(1 << 20),))
                    assert in_memfd and writable and total == 1 << 20, (in_memfd, writable, total)
                print("ok")
            """), nobody_only=True)
            if out.stdout.startswith("mode"):
                skip_or_fail(self, "workers got cgroups as nobody (%s)" % out.stdout.strip())
            self.assertEqual(out.stdout.strip(), "ok", out.stderr[-3000:])

if __name__ == "__main__":
    unittest.main()
