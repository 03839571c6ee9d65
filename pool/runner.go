package pool

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"os"
	"strconv"
	"syscall"
	"time"

	"github.com/safepool/safepool/internal/memory"
	"github.com/safepool/safepool/internal/protocol"
	"github.com/safepool/safepool/internal/worker"
)

const (
	// linger is how long a dead worker's pipes may keep delivering what it
	// wrote before it died; past that a grandchild holding them is ignored.
	linger = 200 * time.Millisecond
	// eofPatience is how long a worker that closed its result pipe has to
	// die by itself and say why, before it is killed for a protocol error.
	eofPatience = 200 * time.Millisecond
	// oomLogWait is how long to wait for the kernel log to name a worker
	// that died of SIGKILL; the record is written as the kill is sent.
	oomLogWait = 200 * time.Millisecond
	// peakEvery is the least time between two readings (each followed by a
	// reset) of a worker cgroup's peak. Reading and resetting it for every
	// task cost most of the supervisor's time on short lines; an attempt
	// that ends sooner is charged the last reading (see Attempt.PeakRSS).
	peakEvery = 100 * time.Millisecond
	// maxLinesPerEvent bounds how many result lines, already buffered, the
	// reader hands to the runner at once.
	maxLinesPerEvent = 256
)

// pipelineAhead is about how much work, by the recent time per line, a line
// worker may have waiting in its stdin. Lines sent ahead save a round trip
// each, which matters for lines of microseconds; for lines of seconds they
// would only keep idle workers from the last lines of the input.
var pipelineAhead = 10 * time.Millisecond

// runner owns one worker slot: the worker process in it, the goroutines that
// read and write that process's pipes, and the attempts in flight on it.
// Everything here is touched only by the runner's own goroutine.
type runner struct {
	p     *Pool
	slot  int
	group *memory.Group // nil without cgroup enforcement
	// watch samples the current process's private memory where it has no
	// cgroup of its own (group is nil); nil otherwise.
	watch *memory.Watch
	// preempt carries the ids of tasks the memory governor stops. It is
	// buffered; an id that is not running on the slot is ignored.
	preempt chan uint64

	proc        *worker.Process
	events      chan procEvent // from the current process's reader
	writes      chan []byte    // to the current process's writer; nil for one-shot
	gone        chan struct{}  // closed when the runner abandons the current process
	inflight    []*flight      // sent to the current process, oldest first
	ready       bool           // the framed worker sent ready
	answered    int            // tasks the current process finished
	retiring    bool           // no more tasks for this process; end it when idle
	killed      Cause          // why the runner killed the current process, or ""
	victim      *flight        // the flight that timed out, if any
	eofAt       time.Time      // when the result pipe reached EOF
	readerDone  bool           // the result reader sent its last event
	oomBase     uint64         // the group's oom_kill count when this process or attempt began
	oomMark     memory.OOMMark // the enclosing cgroup's OOM witness when this process or attempt began
	deadline    *time.Timer    // earliest timeout or EOF patience
	protocolMsg string         // what the worker did wrong, when killed for it
	retired     bool           // the runner told the current process to end
	spawned     time.Time      // when the current process started
	pending     []byte         // tasks encoded but not yet handed to the writer
	lineTime    time.Duration  // line protocol: recent time per line, a moving average; 0 before the first

	// The slot's cgroup peak is read and reset at most every peakEvery.
	peakAt   time.Time // when the peak was last reset
	peakRead bool      // peakLast is a reading taken at peakAt
	peakLast int64     // the last reading: the peak of the interval before peakAt
}

// flight is one task handed to the current worker process.
type flight struct {
	t       *task
	started bool
	start   time.Time
	peak    int64 // the highest peak reading taken while it ran
}

// procEvent is what a reader goroutine saw on a worker's result pipe.
type procEvent struct {
	lines [][]byte       // line protocol: result lines, without their newlines
	frame protocol.Frame // framed protocol
	err   error          // io.EOF, or what was wrong; the reader's last event
}

