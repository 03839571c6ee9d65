package journal

import (
	"bytes"
	"database/sql"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"io/fs"
	"os"
)

// ErrSpanLost means a span row's data are not whole in the span file: the
// file lost its tail in a crash of the system (the span file, like the
// WAL, is not synced at every commit), or was removed. Resume runs the
// row's tasks again.
var ErrSpanLost = errors.New("journal: span data lost")

// spanReader reads span rows' data from a journal's span file, opened at
// the first read.
type spanReader struct {
	path string
	f    *os.File
	buf  []byte
}

// spanData is what the data of a span row hold (schema.sql).
type spanData struct {
	keys []byte // 16 bytes a task
	// format is how the outputs are kept: outputsNone, outputsLines
	// (output, each followed by a newline) or outputsWithLengths
	// (lengths, varints, and output, the outputs one after the other).
	format  byte
	lengths []byte
	output  []byte
}

// read returns the data of the span row of run whose first task is first,
// of count tasks, at and size bytes in the span file with checksum crc.
// They are valid until the next read. It returns ErrSpanLost when they
// are not whole, or are another row's.
func (r *spanReader) read(run int64, first uint64, count int, at, size, crc int64) (d spanData, err error) {
	if r.f == nil {
		f, err := os.Open(r.path)
		if errors.Is(err, fs.ErrNotExist) {
			return d, fmt.Errorf("%w: %s does not exist", ErrSpanLost, r.path)
		}
		if err != nil {
			return d, err
		}
		r.f = f
	}
	if at < 0 || size <= 0 || size > 1<<40 {
		return d, fmt.Errorf("journal: a span row has data of %d bytes at %d", size, at)
	}
	if int64(cap(r.buf)) < size {
		r.buf = make([]byte, size)
	}
	b := r.buf[:size]
	if _, err := r.f.ReadAt(b, at); err != nil {
		if errors.Is(err, io.EOF) {
			return d, fmt.Errorf("%w: %s ends before byte %d", ErrSpanLost, r.path, at+size)
		}
		return d, err
	}
	if int64(crc32.Checksum(b, castagnoli)) != crc {
		return d, fmt.Errorf("%w: the %d bytes at %d of %s are not those written", ErrSpanLost, size, at, r.path)
	}
	bad := fmt.Errorf("journal: the data of a span row of %d tasks at %d of %s are not of one", count, at, r.path)
	gotRun, k := binary.Uvarint(b)
	if k <= 0 {
		return d, bad
	}
	b = b[k:]
	gotFirst, k := binary.Uvarint(b)
	if k <= 0 || len(b) == k {
		return d, bad
	}
	if gotRun != uint64(run) || gotFirst != first {
		return d, fmt.Errorf("%w: the %d bytes at %d of %s are another span's", ErrSpanLost, size, at, r.path)
	}
	b = b[k:]
	d.format, b = b[0], b[1:]
	var l uint64
	switch d.format {
	case outputsNone, outputsLines:
	case outputsWithLengths:
		var k int
		if l, k = binary.Uvarint(b); k <= 0 {
			return d, bad
		}
		b = b[k:]
	default:
		return d, bad
	}
	if uint64(len(b)) < uint64(count)*16 || uint64(len(b)-count*16) < l {
		return d, bad
	}
	d.keys, b = b[:count*16], b[count*16:]
	d.lengths, d.output = b[:l], b[l:]
	return d, nil
}

// starts returns where each of the n outputs of d begins in d.output,
// and, last, where the last one ends, with sep, how many bytes follow
// each output (its newline in outputsLines); nil when d keeps none.
func (d *spanData) starts(n int) (starts []int, sep int, err error) {
	switch d.format {
	case outputsNone:
		return nil, 0, nil
	case outputsLines:
		starts = make([]int, 1, n+1)
		for at := 0; at < len(d.output); {
			k := bytes.IndexByte(d.output[at:], '\n')
			if k < 0 {
				return nil, 0, fmt.Errorf("an output line without its newline")
			}
			at += k + 1
			starts = append(starts, at)
		}
		sep = 1
	default:
		starts = make([]int, 1, n+1)
		for lengths := d.lengths; len(lengths) > 0; {
			l, k := binary.Uvarint(lengths)
			if k <= 0 {
				return nil, 0, fmt.Errorf("bad output lengths")
			}
			lengths = lengths[k:]
			starts = append(starts, starts[len(starts)-1]+int(l))
		}
		if starts[len(starts)-1] != len(d.output) {
			return nil, 0, fmt.Errorf("output lengths do not add up to its output")
		}
	}
	if len(starts) != n+1 {
		return nil, 0, fmt.Errorf("%d outputs for %d tasks", len(starts)-1, n)
	}
	return starts, sep, nil
}

