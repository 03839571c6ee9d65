"""What a warm map's worker spends on each item, without pipes or other
processes: CPU time per item (best of 9 repetitions of REPS batches of 2500
trivial items) of

- the safepool worker's batch (safepool.worker._run_batch_page: the batch's
  payload unpickled, each item marked in a running-item page and run, the
  values pickled), its payload a list of numbers (as from a list) or a range;
- its quick loop alone, with the mark, and without it;
- what a multiprocessing worker does with a chunk: unpickle it, list(map()),
  pickle the values;
- list(map(sq, items)) alone.

    /usr/bin/python3 bench/python/workerloop.py [REPS]
"""
import mmap
import os
import pickle
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(REPO, "python"))

from safepool import _oob, _pickling, worker  # noqa: E402
from safepool._protocol import BATCH_RANGE, INDEX, MAP, PAGE_POS  # noqa: E402

N = 2500
REPS = int(sys.argv[1]) if len(sys.argv) > 1 else 100


def sq(x):
    return x * x


def main():
    m = mmap.mmap(-1, 4096)
    page, page_id = memoryview(m).cast("I"), memoryview(m)[:16].cast("Q")
    items = list(range(N))
    fn = _pickling.dumps_function(sq, True)
    head = INDEX.pack(BATCH_RANGE | N) + INDEX.pack(0)
    batches = {}
    for name, its in (("list", items), ("range", range(N))):
        payload, ticket = _oob.encode((MAP, fn, its), True)
        batches[name] = (head + bytes(payload), ticket)

    def sink(_):
        pass

    def batch(name):
        return lambda: worker._run_batch_page(1, batches[name][0], sink, lambda: None, page, page_id)

    def marked():
        values = []
        append = values.append
        for pos in range(N):
            page[PAGE_POS] = pos
            append(sq(items[pos]))

    def unmarked():
        values = []
        append = values.append
        for pos in range(N):
            append(sq(items[pos]))

    chunk = pickle.dumps((sq, tuple(items)), -1)

    def mp_chunk():
        f, xs = pickle.loads(chunk)
        pickle.dumps(list(map(f, xs)), -1)

    cases = [("safepool worker batch, a list", batch("list")), ("safepool worker batch, a range", batch("range")),
             ("quick loop with the mark", marked), ("quick loop without the mark", unmarked),
             ("multiprocessing worker chunk", mp_chunk), ("list(map(sq, items))", lambda: list(map(sq, items)))]
    for label, f in cases:
        best = float("inf")
        for _ in range(9):
            t = time.process_time()
            for _ in range(REPS):
                f()
            best = min(best, (time.process_time() - t) / REPS / N * 1e9)
        print("%-34s %6.1f ns an item" % (label, best))


if __name__ == "__main__":
    os.environ.setdefault("SAFEPOOL_PROTOCOL", "framed/1")
    main()