func (r *runner) run() {
	defer r.p.runners.Done()
	if r.p.mem.Mode().PerWorker() {
		g, err := r.p.mem.NewGroup("w"+strconv.Itoa(r.slot), r.limit())
		if err != nil {
			r.p.abortFor(0, fmt.Errorf("creating a cgroup for worker %d: %w", r.slot, err))
		} else {
			r.group = g
			defer g.Remove()
			if r.p.gov != nil {
				r.p.gov.setGroup(r.slot, g)
				defer r.p.gov.setGroup(r.slot, nil)
			}
		}
	}
	if r.p.cfg.Protocol == OneShot {
		r.runOneShot()
		return
	}
	r.runPersistent()
}

// limit is the memory limit of the slot's cgroup.
func (r *runner) limit() int64 { return r.p.gov.workerLimit(r.p.cfg.MemLimit) }

// stopping reports whether the pool is ending (every task ended) or aborting.
func (r *runner) stopping() bool {
	select {
	case <-r.p.quit:
		return true
	case <-r.p.abortCh:
		return true
	default:
		return false
	}
}

func (r *runner) runPersistent() {
	cfg := &r.p.cfg
	abortC, killC, quitC := r.p.abortCh, r.p.killCh, r.p.quit
	for {
		if r.proc == nil {
			if r.stopping() {
				return
			}
			if !r.spawn() {
				// Give a failing command a moment before the next try; the
				// loop aborts the pool after too many failures in a row.
				select {
				case <-time.After(100 * time.Millisecond):
				case <-r.p.abortCh:
				case <-r.p.quit:
				}
				continue
			}
		}
		var dispatch chan *task
		if r.hasRoom() {
			dispatch = r.p.dispatch
		}
		var deadlineC <-chan time.Time
		if r.deadline != nil {
			deadlineC = r.deadline.C
		}
		select {
		case t := <-dispatch:
			r.sendTask(t)
			// Take what else is ready to go, and write it all at once.
		more:
			for r.hasRoom() {
				select {
				case t := <-dispatch:
					r.sendTask(t)
				default:
					break more
				}
			}
			r.flushTasks()
		case ev := <-r.events:
			r.handle(ev)
		case <-r.proc.Done():
			r.reap()
		case <-deadlineC:
			r.deadline = nil
			r.checkDeadlines()
		case id := <-r.preempt:
			for _, f := range r.inflight {
				// A line sent to a worker is in its stdin and is in the way
				// of the memory the worker holds: stop the worker for it too.
				if f.t.id == id && (f.started || r.p.cfg.Protocol == Line) {
					r.kill(CausePreempted)
					break
				}
			}
		case <-r.overLimit():
			r.kill(CauseMemoryLimit)
		case <-quitC:
			quitC = nil
			r.retiring = true
			r.retireIfIdle()
		case <-abortC:
			abortC = nil
			r.killed = CauseCancelled
			r.proc.Stop(cfg.Grace)
		case <-killC:
			killC = nil
			r.killed = CauseCancelled
			r.proc.Kill()
		}
	}
}

// hasRoom reports whether the current process may take another task.
func (r *runner) hasRoom() bool {
	cfg := &r.p.cfg
	if r.retiring || r.killed != "" || !r.eofAt.IsZero() || len(r.inflight) >= cfg.Pipeline {
		return false
	}
	if cfg.Protocol == Framed && !r.ready {
		return false
	}
	if cfg.Protocol == Line && len(r.inflight) >= r.lineDepth() {
		return false
	}
	if n := len(r.inflight); n > 0 {
		// A task that has failed before runs with nothing queued behind
		// it, so that no task dispatched after it keeps it from counting
		// as running alone (the memory governor's poison rule).
		if t := r.inflight[n-1].t; t.charged() > 0 || t.need > 0 {
			return false
		}
	}
	if cfg.MaxTasksPerWorker > 0 && r.answered+len(r.inflight) >= cfg.MaxTasksPerWorker {
		return false
	}
	select {
	case <-r.proc.Done():
		return false // it exited between tasks: reap it first
	default:
		return true
	}
}

