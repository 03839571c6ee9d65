package pool

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
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
	// rssPollEvery is the RSS polling period where cgroups are unavailable.
	rssPollEvery = 100 * time.Millisecond
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
	// preempt carries the ids of tasks the memory governor stops. It is
	// buffered; an id that is not running on the slot is ignored.
	preempt chan uint64

	proc       *worker.Process
	events     chan procEvent // from the current process's reader
	writes     chan []byte    // to the current process's writer; nil for one-shot
	writeErr   chan error     // from the current process's writer: its first write error
	begin      chan struct{}  // closed when the reader may start reading results
	begun      bool           // begin is closed
	gone       chan struct{}  // closed when the runner abandons the current process
	pipe       *taskPipe      // the current process's task pipe, counting what was written
	inflight   []*flight      // sent to the current process, oldest first
	ready      bool           // the framed worker sent ready
	answered   int            // tasks the current process finished
	retiring   bool           // no more tasks for this process; end it when idle
	killed     Cause          // why the runner killed the current process, or ""
	victim     *flight        // the flight that timed out, if any
	eofAt      time.Time      // when the result pipe reached EOF
	brokenAt   time.Time      // when a write to the task pipe failed
	brokenErr  error          // how it failed
	readerDone bool           // the result reader sent its last event
	oomBase    uint64         // the group's oom_kill count when this process or attempt began
	deadline   *time.Timer    // earliest timeout, start-up deadline or patience
	probe      *time.Timer    // line protocol: the next look at the worker (start gate or stall)
	killMsg    string         // what the worker did wrong, when the runner killed it for it
	retired    bool           // the runner told the current process to end
	spawned    time.Time      // when the current process started
	freeAt     time.Time      // framed: when the current process last had no task running
	startBy    startDeadline  // framed: when the current process must be ready
	pending    []byte         // tasks encoded but not yet handed to the writer
	line       lineState      // line protocol: the current process's checks
	lineTime   time.Duration  // line protocol: recent time per line, a moving average; 0 before the first

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
	sent    time.Time // when it was handed to the writer
	peak    int64     // the highest peak reading taken while it ran
	// off and end bound the task's line in the bytes written to a line
	// worker's stdin: the worker has read the line when it has read end.
	off, end int64
	// unstarted says that a framed worker never sent the start frame of
	// this flight, which was timed from when it was handed over.
	unstarted bool
}

// procEvent is what a reader goroutine saw on a worker's result pipe.
type procEvent struct {
	lines [][]byte       // line protocol: result lines, without their newlines
	frame protocol.Frame // framed protocol
	err   error          // io.EOF, or what was wrong; the reader's last event
	// consumed is, for lines, no less than how much of its stdin the
	// worker had read when it wrote them (see taskPipe.readAtMost).
	consumed int64
}

