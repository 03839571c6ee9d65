"""A program that uses the pool and holds much of its container's memory
itself, run by test_governor inside a memory cgroup of its own (a
container's wall): it holds HELD MiB in its own arrays, then runs a task
that grows to TASK MiB, which fits within the pool's budget but not beside
what it holds. Prints one JSON line: how the task ended.

    python3 -m tests.client_held_scenario HELD TASK
"""
import json
import sys

import safepool
from tests import helpers


def main():
    held_mib, task_mib = int(sys.argv[1]), int(sys.argv[2])
    held = bytearray(held_mib << 20)  # touched: bytearray zero-fills
    # Preemption off: the point is the OOM killer and the verdict after it.
    with safepool.Pool(1, mem_high=0, mem_psi=0) as pool:
        out = {"memory_mode": pool.memory_mode}
        try:
            out["result"] = pool.apply(helpers.hog, (task_mib,))
        except safepool.WorkerDied as e:
            out.update(state=e.state, cause=e.cause, attempts=e.attempts, message=str(e),
                       history=[a.cause for a in e.history])
    out["held"] = len(held) >> 20
    print(json.dumps(out))


if __name__ == "__main__":
    main()