// spawn starts a new worker process in the slot. It reports whether it did.
func (r *runner) spawn() bool {
	cfg := &r.p.cfg
	spec := worker.Spec{Args: cfg.Command, Env: cfg.Env, Dir: cfg.Dir, Stdout: cfg.Stdout, Stderr: cfg.Stderr}
	if spec.Stderr == nil {
		spec.Stderr = os.Stderr
	}
	if spec.Stdout == nil {
		spec.Stdout = spec.Stderr
	}
	spec.IO = worker.IOLine
	if cfg.Protocol == Framed {
		spec.IO = worker.IOFramed
		spec.Env = withEnv(spec.Env, protocol.EnvProtocol+"="+protocol.Framed,
			protocol.EnvTaskFD+"=3", protocol.EnvResultFD+"=4")
	}
	if r.group != nil {
		spec.Cgroup = r.group
		r.oomBase, _ = r.group.OOMKills()
	} else {
		spec.Cgroup = r.shim()
	}
	r.markOOM()
	proc, err := worker.Start(spec)
	if err != nil {
		r.p.send(report{kind: reportStartupFailure, start: &StartError{Command: cfg.Command, Err: err}})
		return false
	}
	r.p.count(func(s *Stats) { s.WorkersStarted++ })
	r.p.emit(Event{Kind: EventWorkerStarted, WorkerPID: proc.Pid})
	r.startWatch(proc)
	r.proc, r.ready, r.answered, r.retiring, r.killed, r.victim = proc, false, 0, false, "", nil
	r.spawned = time.Now()
	r.eofAt, r.readerDone = time.Time{}, false
	r.events = make(chan procEvent, 64)
	r.writes = make(chan []byte, cfg.Pipeline+1)
	r.gone = make(chan struct{})
	go readResults(cfg.Protocol, proc.Results, r.events, r.gone)
	go writeTasks(proc.Tasks, r.writes)
	return true
}

// withEnv returns env (or the supervisor's environment when nil) with vars
// added.
func withEnv(env []string, vars ...string) []string {
	if env == nil {
		env = os.Environ()
	}
	return append(append([]string(nil), env...), vars...)
}

// lineDepth is how many lines the current line worker may have in flight:
// one until it has answered, then as many as it answers in pipelineAhead,
// up to Config.Pipeline.
func (r *runner) lineDepth() int {
	if r.lineTime <= 0 {
		return 1
	}
	return int(min(int64(r.p.cfg.Pipeline), 1+int64(pipelineAhead/r.lineTime)))
}

// sendTask encodes t for the current process; flushTasks hands what was
// encoded to the writer.
func (r *runner) sendTask(t *task) {
	if r.p.gov != nil {
		r.p.gov.bind(t.id, r.slot)
	}
	f := &flight{t: t}
	r.inflight = append(r.inflight, f)
	if r.p.cfg.Protocol == Line {
		r.pending = append(append(r.pending, t.t.Input...), '\n')
		// A line worker answers in order, and the line protocol cannot say
		// when a task starts: the oldest line in flight is the one running,
		// from when it was sent or the previous line was answered.
		if len(r.inflight) == 1 {
			r.startFlight(f, time.Now())
		}
		return
	}
	r.pending = appendTask(r.pending, t.id, t.t.Input)
}

// flushTasks hands the encoded tasks to the writer in one message. The
// writes channel holds one message per task at most, so this never blocks.
func (r *runner) flushTasks() {
	if len(r.pending) == 0 {
		return
	}
	r.writes <- r.pending
	r.pending = nil
}

// startFlight marks f running since at.
func (r *runner) startFlight(f *flight, at time.Time) {
	f.started, f.start = true, at
	if len(r.inflight) == 1 {
		r.markOOM() // the worker was idle: its window starts anew
		if r.watch != nil {
			r.watch.ResetPeak() // and its peak
		}
	}
	if r.group != nil && len(r.inflight) == 1 && at.Sub(r.peakAt) >= peakEvery {
		// The worker was idle: measure its peak from here.
		if r.group.ResetPeak() == nil {
			r.peakAt, r.peakRead = at, false
		}
	}
	r.p.emit(Event{Kind: EventAttemptStarted, TaskID: f.t.id, WorkerPID: r.proc.Pid, Time: f.start})
	r.armDeadline()
}

