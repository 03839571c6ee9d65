package journal

import (
	"database/sql"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/safepool/safepool/pool"
)

const (
	// FlushEvery is how often the writer commits what it was given: what
	// a SIGKILL of the supervisor can lose at most.
	FlushEvery = 150 * time.Millisecond
	// flushRows is how many waiting records make the writer commit at
	// once, before FlushEvery is up.
	flushRows = 8192
	// chunkSize is how many records one chunk of the queue holds.
	chunkSize = 1024
	// maxQueued is how many records may wait for the goroutine before
	// the pool's events wait for it: about 2 MiB of records, which become
	// about 8 MiB of rows in a transaction.
	maxQueued = 16 * chunkSize
)

// Writer writes one run into the journal. Its methods only append a record
// to a queue under a mutex, so they are cheap enough for a pool's Observer;
// the writer's goroutine, which Start starts and Close ends, takes the
// queue every FlushEvery and writes it in one transaction. Every method is
// safe for concurrent use.
type Writer struct {
	j     *Journal
	runID int64
	run   Run

	mu sync.Mutex // guards recs, n, free and closed
	// room is signalled when the goroutine takes the queue: add waits on
	// it while maxQueued records wait.
	room *sync.Cond
	// recs is the queue, in chunks of chunkSize records, so that it grows
	// without copying; n counts the records in it. free holds emptied
	// chunks for reuse.
	recs [][]record
	n    int
	free [][]record
	// closed reports whether Close has begun: records that come later are
	// dropped.
	closed bool

	kick chan struct{} // wakes the goroutine when many records wait
	stop chan struct{} // closed by Close
	done chan struct{} // closed by the goroutine when it has written all

	// Owned by the goroutine.
	live    map[uint64]*liveTask // tasks submitted to the pool and not ended, by pool id
	running int64                // attempts running
	batch   rows                 // the rows of one transaction
	err     error                // the first write error
}

// liveTask is the writer's record of a task the pool holds.
type liveTask struct {
	seq      uint64 // the task's id in the journal: its input's number
	key      string
	input    []byte
	inserted bool // whether its row is in the database (as pending)
	worker   int  // the worker of its running attempt, or 0
	failed   bool // whether a charged attempt of it failed
}

// recordKind says what a record holds.
type recordKind uint8

const (
	recSubmit  recordKind = iota // Submit
	recSkip                      // Skip
	recNotice                    // Notice
	recStarted                   // EventAttemptStarted
	recAttempt                   // EventAttemptEnded
	recTask                      // EventTaskEnded
	recEvent                     // any other event
	recRun                       // Describe
)

// record is one thing for the goroutine to write. It is kept small, and
// holds only what its kind needs: a pool of many short tasks gives the
// writer several records per task.
type record struct {
	kind    recordKind
	id      uint64 // the pool's task id
	seq     uint64 // the journal's task id (submit, skip)
	at      int64  // Unix nanoseconds
	pid     int
	key     string
	input   []byte
	text    string        // skip: the earlier run's cause, or ""; notice: the text
	attempt *pool.Attempt // recAttempt: a copy
	result  *pool.Result  // recTask
	ev      *pool.Event   // recEvent: a copy
}

// Start adds a row for the run r and starts the writer's goroutine.
// Close must be called to end it.
func (j *Journal) Start(r Run) (*Writer, error) {
	id, err := j.insertRun(r, time.Now())
	if err != nil {
		return nil, err
	}
	w := &Writer{
		j: j, runID: id, run: r,
		kick: make(chan struct{}, 1),
		stop: make(chan struct{}),
		done: make(chan struct{}),
		live: make(map[uint64]*liveTask),
	}
	w.room = sync.NewCond(&w.mu)
	if r.MemLimit > 0 {
		w.add(record{kind: recEvent, ev: &pool.Event{Kind: pool.EventMemorySample, Time: time.Now()}})
	}
	go w.loop()
	return w, nil
}

