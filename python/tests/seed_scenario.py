"""The seed scenario, run from an installed safepool (test.sh installs the
wheel into a fresh virtual environment and runs this copy of the file
outside the source tree): 40 tasks on 4 workers with mem_limit, and task 7
allocates past the limit. Only task 7 fails, with cause oom (memory-limit
where workers get no memory cgroup); the pool uses the binary the wheel
installed. Exits 0 when all of that holds."""
import os
import sys

import safepool


def work(i):
    if i == 7:
        held = []
        while True:
            held.append(bytearray(16 << 20))  # touched: bytearray zero-fills
    return i * i


def main():
    problems = []
    where = os.path.dirname(safepool.__file__)
    if not where.startswith(sys.prefix):
        problems.append("safepool imported from %s, not from the environment %s" % (where, sys.prefix))
    with safepool.Pool(4, mem_limit="256MiB") as pool:
        mode = pool.memory_mode
        binary = os.readlink("/proc/%d/exe" % pool._core.pid)
        out = pool.map(work, range(40), errors="return")
    if binary != os.path.join(where, "_bin", "safepool"):
        problems.append("the pool ran the binary %s, not the wheel's" % binary)
    want_cause = "oom" if mode.startswith("cgroup") else "memory-limit"
    died = out[7]
    if not isinstance(died, safepool.WorkerDied) or died.cause != want_cause:
        problems.append("task 7 = %r, want WorkerDied with cause %s" % (died, want_cause))
    wrong = [i for i, v in enumerate(out) if i != 7 and v != i * i]
    if wrong:
        problems.append("tasks %s have wrong results" % wrong)
    print("safepool %s from %s, memory mode %s, binary %s" % (safepool.__version__, where, mode, binary))
    print("task 7: %s" % died)
    print("the other 39 tasks: %s" % ("ok" if not wrong else "WRONG"))
    for p in problems:
        print("FAIL:", p, file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