// peakFor is the peak memory to charge to f as it ends at now: the peak read
// now, or, within peakEvery of the last reading, that reading. A reading
// also raises the peak of every other running attempt.
func (r *runner) peakFor(f *flight, now time.Time) int64 {
	if r.group == nil {
		if r.watch != nil {
			return max(f.peak, r.watch.Peak())
		}
		return 0
	}
	if !r.peakRead || now.Sub(r.peakAt) >= peakEvery {
		if p, err := r.group.Peak(); err == nil {
			r.peakLast, r.peakRead = p, true
			if r.group.ResetPeak() == nil {
				r.peakAt = now
			}
			for _, g := range r.inflight {
				if g.started {
					g.peak = max(g.peak, p)
				}
			}
		}
	}
	return max(f.peak, r.peakLast)
}

// armDeadline sets the timer for the earliest attempt timeout, or for the
// end of EOF patience.
func (r *runner) armDeadline() {
	var at time.Time
	if r.p.cfg.Timeout > 0 {
		for _, f := range r.inflight {
			if f.started && (at.IsZero() || f.start.Add(r.p.cfg.Timeout).Before(at)) {
				at = f.start.Add(r.p.cfg.Timeout)
			}
		}
	}
	if !r.eofAt.IsZero() {
		if e := r.eofAt.Add(eofPatience); at.IsZero() || e.Before(at) {
			at = e
		}
	}
	if r.deadline != nil {
		r.deadline.Stop()
		r.deadline = nil
	}
	if !at.IsZero() {
		r.deadline = time.NewTimer(time.Until(at))
	}
}

func (r *runner) checkDeadlines() {
	now := time.Now()
	if !r.eofAt.IsZero() && !now.Before(r.eofAt.Add(eofPatience)) {
		r.kill(CauseProtocol)
		return
	}
	if r.p.cfg.Timeout > 0 {
		for _, f := range r.inflight {
			if f.started && !now.Before(f.start.Add(r.p.cfg.Timeout)) {
				r.victim = f
				r.kill(CauseTimeout)
				return
			}
		}
	}
	r.armDeadline()
}

// kill ends the current process at once and remembers why.
func (r *runner) kill(c Cause) {
	if r.killed == "" {
		r.killed = c
	}
	r.proc.Kill()
}

// handle processes one event from the current process's result pipe.
func (r *runner) handle(ev procEvent) {
	if ev.err != nil {
		r.readerDone = true
		if r.killed == "" && r.eofAt.IsZero() {
			// The worker closed its result pipe, or wrote garbage. Either way
			// it can no longer be trusted; give it a moment to die by itself
			// so that its exit status can tell more.
			if ev.err != io.EOF {
				r.protocolError(ev.err.Error())
				return
			}
			r.eofAt = time.Now()
			r.armDeadline()
		}
		return
	}
	if r.p.cfg.Protocol == Line {
		for _, line := range ev.lines {
			if r.killed == CauseProtocol {
				return // what follows a protocol error is not trusted
			}
			if len(r.inflight) == 0 {
				r.protocolError("a line on stdout with no task in flight")
				return
			}
			head := r.inflight[0]
			if d := time.Since(head.start); r.lineTime == 0 {
				r.lineTime = max(d, 1)
			} else {
				r.lineTime = max(r.lineTime+(d-r.lineTime)/8, 1)
			}
			r.succeed(head, line)
			if len(r.inflight) > 0 {
				// The next line runs from the moment this one was answered.
				r.startFlight(r.inflight[0], time.Now())
			}
		}
		return
	}
	fr := ev.frame
	switch fr.Kind {
	case protocol.KindReady:
		v, err := protocol.ParseReady(fr.Payload)
		switch {
		case r.ready:
			r.protocolError("a second ready frame")
		case err != nil:
			r.protocolError(err.Error())
		case v != protocol.Version:
			r.protocolError(fmt.Sprintf("worker speaks protocol version %d, supervisor %d", v, protocol.Version))
		default:
			r.ready = true
			r.p.send(report{kind: reportWorkerUp})
		}
	case protocol.KindStart:
		f := r.flightByID(fr.ID)
		if f == nil || f.started {
			r.protocolError(fmt.Sprintf("start frame for task %d, which is not waiting to start", fr.ID))
			return
		}
		r.startFlight(f, time.Now())
	case protocol.KindResult, protocol.KindError:
		f := r.flightByID(fr.ID)
		if f == nil {
			r.protocolError(fmt.Sprintf("%s frame for task %d, which is not in flight", fr.Kind, fr.ID))
			return
		}
		if !f.started {
			r.startFlight(f, time.Now()) // lenient: a worker may skip the start frame
		}
		if fr.Kind == protocol.KindResult {
			r.succeed(f, fr.Payload)
		} else {
			r.endFlight(f, Attempt{Cause: CauseTaskError, ExitCode: -1, Message: string(fr.Payload)}, nil)
		}
	case protocol.KindHeartbeat:
	default:
		r.protocolError(fmt.Sprintf("unexpected %s frame", fr.Kind))
	}
}

