package journal

import (
	"container/list"
	"database/sql"
	"errors"
	"fmt"
	"math"
)

// Finished is what an earlier run left of a task: how it ended and, for a
// done task of a run that stored outputs, its output.
type Finished struct {
	// State is "done", "failed" or "poison".
	State string
	// Cause is the cause of its last attempt when it did not succeed.
	Cause string
	// Output is the output the earlier run stored, or nil.
	Output []byte
}

// Resumer answers, input by input, whether an earlier run finished a task.
// It looks at the runs of the same kind and command from the last one that
// was not resumed (the start of the batch) to the one before the current
// run, so that a journal reused for a fresh run starts over. A Resumer is
// for one goroutine.
//
// It reads the keys of every task those runs finished into memory once,
// about 100 bytes a task: keys packed in span data cannot be looked up by
// SQL. Outputs stay in the file until an input needs one. A span row
// whose data the span file lost (ErrSpanLost) is passed over: its tasks
// run again.
type Resumer struct {
	db   *sql.DB
	path string
	runs int // the earlier runs it looks at
	// heads maps a key to its first unused entry in entries and tails to
	// its last; entries of one key are chained by next, done ones first,
	// so that the n-th input with a key is skipped only when earlier runs
	// finished that key n times, and replays a done one's output when
	// there is one.
	heads   map[Key]*[2]int32
	entries []entry
	causes  map[int32]string // by entry: the cause of a failed or poison task
	// spans caches the outputs of the spans read last, for replay.
	spans     map[int64]*list.Element
	spanOrder *list.List // of *spanOutput, most recent first
	getSpan   *sql.Stmt
	getTask   *sql.Stmt
	data      *spanReader
	// lost counts the tasks of the span rows whose data the span file
	// lost, and lostWhy is the first such loss.
	lost    int
	lostWhy error
}

// entry is one finished task of an earlier run.
type entry struct {
	next  int32 // the next entry with the same key, or -1
	state uint8 // stateDone, stateFailed, statePoison
	// row is the span's rowid and index its task's index in it; or, for
	// a task row, row is its run and index its id.
	row   int64
	index uint32
	span  bool
}

const (
	stateDone uint8 = iota
	stateFailed
	statePoison
)

var stateNames = [...]string{stateDone: "done", stateFailed: "failed", statePoison: "poison"}

// spanOutput is the outputs of one span row, with where each begins.
type spanOutput struct {
	row    int64
	starts []int // len count+1
	sep    int   // the bytes after each output: its newline, or none
	output []byte
}

// spansCached is how many spans' outputs a Resumer keeps: input in its
// old order reads each span once.
const spansCached = 16

// Resumer returns the Resumer of the writer's run, a Resumed one (see
// Run.SkipFailed), which Start made before it added the run's row: a
// journal whose earlier runs cannot be read (damaged) gets no row of a run
// that never ran. The caller closes it. It can be taken once.
func (w *Writer) Resumer() (*Resumer, error) {
	rs := w.rs
	if rs == nil {
		return nil, errors.New("journal: the run is not resumed, or its Resumer was taken")
	}
	w.rs = nil
	return rs, nil
}

// Resumer returns a Resumer over the runs of kind and command that a run
// started now with --resume would look at, for a dry run that shows what
// it would run without starting one: it writes nothing. failedToo is as
// for Writer.Resumer.
func (j *Journal) Resumer(kind, command string, failedToo bool) (*Resumer, error) {
	return j.resumer(kind, command, math.MaxInt64, failedToo)
}

