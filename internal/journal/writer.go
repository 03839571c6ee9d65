package journal

import (
	"bytes"
	"crypto/sha256"
	"database/sql"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"math"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/safepool/safepool/internal/memory"
	"github.com/safepool/safepool/pool"
)

const (
	// FlushEvery is how often the writer commits what it was given: what
	// a SIGKILL of the supervisor can lose at most.
	FlushEvery = 150 * time.Millisecond
	// flushRows is how much waiting work makes the writer commit at
	// once, before FlushEvery is up. Work is counted in records, and a
	// record of a batch counts as half its items (weight).
	flushRows = 32 * 1024
	// chunkSize is how many records one chunk of the queue holds.
	chunkSize = 1024
	// maxQueued is how much work may wait for the goroutine before the
	// pool's events wait for it: at most about 8 MiB of records, or 128 Ki
	// items of batches with their inputs and outputs. A queue a quarter
	// as long made map with a journal about 15% slower on short lines:
	// the engine waited whenever a commit took longer than the queue
	// lasted.
	maxQueued = 64 * 1024
	// flushBytes and maxQueuedBytes are flushRows and maxQueued for the
	// outputs of tasks that are not batches, which map --pipe's blocks may
	// make megabytes long: the outputs waiting for a commit take at most
	// about maxQueuedBytes of memory (and one output however long).
	flushBytes     = 8 << 20
	maxQueuedBytes = 32 << 20
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
	rs    *Resumer // a Resumed run's, until Resumer takes it

	mu sync.Mutex // guards recs, n, free and closed
	// room is signalled when the goroutine takes the queue: add waits on
	// it while maxQueued records wait.
	room *sync.Cond
	// recs is the queue, in chunks of chunkSize records, so that it grows
	// without copying; n counts the work in it (add). free holds emptied
	// chunks for reuse.
	recs [][]record
	n    int
	free [][]record
	// bytes counts the outputs in recs of tasks that are not batches
	// (record.bytes).
	bytes int
	// closed reports whether Close has begun: records that come later are
	// dropped.
	closed bool

	kick chan struct{} // wakes the goroutine when many records wait
	stop chan struct{} // closed by Close
	done chan struct{} // closed by the goroutine when it has written all

	// running, when set by Watch, counts the attempts running, for the
	// samples of series running at every commit. Only the goroutine calls it.
	running func() int

	// Owned by the goroutine.
	live map[uint64]*liveTask // tasks submitted to the pool and not ended, by pool id (a batch's: its first item's)
	// bases are the ids of the live batches, in order, for finding the
	// batch of an item split from it; some may have ended (see find).
	bases []uint64
	// pids are the workers of the attempts that started, by the pool's
	// task id, until the task ends; retrying are the ids whose last
	// attempt was charged a failure, for the retry mark of the next one.
	pids     map[uint64]int
	retrying map[uint64]bool
	// workers are the live workers' pids; sampleWorkers reports whether
	// the writer samples their memory itself at every commit, when the
	// pool has no memory governor to do so (Describe).
	workers       map[int]bool
	sampleWorkers bool
	span          span     // the tasks done at their first attempt since the last span row
	spare         [][]byte // slices of span data written, to reuse (buffer)
	skip          skip     // the tasks skipped as done since the last skip row

	// The goroutine makes a transaction's rows while the committer, a
	// goroutine of its own, writes the previous one's: the rows come
	// back to the goroutine through freeRows once written. On two cores,
	// making the rows of a block's lines and writing them each took
	// about half of the writer's time, which was what bounded map's
	// throughput with a journal.
	spanFile  *os.File // the span file, appended to by the committer, which opens it
	lock      *os.File // holds the lock of the run's command (lockCommand) until Close
	toCommit  chan *rows
	freeRows  chan *rows
	committed chan struct{} // closed by the committer when it has written all
	err       error         // the first write error; the committer's until committed is closed
	errAt     time.Time     // when err happened; as err
}

// liveTask is the writer's record of a task the pool holds: one input,
// or the inputs of a batch (Task.Items), whose items have the pool ids
// from the batch's id up.
type liveTask struct {
	seq      uint64 // the task's id in the journal: its input's number
	key      Key
	input    []byte
	inserted bool // whether its row is in the database (as pending)
	aged     bool // whether a commit has seen it live already
	// A batch's items, index by index; left counts those not ended.
	// The inputs of a block of lines (SubmitLines) are its lines, found
	// in block when an item needs a row of its own.
	seqs   []uint64
	keys   []Key
	inputs [][]byte
	block  []byte
	left   int
}

// item returns the journal id, key and input of the i-th item of lt, or
// of lt when it is not a batch.
func (lt *liveTask) item(i int) (uint64, Key, []byte) {
	if lt.seqs == nil {
		return lt.seq, lt.key, lt.input
	}
	if lt.inputs == nil {
		in := lt.block
		for range i {
			in = in[bytes.IndexByte(in, '\n')+1:]
		}
		if k := bytes.IndexByte(in, '\n'); k >= 0 {
			in = in[:k]
		}
		return lt.seqs[i], lt.keys[i], in
	}
	return lt.seqs[i], lt.keys[i], lt.inputs[i]
}

// recordKind says what a record holds.
type recordKind uint8

const (
	recSubmit   recordKind = iota // Submit
	recBatch                      // SubmitBatch
	recSkip                       // Skip
	recNotice                     // Notice
	recStarted                    // EventAttemptStarted
	recAttempt                    // EventAttemptEnded
	recTask                       // EventTaskEnded
	recEvent                      // any other event
	recRun                        // Describe
	recWithdraw                   // Withdraw
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
	key     Key
	input   []byte
	text    string        // skip: the earlier run's cause, or ""; notice: the text
	attempt *pool.Attempt // recAttempt: a copy
	result  *pool.Result  // recTask
	ev      *pool.Event   // recEvent: a copy
	batch   *liveTask     // recBatch
}

// weight is how much work r is for the writer: a batch's records count
// half its items, each of which costs the writer several times less than
// a task of its own.
func (r *record) weight() int {
	switch {
	case r.batch != nil:
		return max(1, len(r.batch.seqs)/2)
	case r.result != nil && r.result.Items != nil:
		return max(1, len(r.result.Items)/2)
	}
	return 1
}