func (r *runner) protocolError(msg string) {
	if r.killed == "" {
		// The running attempts get the message through their Attempt.
		for _, f := range r.inflight {
			if f.started {
				r.victim = f
				break
			}
		}
		r.protocolMsg = msg
	}
	r.kill(CauseProtocol)
}

func (r *runner) flightByID(id uint64) *flight {
	for _, f := range r.inflight {
		if f.t.id == id {
			return f
		}
	}
	return nil
}

// succeed ends f with its output and checks whether the worker should be
// recycled.
func (r *runner) succeed(f *flight, output []byte) {
	if r.answered == 0 {
		r.p.send(report{kind: reportWorkerUp})
	}
	r.answered++
	r.endFlight(f, Attempt{ExitCode: -1}, output)
	cfg := &r.p.cfg
	if cfg.MaxTasksPerWorker > 0 && r.answered >= cfg.MaxTasksPerWorker {
		r.retiring = true
	}
	if cfg.MaxRSS > 0 {
		if rss, err := r.memoryInUse(); err == nil && rss > cfg.MaxRSS {
			r.retiring = true
		}
	}
	r.retireIfIdle()
}

// memoryInUse is the current process's memory: its cgroup's usage where it
// has one, otherwise what its process tree alone holds.
func (r *runner) memoryInUse() (int64, error) {
	if r.group != nil {
		return r.group.Usage()
	}
	return memory.TreePrivateMemory(r.proc.Pid)
}

func (r *runner) retireIfIdle() {
	if r.retiring && len(r.inflight) == 0 && r.killed == "" && !r.retired {
		r.retired = true
		r.proc.Retire(r.p.cfg.Grace, r.p.cfg.Grace)
	}
}

// endFlight removes f from the flights and reports its attempt.
func (r *runner) endFlight(f *flight, a Attempt, output []byte) {
	for i, g := range r.inflight {
		if g == f {
			r.inflight = append(r.inflight[:i], r.inflight[i+1:]...)
			break
		}
	}
	a.WorkerPID, a.Start, a.End = r.proc.Pid, f.start, time.Now()
	a.PeakRSS = r.peakFor(f, a.End)
	r.p.send(report{kind: reportAttempt, task: f.t, att: a, output: output})
	r.armDeadline()
}

