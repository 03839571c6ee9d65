"""numpy arrays through the pool as multiprocessing gives them back: a
task's arguments and its results, of every kind of array, read-only ones
included, compared with multiprocessing.Pool on the same inputs.

Run under an interpreter that has numpy: this one, or else Debian's
/usr/bin/python3, in a child process."""
import multiprocessing
import pickle
import textwrap
import unittest

from tests import array_helpers as ah
from tests import shared_helpers as sh
from tests.support import python_with, run_client, run_tests_under, skip_or_fail

try:
    import numpy
except ImportError:
    numpy = None

MiB = 1 << 20


if numpy is None:
    class UnderDebianPython(unittest.TestCase):
        def test_array_kinds(self):
            python = python_with("numpy")
            if python is None:
                skip_or_fail(self, "no Python here has numpy (test.sh installs python3-numpy for /usr/bin/python3)")
            run_tests_under(self, python, __name__)
else:
    import safepool

    def read_only(a):
        a = a.copy(order="K")
        a.flags.writeable = False
        return a

    def kinds(n):
        """Read-only arrays of n items or so, as numpy.frombuffer and
        flags.writeable = False make them, and writable ones beside them."""
        return [
            numpy.frombuffer(numpy.arange(n, dtype="f8").tobytes(), dtype="f8"),  # read-only
            read_only(numpy.arange(n, dtype="i4").reshape(2, -1)),
            read_only(numpy.asfortranarray(numpy.arange(n, dtype="f4").reshape(4, -1))),
            read_only(numpy.zeros(n // 4, dtype=[("a", "<i4"), ("b", "<f8")])),
            read_only(numpy.arange(n, dtype="u1")),
            numpy.arange(n, dtype="f8"),  # writable
        ]

    # What multiprocessing's pickler makes of an array (its protocol is the
    # interpreter's default).
    def as_multiprocessing(a):
        return pickle.loads(pickle.dumps(a))

    class ReadOnlyArrays(unittest.TestCase):
        # A read-only array (numpy.frombuffer of bytes, or one with
        # flags.writeable set False) arrives writable through
        # multiprocessing before Python 3.14 (its default protocol, 4,
        # copies it): safepool's protocol 5 gave it read-only, so that a
        # task writing to its argument, or a caller writing to a result,
        # raised "assignment destination is read-only".

        def test_arguments(self):
            for n in (64, 2 * MiB // 8):  # in band, out of band
                want = kinds(n)
                with safepool.Pool(2) as pool:
                    got = pool.map(ah.writable_after_write, want, chunksize=2)
                for i, (w, (writable, total)) in enumerate(zip(want, got)):
                    mp = as_multiprocessing(w)
                    self.assertEqual(writable, mp.flags.writeable,
                                     "argument %d (%s %s), %d items: writable in the worker" % (i, w.dtype, w.shape, n))
                    if w.dtype.names is None:
                        plus = w + numpy.ones(1, w.dtype) if writable else w  # (u1 wraps round)
                        self.assertEqual(total, float(plus.sum()), "argument %d" % i)
                # The worker's writes stay in the worker.
                for w, again in zip(want, kinds(n)):
                    self.assertEqual(w.tobytes(), again.tobytes())

        def test_big_arguments_are_not_copied(self):
            # Writable, and still the worker's copy-on-write mapping of
            # the task's argument file, not a copy of it.
            a = kinds(2 * MiB // 8)[0]
            with safepool.Pool(1) as pool:
                self.assertEqual(pool.apply(ah.argument_place, (a,)), (True, True))

        def test_big_argument_under_a_data_limit(self):
            # An argument file mapped read-only (a data size limit, which
            # would charge a writable mapping in full) keeps a read-only
            # array read-only, not a copy in the worker's limited memory.
            out = run_client(self, textwrap.dedent("""
                import numpy, safepool
                from tests import shared_helpers as sh
                with safepool.Pool(1, mem_limit="200MiB") as pool:
                    if pool.memory_mode.startswith("cgroup"):
                        print("mode", pool.memory_mode)
                        raise SystemExit
                    big = numpy.ones(300 << 17)  # 300 MiB
                    big.flags.writeable = False
                    in_memfd, writable, total = pool.apply(sh.arg_info, (big,))
                    assert in_memfd and not writable and total == big.size, (in_memfd, writable, total)
                print("ok")
            """), nobody_only=True)
            if out.stdout.startswith("mode"):
                skip_or_fail(self, "workers got cgroups as nobody (%s)" % out.stdout.strip())
            self.assertEqual(out.stdout.strip(), "ok", out.stderr[-3000:])

        def test_results(self):
            with safepool.Pool(2) as pool:
                for n in (64, 2 * MiB // 8):
                    got = pool.map(ah.read_only_result, [n] * 3)
                    with multiprocessing.get_context("spawn").Pool(1) as mp:
                        want = mp.apply(ah.read_only_result, (n,))
                    for r in got:
                        self.assertEqual(r.flags.writeable, want.flags.writeable, "a result of %d items" % n)
                        self.assertTrue(numpy.array_equal(r, want))
                    if not want.flags.writeable:
                        continue
                    # Each result is its own: writing to one leaves the others.
                    for i, r in enumerate(got):
                        r[:] = i + 1
                    for i, r in enumerate(got):
                        self.assertTrue((r == i + 1).all(), "result %d of %d items" % (i, n))

                    d = pool.apply(ah.read_only_results, (n,))
                    for k in "cfw":
                        self.assertEqual(d[k].flags.writeable, as_multiprocessing(ah.read_only_results(n)[k])
                                         .flags.writeable, k)
                    self.assertTrue(d["f"].flags.f_contiguous, "keeps Fortran order")
                    self.assertTrue(numpy.array_equal(d["c"], numpy.arange(2 * n, dtype="f8").reshape(2, n)))
                    d["c"][...] = -1
                    d["f"][...] = -2
                    self.assertTrue(numpy.array_equal(d["w"], numpy.arange(n, dtype="f8")))

        def test_executor_and_round_trip(self):
            want = kinds(2 * MiB // 8) + kinds(64)
            with safepool.Executor(2) as ex:
                got = list(ex.map(sh.identity, want))
            for i, (g, w) in enumerate(zip(got, want)):
                mp = as_multiprocessing(w)
                self.assertEqual((g.dtype, g.shape), (w.dtype, w.shape), i)
                self.assertEqual(g.tobytes(), w.tobytes(), i)
                self.assertEqual(g.flags.writeable, mp.flags.writeable, i)
                self.assertEqual(g.flags.f_contiguous, mp.flags.f_contiguous, i)
                self.assertFalse(numpy.shares_memory(g, w))

    class OneObjectTwice(unittest.TestCase):
        # An object that one item refers to twice arrives as one object, as
        # with pickle (multiprocessing): a big array that is not contiguous,
        # or a big bytearray, arrived as two copies, so that a task writing
        # through one name read the old values through the other.

        def setUp(self):
            base = numpy.arange(600000, dtype="f8")
            self.t = base[::2]  # not contiguous: made contiguous to go out of band
            self.ba = bytearray(2 * MiB)

        def items(self):
            t, ba = self.t, self.ba
            return [(t, t), [t, t], {"x": t, "y": t}, (ba, ba), {"x": ba, "y": ba}]

        def test_arguments(self):
            items = self.items()
            want = [ah.write_through_first(pickle.loads(pickle.dumps(x))) for x in items]
            self.assertEqual(want, [(True, 99)] * len(items))
            with safepool.Pool(2) as pool:
                got = pool.map(ah.write_through_first, items)
            self.assertEqual(got, want)

        def test_results(self):
            items = self.items()
            with safepool.Pool(2) as pool:
                got = pool.map(sh.identity, items)
            for i, g in enumerate(got):
                self.assertEqual(ah.write_through_first(g), (True, 99), "item %d" % i)

        def test_holds_itself(self):
            # A list or dict that holds itself beside a big buffer: the walk
            # that takes buffers out of band recursed until RecursionError.
            lst = [bytes(2 * MiB)]
            lst.append(lst)
            d = {"b": bytearray(2 * MiB)}
            d["self"] = d
            with safepool.Pool(1) as pool:
                self.assertEqual(pool.map(ah.holds_itself, [lst, d]), [(True, 2 * MiB)] * 2)
                back = pool.map(sh.identity, [lst, d])
            self.assertEqual([ah.holds_itself(x) for x in back], [(True, 2 * MiB)] * 2)


if __name__ == "__main__":
    unittest.main()
