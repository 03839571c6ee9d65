"""safepool.worker_slot: each worker's slot, 1 to processes, kept by the
worker that replaces one, on real processes."""
import os
import subprocess
import sys
import unittest

import safepool
from tests import helpers
from tests.support import child_env


class WorkerSlot(unittest.TestCase):
    def check(self, out, gpus):
        """Each answer's slot is 1..len(gpus), its GPU the slot's, and a
        worker process has one slot; return the slots seen and the pids."""
        slot_of = {}
        for slot, gpu, pid in out:
            self.assertIn(slot, range(1, len(gpus) + 1))
            self.assertEqual(gpu, gpus[slot - 1])
            self.assertEqual(slot_of.setdefault(pid, slot), slot, "worker %d changed slots" % pid)
        return set(slot_of.values()), set(slot_of)

    def test_pool_initializer_pins_a_gpu_per_slot(self):
        gpus = ["7", "9"]
        with safepool.Pool(2, initializer=helpers.pin_gpu, initargs=(gpus,), maxtasksperchild=3) as pool:
            first = pool.map(helpers.slot_info, range(12), chunksize=1)
            with self.assertRaises(safepool.WorkerDied):
                pool.apply(helpers.kill_self_at, (7,))
            rest = pool.map(helpers.slot_info, range(12), chunksize=1)
        slots, pids = self.check(first + rest, gpus)
        self.assertEqual(slots, {1, 2})
        # Recycled every three tasks and after the death: the replacements
        # took the slots of the workers they replaced.
        self.assertGreater(len(pids), 2)

    def test_executor(self):
        gpus = ["0", "1", "2"]
        with safepool.Executor(max_workers=3, initializer=helpers.pin_gpu, initargs=(gpus,)) as ex:
            out = list(ex.map(helpers.slot_info, range(30)))
        slots, _ = self.check(out, gpus)
        self.assertLessEqual(slots, {1, 2, 3})

    def test_none_outside_a_worker(self):
        env = child_env()
        env.pop("SAFEPOOL_SLOT", None)
        code = "import safepool; print(safepool.worker_slot())"
        out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
        self.assertEqual(out.stdout, "None\n")


if __name__ == "__main__":
    unittest.main()