// reap handles the death of the current process: it collects what the
// process wrote before dying, charges the attempts that were running, and
// requeues the tasks that had not started.
func (r *runner) reap() {
	proc := r.proc
	// What the worker wrote before it died is still in the pipe,
	// unless the reader has already said it reached the end.
	drain := time.NewTimer(linger)
	for open := !r.readerDone; open; {
		select {
		case ev := <-r.events:
			if ev.err != nil {
				open = false
				break
			}
			// Results written before the death still count.
			r.handle(ev)
		case <-drain.C:
			open = false
		}
	}
	drain.Stop()
	close(r.gone)
	close(r.writes)
	proc.CloseIO(linger)
	if r.watch != nil {
		r.watch.Stop()
	}
	if r.deadline != nil {
		r.deadline.Stop()
		r.deadline = nil
	}

	exit := proc.Exit()
	cause := r.killed
	if cause == "" {
		cause = r.classify(exit, r.spawned)
	}
	// A worker the pool retired or cancelled was expected to end.
	expected := r.retired || r.killed == CauseCancelled || r.killed == CausePreempted
	if !expected {
		r.p.count(func(s *Stats) { s.WorkerDeaths++ })
	}
	r.p.emit(Event{Kind: EventWorkerExited, WorkerPID: proc.Pid, Time: exit.Time})

	charged := false
	// The loop puts each requeued task at the head of its queue: requeue
	// the newest first, so that they run again in the order they came.
	var requeue []*task
	defer func() {
		for i := len(requeue) - 1; i >= 0; i-- {
			r.p.send(report{kind: reportRequeue, task: requeue[i]})
		}
	}()
	for _, f := range r.inflight {
		switch {
		case !f.started, r.victim != nil && f != r.victim && (cause == CauseTimeout || cause == CauseProtocol):
			// Never started (for a line worker: sent behind the line it
			// was running), or an innocent bystander of another task's
			// timeout or protocol error: back to the queue, nothing charged.
			requeue = append(requeue, f.t)
			continue
		case cause == ExitCause(0) && r.p.cfg.Protocol == Line && !f.t.exitZeroPass:
			// A line worker that exits 0 most likely did so between tasks,
			// before reading this one: the line protocol cannot tell. Give
			// the task one uncharged run elsewhere; a second time, charge it.
			f.t.exitZeroPass = true
			requeue = append(requeue, f.t)
			continue
		}
		end := exit.Time
		if end.Before(f.start) {
			end = f.start // its start frame was read from the pipe after the death
		}
		a := Attempt{Cause: cause, WorkerPID: proc.Pid, Start: f.start, End: end, ExitCode: exit.Code, PeakRSS: exit.MaxRSS}
		if exit.Signal != 0 {
			a.Signal = SignalName(exit.Signal)
		}
		if r.group != nil {
			if peak, err := r.group.Peak(); err == nil && peak > 0 {
				a.PeakRSS = max(peak, f.peak)
			}
		} else if r.watch != nil && r.watch.Peak() > 0 {
			a.PeakRSS = max(r.watch.Peak(), f.peak)
		}
		a.Message = r.deathMessage(cause, proc, a.PeakRSS)
		r.p.send(report{kind: reportAttempt, task: f.t, att: a})
		charged = true
	}
	// A worker that died before doing any work, for a reason of its own,
	// counts towards the start-up failures that abort the pool.
	if !expected && r.killed == "" && r.answered == 0 && (r.p.cfg.Protocol == Framed && !r.ready || !charged || startupCause(cause)) {
		r.p.send(report{kind: reportStartupFailure, charged: charged, start: &StartError{
			Command: r.p.cfg.Command, Cause: cause, Stderr: proc.StderrTail()}})
	}
	r.proc, r.inflight, r.protocolMsg, r.retired, r.pending, r.watch = nil, nil, "", false, nil, nil
	// The new worker's first task starts a new peak interval.
	r.peakAt, r.peakRead = time.Time{}, false
}

// startupCause reports whether a worker dying of c during its very first task
// looks like a broken command rather than the task's doing.
func startupCause(c Cause) bool {
	switch c {
	case CauseOOM, CauseMemoryLimit, CauseTimeout, CauseCancelled, CausePreempted:
		return false
	}
	return true
}

