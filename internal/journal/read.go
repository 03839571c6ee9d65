package journal

import (
	"database/sql"
	"encoding/binary"
	"fmt"
)

// EachDone calls f for every task the journal has as done, in span rows
// and in task rows: its run, its id in the run (the input's number) and
// its key. A key of another length than Key's (a Python run's, or an
// older schema's) is given as the zero Key. It stops at f's first error.
func (j *Journal) EachDone(f func(run int64, id uint64, key Key) error) error {
	rows, err := j.db.Query(`SELECT run_id, first, count, ids, keys FROM span ORDER BY run_id, rowid`)
	if err != nil {
		return fmt.Errorf("journal: reading %s: %w", j.path, err)
	}
	defer rows.Close()
	for rows.Next() {
		var run int64
		var first uint64
		var n int
		var ids, keys []byte
		if err := rows.Scan(&run, &first, &n, &ids, &keys); err != nil {
			return fmt.Errorf("journal: reading %s: %w", j.path, err)
		}
		seqs, err := SpanIDs(first, n, ids)
		if err != nil || len(keys) != n*len(Key{}) {
			return fmt.Errorf("journal: reading %s: span of run %d from task %d is damaged", j.path, run, first)
		}
		for i, seq := range seqs {
			if err := f(run, seq, Key(keys[i*16:i*16+16])); err != nil {
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
// is first (schema.sql: span.ids).
func SpanIDs(first uint64, n int, ids []byte) ([]uint64, error) {
	out := make([]uint64, 0, n)
	prev := first
	for len(ids) > 0 {
		d, k := binary.Varint(ids)
		if k <= 0 {
			return nil, fmt.Errorf("journal: bad span ids")
		}
		ids = ids[k:]
		prev += uint64(d)
		out = append(out, prev)
	}
	if len(out) != n {
		return nil, fmt.Errorf("journal: a span of %d tasks has %d ids", n, len(out))
	}
	return out, nil
}
