package journal

import (
	"database/sql"
	"fmt"
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

	mu   sync.Mutex // guards recs and closed
	recs []record
	// closed reports whether Close has begun: records that come later are
	// dropped.
	closed bool

	kick chan struct{} // wakes the goroutine when many records wait
	stop chan struct{} // closed by Close
	done chan struct{} // closed by the goroutine when it has written all

	// Owned by the goroutine.
	live    map[uint64]*liveTask // tasks submitted to the pool and not ended, by pool id
	running int64                // attempts running
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
	recSubmit recordKind = iota
	recSkip
	recEvent
	recNotice
)

// record is one thing for the goroutine to write.
type record struct {
	kind   recordKind
	ev     pool.Event
	id     uint64 // pool id (submit)
	seq    uint64 // journal task id (submit, skip)
	key    string
	input  []byte
	cause  string // skip: why an earlier run did not finish it, or ""
	output []byte // task-ended: the output to keep, or nil
	text   string // notice
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
	if r.MemLimit > 0 {
		w.add(record{kind: recEvent, ev: pool.Event{Kind: pool.EventMemorySample, Time: time.Now()}})
	}
	go w.loop()
	return w, nil
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
	w.add(record{kind: recSkip, seq: seq, key: key, input: input, cause: cause})
}

// Notice records something said to the user, as an event of kind notice.
func (w *Writer) Notice(text string) {
	w.add(record{kind: recNotice, ev: pool.Event{Time: time.Now()}, text: text})
}

// Observe records ev. It is meant to be called from the pool's Observer.
func (w *Writer) Observe(ev pool.Event) {
	switch ev.Kind {
	case pool.EventAttemptStarted, pool.EventAttemptEnded, pool.EventWorkerStarted,
		pool.EventWorkerExited, pool.EventMemory, pool.EventMemorySample,
		pool.EventWorkerStalled, pool.EventWorkerOutOfStep:
		w.add(record{kind: recEvent, ev: ev})
	case pool.EventTaskEnded:
		rec := record{kind: recEvent, ev: ev}
		if w.run.StoreOutput && ev.Result != nil && ev.Result.State == pool.Done {
			rec.output = ev.Result.Output
		}
		w.add(rec)
	}
}

func (w *Writer) add(r record) {
	w.mu.Lock()
	if w.closed {
		w.mu.Unlock()
		return
	}
	w.recs = append(w.recs, r)
	n := len(w.recs)
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
	var spare []record
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
		w.recs = spare[:0]
		w.mu.Unlock()
		w.flush(recs)
		clear(recs) // let inputs and outputs go
		spare = recs
		if stopping {
			return
		}
	}
}

// flush writes recs in one transaction. After a write error the journal
// is left as it is: the pool goes on, and Close reports the error.
func (w *Writer) flush(recs []record) {
	if w.err != nil {
		w.drop(recs)
		return
	}
	tx, err := w.j.db.Begin()
	if err != nil {
		w.err = err
		w.drop(recs)
		return
	}
	s, err := prepare(tx)
	if err != nil {
		tx.Rollback()
		w.err = err
		w.drop(recs)
		return
	}
	defer s.close()
	for i := range recs {
		if err := w.write(s, &recs[i]); err != nil {
			tx.Rollback()
			w.err = err
			w.drop(recs[i+1:])
			return
		}
	}
	// Tasks that outlive the transaction are written as pending, so that
	// the journal lists them if the supervisor dies; most tasks end
	// within one interval and are written once, whole.
	for _, lt := range w.live {
		if !lt.inserted {
			if _, err := s.insertTask.Exec(w.runID, lt.seq, lt.key, lt.input, "pending", 0, nil, nil, nil, nil); err != nil {
				tx.Rollback()
				w.err = err
				return
			}
			lt.inserted = true
		}
	}
	if err := tx.Commit(); err != nil {
		w.err = err
	}
}

// drop keeps the writer's view of live tasks right for records it does
// not write.
func (w *Writer) drop(recs []record) {
	for _, r := range recs {
		switch {
		case r.kind == recSubmit:
			w.live[r.id] = &liveTask{}
		case r.kind == recEvent && r.ev.Kind == pool.EventTaskEnded:
			delete(w.live, r.ev.TaskID)
		}
	}
}

// stmts are the prepared statements of one transaction.
type stmts struct {
	insertTask, updateTask, insertAttempt, insertSample, insertEvent *sql.Stmt
}

func prepare(tx *sql.Tx) (*stmts, error) {
	s := &stmts{}
	for _, p := range []struct {
		st **sql.Stmt
		q  string
	}{
		{&s.insertTask, `INSERT INTO task (run_id, id, key, input, state, attempts, cause, peak, output, ended) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`},
		{&s.updateTask, `UPDATE task SET state = ?, attempts = ?, cause = ?, peak = ?, output = ?, ended = ? WHERE run_id = ? AND id = ?`},
		{&s.insertAttempt, `INSERT INTO attempt (run_id, task_id, number, worker_pid, started, ended, cause, exit_code, signal, peak, message) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`},
		{&s.insertSample, `INSERT INTO sample (run_id, at, worker_pid, series, value) VALUES (?, ?, ?, ?, ?)`},
		{&s.insertEvent, `INSERT INTO event (run_id, at, kind, task_id, worker_pid, detail) VALUES (?, ?, ?, ?, ?, ?)`},
	} {
		st, err := tx.Prepare(p.q)
		if err != nil {
			s.close()
			return nil, err
		}
		*p.st = st
	}
	return s, nil
}