// Describe sets the run's figures that are known only once its pool is
// made: Run.Workers, MemoryMode and MemBudget. The writer must exist before
// the pool, so that it sees the pool's first events.
func (w *Writer) Describe(workers int, memoryMode string, memBudget int64) {
	w.add(record{kind: recRun, pid: workers, text: memoryMode, at: memBudget})
}

// RunID returns the id of the run's row.
func (w *Writer) RunID() int64 { return w.runID }

// Submit records that the task of pool id id, the seq-th input, with key
// and input, was submitted to the pool. It must be called before the
// pool's events about the task can come: before Pool.Submit.
func (w *Writer) Submit(id, seq uint64, key string, input []byte) {
	w.add(record{kind: recSubmit, id: id, seq: seq, key: key, input: input})
}

// Skip records that the seq-th input was not run because an earlier run
// finished it: state skipped, and cause, when not empty, the cause of the
// earlier run's failure (resume without --resume-failed).
func (w *Writer) Skip(seq uint64, key string, input []byte, cause string) {
	w.add(record{kind: recSkip, seq: seq, key: key, input: input, text: cause, at: time.Now().UnixNano()})
}

// Notice records something said to the user, as an event of kind notice.
func (w *Writer) Notice(text string) {
	w.add(record{kind: recNotice, at: time.Now().UnixNano(), text: text})
}

// Observe records ev. It is meant to be called from the pool's Observer.
func (w *Writer) Observe(ev pool.Event) {
	switch ev.Kind {
	case pool.EventAttemptStarted:
		w.add(record{kind: recStarted, id: ev.TaskID, pid: ev.WorkerPID, at: ev.Time.UnixNano()})
	case pool.EventAttemptEnded:
		if ev.Attempt != nil {
			a := *ev.Attempt
			w.add(record{kind: recAttempt, id: ev.TaskID, attempt: &a})
		}
	case pool.EventTaskEnded:
		if ev.Result != nil {
			w.add(record{kind: recTask, id: ev.TaskID, at: ev.Time.UnixNano(), result: ev.Result})
		}
	case pool.EventWorkerStarted, pool.EventWorkerExited, pool.EventMemory, pool.EventMemorySample,
		pool.EventWorkerStalled, pool.EventWorkerOutOfStep:
		w.add(record{kind: recEvent, ev: &ev})
	}
}

func (w *Writer) add(r record) {
	w.mu.Lock()
	for w.n >= maxQueued && !w.closed {
		// The journal is behind: the pool waits, so that memory stays
		// bounded, rather than the queue growing with the input.
		select {
		case w.kick <- struct{}{}:
		default:
		}
		w.room.Wait()
	}
	if w.closed {
		w.mu.Unlock()
		return
	}
	if k := len(w.recs); k == 0 || len(w.recs[k-1]) == chunkSize {
		var c []record
		if f := len(w.free); f > 0 {
			c, w.free = w.free[f-1], w.free[:f-1]
		} else {
			c = make([]record, 0, chunkSize)
		}
		w.recs = append(w.recs, c)
	}
	last := &w.recs[len(w.recs)-1]
	*last = append(*last, r)
	w.n++
	n := w.n
	w.mu.Unlock()
	if n == flushRows {
		select {
		case w.kick <- struct{}{}:
		default:
		}
	}
}

// Close writes what is left, marks the run ended with exitStatus, ends the
// goroutine and returns the first error writing the journal. It does not
// close the Journal.
func (w *Writer) Close(exitStatus int) error {
	w.mu.Lock()
	already := w.closed
	w.closed = true
	w.room.Broadcast()
	w.mu.Unlock()
	if already {
		return nil
	}
	close(w.stop)
	<-w.done
	if _, err := w.j.db.Exec(`UPDATE run SET ended = ?, exit_status = ? WHERE id = ?`,
		time.Now().UnixNano(), exitStatus, w.runID); err != nil && w.err == nil {
		w.err = err
	}
	if w.err != nil {
		return fmt.Errorf("journal: writing %s: %w", w.j.path, w.err)
	}
	return nil
}

