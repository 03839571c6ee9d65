package journal

import (
	"database/sql"
	"errors"
	"fmt"
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
type Resumer struct {
	stmt          *sql.Stmt
	kind, command string
	// seen counts, for each key found finished, how many inputs of the
	// current run had it: the n-th input with a key is skipped only when
	// earlier runs finished that key n times. Only keys found are kept.
	seen map[string]int
}

// Resumer returns a Resumer for the writer's run. With failedToo, tasks
// that failed or were poison in an earlier run count as finished (they are
// skipped, as GNU parallel's --resume does); without it, only done ones.
func (w *Writer) Resumer(failedToo bool) (*Resumer, error) {
	var base sql.NullInt64
	err := w.j.db.QueryRow(`SELECT max(id) FROM run WHERE kind = ? AND command = ? AND resumed = 0 AND id < ?`,
		w.run.Kind, w.run.Command, w.runID).Scan(&base)
	if err != nil {
		return nil, fmt.Errorf("journal: reading %s: %w", w.j.path, err)
	}
	// Made here rather than with the schema: see schema.sql.
	if _, err := w.j.db.Exec(`CREATE INDEX IF NOT EXISTS task_key ON task(key, state)`); err != nil {
		return nil, fmt.Errorf("journal: indexing %s: %w", w.j.path, err)
	}
	states := `'done'`
	if failedToo {
		states = `'done', 'failed', 'poison'`
	}
	// Prefer a done row: its output is the one to replay.
	stmt, err := w.j.db.Prepare(fmt.Sprintf(`SELECT state, cause, output FROM task
		WHERE key = ? AND state IN (%s) AND run_id IN (SELECT id FROM run WHERE kind = ? AND command = ? AND id >= %d AND id < %d)
		ORDER BY state <> 'done', run_id, id LIMIT 1 OFFSET ?`, states, base.Int64, w.runID))
	if err != nil {
		return nil, fmt.Errorf("journal: reading %s: %w", w.j.path, err)
	}
	r := &Resumer{stmt: stmt, seen: make(map[string]int)}
	r.kind, r.command = w.run.Kind, w.run.Command
	return r, nil
}

// Lookup returns what an earlier run left of the next input with key, and
// false when it has to run.
func (r *Resumer) Lookup(key string) (Finished, bool, error) {
	n := r.seen[key]
	var f Finished
	var cause sql.NullString
	err := r.stmt.QueryRow(key, r.kind, r.command, n).Scan(&f.State, &cause, &f.Output)
	if errors.Is(err, sql.ErrNoRows) {
		return Finished{}, false, nil
	}
	if err != nil {
		return Finished{}, false, fmt.Errorf("journal: looking up a task: %w", err)
	}
	r.seen[key] = n + 1
	f.Cause = cause.String
	return f, true, nil
}

// Close frees the Resumer's statement.
func (r *Resumer) Close() error { return r.stmt.Close() }