// bytes is how many bytes of output r holds that no weight counts: the
// output of a task that is not a batch, which map --pipe's blocks make
// long.
func (r *record) bytes() int {
	if r.result != nil && r.result.Items == nil {
		return len(r.result.Output)
	}
	return 0
}

// Start adds a row for the run r and starts the writer's goroutine.
// Close must be called to end it.
func (j *Journal) Start(r Run) (*Writer, error) {
	lock, err := j.lockCommand(r)
	if err != nil {
		return nil, err
	}
	var rs *Resumer
	if r.Resumed {
		// Before the run's row, whose id is above every earlier run's.
		if rs, err = j.resumer(r.Kind, r.Command, math.MaxInt64, r.SkipFailed); err != nil {
			lock.Close()
			return nil, explainOpen(err, j.path)
		}
	}
	id, err := j.insertRun(r, time.Now())
	if err != nil {
		if rs != nil {
			rs.Close()
		}
		lock.Close()
		return nil, explainOpen(err, j.path)
	}
	w := &Writer{
		j: j, runID: id, run: r, lock: lock, rs: rs,
		kick:      make(chan struct{}, 1),
		stop:      make(chan struct{}),
		done:      make(chan struct{}),
		live:      make(map[uint64]*liveTask),
		pids:      make(map[uint64]int),
		retrying:  make(map[uint64]bool),
		workers:   make(map[int]bool),
		toCommit:  make(chan *rows, 1),
		freeRows:  make(chan *rows, 2),
		committed: make(chan struct{}),
	}
	w.freeRows <- &rows{}
	w.freeRows <- &rows{}
	w.room = sync.NewCond(&w.mu)
	if r.MemLimit > 0 {
		w.add(record{kind: recEvent, ev: &pool.Event{Kind: pool.EventMemorySample, Time: time.Now()}})
	}
	go w.committer()
	go w.loop()
	return w, nil
}

// Describe sets the run's figures that are known only once its pool is
// made: Run.Workers, MemoryMode and MemBudget. The writer must exist before
// the pool, so that it sees the pool's first events. A memBudget of 0 says
// the pool has no memory governor, whose samples give the journal the
// workers' memory: the writer then samples it itself at every commit.
func (w *Writer) Describe(workers int, memoryMode string, memBudget int64) {
	w.add(record{kind: recRun, pid: workers, text: memoryMode, at: memBudget})
}

// Watch gives the writer a count of the attempts running, which it
// samples as series running at every commit, whether the memory governor
// is on or not. running must be safe to call from another goroutine.
func (w *Writer) Watch(running func() int) {
	w.mu.Lock()
	w.running = running
	w.mu.Unlock()
}

// RunID returns the id of the run's row.
func (w *Writer) RunID() int64 { return w.runID }

// Submit records that the task of pool id id, the seq-th input, with key
// and input, was submitted to the pool. It must be called before the
// pool's events about the task can come: before Pool.Submit.
func (w *Writer) Submit(id, seq uint64, key Key, input []byte) {
	w.add(record{kind: recSubmit, id: id, seq: seq, key: key, input: input})
}

// SubmitBatch records that the batch task of pool id id (Task.Items:
// len(seqs) items, with the pool ids id, id+1, ...) was submitted, its
// items the inputs numbered seqs, with keys and inputs. Like Submit, it
// must be called before Pool.Submit. The writer keeps the slices.
func (w *Writer) SubmitBatch(id uint64, seqs []uint64, keys []Key, inputs [][]byte) {
	w.add(record{kind: recBatch, id: id, batch: &liveTask{seqs: seqs, keys: keys, inputs: inputs, left: len(seqs)}})
}

// SubmitLines is SubmitBatch for a block of lines, each ended by a
// newline: the i-th line of block, without its newline, is the input of
// the i-th item. It spares the writer a slice header an item, which the
// garbage collector would scan while the block lives. The writer keeps
// the slices.
func (w *Writer) SubmitLines(id uint64, seqs []uint64, keys []Key, block []byte) {
	w.add(record{kind: recBatch, id: id, batch: &liveTask{seqs: seqs, keys: keys, block: block, left: len(seqs)}})
}

// Withdraw takes back the task of pool id id that Submit, SubmitBatch or
// SubmitLines recorded, when Pool.Submit then refused it because the pool
// was stopping: it never was a task of the run, which the journal does not
// list (an interrupted run's summary counts it nowhere either), and the
// next --resume runs its inputs as any not read.
func (w *Writer) Withdraw(id uint64) {
	w.add(record{kind: recWithdraw, id: id})
}

// Skip records that the seq-th input was not run because an earlier run
// finished it: state skipped, and cause, when not empty, the cause of the
// earlier run's failure (resume without --resume-failed).
func (w *Writer) Skip(seq uint64, key Key, input []byte, cause string) {
	w.add(record{kind: recSkip, seq: seq, key: key, input: input, text: cause, at: time.Now().UnixNano()})
}

// Notice records something said to the user, as an event of kind notice.
func (w *Writer) Notice(text string) {
	w.add(record{kind: recNotice, at: time.Now().UnixNano(), text: text})
}

// Observe records ev. It is meant to be called from the pool's Observer.
// A task's end (EventTaskEnded) marks it ended in the journal: a caller
// that must first get the task's output out, as map does, gives that event
// once it has.
func (w *Writer) Observe(ev pool.Event) {
	switch ev.Kind {
	case pool.EventAttemptStarted:
		w.add(record{kind: recStarted, id: ev.TaskID, pid: ev.WorkerPID, at: ev.Time.UnixNano()})
	case pool.EventAttemptEnded:
		// A first attempt that succeeded is in its task's Result, which
		// the span row records: most attempts cost no record.
		if a := ev.Attempt; a != nil && !(a.Number == 1 && a.Cause == "" && a.Signal == "" && a.Message == "") {
			c := *a
			w.add(record{kind: recAttempt, id: ev.TaskID, attempt: &c})
		}
	case pool.EventTaskEnded:
		if ev.Result != nil {
			w.add(record{kind: recTask, id: ev.TaskID, at: ev.Time.UnixNano(), result: ev.Result})
		}
	case pool.EventWorkerStarted, pool.EventWorkerExited, pool.EventMemory, pool.EventMemorySample,
		pool.EventWorkerStalled, pool.EventWorkerOutOfStep, pool.EventWorkerOverMaxRSS,
		pool.EventAdmissionWait, pool.EventAdmissionWaitEnded:
		w.add(record{kind: recEvent, ev: &ev})
	}
}

