"""A CSV line transform: one output row per input row.

    transform.py [--flush] < orders.csv > totals.csv

Each input row is `id,timestamp,customer,country,product,quantity,
unit_price,status,comment` (the comment quoted, with commas); the output row is
`id,date,customer,COUNTRY,product,total,status,words`. With --flush it flushes
after every row, as a safepool line worker must; without, output is buffered,
which is what a pipeline stage (a single process, GNU parallel --pipe) wants.
"""
import csv
import sys


def main():
    flush = sys.argv[1:] == ["--flush"]
    out = csv.writer(sys.stdout, lineterminator="\n")
    write = out.writerow
    for row in csv.reader(sys.stdin):
        rid, ts, customer, country, product, qty, price, status, comment = row
        write((rid, ts[:10], customer.title(), country.upper(), product,
               "%.2f" % (int(qty) * float(price)), status, len(comment.split())))
        if flush:
            sys.stdout.flush()


if __name__ == "__main__":
    main()