// resumer returns a Resumer over the runs of kind and command before run
// id before, from the last one that was not resumed.
func (j *Journal) resumer(kind, command string, before int64, failedToo bool) (*Resumer, error) {
	db := j.db
	var base sql.NullInt64
	err := db.QueryRow(`SELECT max(id) FROM run WHERE kind = ? AND command = ? AND resumed = 0 AND id < ?`,
		kind, command, before).Scan(&base)
	if err != nil {
		return nil, fmt.Errorf("journal: reading %s: %w", j.path, err)
	}
	r := &Resumer{db: db, path: j.path, heads: make(map[Key]*[2]int32), causes: make(map[int32]string),
		spans: make(map[int64]*list.Element), spanOrder: list.New(), data: &spanReader{path: SpanFile(j.path)}}
	runs := `SELECT id FROM run WHERE kind = ?1 AND command = ?2 AND id >= ?3 AND id < ?4`
	args := []any{kind, command, base.Int64, before}
	if err := db.QueryRow(`SELECT count(*) FROM (`+runs+`)`, args...).Scan(&r.runs); err != nil {
		r.data.close()
		return nil, fmt.Errorf("journal: reading %s: %w", j.path, err)
	}
	if err := r.loadSpans(runs, args); err != nil {
		r.data.close()
		return nil, err
	}
	states := `'done'`
	if failedToo {
		states = `'done', 'failed', 'poison'`
	}
	// Done rows first: their output is the one to replay.
	if err := r.loadTasks(`SELECT run_id, id, key, state, cause FROM task WHERE state IN (`+states+`)
		AND run_id IN (`+runs+`) ORDER BY state <> 'done', run_id, id`, args); err != nil {
		r.data.close()
		return nil, err
	}
	if r.getSpan, err = db.Prepare(`SELECT run_id, first, count, data_at, data_size, data_crc FROM span WHERE rowid = ?`); err != nil {
		r.data.close()
		return nil, fmt.Errorf("journal: reading %s: %w", j.path, err)
	}
	if r.getTask, err = db.Prepare(`SELECT output FROM task WHERE run_id = ? AND id = ?`); err != nil {
		r.getSpan.Close()
		r.data.close()
		return nil, fmt.Errorf("journal: reading %s: %w", j.path, err)
	}
	return r, nil
}

// Runs returns how many earlier runs the Resumer looks at: none when the
// journal has no run of the same kind and command before this one, and
// every input runs.
func (r *Resumer) Runs() int { return r.runs }

// Lost returns how many finished tasks of the earlier runs the span file
// lost the records of (it was deleted, cut short or written over), which
// then run again, and why the first was lost; 0 and nil when none.
func (r *Resumer) Lost() (tasks int, why error) { return r.lost, r.lostWhy }

// LastCommand returns the command (as Run.Command) of the last run of
// kind in the journal other than of command, or "" when there is none: a
// --resume that finds no earlier run of its command names it, in case
// the command was changed by mistake.
func (j *Journal) LastCommand(kind, command string) (string, error) {
	var c string
	err := j.db.QueryRow(`SELECT command FROM run WHERE kind = ? AND command <> ? ORDER BY id DESC LIMIT 1`, kind, command).Scan(&c)
	if errors.Is(err, sql.ErrNoRows) {
		return "", nil
	}
	if err != nil {
		return "", fmt.Errorf("journal: reading %s: %w", j.path, err)
	}
	return c, nil
}

// LastOfOtherKind returns the kind and command of the latest run in the
// journal whose kind is not kind ("run", "map" or "python"), or "" and ""
// when it has none.
func (j *Journal) LastOfOtherKind(kind string) (otherKind, command string, err error) {
	err = j.db.QueryRow(`SELECT kind, command FROM run WHERE kind <> ? ORDER BY id DESC LIMIT 1`, kind).Scan(&otherKind, &command)
	if errors.Is(err, sql.ErrNoRows) {
		return "", "", nil
	}
	if err != nil {
		return "", "", fmt.Errorf("journal: reading %s: %w", j.path, err)
	}
	return otherKind, command, nil
}

// add chains e after the entries of key k.
func (r *Resumer) add(k Key, e entry) {
	i := int32(len(r.entries))
	e.next = -1
	r.entries = append(r.entries, e)
	if h := r.heads[k]; h != nil {
		r.entries[h[1]].next = i
		h[1] = i
		return
	}
	r.heads[k] = &[2]int32{i, i}
}

// loadSpans reads the keys of the spans of the runs that runs selects,
// passing over those whose data are lost.
func (r *Resumer) loadSpans(runs string, args []any) error {
	rows, err := r.db.Query(`SELECT rowid, run_id, first, count, data_at, data_size, data_crc FROM span WHERE run_id IN (`+runs+`) ORDER BY run_id, rowid`, args...)
	if err != nil {
		return fmt.Errorf("journal: reading %s: %w", r.path, err)
	}
	defer rows.Close()
	for rows.Next() {
		var row, run, at, size, crc int64
		var first uint64
		var n int
		if err := rows.Scan(&row, &run, &first, &n, &at, &size, &crc); err != nil {
			return fmt.Errorf("journal: reading %s: %w", r.path, err)
		}
		d, err := r.data.read(run, first, n, at, size, crc)
		if errors.Is(err, ErrSpanLost) {
			if r.lostWhy == nil {
				r.lostWhy = err
			}
			r.lost += n
			continue
		}
		if err != nil {
			return fmt.Errorf("journal: reading span %d of %s: %w", row, r.path, err)
		}
		for i := range n {
			r.add(Key(d.keys[i*16:i*16+16]), entry{state: stateDone, row: row, index: uint32(i), span: true})
		}
	}
	if err := rows.Err(); err != nil {
		return fmt.Errorf("journal: reading %s: %w", r.path, err)
	}
	return nil
}

