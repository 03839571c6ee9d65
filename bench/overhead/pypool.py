"""Trivial tasks through a Python process pool, one task per message.

    /usr/bin/python3 bench/overhead/pypool.py POOL <INPUT >OUTPUT     POOL: mp pebble

Reads the input lines, runs echo(line) for each on 2 persistent worker
processes, one task per message to a worker (no batching), and writes the
results in input order:

    mp       multiprocessing.Pool(2) (fork), imap(echo, lines, chunksize=1)
    pebble   pebble.ProcessPool(2), map(echo, lines, chunksize=1)

The time of the whole program (interpreter, pool start and stop) is what
the overhead benchmark measures, as it does for the other tools.
"""
import sys

WORKERS = 2


def echo(line):
    """The task: return its input."""
    return line


def run_mp(lines, out):
    import multiprocessing as mp
    with mp.get_context("fork").Pool(WORKERS) as pool:
        out.writelines(pool.imap(echo, lines, chunksize=1))


def run_pebble(lines, out):
    from pebble import ProcessPool
    with ProcessPool(max_workers=WORKERS) as pool:
        out.writelines(pool.map(echo, lines, chunksize=1).result())


def main(argv):
    if len(argv) != 1 or argv[0] not in ("mp", "pebble"):
        print(__doc__, file=sys.stderr)
        return 2
    lines = sys.stdin.readlines()
    globals()["run_" + argv[0]](lines, sys.stdout)
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