func (w *Writer) add(r record) {
	size := r.bytes()
	w.mu.Lock()
	for (w.n >= maxQueued || w.bytes > 0 && w.bytes+size > maxQueuedBytes) && !w.closed {
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
	before, beforeBytes := w.n, w.bytes
	w.n += r.weight()
	w.bytes += size
	n, queued := w.n, w.bytes
	w.mu.Unlock()
	if before < flushRows && n >= flushRows || beforeBytes < flushBytes && queued >= flushBytes {
		select {
		case w.kick <- struct{}{}:
		default:
		}
	}
}

// Close writes what is left, marks the run ended with exitStatus, ends the
// goroutine and returns the first error writing the journal. After such
// an error, the journal stopped recording the run: Close adds an event of
// kind IncompleteEvent and records an exit status of at least 1, if there
// is room for them. It does not close the Journal.
func (w *Writer) Close(exitStatus int) error {
	w.mu.Lock()
	already := w.closed
	w.closed = true
	w.room.Broadcast()
	w.mu.Unlock()
	if already {
		return nil
	}
	if w.rs != nil {
		w.rs.Close()
		w.rs = nil
	}
	close(w.stop)
	<-w.done
	if w.err != nil {
		// What the run did after the error is not in the journal: the
		// run's row says so (IncompleteEvent), lest its end, written
		// now when there is room again, pass it for the whole run; and
		// the run exits 1 for it. Both in one transaction: the end was
		// seen written where the event found no room (a WAL at the file
		// size limit), and the report took the rest for the whole run.
		exitStatus = max(exitStatus, 1)
		if tx, err := w.j.db.Begin(); err == nil {
			_, err = tx.Exec(`INSERT INTO event (run_id, at, kind, detail) VALUES (?, ?, ?, ?)`,
				w.runID, w.errAt.UnixNano(), IncompleteEvent, explainWrite(w.err, w.j.path).Error())
			if err == nil {
				_, err = tx.Exec(`UPDATE run SET ended = ?, exit_status = ? WHERE id = ?`,
					time.Now().UnixNano(), exitStatus, w.runID)
			}
			if err == nil {
				err = tx.Commit()
			}
			if err != nil {
				tx.Rollback()
			}
		}
	} else if _, err := w.j.db.Exec(`UPDATE run SET ended = ?, exit_status = ? WHERE id = ?`,
		time.Now().UnixNano(), exitStatus, w.runID); err != nil {
		w.err = err
	}
	if w.lock != nil {
		w.lock.Close() // the command is free for another run
	}
	if w.err != nil {
		return fmt.Errorf("journal: writing %s: %w", w.j.path, explainWrite(w.err, w.j.path))
	}
	return nil
}

// lockCommand takes the lock of r's kind and command in the journal: a
// write lock on one byte of the span file, far past its end, at a place
// of the command's hash. It is an open file description's lock
// (F_OFD_SETLK): the file closed, or the process dead, it is free again.
// Another process's, or another open's, holding it is ErrInUse. A file
// system without such locks takes none.
func (j *Journal) lockCommand(r Run) (*os.File, error) {
	f, err := os.OpenFile(SpanFile(j.path), os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return nil, fmt.Errorf("journal: opening %s: %w", SpanFile(j.path), err)
	}
	lk := commandLock(r.Kind, r.Command)
	err = unix.FcntlFlock(f.Fd(), unix.F_OFD_SETLK, &lk)
	switch {
	case err == nil:
		return f, nil
	case errors.Is(err, unix.EAGAIN), errors.Is(err, unix.EACCES):
		f.Close()
		return nil, fmt.Errorf("%w: %s has a run of this command that still goes on (another safepool's): two at once would each do the tasks it has not done; wait for it to end, or name another journal file",
			ErrInUse, j.path)
	default:
		return f, nil // no locks here (ENOLCK, EINVAL): as before
	}
}

// commandLock is the lock a run of kind and command takes in its
// journal's span file (lockCommand): one byte far past the file's end, at
// a place of the command's hash. A Python client's call (kind "python",
// its function's name as command) takes the same kind of lock while it
// runs, at a place of the SHA-256 of kind and command, which Python has
// at hand (python/safepool/_journal.py: _lock_command).
func commandLock(kind, command string) unix.Flock_t {
	var h [8]byte
	if kind == "python" {
		sum := sha256.Sum256([]byte(kind + "\x00" + command))
		copy(h[:], sum[:8])
	} else {
		k := KeyOf([]byte(kind + "\x00" + command))
		copy(h[:], k[:8])
	}
	return unix.Flock_t{Type: unix.F_WRLCK, Whence: io.SeekStart, Len: 1,
		Start: 1<<61 + int64(binary.LittleEndian.Uint64(h[:])>>4)}
}

// CommandRuns reports whether a run of kind and command goes on in the
// journal at path: whether a process holds the lock that such a run holds
// from Start to Close (as long as it lives, even when killed before
// Close). ok is false when that cannot be told: the journal has no span
// file (a copy without it), or its file system has no such locks. It
// does not say which run of the command holds it.
func CommandRuns(path, kind, command string) (runs, ok bool) {
	f, err := os.Open(SpanFile(path))
	if err != nil {
		return false, false
	}
	defer f.Close()
	// A read lock is asked about, as the file is open for reading: the
	// run's write lock conflicts with it.
	lk := commandLock(kind, command)
	lk.Type = unix.F_RDLCK
	if err := unix.FcntlFlock(f.Fd(), unix.F_OFD_GETLK, &lk); err != nil {
		return false, false
	}
	return lk.Type != unix.F_UNLCK, true
}

// loop is the writer's goroutine: it commits the queue every FlushEvery,
// when many records wait, and once more when Close stops it.
func (w *Writer) loop() {
	defer close(w.done)
	defer func() {
		close(w.toCommit)
		<-w.committed
	}()
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
		w.recs, w.n, w.bytes = spare[:0], 0, 0
		w.room.Broadcast()
		w.mu.Unlock()
		w.flush(recs, stopping)
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

// committer writes the rows that flush gives it, each in one transaction,
// and gives them back emptied. After a write error the journal is left as
// it is: the pool goes on, and Close reports the error.
func (w *Writer) committer() {
	defer close(w.committed)
	defer func() {
		if w.spanFile != nil {
			if err := w.spanFile.Close(); err != nil && w.err == nil {
				w.err = err
			}
		}
	}()
	for b := range w.toCommit {
		if w.err == nil {
			if err := w.commit(b); err != nil {
				w.err, w.errAt = err, time.Now()
			}
		}
		b.reset()
		w.freeRows <- b
	}
}

// flush makes the rows of recs, and gives them to the committer to write
// in one transaction. The last flush (Close) writes every task still live
// as pending: the run ended without its end (cancelled before the journal
// learnt of it, or done with its output not written out), and the journal
// lists every task the run had.
func (w *Writer) flush(recs [][]record, last bool) {
	b := <-w.freeRows
	if len(w.spare) < maxSpare {
		w.spare = append(w.spare, b.spare...)
	}
	clear(b.spare)
	b.spare = b.spare[:0]
	if b.tasks.into == "" {
		run := strconv.FormatInt(w.runID, 10)
		row := func(binds int) string { return "(" + run + strings.Repeat(", ?", binds) + ")" }
		b.tasks.into, b.tasks.row = taskInto, row(9)
		b.spans.into, b.spans.row = spanInto, row(11)
		b.skips.into, b.skips.row = skipInto, row(4)
		b.attempts.into, b.attempts.row = attemptInto, row(10)
		b.samples.into, b.samples.row = sampleInto, row(4)
		b.events.into, b.events.row = eventInto, row(5)
	}
	for _, c := range recs {
		for i := range c {
			w.rows(b, &c[i])
		}
	}
	w.endSpan(b)
	w.endSkip(b)
	// Tasks that outlive a whole interval are written as pending, so that
	// the journal lists them if the supervisor dies; most tasks end
	// within one and are written once, whole, many to a span row. (Those
	// live at one commit only are mostly queued ones, hundreds at every
	// commit of a run of short tasks.) A batch's items are not: rows of
	// every item in flight would cost more than the items.
	for _, lt := range w.live {
		switch {
		case lt.inserted || lt.seqs != nil:
		case lt.aged || last:
			b.tasks.add(int64(lt.seq), lt.key[:], lt.input, "pending", 0, nil, nil, nil, nil)
			lt.inserted = true
		default:
			lt.aged = true
		}
	}
	w.mu.Lock()
	running := w.running
	w.mu.Unlock()
	now := time.Now().UnixNano()
	if running != nil {
		b.samples.add(now, int64(0), "running", int64(running()))
	}
	if w.sampleWorkers && len(w.workers) > 0 {
		w.sampleMemory(b, now)
	}
	if b.empty() {
		w.freeRows <- b
		return
	}
	w.toCommit <- b
}

// sampleMemory adds samples of each live worker's memory and their total,
// as the memory governor's samples would give them: what each worker's
// process tree alone holds (memory.TreePrivateMemory).
func (w *Writer) sampleMemory(b *rows, at int64) {
	var total int64
	for pid := range w.workers {
		m, err := memory.TreePrivateMemory(pid)
		if err != nil {
			continue // gone since it was seen, or not measurable here
		}
		total += m
		b.samples.add(at, int64(pid), "worker", m)
	}
	b.samples.add(at, int64(0), "total", total)
}

// commit appends b's span data to the span file, then writes b in one
// transaction: a row of span is never committed before its data are in
// the file.
func (w *Writer) commit(b *rows) error {
	if b.spanSize > 0 {
		base, err := w.appendSpans(b.spanData, b.spanSize)
		if err != nil {
			return err
		}
		b.placeSpans(base)
	}
	tx, err := w.j.db.Begin()
	if err != nil {
		return err
	}
	defer tx.Rollback() // after Commit, a no-op
	for _, t := range b.inserts() {
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
	if len(b.deletes.args) > 0 {
		st, err := tx.Prepare(`DELETE FROM task WHERE run_id = ? AND id = ?`)
		if err != nil {
			return err
		}
		defer st.Close()
		for _, id := range b.deletes.args {
			if _, err := st.Exec(w.runID, id); err != nil {
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

// appendSpans appends data, size bytes in all, to the span file, opened
// at the first call, with one writev(2), and returns the offset they
// begin at. The file is opened to append, so that another process writing
// the same journal does not write over them: one write to a regular file
// is not interleaved with another's.
func (w *Writer) appendSpans(data [][]byte, size int64) (int64, error) {
	if w.spanFile == nil {
		f, err := os.OpenFile(SpanFile(w.j.path), os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o644)
		if err != nil {
			return 0, err
		}
		w.spanFile = f
	}
	if len(data) > maxIovecs {
		// More pieces than one writev takes: one buffer.
		data = [][]byte{slices.Concat(data...)}
	}
	conn, err := w.spanFile.SyscallConn()
	if err != nil {
		return 0, err
	}
	var n int
	var werr error
	if err := conn.Write(func(fd uintptr) bool {
		n, werr = unix.Writev(int(fd), data)
		return werr != unix.EAGAIN
	}); err != nil {
		return 0, err
	}
	if werr != nil {
		return 0, werr
	}
	if int64(n) != size {
		// A regular file takes all but when the disk is full, or the file
		// reaches RLIMIT_FSIZE or a quota. writev reports only the
		// short count: writing the rest says why. The partial data is
		// not a record either way: no committed span row points at it.
		rest := slices.Concat(data...)[n:]
		_, err := w.spanFile.Write(rest)
		if err == nil {
			err = errors.New("short write")
		}
		return 0, fmt.Errorf("wrote %d bytes of %d to %s: %w", n, size, w.spanFile.Name(), err)
	}
	end, err := w.spanFile.Seek(0, io.SeekCurrent)
	if err != nil {
		return 0, err
	}
	return end - size, nil
}

// maxIovecs is how many buffers one writev(2) takes (IOV_MAX).
const maxIovecs = 1024

// rows are the rows one transaction writes, table by table.
type rows struct {
	tasks, spans, skips, attempts, samples, events table
	// updates are of tasks written as pending, runs of the run's row;
	// deletes are the ids of tasks written as pending that went into a
	// span, done at their first attempt.
	updates, runs, deletes table
	// spanData are the data of the span rows, for the span file, in
	// pieces (the rows' data are the spans' slices, not copied), spanSize
	// bytes in all: each row's data_at is where its data begin in them
	// until placeSpans. spare are the span slices of the rows written, for
	// the writer's goroutine to reuse (Writer.buffer).
	spanData [][]byte
	spanSize int64
	spare    [][]byte
}

// spanDataAt is the column of a span row's data_at in table.args, from
// its first (schema.sql).
const spanDataAt = 8

// castagnoli is CRC-32C's table: the checksum of span data.
var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// placeSpans sets the place of b's span rows once their data were written
// to the span file from offset base on.
func (b *rows) placeSpans(base int64) {
	t := &b.spans
	for i := 0; i < len(t.args); i += t.cols {
		t.args[i+spanDataAt] = base + t.args[i+spanDataAt].(int64)
	}
}

// inserts are b's tables of rows to insert.
func (b *rows) inserts() []*table {
	return []*table{&b.tasks, &b.spans, &b.skips, &b.attempts, &b.samples, &b.events}
}

// reset empties b, keeping its memory for the next transaction.
func (b *rows) reset() {
	for _, t := range append(b.inserts(), &b.updates, &b.runs, &b.deletes) {
		clear(t.args)
		t.args = t.args[:0]
	}
	for _, d := range b.spanData {
		if cap(d) >= minSpare && cap(d) <= maxSpareSize {
			b.spare = append(b.spare, d[:0])
		}
	}
	clear(b.spanData)
	b.spanData, b.spanSize = b.spanData[:0], 0
}

// minSpare is the least capacity of a span's slice worth reusing, and
// maxSpare how many the writer keeps. A slice longer than maxSpareSize,
// of a long output of map --pipe, is not kept.
const (
	minSpare     = 4 << 10
	maxSpare     = 64
	maxSpareSize = 2 * maxSpanOutput
)

func (b *rows) empty() bool {
	n := 0
	for _, t := range append(b.inserts(), &b.updates, &b.runs, &b.deletes) {
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
	// for those to bind and the run's id, which every row has, as a
	// literal. Both are set by rows.
	into, row string
}

var (
	taskInto    = `task (run_id, id, key, input, state, attempts, cause, peak, output, ended)`
	spanInto    = `span (run_id, first, count, ids, parts, started, ended, worker_pid, peak, data_at, data_size, data_crc)`
	skipInto    = `skip (run_id, first, count, ids, ended)`
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

// find returns the live task that holds the pool's task id, and the
// index of id's item in it when it is a batch: a task split from a batch
// (an item charged on its own, the items given back) has the id of its
// first item. It returns nil for an id of no live task.
func (w *Writer) find(id uint64) (*liveTask, int) {
	if lt := w.live[id]; lt != nil {
		return lt, 0
	}
	i, _ := slices.BinarySearch(w.bases, id+1) // the first base after id
	if i == 0 {
		return nil, 0
	}
	base := w.bases[i-1]
	if lt := w.live[base]; lt != nil && id-base < uint64(len(lt.seqs)) {
		return lt, int(id - base)
	}
	return nil, 0
}

// seqOf returns the journal id of the pool's task id, or 0.
func (w *Writer) seqOf(id uint64) uint64 {
	if lt, i := w.find(id); lt != nil {
		seq, _, _ := lt.item(i)
		return seq
	}
	return 0
}

// rows adds the rows of one record to b.
func (w *Writer) rows(b *rows, r *record) {
	switch r.kind {
	case recSubmit:
		w.live[r.id] = &liveTask{seq: r.seq, key: r.key, input: r.input}
	case recBatch:
		if len(r.batch.seqs) == 0 {
			return
		}
		w.live[r.id] = r.batch
		if n := len(w.bases); n > 0 && len(w.live) < n/2 {
			// Drop the bases of ended batches, now and then.
			w.bases = slices.DeleteFunc(w.bases, func(id uint64) bool { return w.live[id] == nil })
		}
		w.bases = append(w.bases, r.id)
	case recWithdraw:
		if lt := w.live[r.id]; lt != nil {
			delete(w.live, r.id)
			if lt.inserted {
				b.deletes.add(int64(lt.seq))
			}
		}
	case recSkip:
		if r.text != "" {
			b.tasks.add(int64(r.seq), r.key[:], r.input, "skipped", 0, nullString(r.text), nil, nil, r.at)
			return
		}
		sk := &w.skip
		if sk.n == 0 {
			sk.begin(r.seq)
		}
		sk.addID(r.seq)
		sk.n++
		sk.at = r.at
		if sk.n >= maxSkip {
			w.endSkip(b)
		}
	case recNotice:
		w.event(b, r.at, "notice", 0, 0, r.text)
	case recRun:
		b.runs.add(int64(r.pid), r.text, nullInt(r.at), w.runID)
		w.sampleWorkers = r.at <= 0
	case recStarted:
		w.pids[r.id] = r.pid
		if w.retrying[r.id] {
			delete(w.retrying, r.id)
			w.event(b, r.at, "retry", w.seqOf(r.id), r.pid, "")
		}
	case recAttempt:
		w.attempt(b, r.id, r.attempt)
	case recTask:
		if r.result.Items != nil {
			w.batchEnded(b, r.result, r.at)
		} else {
			w.taskEnded(b, r.id, r.result, r.at)
		}
	case recEvent:
		w.poolEvent(b, r.ev)
	}
}

// attempt records an attempt that did not simply succeed at once.
func (w *Writer) attempt(b *rows, id uint64, a *pool.Attempt) {
	delete(w.pids, id)
	seq := w.seqOf(id)
	if seq == 0 {
		return
	}
	if w.retrying[id] && a.Number > 1 {
		// A retry that could not start a worker: no start marked it.
		delete(w.retrying, id)
		w.event(b, a.Start.UnixNano(), "retry", seq, a.WorkerPID, "")
	}
	w.attemptRow(b, seq, a)
	switch a.Cause {
	case "", pool.CauseCancelled:
	case pool.CausePreempted:
		w.event(b, a.End.UnixNano(), "preempted", seq, a.WorkerPID, "")
	case pool.CauseOOM:
		w.retrying[id] = true
		w.event(b, a.End.UnixNano(), "oom", seq, a.WorkerPID, a.Message)
	default:
		w.retrying[id] = true
	}
}

func (w *Writer) attemptRow(b *rows, seq uint64, a *pool.Attempt) {
	exit := any(nil)
	if a.ExitCode >= 0 {
		exit = int64(a.ExitCode)
	}
	b.attempts.add(int64(seq), int64(a.Number), int64(a.WorkerPID), a.Start.UnixNano(), a.End.UnixNano(),
		string(a.Cause), exit, nullString(a.Signal), nullInt(a.PeakRSS), nullString(a.Message))
}

// doneAtOnce reports whether res is of a task done at its first attempt,
// whose attempt no record gave: a task for a span row.
func doneAtOnce(res *pool.Result) bool {
	if res.State != pool.Done || len(res.Attempts) != 1 {
		return false
	}
	a := &res.Attempts[0]
	return a.Number == 1 && a.Cause == "" && a.Signal == "" && a.Message == ""
}

// taskEnded records the end of a task that is not a batch.
func (w *Writer) taskEnded(b *rows, id uint64, res *pool.Result, at int64) {
	lt := w.live[id]
	if lt == nil {
		return
	}
	delete(w.live, id)
	delete(w.pids, id)
	delete(w.retrying, id)
	if doneAtOnce(res) {
		// Into a span, also when it was written as pending (a block of
		// map --pipe that ran for seconds): its output, megabytes
		// long, then goes to the span file, not through SQLite's
		// pages, which write it twice.
		if lt.inserted {
			b.deletes.add(int64(lt.seq))
		}
		a := &res.Attempts[0]
		w.spanAdd(b, lt.seq, lt.key, res.Output, a)
		return
	}
	w.taskRow(b, lt, 0, res, res.Output, at)
}

// batchEnded records the end of items of a batch, which res settles.
func (w *Writer) batchEnded(b *rows, res *pool.Result, at int64) {
	lt := w.live[res.ID]
	if lt == nil || lt.seqs == nil {
		return
	}
	if doneAtOnce(res) {
		// Done at once, as most are: the items go to span rows, many
		// at a time; a whole block of lines, at once.
		if w.span.n > 0 && !w.span.room(len(res.Items), len(res.Output)) {
			w.endSpan(b)
		}
		if w.span.addBlock(lt, res, w.run.StoreOutput) {
			if w.span.full() {
				w.endSpan(b)
			}
		} else {
			for i := 0; i < len(res.Items); {
				i = w.span.addItems(lt, res, i, w.run.StoreOutput)
				if w.span.full() {
					w.endSpan(b)
				}
			}
		}
	} else {
		for i := range res.Items {
			it := &res.Items[i]
			if it.Index < 0 || it.Index >= len(lt.seqs) || lt.seqs[it.Index] == 0 {
				continue // not of the batch, or ended already
			}
			w.taskRow(b, lt, it.Index, res, it.Output, at)
			delete(w.retrying, it.ID)
			// Ended. Its input goes with the batch's record, when the
			// last item ends.
			lt.seqs[it.Index] = 0
			lt.left--
		}
	}
	if lt.left <= 0 {
		// The ids its attempts started as: the batch's, and those of
		// the parts split from it.
		delete(w.live, res.ID)
		for id := range w.pids {
			if id-res.ID < uint64(len(lt.seqs)) {
				delete(w.pids, id)
			}
		}
	}
}

// taskRow writes the row of the i-th item of lt (lt itself when it is not
// a batch), which res ended, with output.
func (w *Writer) taskRow(b *rows, lt *liveTask, i int, res *pool.Result, output []byte, at int64) {
	seq, key, input := lt.item(i)
	var attempts int
	var peak int64
	for _, a := range res.Attempts {
		attempts = max(attempts, a.Number)
		peak = max(peak, a.PeakRSS)
	}
	cause := any(nil)
	var out any
	if res.State == pool.Done {
		if n := len(res.Attempts); n > 0 {
			// Its last attempt succeeded and, numbered 1, was given no
			// record (Observe).
			if a := &res.Attempts[n-1]; a.Number == 1 && a.Cause == "" && a.Signal == "" && a.Message == "" {
				w.attemptRow(b, seq, a)
			}
		}
		if w.run.StoreOutput {
			out = output
			if output == nil {
				out = []byte{}
			}
		}
	} else {
		cause = nullString(string(res.Cause()))
	}
	if lt.inserted {
		b.updates.add(string(res.State), int64(attempts), cause, nullInt(peak), out, at, w.runID, int64(seq))
	} else {
		b.tasks.add(int64(seq), key[:], input, string(res.State), int64(attempts), cause, nullInt(peak), out, at)
	}
	if res.State == pool.Poison {
		w.event(b, at, "poison", seq, 0, "")
	}
}

// poolEvent records an event of the pool that is neither an attempt nor
// a task's end.
func (w *Writer) poolEvent(b *rows, ev *pool.Event) {
	at := ev.Time.UnixNano()
	switch ev.Kind {
	case pool.EventWorkerStarted, pool.EventWorkerExited:
		w.event(b, at, string(ev.Kind), 0, ev.WorkerPID, "")
		if ev.Kind == pool.EventWorkerStarted {
			w.workers[ev.WorkerPID] = true
		} else {
			delete(w.workers, ev.WorkerPID)
		}
	case pool.EventWorkerStalled:
		w.event(b, at, "stalled", w.seqOf(ev.TaskID), ev.WorkerPID, ev.Message)
	case pool.EventWorkerOutOfStep:
		w.event(b, at, "out-of-step", w.seqOf(ev.TaskID), ev.WorkerPID, ev.Message)
	case pool.EventWorkerOverMaxRSS:
		w.event(b, at, "over-max-rss", w.seqOf(ev.TaskID), ev.WorkerPID, ev.Message)
	case pool.EventAdmissionWait, pool.EventAdmissionWaitEnded:
		w.event(b, at, string(ev.Kind), w.seqOf(ev.TaskID), 0, "")
	case pool.EventMemory:
		if m := ev.Memory; m != nil {
			b.samples.add(at, int64(0), "allowed", int64(m.Allows))
			b.samples.add(at, int64(0), "budget", m.Budget)
		}
	case pool.EventMemorySample:
		if w.run.MemLimit > 0 {
			b.samples.add(at, int64(0), "limit", w.run.MemLimit)
		}
		m := ev.Memory
		if m == nil {
			return
		}
		b.samples.add(at, int64(0), "total", m.InUse)
		b.samples.add(at, int64(0), "budget", m.Budget)
		b.samples.add(at, int64(0), "allowed", int64(m.Allows))
		for _, u := range ev.Usage {
			if pid := w.pids[u.TaskID]; pid != 0 {
				b.samples.add(at, int64(pid), "worker", u.Bytes)
			}
		}
	}
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

const (
	// maxSpan is how many tasks a span row holds at most, and
	// maxSpanOutput about how many bytes of output: what resume reads to
	// replay one output of it.
	maxSpan       = 4096
	maxSpanOutput = 1 << 20
)

// idRuns are the ids of a span or skip row, in runs of consecutive ids
// (schema.sql: span.ids).
type idRuns struct {
	first uint64 // the first id
	// The run of consecutive ids being added, [runStart, runEnd), not in
	// ids yet; expect is where the run after the last in ids was expected
	// to start.
	runStart, runEnd, expect uint64
	ids                      []byte
}

// begin starts the ids with seq.
func (r *idRuns) begin(seq uint64) {
	r.first, r.expect, r.runStart, r.runEnd = seq, seq, seq, seq
}

// addID adds seq to the runs.
func (r *idRuns) addID(seq uint64) {
	if seq == r.runEnd {
		r.runEnd++
		return
	}
	r.endRun()
	r.runStart, r.runEnd = seq, seq+1
}

// endRun adds the run being added to ids.
func (r *idRuns) endRun() {
	if r.runEnd == r.runStart {
		return
	}
	r.ids = binary.AppendVarint(r.ids, int64(r.runStart-r.expect)) // zigzag
	r.ids = binary.AppendUvarint(r.ids, r.runEnd-r.runStart)
	r.expect = r.runEnd
	r.runStart = r.runEnd
}

// span gathers the tasks done at their first attempt for one row of span
// (schema.sql). Its keys, lengths and output go to the span file.
type span struct {
	n int
	idRuns
	parts []byte
	keys  []byte
	// With Run.StoreOutput, the outputs: lines (answer lines of line
	// batches, which hold no newline) each with its newline, or, once an
	// output of another kind comes (withLengths), the outputs one after
	// the other with their lengths.
	withLengths bool
	lengths     []byte
	output      []byte
	started     int64
	ended       int64
	pid         int // the worker that ran them all, or 0
	peak        int64
}

// spanAdd adds the seq-th input, with key, done at its first attempt a
// with out, to the span, as a part of its own, and writes the span when
// it is full.
func (w *Writer) spanAdd(b *rows, seq uint64, key Key, out []byte, a *pool.Attempt) {
	s := &w.span
	if s.n == 0 {
		s.start(seq, a)
	}
	s.addID(seq)
	s.keys = append(s.keys, key[:]...)
	if w.run.StoreOutput {
		s.useLengths()
		s.lengths = binary.AppendUvarint(s.lengths, uint64(len(out)))
		if s.n == 0 && len(out) > maxSpareSize {
			// A long output, such as a block's of map --pipe, alone in
			// its span: its data take the Result's slice, not a copy
			// (too long to be kept for reuse, it is never written to).
			s.output = out
		} else {
			s.output = append(s.output, out...)
		}
	}
	s.n++
	s.part(1, a, nil, nil)
	if s.full() {
		w.endSpan(b)
	}
}

// start starts the span with the seq-th input, whose attempt is a.
func (s *span) start(seq uint64, a *pool.Attempt) {
	s.begin(seq)
	s.started, s.ended, s.pid, s.peak = a.Start.UnixNano(), a.End.UnixNano(), a.WorkerPID, 0
}

// part records that the last n tasks added ran in attempt a: from the
// start of the first's item to the end of the last's, or over a when the
// items were not timed (or are nil: a task of its own).
func (s *span) part(n int, a *pool.Attempt, first, last *pool.Item) {
	start, end := a.Start.UnixNano(), a.End.UnixNano()
	if first != nil && !first.Start.IsZero() && !last.End.IsZero() {
		start, end = first.Start.UnixNano(), last.End.UnixNano()
	}
	s.parts = binary.AppendUvarint(s.parts, uint64(n))
	s.parts = binary.AppendUvarint(s.parts, uint64(max(end-start, 0)/1000))
	s.parts = binary.AppendUvarint(s.parts, uint64(max(a.PeakRSS, 0)>>10))
	s.started, s.ended = min(s.started, start), max(s.ended, end)
	if s.pid != a.WorkerPID {
		s.pid = 0
	}
	s.peak = max(s.peak, a.PeakRSS)
}

// full reports whether the span is full: its row is to be written.
func (s *span) full() bool { return s.n >= maxSpan || len(s.output) >= maxSpanOutput }

// useLengths turns the span's outputs from lines into outputs with their
// lengths, for an output that may hold a newline.
func (s *span) useLengths() {
	if s.withLengths {
		return
	}
	s.withLengths = true
	out := s.output[:0]
	for rest := s.output; len(rest) > 0; {
		k := bytes.IndexByte(rest, '\n')
		s.lengths = binary.AppendUvarint(s.lengths, uint64(k))
		out = append(out, rest[:k]...) // in place: out never passes rest
		rest = rest[k+1:]
	}
	s.output = out
}

// room reports whether n more tasks with size bytes of output fit in the
// span.
func (s *span) room(n, size int) bool {
	return s.n+n <= maxSpan && len(s.output)+size <= maxSpanOutput
}

// addBlock adds every item of lt, which res settles done at its first
// attempt, at once, and reports whether it did: when res is a line
// batch's (Result.Output holds its answer lines) and holds all of lt's
// items, their ids are consecutive and they fit in the span. Otherwise
// addItems is for them.
func (s *span) addBlock(lt *liveTask, res *pool.Result, storeOutput bool) bool {
	items := res.Items
	n := len(items)
	// A Result settles each of its items once, and a line batch's
	// (Output set) holds them in the order of their lines (Result.Items):
	// n items from index 0 to n-1 are all of lt's, in order.
	if n == 0 || n != len(lt.seqs) || lt.left != n || items[0].Index != 0 || items[n-1].Index != n-1 ||
		!s.room(n, len(res.Output)) || lt.seqs[n-1]-lt.seqs[0] != uint64(n-1) ||
		res.Output == nil || storeOutput && s.withLengths {
		return false
	}
	a := &res.Attempts[0]
	first := lt.seqs[0]
	if s.n == 0 {
		s.start(first, a)
	}
	if first != s.runEnd {
		s.addID(first)
	}
	s.runEnd = first + uint64(n)
	s.keys = append(s.keys, unsafe.Slice((*byte)(unsafe.Pointer(&lt.keys[0])), n*len(Key{}))...)
	if storeOutput {
		s.output = append(s.output, res.Output...)
	}
	s.n += n
	// Ended, all of them: the batch's record goes.
	lt.left = 0
	s.part(n, a, &items[0], &items[n-1])
	return true
}

// addItems adds the items of res from res.Items[i] on, which its first
// attempt did, to the span, as one part, until the span is full; it marks
// them ended in lt, and returns the index of the first item it did not
// take. An item not of lt, or ended already, is passed over. It works on
// local copies of the span's slices, so that an item costs no write
// barrier of a slice stored through a pointer while the GC runs.
func (s *span) addItems(lt *liveTask, res *pool.Result, i int, storeOutput bool) int {
	items, a := res.Items, &res.Attempts[0]
	if storeOutput && res.Output == nil {
		s.useLengths() // a framed batch's outputs may hold newlines
	}
	withLengths := s.withLengths
	keys, lengths, output := s.keys, s.lengths, s.output
	n := s.n
	added := 0
	var firstItem, lastItem *pool.Item
	for ; i < len(items) && n < maxSpan && len(output) < maxSpanOutput; i++ {
		it := &items[i]
		if it.Index < 0 || it.Index >= len(lt.seqs) || lt.seqs[it.Index] == 0 {
			continue // not of the batch, or ended already
		}
		seq := lt.seqs[it.Index]
		if n == 0 {
			s.start(seq, a)
		}
		if seq == s.runEnd {
			s.runEnd++
		} else {
			s.addID(seq)
		}
		keys = append(keys, lt.keys[it.Index][:]...)
		if storeOutput {
			if withLengths {
				lengths = binary.AppendUvarint(lengths, uint64(len(it.Output)))
				output = append(output, it.Output...)
			} else {
				output = append(append(output, it.Output...), '\n')
			}
		}
		if firstItem == nil {
			firstItem = it
		}
		lastItem = it
		n++
		added++
		// Ended. Its input goes with the batch's record, when the last
		// item ends: clearing it here would cost a write barrier an item.
		lt.seqs[it.Index] = 0
		lt.left--
	}
	s.keys, s.lengths, s.output, s.n = keys, lengths, output, n
	if added > 0 {
		s.part(added, a, firstItem, lastItem)
	}
	return i
}

// How a span's data hold its outputs (schema.sql): the first byte of the
// data.
const (
	outputsNone        = 0 // not kept
	outputsLines       = 1 // each followed by a newline, and holding none
	outputsWithLengths = 2 // a varint, the length of the lengths; the lengths; the outputs
)

// endSpan adds the span's row to b, and its data to b's span data, if it
// holds any task, and starts the next one. The committer sets the row's
// place in the span file (rows.placeSpans).
func (w *Writer) endSpan(b *rows) {
	s := &w.span
	if s.n == 0 {
		return
	}
	s.endRun()
	// The head names the row, so that data a crash lost and a later run
	// wrote over are never taken for the row's.
	head := binary.AppendUvarint(binary.AppendUvarint(nil, uint64(w.runID)), s.first)
	switch {
	case !w.run.StoreOutput:
		head = append(head, outputsNone)
	case s.withLengths:
		head = binary.AppendUvarint(append(head, outputsWithLengths), uint64(len(s.lengths)))
	default:
		head = append(head, outputsLines)
	}
	at, crc := b.spanSize, uint32(0)
	for _, d := range [][]byte{head, s.keys, s.lengths, s.output} {
		if len(d) > 0 {
			b.spanData = append(b.spanData, d)
			b.spanSize += int64(len(d))
			crc = crc32.Update(crc, castagnoli, d)
		}
	}
	b.spans.add(int64(s.first), int64(s.n), s.ids, s.parts, s.started, s.ended,
		nullInt(int64(s.pid)), nullInt(s.peak), at, b.spanSize-at, int64(crc))
	// The rows keep the span's slices until the transaction ends: the
	// next span has its own, of the rows written before.
	*s = span{
		idRuns:  idRuns{ids: make([]byte, 0, cap(s.ids))},
		parts:   make([]byte, 0, cap(s.parts)),
		keys:    w.buffer(),
		lengths: w.buffer(),
		output:  w.buffer(),
	}
}

// buffer returns an empty slice to reuse for a span's data, or nil.
func (w *Writer) buffer() []byte {
	n := len(w.spare)
	if n == 0 {
		return nil
	}
	d := w.spare[n-1]
	w.spare[n-1] = nil
	w.spare = w.spare[:n-1]
	return d
}

// maxSkip is how many tasks a skip row holds at most.
const maxSkip = 1 << 16

// skip gathers the tasks a resumed run skips because an earlier run had
// them done, for one row of skip (schema.sql).
type skip struct {
	n int
	idRuns
	at int64 // when the last was skipped
}

// endSkip adds the skip row to b, if it holds any task, and starts the
// next one.
func (w *Writer) endSkip(b *rows) {
	sk := &w.skip
	if sk.n == 0 {
		return
	}
	sk.endRun()
	b.skips.add(int64(sk.first), int64(sk.n), sk.ids, sk.at)
	*sk = skip{}
}