// loop is the writer's goroutine: it commits the queue every FlushEvery,
// when many records wait, and once more when Close stops it.
func (w *Writer) loop() {
	defer close(w.done)
	t := time.NewTicker(FlushEvery)
	defer t.Stop()
	var spare [][]record
	for {
		stopping := false
		select {
		case <-t.C:
		case <-w.kick:
		case <-w.stop:
			stopping = true
		}
		w.mu.Lock()
		recs := w.recs
		w.recs, w.n = spare[:0], 0
		w.room.Broadcast()
		w.mu.Unlock()
		w.flush(recs)
		for i := range recs {
			clear(recs[i]) // let inputs and outputs go
			recs[i] = recs[i][:0]
		}
		w.mu.Lock()
		w.free = append(w.free, recs...)
		w.mu.Unlock()
		clear(recs)
		spare = recs
		if stopping {
			return
		}
	}
}

// flush writes recs in one transaction. After a write error the journal
// is left as it is: the pool goes on, and Close reports the error.
func (w *Writer) flush(recs [][]record) {
	b := &w.batch
	b.reset()
	for _, c := range recs {
		for i := range c {
			w.rows(b, &c[i])
		}
	}
	// Tasks that outlive the transaction are written as pending, so that
	// the journal lists them if the supervisor dies; most tasks end
	// within one interval and are written once, whole.
	for _, lt := range w.live {
		if !lt.inserted {
			b.tasks.add(int64(lt.seq), lt.key, lt.input, "pending", 0, nil, nil, nil, nil)
			lt.inserted = true
		}
	}
	if w.err != nil || b.empty() {
		return
	}
	if err := w.commit(b); err != nil {
		w.err = err
	}
}

// commit writes b in one transaction.
func (w *Writer) commit(b *rows) error {
	tx, err := w.j.db.Begin()
	if err != nil {
		return err
	}
	defer tx.Rollback() // after Commit, a no-op
	for _, t := range []*table{&b.tasks, &b.doneTasks, &b.attempts, &b.okAttempts, &b.samples, &b.events} {
		if err := t.insert(tx); err != nil {
			return err
		}
	}
	if len(b.updates.args) > 0 {
		st, err := tx.Prepare(`UPDATE task SET state = ?, attempts = ?, cause = ?, peak = ?, output = ?, ended = ? WHERE run_id = ? AND id = ?`)
		if err != nil {
			return err
		}
		defer st.Close()
		for i := 0; i < len(b.updates.args); i += b.updates.cols {
			if _, err := st.Exec(b.updates.args[i : i+b.updates.cols]...); err != nil {
				return err
			}
		}
	}
	for i := 0; i < len(b.runs.args); i += b.runs.cols {
		if _, err := tx.Exec(`UPDATE run SET workers = ?, memory_mode = ?, mem_budget = ? WHERE id = ?`, b.runs.args[i:i+b.runs.cols]...); err != nil {
			return err
		}
	}
	return tx.Commit()
}

// rows are the rows one transaction writes, table by table.
type rows struct {
	tasks, attempts, samples, events table
	// doneTasks and okAttempts are tasks done at their first attempt, and
	// those attempts: most rows.
	doneTasks, okAttempts table
	// updates are of tasks written as pending, runs of the run's row.
	updates, runs table
}

// reset empties b, keeping its memory for the next transaction.
func (b *rows) reset() {
	for _, t := range []*table{&b.tasks, &b.doneTasks, &b.attempts, &b.okAttempts, &b.samples, &b.events, &b.updates, &b.runs} {
		clear(t.args)
		t.args = t.args[:0]
	}
}

func (b *rows) empty() bool {
	n := 0
	for _, t := range []*table{&b.tasks, &b.doneTasks, &b.attempts, &b.okAttempts, &b.samples, &b.events, &b.updates, &b.runs} {
		n += len(t.args)
	}
	return n == 0
}

// table holds rows to insert into one table, their values one after the
// other.
type table struct {
	cols int   // values per row
	args []any // the rows' values one after the other
	// into is the table and its columns; row is one row's values, "?"
	// for those to bind and literals for the others: the run's id, which
	// every row has, and in the common rows (a task done at its first
	// attempt) the values those share. Binding costs more than SQL text.
	// Both are set by rows.
	into, row string
}