func (r *runner) deathMessage(c Cause, proc *worker.Process, peak int64) string {
	switch c {
	case CausePreempted:
		return "stopped by the memory governor to save memory (not charged)"
	case CauseOOM:
		return joinMessage(r.oomMessage(peak), lastLines(proc.StderrTail(), 3))
	case CauseProtocol:
		if r.protocolMsg != "" {
			return r.protocolMsg
		}
		return "the worker closed its result pipe"
	case CauseTimeout:
		return "killed after " + r.p.cfg.Timeout.String()
	case CauseMemoryLimit:
		return "over the memory limit of " + strconv.FormatInt(r.p.cfg.MemLimit, 10) + " bytes"
	}
	return lastLines(proc.StderrTail(), 3)
}

// oomMessage says whether an OOM kill came from the worker's own cgroup
// limit or from memory running out around it (the host, or an enclosing
// cgroup such as a container's).
func (r *runner) oomMessage(peak int64) string {
	limit := r.limit()
	if r.group == nil {
		return "killed by the OOM killer (from the kernel log)"
	}
	if limit > 0 && peak >= limit-limit/50 {
		return "killed by the OOM killer at the worker's limit of " + sizeText(limit)
	}
	return "killed by the OOM killer when memory ran out outside the worker's limit (host or enclosing cgroup)"
}

// joinMessage joins the parts that are not empty with "; ".
func joinMessage(a, b string) string {
	if a == "" || b == "" {
		return a + b
	}
	return a + "; " + b
}

// shim readies a worker that has no cgroup of its own before its code runs:
// its oom_score_adj and, backing Config.MemLimit, its data size limit,
// which what it forks then inherits.
func (r *runner) shim() memory.Shim {
	if r.p.cfg.NoDataLimit {
		return memory.Shim{}
	}
	return memory.Shim{DataLimit: memory.DataLimitFor(r.p.cfg.MemLimit)}
}

// startWatch starts sampling proc's private memory where it has no cgroup
// of its own, for its peaks and Config.MemLimit.
func (r *runner) startWatch(proc *worker.Process) {
	if r.group == nil {
		r.watch = memory.StartWatch(proc.Pid, r.p.cfg.MemLimit)
		r.p.gov.setWatch(r.slot, r.watch) // the governor measures the worker by it
	}
}

// overLimit is closed once the current process's private memory went over
// Config.MemLimit, where it has no cgroup of its own and is not being
// killed already; otherwise it is nil.
func (r *runner) overLimit() <-chan struct{} {
	if r.watch == nil || r.killed != "" {
		return nil
	}
	return r.watch.Over()
}

// markOOM starts the window in which the enclosing cgroup's OOM witness
// judges the current process's death, where workers share that cgroup.
func (r *runner) markOOM() {
	if w := r.p.mem.OOMWitness(); w != nil {
		r.oomMark = w.Snapshot()
	}
}

// classify names the cause of a death the runner did not cause itself.
func (r *runner) classify(exit worker.Exit, started time.Time) Cause {
	// The OOM killer may have taken a process inside the worker (sh -c
	// 'prog'), after which the worker itself exits with 137: the group's
	// counter tells, whatever the worker's own status.
	// The counter is raised for every OOM kill of a process in the group,
	// by its own limit or for want of memory elsewhere, before the signal is
	// sent; when it can be read, it is the whole answer, and the kernel log
	// need not be waited for.
	counted := false
	if r.group != nil {
		if n, err := r.group.OOMKills(); err == nil {
			counted = true
			if n > r.oomBase {
				r.oomBase = n
				return CauseOOM
			}
		}
	}
	// Where workers share the supervisor's cgroup, its counter confirms
	// a kill only when its rise is accounted for by exactly the deaths
	// that may be kills (memory.OOMWitness). A worker the pool retired may
	// have been SIGKILLed by the pool itself, which is never an OOM kill.
	if !counted && !r.retired && memory.MaybeOOMKilled(exit.Signal, exit.Code) {
		if w := r.p.mem.OOMWitness(); w != nil && w.Confirm(r.oomMark) {
			return CauseOOM
		}
	}
	// Without a cgroup, the kernel refuses a worker memory past its data
	// size limit, and the worker fails in its own way: say memory-limit
	// when that failure was the refusal.
	if r.group == nil && r.watch != nil && r.shim().DataLimit > 0 && memory.RefusedMemory(memory.Failure{
		Signal: exit.Signal, ExitCode: exit.Code, Stderr: r.proc.StderrTail(),
		Private: r.watch.Last(), Limit: r.p.cfg.MemLimit,
	}) {
		return CauseMemoryLimit
	}
	if exit.Signal == 0 {
		return ExitCause(exit.Code)
	}
	if !counted && exit.Signal == syscall.SIGKILL && r.p.oomLog != nil && r.p.oomLog.KilledSince(r.proc.Pid, started, oomLogWait) {
		return CauseOOM
	}
	return SignalCause(exit.Signal)
}