func (r *spanReader) close() {
	if r.f != nil {
		r.f.Close()
		r.f = nil
	}
}

// EachDone calls f for every task the journal has as done, in span rows
// and in task rows: its run, its id in the run (the input's number) and
// its key. A key of another length than Key's (a Python run's) is given
// as the zero Key. It stops at f's first error, and fails with
// ErrSpanLost when a span row's data are not whole.
func (j *Journal) EachDone(f func(run int64, id uint64, key Key) error) error {
	rows, err := j.db.Query(`SELECT run_id, first, count, ids, data_at, data_size, data_crc FROM span ORDER BY run_id, rowid`)
	if err != nil {
		return fmt.Errorf("journal: reading %s: %w", j.path, err)
	}
	defer rows.Close()
	sr := &spanReader{path: SpanFile(j.path)}
	defer sr.close()
	for rows.Next() {
		var run, at, size, crc int64
		var first uint64
		var n int
		var ids []byte
		if err := rows.Scan(&run, &first, &n, &ids, &at, &size, &crc); err != nil {
			return fmt.Errorf("journal: reading %s: %w", j.path, err)
		}
		seqs, err := SpanIDs(first, n, ids)
		if err != nil {
			return fmt.Errorf("journal: reading %s: span of run %d from task %d: %w", j.path, run, first, err)
		}
		d, err := sr.read(run, first, n, at, size, crc)
		if err != nil {
			return fmt.Errorf("journal: reading %s: span of run %d from task %d: %w", j.path, run, first, err)
		}
		for i, seq := range seqs {
			if err := f(run, seq, Key(d.keys[i*16:i*16+16])); err != nil {
				return err
			}
		}
	}
	if err := rows.Err(); err != nil {
		return fmt.Errorf("journal: reading %s: %w", j.path, err)
	}
	rows.Close()
	tasks, err := j.db.Query(`SELECT run_id, id, key FROM task WHERE state = 'done' ORDER BY run_id, id`)
	if err != nil {
		return fmt.Errorf("journal: reading %s: %w", j.path, err)
	}
	defer tasks.Close()
	for tasks.Next() {
		var run int64
		var id uint64
		var key sql.RawBytes
		if err := tasks.Scan(&run, &id, &key); err != nil {
			return fmt.Errorf("journal: reading %s: %w", j.path, err)
		}
		var k Key
		if len(key) == len(k) {
			k = Key(key)
		}
		if err := f(run, id, k); err != nil {
			return err
		}
	}
	if err := tasks.Err(); err != nil {
		return fmt.Errorf("journal: reading %s: %w", j.path, err)
	}
	return nil
}

// SpanIDs decodes the ids of the n tasks of a span row whose first task
// is first (schema.sql: span.ids, runs of consecutive ids).
func SpanIDs(first uint64, n int, ids []byte) ([]uint64, error) {
	out := make([]uint64, 0, n)
	expect := first
	for len(ids) > 0 {
		d, k := binary.Varint(ids)
		if k <= 0 {
			return nil, fmt.Errorf("journal: bad span ids")
		}
		ids = ids[k:]
		l, k := binary.Uvarint(ids)
		if k <= 0 || l > uint64(n-len(out)) {
			return nil, fmt.Errorf("journal: bad span ids")
		}
		ids = ids[k:]
		start := expect + uint64(d)
		for i := range l {
			out = append(out, start+i)
		}
		expect = start + l
	}
	if len(out) != n {
		return nil, fmt.Errorf("journal: a span of %d tasks has %d ids", n, len(out))
	}
	return out, nil
}

// SpanParts decodes the parts of a span row of n tasks (schema.sql:
// span.parts) and calls f for each: how many tasks, their attempt's time
// and its PeakRSS in bytes (0: unknown).
func SpanParts(n int, parts []byte, f func(count int, runtime, peak int64)) error {
	seen := 0
	for len(parts) > 0 {
		var v [3]uint64
		for i := range v {
			x, k := binary.Uvarint(parts)
			if k <= 0 {
				return fmt.Errorf("journal: bad span parts")
			}
			v[i], parts = x, parts[k:]
		}
		if v[0] == 0 || v[0] > uint64(n-seen) {
			return fmt.Errorf("journal: bad span parts")
		}
		seen += int(v[0])
		f(int(v[0]), int64(v[1])*1000, int64(v[2])<<10)
	}
	if seen != n {
		return fmt.Errorf("journal: a span of %d tasks has parts of %d", n, seen)
	}
	return nil
}
