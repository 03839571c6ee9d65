"""Writes a deterministic CSV of orders, the input of the streaming benchmark.

    gencsv.py SIZE_BYTES > orders.csv

Every row is different (its id), about 200 bytes long, with a quoted comment
that holds commas; no field holds a newline, so one row is one line. The same
size always gives the same bytes.
"""
import random
import sys

WORDS = ("delivery late box damaged great price again would buy recommend "
         "color size fits small large quality service fast slow refund gift "
         "thanks perfect okay broken works described cheap expensive").split()
COUNTRIES = "de fr us gb jp br in it es nl se pl ca au mx kr".split()
PRODUCTS = ["sku-%04d" % i for i in range(500)]
NAMES = "ada grace linus ken dennis barbara margaret alan donald edsger niklaus".split()
STATUSES = ("paid", "shipped", "returned", "cancelled")


def rows(rng):
    # A few thousand distinct comments, picked at random: fast to generate,
    # and the comment is the long part of a row.
    comments = []
    for _ in range(4096):
        words = [rng.choice(WORDS) for _ in range(rng.randint(8, 30))]
        for k in range(2, len(words), 7):
            words[k] += ","
        comments.append('"' + " ".join(words) + '"')
    i = 0
    while True:
        i += 1
        r = rng.getrandbits(64)
        yield "%d,2024-%02d-%02dT%02d:%02d:%02dZ,%s %s,%s,%s,%d,%d.%02d,%s,%s\n" % (
            i, 1 + r % 12, 1 + (r >> 4) % 28, (r >> 9) % 24, (r >> 14) % 60, (r >> 20) % 60,
            NAMES[(r >> 26) % len(NAMES)], NAMES[(r >> 30) % len(NAMES)],
            COUNTRIES[(r >> 34) % len(COUNTRIES)], PRODUCTS[(r >> 38) % len(PRODUCTS)],
            1 + (r >> 47) % 9, 1 + (r >> 51) % 500, (r >> 40) % 100,
            STATUSES[(r >> 60) % 4], comments[(r >> 12) % len(comments)])


def main():
    size = int(sys.argv[1])
    rng = random.Random(20240610)
    out = sys.stdout.buffer
    written, buf, n = 0, [], 0
    for row in rows(rng):
        b = row.encode()
        if written + n + len(b) > size:
            break
        buf.append(b)
        n += len(b)
        if n >= 1 << 20:
            out.write(b"".join(buf))
            written += n
            buf, n = [], 0
    out.write(b"".join(buf))


if __name__ == "__main__":
    main()
