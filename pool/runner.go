package pool

import (
	"fmt"
	"io"
	"os"
	"slices"
	"strconv"
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
	preempt <-chan uint64

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
	oomMark    memory.OOMMark // the enclosing cgroup's OOM witness when this process or attempt began
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
	if r.p.cfg.Protocol == Framed && r.timed() {
		r.armDeadline() // a task the worker never starts is timed from now
	}
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
	for _, f := range r.inflight {
		if limit := f.t.timeout(&r.p.cfg); limit > 0 && f.started {
			earliest(f.start.Add(limit))
		}
	}
	if f := r.waitingToStart(); f != nil {
		if limit := f.t.timeout(&r.p.cfg); limit > 0 {
			earliest(r.waitingSince(f).Add(limit))
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
	for _, f := range r.inflight {
		if limit := f.t.timeout(cfg); limit > 0 && f.started && !now.Before(f.start.Add(limit)) {
			r.victim = f
			r.kill(CauseTimeout)
			return
		}
	}
	if f := r.waitingToStart(); f != nil {
		if limit := f.t.timeout(cfg); limit > 0 && !now.Before(r.waitingSince(f).Add(limit)) {
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

// timed reports whether an attempt of this runner may time out: the pool
// has a timeout, or a task in flight has its own.
func (r *runner) timed() bool {
	if r.p.cfg.Timeout > 0 {
		return true
	}
	for _, f := range r.inflight {
		if f.t.t.Timeout > 0 {
			return true
		}
	}
	return false
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
	if r.p.cfg.Protocol == Framed && !slices.ContainsFunc(r.inflight, func(g *flight) bool { return g.started }) {
		r.freeAt = a.End // the next task's time runs from here if it is not started
	}
	r.p.send(report{kind: reportAttempt, task: f.t, att: a, output: output})
	r.armDeadline()
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