func (r *runner) run() {
	defer r.p.runners.Done()
	if r.p.mem.Mode() != memory.ModeRSSPolling {
		g, err := r.p.mem.NewGroup("w"+strconv.Itoa(r.slot), r.limit())
		if err != nil {
			r.p.abortFor(0, fmt.Errorf("pool: creating a cgroup for worker %d: %w", r.slot, err))
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
	var poll <-chan time.Time
	if cfg.MemLimit > 0 && r.group == nil {
		t := time.NewTicker(rssPollEvery)
		defer t.Stop()
		poll = t.C
	}
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
		var deadlineC, probeC <-chan time.Time
		if r.deadline != nil {
			deadlineC = r.deadline.C
		}
		if r.probe != nil {
			probeC = r.probe.C
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
		case <-probeC:
			r.probe = nil
			r.look(time.Now())
		case err := <-r.writeErr:
			r.pipeBroken(err)
		case id := <-r.preempt:
			for _, f := range r.inflight {
				// A line sent to a worker is in its stdin and is in the way
				// of the memory the worker holds: stop the worker for it too.
				if f.t.id == id && (f.started || r.p.cfg.Protocol == Line) {
					r.kill(CausePreempted)
					break
				}
			}
		case <-poll:
			if rss, err := memory.TreeRSS(r.proc.Pid); err == nil && rss > cfg.MemLimit {
				r.kill(CauseMemoryLimit)
			}
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
	if cfg.Protocol == Line && (!r.line.gateOpen || len(r.inflight) >= r.lineDepth()) {
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
	}
	proc, err := worker.Start(spec)
	if err != nil {
		r.p.send(report{kind: reportStartupFailure, start: &StartError{Command: cfg.Command, Err: err}})
		return false
	}
	r.p.count(func(s *Stats) { s.WorkersStarted++ })
	r.p.emit(Event{Kind: EventWorkerStarted, WorkerPID: proc.Pid})
	r.proc, r.ready, r.answered, r.retiring, r.killed, r.victim = proc, false, 0, false, "", nil
	r.spawned = time.Now()
	r.freeAt = r.spawned
	r.eofAt, r.brokenAt, r.readerDone = time.Time{}, time.Time{}, false
	r.events = make(chan procEvent, 64)
	r.writes = make(chan []byte, cfg.Pipeline+1)
	r.writeErr = make(chan error, 1)
	r.gone = make(chan struct{})
	r.begin, r.begun = make(chan struct{}), false
	r.pipe = &taskPipe{f: proc.Tasks}
	rd := resultReader{proto: cfg.Protocol, r: proc.Results, events: r.events, gone: r.gone, begin: r.begin,
		maxLine: cfg.MaxLine, pipe: r.pipe}
	go rd.run()
	go writeTasks(r.pipe, r.writes, r.writeErr)
	if cfg.Protocol == Line {
		// The first line waits until the worker is seen waiting for it.
		r.line = lineState{gateUntil: r.spawned.Add(cfg.StartTimeout), gateLook: gateFirstLook}
		r.armProbe()
	} else {
		r.startReader()
		r.startBy = startDeadline{at: r.spawned.Add(cfg.StartTimeout)}
		r.armDeadline()
	}
	return true
}

// startReader lets the current process's result reader start reading.
func (r *runner) startReader() {
	if !r.begun {
		r.begun = true
		close(r.begin)
	}
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
	f := &flight{t: t, sent: time.Now()}
	r.inflight = append(r.inflight, f)
	if r.p.cfg.Protocol == Line {
		r.pending = append(append(r.pending, t.t.Input...), '\n')
		f.off = r.line.sent
		r.line.sent += int64(len(t.t.Input)) + 1
		f.end = r.line.sent
		r.line.progress = f.sent
		r.armProbe()
		// A line worker answers in order, and the line protocol cannot say
		// when a task starts: the oldest line in flight is the one running,
		// from when it was sent or the previous line was answered.
		if len(r.inflight) == 1 {
			r.startFlight(f, f.sent)
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
	if r.p.cfg.Protocol == Framed && r.p.cfg.Timeout > 0 {
		r.armDeadline() // a task the worker never starts is timed from now
	}
}

// startFlight marks f running since at.
func (r *runner) startFlight(f *flight, at time.Time) {
	f.started, f.start = true, at
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

// armDeadline sets the timer for the earliest of: an attempt's timeout, the
// framed worker's start-up deadline, and the end of the patience given to a
// worker whose pipe closed or broke.
func (r *runner) armDeadline() {
	var at time.Time
	earliest := func(t time.Time) {
		if !t.IsZero() && (at.IsZero() || t.Before(at)) {
			at = t
		}
	}
	if r.p.cfg.Timeout > 0 {
		for _, f := range r.inflight {
			if f.started {
				earliest(f.start.Add(r.p.cfg.Timeout))
			}
		}
		if f := r.waitingToStart(); f != nil {
			earliest(r.waitingSince(f).Add(r.p.cfg.Timeout))
		}
	}
	if r.p.cfg.Protocol == Framed && !r.ready && r.proc != nil {
		earliest(r.startBy.at)
	}
	for _, t := range []time.Time{r.eofAt, r.brokenAt} {
		if !t.IsZero() {
			earliest(t.Add(eofPatience))
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

// startDeadline is when a framed worker must have sent its ready frame.
type startDeadline struct {
	at    time.Time
	cpu   uint64 // the worker's CPU time when at was last set; 0 at first
	moved int    // how many times at moved on because the worker was busy
}

// maxStartMoves bounds how often the start-up deadline moves on for a
// worker that keeps working: at most (1+maxStartMoves)×StartTimeout.
const maxStartMoves = 9

// extend moves the deadline on by timeout when the worker is busy starting
// (its process tree ran, or used CPU time, since the deadline was set), a
// slow import or model load rather than a hang. It reports whether it did.
func (d *startDeadline) extend(proc *worker.Process, now time.Time, timeout time.Duration) bool {
	a, err := proc.Observe()
	if err != nil || d.moved >= maxStartMoves || a.Running == 0 && a.CPU == d.cpu {
		return false
	}
	d.at, d.cpu, d.moved = now.Add(timeout), a.CPU, d.moved+1
	return true
}

// waitingToStart returns the framed flight that the worker should be
// running now but has not started (none is running, and it is the oldest),
// or nil.
func (r *runner) waitingToStart() *flight {
	if r.p.cfg.Protocol != Framed || len(r.inflight) == 0 {
		return nil
	}
	for _, f := range r.inflight {
		if f.started {
			return nil
		}
	}
	return r.inflight[0]
}

// waitingSince is when f, waiting to start, could have started: when it was
// handed over, or when the worker last finished a task, whichever is later.
func (r *runner) waitingSince(f *flight) time.Time {
	if f.sent.After(r.freeAt) {
		return f.sent
	}
	return r.freeAt
}

func (r *runner) checkDeadlines() {
	now := time.Now()
	cfg := &r.p.cfg
	switch {
	case !r.eofAt.IsZero() && !now.Before(r.eofAt.Add(eofPatience)):
		r.kill(CauseProtocol)
		return
	case !r.brokenAt.IsZero() && !now.Before(r.brokenAt.Add(eofPatience)):
		r.brokenPipe()
		return
	case cfg.Protocol == Framed && !r.ready && !now.Before(r.startBy.at):
		if r.startBy.extend(r.proc, now, cfg.StartTimeout) {
			break // still busy starting
		}
		r.killMsg = "it sent no ready frame within " + cfg.StartTimeout.String()
		if r.startBy.moved > 0 {
			r.killMsg = fmt.Sprintf("it sent no ready frame within %v, and stopped working",
				now.Sub(r.spawned).Round(time.Millisecond))
		}
		r.kill(CauseTimeout)
		return
	}
	if cfg.Timeout > 0 {
		for _, f := range r.inflight {
			if f.started && !now.Before(f.start.Add(cfg.Timeout)) {
				r.victim = f
				r.kill(CauseTimeout)
				return
			}
		}
		if f := r.waitingToStart(); f != nil && !now.Before(r.waitingSince(f).Add(cfg.Timeout)) {
			// The worker took the task and never started it: its time
			// runs from when it could have.
			f.unstarted = true
			r.startFlight(f, r.waitingSince(f))
			r.victim = f
			r.kill(CauseTimeout)
			return
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
		r.handleLines(ev)
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
		r.killMsg = msg
	}
	r.kill(CauseProtocol)
}

// pipeBroken handles a failed write to the task pipe. A worker that exits
// makes writes fail too; it is given a moment to be reaped, so that its exit
// status says what happened, before brokenPipe blames it.
func (r *runner) pipeBroken(err error) {
	if r.killed != "" || r.retired || !r.brokenAt.IsZero() {
		return // the runner closed the pipe itself, or already knows
	}
	r.brokenAt, r.brokenErr = time.Now(), err
	r.armDeadline()
}

// brokenPipe kills a worker that is alive but can no longer take tasks.
// The task it was running is charged (for a line worker, only if it read
// some of its line); the others go back to the queue.
func (r *runner) brokenPipe() {
	if r.p.cfg.Protocol == Line && !r.line.gateOpen {
		r.gateFault()
		return
	}
	what := "its task pipe"
	if r.p.cfg.Protocol == Line {
		what = "its stdin"
	}
	r.protocolError(fmt.Sprintf("the worker closed %s with %d of the tasks sent to it unanswered (%v)",
		what, len(r.inflight), r.brokenErr))
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
// has one, otherwise the resident memory of its process tree.
func (r *runner) memoryInUse() (int64, error) {
	if r.group != nil {
		return r.group.Usage()
	}
	return memory.TreeRSS(r.proc.Pid)
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
	if r.p.cfg.Protocol == Framed && !slices.ContainsFunc(r.inflight, func(g *flight) bool { return g.started }) {
		r.freeAt = a.End // the next task's time runs from here if it is not started
	}
	r.p.send(report{kind: reportAttempt, task: f.t, att: a, output: output})
	r.armDeadline()
}

// reap handles the death of the current process: it collects what the
// process wrote before dying, charges the attempts that were running, and
// requeues the tasks that had not started.
func (r *runner) reap() {
	proc := r.proc
	r.startReader() // what a worker wrote before its first line is read, and blamed
	r.drainResults()
	read := r.pipe.readAtLeast() // before the pipe is closed
	close(r.gone)
	close(r.writes)
	proc.CloseIO(linger)
	r.stopTimers()

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
	for _, f := range r.inflight {
		switch r.fate(f, cause, read) {
		case fateRequeue:
			requeue = append(requeue, f.t)
		case fatePass:
			f.t.exitZeroPass = true
			requeue = append(requeue, f.t)
		default:
			r.p.send(report{kind: reportAttempt, task: f.t, att: r.deathAttempt(f, exit, cause)})
			charged = true
		}
	}
	// A worker that died before it took any task, or that never answered
	// the one it took and held (a stall), cannot do the work: such failures
	// in a row abort the pool. A death during a task is that task's.
	if !expected && r.answered == 0 && (!charged || r.line.stalled) {
		r.p.send(report{kind: reportStartupFailure, charged: charged, start: r.startError(cause, proc)})
	}
	for i := len(requeue) - 1; i >= 0; i-- {
		r.p.send(report{kind: reportRequeue, task: requeue[i]})
	}
	r.proc, r.inflight, r.killMsg, r.retired, r.pending = nil, nil, "", false, nil
	// The new worker's first task starts a new peak interval.
	r.peakAt, r.peakRead = time.Time{}, false
}

// drainResults hands on what the dead worker wrote before it died, which is
// still in the pipe unless the reader has already said it reached the end.
func (r *runner) drainResults() {
	drain := time.NewTimer(linger)
	defer drain.Stop()
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
}

// stopTimers stops the current process's deadline and probe.
func (r *runner) stopTimers() {
	for _, t := range []**time.Timer{&r.deadline, &r.probe} {
		if *t != nil {
			(*t).Stop()
			*t = nil
		}
	}
}

// flightFate is what becomes of a flight whose worker died.
type flightFate int

const (
	fateCharge  flightFate = iota // an attempt is charged with the death
	fateRequeue                   // back to the queue, nothing charged
	fatePass                      // back to the queue once, uncharged (exitZeroPass)
)

// fate decides what becomes of flight f when its worker died of cause,
// having read at least read bytes of its task pipe (-1: unknown).
func (r *runner) fate(f *flight, cause Cause, read int64) flightFate {
	line := r.p.cfg.Protocol == Line
	switch {
	case !f.started:
		// Never started (for a line worker: sent behind the line it was
		// running).
		return fateRequeue
	case r.victim != nil && f != r.victim && (cause == CauseTimeout || cause == CauseProtocol):
		// An innocent bystander of another task's timeout or protocol error.
		return fateRequeue
	case line && read >= 0 && read <= f.off && cause != CausePreempted && cause != CauseCancelled:
		// The worker never read a byte of the line: whatever happened to
		// it, the line had no part in it.
		return fateRequeue
	case cause == ExitCause(0) && line && !f.t.exitZeroPass:
		// A line worker that exits 0 after reading the line most likely
		// read it ahead and did so between tasks: the line protocol cannot
		// tell. Give the task one uncharged run elsewhere; a second time,
		// charge it.
		return fatePass
	}
	return fateCharge
}

// deathAttempt is the attempt of flight f, ended by its worker's death.
func (r *runner) deathAttempt(f *flight, exit worker.Exit, cause Cause) Attempt {
	end := exit.Time
	if end.Before(f.start) {
		end = f.start // its start frame was read from the pipe after the death
	}
	a := Attempt{Cause: cause, WorkerPID: r.proc.Pid, Start: f.start, End: end, ExitCode: exit.Code, PeakRSS: exit.MaxRSS}
	if exit.Signal != 0 {
		a.Signal = SignalName(exit.Signal)
	}
	if r.group != nil {
		if peak, err := r.group.Peak(); err == nil && peak > 0 {
			a.PeakRSS = max(peak, f.peak)
		}
	}
	a.Message = r.deathMessage(cause, r.proc, a.PeakRSS)
	if cause == CauseTimeout && f.unstarted {
		a.Message += ", handed over but never started (no start frame)"
	}
	return a
}

// startError describes a worker that failed before it did any work.
func (r *runner) startError(cause Cause, proc *worker.Process) *StartError {
	se := &StartError{Command: r.p.cfg.Command, Cause: cause, Stderr: proc.StderrTail()}
	switch {
	case r.killMsg != "":
		se.Err = errors.New(r.killMsg)
	case cause == CauseTimeout:
		se.Err = fmt.Errorf("it had not read its first line after %v", r.p.cfg.Timeout)
	}
	return se
}

func (r *runner) deathMessage(c Cause, proc *worker.Process, peak int64) string {
	switch c {
	case CausePreempted:
		return "stopped by the memory governor to save memory (not charged)"
	case CauseOOM:
		return joinMessage(r.oomMessage(peak), lastLines(proc.StderrTail(), 3))
	case CauseProtocol:
		if r.killMsg != "" {
			return r.killMsg
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
	if exit.Signal == 0 {
		return ExitCause(exit.Code)
	}
	if !counted && exit.Signal == syscall.SIGKILL && r.p.oomLog != nil && r.p.oomLog.KilledSince(r.proc.Pid, started, oomLogWait) {
		return CauseOOM
	}
	return SignalCause(exit.Signal)
}

// resultReader reads a worker's result pipe and sends what it finds to
// events, ending with one event whose err is set. It returns early once gone
// is closed.
type resultReader struct {
	proto   Protocol
	r       io.Reader
	events  chan<- procEvent
	gone    <-chan struct{}
	begin   <-chan struct{} // it reads nothing before begin is closed
	maxLine int64           // line protocol: the longest line
	pipe    *taskPipe       // line protocol: to tell how much of its stdin the worker has read
}

// send hands ev to the runner; it reports false when the runner is gone.
func (rr *resultReader) send(ev procEvent) bool {
	select {
	case rr.events <- ev:
		return true
	case <-rr.gone:
		return false
	}
}

func (rr *resultReader) run() {
	select {
	case <-rr.begin:
	case <-rr.gone:
		return
	}
	if rr.proto == Framed {
		fr := protocol.NewReader(rr.r, protocol.DefaultMaxPayload)
		for {
			f, err := fr.ReadFrame()
			if err != nil {
				rr.send(procEvent{err: err})
				return
			}
			if !rr.send(procEvent{frame: f}) {
				return
			}
		}
	}
	// After each read, note how much of its stdin the worker had read at
	// most: every line read so far was written before that.
	sr := &sampledReader{r: rr.r, sample: rr.pipe.readAtMost}
	br := bufio.NewReaderSize(sr, 64<<10)
	for {
		line, err := readLine(br, rr.maxLine)
		if err != nil {
			rr.send(procEvent{err: err})
			return
		}
		// Hand over, with it, the whole lines already buffered.
		lines := [][]byte{line}
		for len(lines) < maxLinesPerEvent && err == nil {
			buf, _ := br.Peek(br.Buffered())
			if bytes.IndexByte(buf, '\n') < 0 {
				break
			}
			if line, err = readLine(br, rr.maxLine); err == nil {
				lines = append(lines, line)
			}
		}
		if !rr.send(procEvent{lines: lines, consumed: sr.last}) {
			return
		}
		if err != nil { // a line over the bound
			rr.send(procEvent{err: err})
			return
		}
	}
}

// sampledReader calls sample after every read that returned data, and
// keeps the last value.
type sampledReader struct {
	r      io.Reader
	sample func() int64
	last   int64
}

func (s *sampledReader) Read(p []byte) (int, error) {
	n, err := s.r.Read(p)
	if n > 0 {
		s.last = s.sample()
	}
	return n, err
}

// LineTooLongError is the protocol error of a line worker whose answer line
// is longer than Config.MaxLine.
type LineTooLongError struct {
	// Max is the bound, in bytes without the newline.
	Max int64
}

func (e *LineTooLongError) Error() string {
	return fmt.Sprintf("the worker wrote an answer line longer than the limit of %s", sizeText(e.Max))
}

// readLine returns the next line without its newline. A line longer than
// max bytes is an error as soon as max+1 bytes of it have been read: no more
// is buffered. A last line without a newline is not a result: the worker
// died while writing it.
func readLine(br *bufio.Reader, max int64) ([]byte, error) {
	frag, err := br.ReadSlice('\n')
	if err == nil {
		if int64(len(frag))-1 > max {
			return nil, &LineTooLongError{Max: max}
		}
		return append([]byte(nil), frag[:len(frag)-1]...), nil
	}
	if err != bufio.ErrBufferFull {
		if err == io.ErrUnexpectedEOF {
			err = io.EOF
		}
		return nil, err
	}
	var line []byte
	for {
		// frag holds no newline, or ends with it when err is nil.
		n := int64(len(line) + len(frag))
		if err == nil {
			n-- // the newline
		}
		if n > max {
			return nil, &LineTooLongError{Max: max}
		}
		line = append(line, frag...)
		if err == nil {
			return line[:len(line)-1], nil
		}
		if err != bufio.ErrBufferFull {
			return nil, io.EOF
		}
		frag, err = br.ReadSlice('\n')
	}
}

// writeTasks writes each message to the worker's task pipe, batching what is
// queued into one write. It returns when msgs is closed. Its first write
// error goes to errc (which must have room for it); after that it keeps
// draining msgs so that the runner never blocks on it.
func writeTasks(w io.Writer, msgs <-chan []byte, errc chan<- error) {
	bw := bufio.NewWriterSize(w, 64<<10)
	var failed bool
	fail := func(err error) {
		failed = true
		errc <- err
	}
	for m := range msgs {
		if failed {
			continue
		}
		if _, err := bw.Write(m); err != nil {
			fail(err)
			continue
		}
		if len(msgs) == 0 {
			if err := bw.Flush(); err != nil {
				fail(err)
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