var (
	taskInto    = `task (run_id, id, key, input, state, attempts, cause, peak, output, ended)`
	attemptInto = `attempt (run_id, task_id, number, worker_pid, started, ended, cause, exit_code, signal, peak, message)`
	sampleInto  = `sample (run_id, at, worker_pid, series, value)`
	eventInto   = `event (run_id, at, kind, task_id, worker_pid, detail)`
)

func (t *table) add(v ...any) {
	t.cols = len(v)
	t.args = append(t.args, v...)
}

// rowsPerInsert is how many rows one INSERT statement carries: one
// statement per row would cost more than the rows.
const rowsPerInsert = 64

// insert writes the rows of t, rowsPerInsert to a statement.
func (t *table) insert(tx *sql.Tx) error {
	if len(t.args) == 0 {
		return nil
	}
	n := len(t.args) / t.cols
	var full *sql.Stmt
	defer func() {
		if full != nil {
			full.Close()
		}
	}()
	for i := 0; i < n; {
		k := min(rowsPerInsert, n-i)
		args := t.args[i*t.cols : (i+k)*t.cols]
		var err error
		if k == rowsPerInsert {
			if full == nil {
				if full, err = tx.Prepare(insertSQL(t.into, t.row, k)); err != nil {
					return err
				}
			}
			_, err = full.Exec(args...)
		} else {
			_, err = tx.Exec(insertSQL(t.into, t.row, k), args...)
		}
		if err != nil {
			return err
		}
		i += k
	}
	return nil
}

// insertSQL is an INSERT of n rows.
func insertSQL(into, row string, n int) string {
	var b strings.Builder
	b.WriteString("INSERT INTO ")
	b.WriteString(into)
	b.WriteString(" VALUES ")
	for i := range n {
		if i > 0 {
			b.WriteString(", ")
		}
		b.WriteString(row)
	}
	return b.String()
}