func (s *stmts) close() {
	for _, st := range []*sql.Stmt{s.insertTask, s.updateTask, s.insertAttempt, s.insertSample, s.insertEvent} {
		if st != nil {
			st.Close()
		}
	}
}

// write writes one record.
func (w *Writer) write(s *stmts, r *record) error {
	switch r.kind {
	case recSubmit:
		w.live[r.id] = &liveTask{seq: r.seq, key: r.key, input: r.input}
		return nil
	case recSkip:
		_, err := s.insertTask.Exec(w.runID, r.seq, r.key, r.input, "skipped", 0, nullString(r.cause), nil, nil, time.Now().UnixNano())
		return err
	case recNotice:
		return w.event(s, r.ev.Time, "notice", 0, 0, r.text)
	}
	ev := &r.ev
	at := ev.Time.UnixNano()
	lt := w.live[ev.TaskID] // nil for events of no task
	switch ev.Kind {
	case pool.EventWorkerStarted:
		return w.event(s, ev.Time, string(ev.Kind), 0, ev.WorkerPID, "")
	case pool.EventWorkerExited:
		return w.event(s, ev.Time, string(ev.Kind), 0, ev.WorkerPID, "")
	case pool.EventWorkerStalled:
		return w.event(s, ev.Time, "stalled", w.seqOf(ev.TaskID), ev.WorkerPID, ev.Message)
	case pool.EventWorkerOutOfStep:
		return w.event(s, ev.Time, "out-of-step", w.seqOf(ev.TaskID), ev.WorkerPID, ev.Message)
	case pool.EventAttemptStarted:
		w.running++
		if lt == nil {
			return nil
		}
		lt.worker = ev.WorkerPID
		if lt.failed {
			lt.failed = false
			return w.event(s, ev.Time, "retry", lt.seq, ev.WorkerPID, "")
		}
		return nil
	case pool.EventAttemptEnded:
		w.running = max(0, w.running-1)
		a := ev.Attempt
		if lt == nil || a == nil {
			return nil
		}
		lt.worker = 0
		exit := any(nil)
		if a.ExitCode >= 0 {
			exit = a.ExitCode
		}
		if _, err := s.insertAttempt.Exec(w.runID, lt.seq, a.Number, a.WorkerPID, a.Start.UnixNano(), a.End.UnixNano(),
			string(a.Cause), exit, nullString(a.Signal), nullInt(a.PeakRSS), nullString(a.Message)); err != nil {
			return err
		}
		switch a.Cause {
		case "", pool.CauseCancelled:
		case pool.CausePreempted:
			return w.event(s, a.End, "preempted", lt.seq, a.WorkerPID, "")
		case pool.CauseOOM:
			lt.failed = true
			return w.event(s, a.End, "oom", lt.seq, a.WorkerPID, a.Message)
		default:
			lt.failed = true
		}
		return nil
	case pool.EventTaskEnded:
		res := ev.Result
		if lt == nil || res == nil {
			return nil
		}
		delete(w.live, ev.TaskID)
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
		var err error
		if lt.inserted {
			_, err = s.updateTask.Exec(string(res.State), attempts, cause, nullInt(peak), r.output, at, w.runID, lt.seq)
		} else {
			_, err = s.insertTask.Exec(w.runID, lt.seq, lt.key, lt.input, string(res.State), attempts, cause, nullInt(peak), r.output, at)
		}
		if err != nil {
			return err
		}
		if res.State == pool.Poison {
			return w.event(s, ev.Time, "poison", lt.seq, 0, "")
		}
		return nil
	case pool.EventMemory:
		if m := ev.Memory; m != nil {
			if err := w.sample(s, at, 0, "allowed", int64(m.Allows)); err != nil {
				return err
			}
			return w.sample(s, at, 0, "budget", m.Budget)
		}
		return nil
	case pool.EventMemorySample:
		if w.run.MemLimit > 0 {
			if err := w.sample(s, at, 0, "limit", w.run.MemLimit); err != nil {
				return err
			}
		}
		if err := w.sample(s, at, 0, "running", w.running); err != nil {
			return err
		}
		m := ev.Memory
		if m == nil {
			return nil
		}
		for _, p := range []struct {
			series string
			v      int64
		}{{"total", m.InUse}, {"budget", m.Budget}, {"allowed", int64(m.Allows)}} {
			if err := w.sample(s, at, 0, p.series, p.v); err != nil {
				return err
			}
		}
		for _, u := range ev.Usage {
			if t := w.live[u.TaskID]; t != nil && t.worker != 0 {
				if err := w.sample(s, at, t.worker, "worker", u.Bytes); err != nil {
					return err
				}
			}
		}
	}
	return nil
}

func (w *Writer) seqOf(id uint64) uint64 {
	if lt := w.live[id]; lt != nil {
		return lt.seq
	}
	return 0
}

func (w *Writer) sample(s *stmts, at int64, pid int, series string, v int64) error {
	_, err := s.insertSample.Exec(w.runID, at, pid, series, v)
	return err
}

func (w *Writer) event(s *stmts, at time.Time, kind string, seq uint64, pid int, detail string) error {
	task, worker := any(nil), any(nil)
	if seq != 0 {
		task = seq
	}
	if pid != 0 {
		worker = pid
	}
	_, err := s.insertEvent.Exec(w.runID, at.UnixNano(), kind, task, worker, nullString(strings.ToValidUTF8(detail, "\uFFFD")))
	return err
}

func nullString(s string) any {
	if s == "" {
		return nil
	}
	return s
}