// loadTasks reads the keys of the task rows that q selects.
func (r *Resumer) loadTasks(q string, args []any) error {
	rows, err := r.db.Query(q, args...)
	if err != nil {
		return fmt.Errorf("journal: reading %s: %w", r.path, err)
	}
	defer rows.Close()
	for rows.Next() {
		var run, id int64
		var key sql.RawBytes
		var state string
		var cause sql.NullString
		if err := rows.Scan(&run, &id, &key, &state, &cause); err != nil {
			return fmt.Errorf("journal: reading %s: %w", r.path, err)
		}
		if len(key) != len(Key{}) {
			continue // a key of an older schema, which no input has now
		}
		e := entry{state: stateDone, row: run, index: uint32(id)}
		switch state {
		case "failed":
			e.state = stateFailed
		case "poison":
			e.state = statePoison
		}
		if e.state != stateDone && cause.String != "" {
			r.causes[int32(len(r.entries))] = cause.String
		}
		r.add(Key(key), e)
	}
	if err := rows.Err(); err != nil {
		return fmt.Errorf("journal: reading %s: %w", r.path, err)
	}
	return nil
}

// Lookup returns what an earlier run left of the next input with key, and
// false when it has to run.
func (r *Resumer) Lookup(key Key) (Finished, bool, error) {
	h := r.heads[key]
	if h == nil || h[0] < 0 {
		return Finished{}, false, nil
	}
	i := h[0]
	e := &r.entries[i]
	h[0] = e.next
	f := Finished{State: stateNames[e.state], Cause: r.causes[i]}
	if e.state != stateDone {
		return f, true, nil
	}
	var err error
	if e.span {
		f.Output, err = r.spanOutput(e.row, int(e.index))
	} else {
		err = r.getTask.QueryRow(e.row, int64(e.index)).Scan(&f.Output)
		if errors.Is(err, sql.ErrNoRows) {
			err = nil
		}
	}
	if err != nil {
		return Finished{}, false, fmt.Errorf("journal: reading the output of a task in %s: %w", r.path, err)
	}
	return f, true, nil
}

// spanOutput returns the output of the i-th task of the span of rowid row,
// or nil when the span has no outputs.
func (r *Resumer) spanOutput(row int64, i int) ([]byte, error) {
	var so *spanOutput
	if el := r.spans[row]; el != nil {
		r.spanOrder.MoveToFront(el)
		so = el.Value.(*spanOutput)
	} else {
		var n int
		var run, at, size, crc int64
		var first uint64
		if err := r.getSpan.QueryRow(row).Scan(&run, &first, &n, &at, &size, &crc); err != nil {
			return nil, err
		}
		d, err := r.data.read(run, first, n, at, size, crc)
		if err != nil {
			return nil, err
		}
		starts, sep, err := d.starts(n)
		if err != nil {
			return nil, fmt.Errorf("span %d: %w", row, err)
		}
		// A copy: the reader's buffer is reused.
		so = &spanOutput{row: row, starts: starts, sep: sep, output: append([]byte(nil), d.output...)}
		if len(so.output) > maxSpanOutput {
			// A long output, such as a block's of map --pipe, has a
			// span of its own, read once: kept, it would hold memory.
			return so.slice(row, i)
		}
		r.spans[row] = r.spanOrder.PushFront(so)
		if r.spanOrder.Len() > spansCached {
			last := r.spanOrder.Back()
			delete(r.spans, last.Value.(*spanOutput).row)
			r.spanOrder.Remove(last)
		}
	}
	return so.slice(row, i)
}

// slice returns the output of the i-th task of so, the span of rowid row.
func (so *spanOutput) slice(row int64, i int) ([]byte, error) {
	if so.starts == nil {
		return nil, nil
	}
	if i+1 >= len(so.starts) {
		return nil, fmt.Errorf("span %d has no task %d", row, i)
	}
	end := so.starts[i+1] - so.sep
	return so.output[so.starts[i]:end:end], nil
}

// Close frees the Resumer's statements and files.
func (r *Resumer) Close() error {
	r.data.close()
	r.getSpan.Close()
	return r.getTask.Close()
}