// rows adds the rows of one record to b.
func (w *Writer) rows(b *rows, r *record) {
	if b.tasks.into == "" {
		run := strconv.FormatInt(w.runID, 10)
		row := func(binds int) string { return "(" + run + strings.Repeat(", ?", binds) + ")" }
		b.tasks.into, b.tasks.row = taskInto, row(9)
		b.attempts.into, b.attempts.row = attemptInto, row(10)
		b.samples.into, b.samples.row = sampleInto, row(4)
		b.events.into, b.events.row = eventInto, row(5)
		// id, key, input, peak, output, ended
		b.doneTasks.into, b.doneTasks.row = taskInto, "("+run+", ?, ?, ?, 'done', 1, NULL, ?, ?, ?)"
		// task_id, worker_pid, started, ended, exit_code, peak
		b.okAttempts.into, b.okAttempts.row = attemptInto, "("+run+", ?, 1, ?, ?, ?, '', ?, NULL, ?, NULL)"
	}
	lt := w.live[r.id] // nil for records of no task
	switch r.kind {
	case recSubmit:
		w.live[r.id] = &liveTask{seq: r.seq, key: r.key, input: r.input}
		return
	case recSkip:
		b.tasks.add(int64(r.seq), r.key, r.input, "skipped", 0, nullString(r.text), nil, nil, r.at)
		return
	case recNotice:
		w.event(b, r.at, "notice", 0, 0, r.text)
		return
	case recRun:
		b.runs.add(int64(r.pid), r.text, nullInt(r.at), w.runID)
		return
	case recStarted:
		w.running++
		if lt == nil {
			return
		}
		lt.worker = r.pid
		if lt.failed {
			lt.failed = false
			w.event(b, r.at, "retry", lt.seq, r.pid, "")
		}
		return
	case recAttempt:
		w.running = max(0, w.running-1)
		a := r.attempt
		if lt == nil {
			return
		}
		lt.worker = 0
		exit := any(nil)
		if a.ExitCode >= 0 {
			exit = int64(a.ExitCode)
		}
		if a.Number == 1 && a.Cause == "" && a.Signal == "" && a.Message == "" {
			b.okAttempts.add(int64(lt.seq), int64(a.WorkerPID), a.Start.UnixNano(), a.End.UnixNano(), exit, nullInt(a.PeakRSS))
		} else {
			b.attempts.add(int64(lt.seq), int64(a.Number), int64(a.WorkerPID), a.Start.UnixNano(), a.End.UnixNano(),
				string(a.Cause), exit, nullString(a.Signal), nullInt(a.PeakRSS), nullString(a.Message))
		}
		switch a.Cause {
		case "", pool.CauseCancelled:
		case pool.CausePreempted:
			w.event(b, a.End.UnixNano(), "preempted", lt.seq, a.WorkerPID, "")
		case pool.CauseOOM:
			lt.failed = true
			w.event(b, a.End.UnixNano(), "oom", lt.seq, a.WorkerPID, a.Message)
		default:
			lt.failed = true
		}
		return
	case recTask:
		res := r.result
		if lt == nil {
			return
		}
		delete(w.live, r.id)
		var attempts int
		var peak int64
		for _, a := range res.Attempts {
			attempts = max(attempts, a.Number)
			peak = max(peak, a.PeakRSS)
		}
		cause := any(nil)
		if res.State != pool.Done {
			cause = nullString(string(res.Cause()))
		}
		var out any
		if w.run.StoreOutput && res.State == pool.Done {
			out = res.Output
			if res.Output == nil {
				out = []byte{}
			}
		}
		if lt.inserted {
			b.updates.add(string(res.State), int64(attempts), cause, nullInt(peak), out, r.at, w.runID, int64(lt.seq))
		} else if res.State == pool.Done && attempts == 1 {
			b.doneTasks.add(int64(lt.seq), lt.key, lt.input, nullInt(peak), out, r.at)
		} else {
			b.tasks.add(int64(lt.seq), lt.key, lt.input, string(res.State), int64(attempts), cause, nullInt(peak), out, r.at)
		}
		if res.State == pool.Poison {
			w.event(b, r.at, "poison", lt.seq, 0, "")
		}
		return
	}
	ev := r.ev
	at := ev.Time.UnixNano()
	switch ev.Kind {
	case pool.EventWorkerStarted, pool.EventWorkerExited:
		w.event(b, at, string(ev.Kind), 0, ev.WorkerPID, "")
	case pool.EventWorkerStalled:
		w.event(b, at, "stalled", w.seqOf(ev.TaskID), ev.WorkerPID, ev.Message)
	case pool.EventWorkerOutOfStep:
		w.event(b, at, "out-of-step", w.seqOf(ev.TaskID), ev.WorkerPID, ev.Message)
	case pool.EventMemory:
		if m := ev.Memory; m != nil {
			b.samples.add(at, int64(0), "allowed", int64(m.Allows))
			b.samples.add(at, int64(0), "budget", m.Budget)
		}
	case pool.EventMemorySample:
		if w.run.MemLimit > 0 {
			b.samples.add(at, int64(0), "limit", w.run.MemLimit)
		}
		b.samples.add(at, int64(0), "running", w.running)
		m := ev.Memory
		if m == nil {
			return
		}
		b.samples.add(at, int64(0), "total", m.InUse)
		b.samples.add(at, int64(0), "budget", m.Budget)
		b.samples.add(at, int64(0), "allowed", int64(m.Allows))
		for _, u := range ev.Usage {
			if t := w.live[u.TaskID]; t != nil && t.worker != 0 {
				b.samples.add(at, int64(t.worker), "worker", u.Bytes)
			}
		}
	}
}

func (w *Writer) seqOf(id uint64) uint64 {
	if lt := w.live[id]; lt != nil {
		return lt.seq
	}
	return 0
}

func (w *Writer) event(b *rows, at int64, kind string, seq uint64, pid int, detail string) {
	task, worker := any(nil), any(nil)
	if seq != 0 {
		task = int64(seq)
	}
	if pid != 0 {
		worker = int64(pid)
	}
	b.events.add(at, kind, task, worker, nullString(strings.ToValidUTF8(detail, "\uFFFD")))
}

func nullString(s string) any {
	if s == "" {
		return nil
	}
	return s
}