// readResults reads the worker's result pipe and sends what it finds to
// events, ending with one event whose err is set. It returns early once gone
// is closed.
func readResults(proto Protocol, rd io.Reader, events chan<- procEvent, gone <-chan struct{}) {
	send := func(ev procEvent) bool {
		select {
		case events <- ev:
			return true
		case <-gone:
			return false
		}
	}
	if proto == Framed {
		fr := protocol.NewReader(rd, protocol.DefaultMaxPayload)
		for {
			f, err := fr.ReadFrame()
			if err != nil {
				send(procEvent{err: err})
				return
			}
			if !send(procEvent{frame: f}) {
				return
			}
		}
	}
	br := bufio.NewReaderSize(rd, 64<<10)
	for {
		line, err := readLine(br)
		if err != nil {
			send(procEvent{err: err})
			return
		}
		// Hand over, with it, the whole lines already buffered.
		lines := [][]byte{line}
		for len(lines) < maxLinesPerEvent {
			buf, _ := br.Peek(br.Buffered())
			if bytes.IndexByte(buf, '\n') < 0 {
				break
			}
			if line, err = readLine(br); err != nil {
				break // cannot happen: a whole line is buffered
			}
			lines = append(lines, line)
		}
		if !send(procEvent{lines: lines}) {
			return
		}
	}
}

// readLine returns the next line without its newline, of any length. A last
// line without a newline is not a result: the worker died while writing it.
func readLine(br *bufio.Reader) ([]byte, error) {
	frag, err := br.ReadSlice('\n')
	if err == nil {
		return append([]byte(nil), frag[:len(frag)-1]...), nil
	}
	if err != bufio.ErrBufferFull {
		if err == io.ErrUnexpectedEOF {
			err = io.EOF
		}
		return nil, err
	}
	line := append([]byte(nil), frag...)
	for {
		frag, err = br.ReadSlice('\n')
		line = append(line, frag...)
		if err == nil {
			return line[:len(line)-1], nil
		}
		if err != bufio.ErrBufferFull {
			return nil, io.EOF
		}
	}
}

// writeTasks writes each message to the worker's task pipe, batching what is
// queued into one write. It returns when msgs is closed; after a write error
// it keeps draining msgs so that the runner never blocks on it.
func writeTasks(w io.WriteCloser, msgs <-chan []byte) {
	bw := bufio.NewWriterSize(w, 64<<10)
	var failed bool
	for m := range msgs {
		if failed {
			continue
		}
		if _, err := bw.Write(m); err != nil {
			failed = true
			continue
		}
		if len(msgs) == 0 {
			if err := bw.Flush(); err != nil {
				failed = true
			}
		}
	}
}

// appendTask appends a task frame to buf, ready for the pipe.
func appendTask(buf []byte, id uint64, payload []byte) []byte {
	b := frameBuffer(buf)
	w := protocol.NewWriter(&b)
	_ = w.WriteFrame(protocol.Frame{Kind: protocol.KindTask, ID: id, Payload: payload})
	_ = w.Flush()
	return b
}

// frameBuffer collects one encoded frame.
type frameBuffer []byte

func (b *frameBuffer) Write(p []byte) (int, error) {
	*b = append(*b, p...)
	return len(p), nil
}
