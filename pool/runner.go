package pool

import (
	"bytes"
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/safepool/safepool/internal/memory"
	"github.com/safepool/safepool/internal/worker"
)

// runner owns one worker slot: its cgroup, the worker.Session of the
// process in it, and dispatch: it takes tasks from the loop, hands them to
// the current session, and reports to the loop what the session says.
// Everything here is touched only by the runner's own goroutine.
type runner struct {
	p     *Pool
	slot  int
	group *memory.Group // the group the slot's next process starts in; nil without cgroup enforcement
	// spare is a one-shot slot's second cgroup, nil for other protocols
	// and without cgroup enforcement. The slot's processes use group and
	// spare in turn, so that the next job can start while the previous
	// one's group is still being read and emptied (oneshot.go).
	spare *memory.Group
	// preempt carries the ids of tasks the memory governor stops (see
	// Pool.preempt). An id that is not running on the slot is ignored.
	preempt <-chan uint64
	// s is the session of the process in the slot; nil between processes.
	s *worker.Session
	// token marks a persistent worker's processes apart from the pool's
	// others where no cgroup of its own holds them (leftovers); "" otherwise.
	token string
	// itemTime carries a persistent worker's recent time per item from
	// one process of the slot to the next.
	itemTime time.Duration
	// idle says that the runner is counted in Pool.idle: its worker is
	// ready and holds no task, and it takes tasks from Pool.dispatch.
	idle bool
	// failedStarts counts the slot's persistent workers in a row that
	// failed before doing any work; it sets the wait before the next.
	failedStarts int
	// replacing says that the slot has started a worker before: the next
	// one replaces it, and waits for work (waitForWork).
	replacing bool
	// holdKick tells the runner that Pool.Pause or Pool.Resume changed
	// the state the pool wants (Pool.holdWant); paused is the state the
	// slot is in: its process stopped, and no task or process started.
	// holdAck carries the state the runner put its slot in, for Pause and
	// Resume to wait on. Both channels hold one value.
	holdKick chan struct{}
	holdAck  chan bool
	paused   bool
	// env is the environment of the slot's processes: Config.Env (or the
	// supervisor's) with SlotEnv set to the slot's number; made once, in run.
	env []string
}

// slotEnv returns env (nil: the supervisor's environment) with SlotEnv set
// to slot, and no other SlotEnv. No name is in it twice: where env repeats
// one, its last value stays, as exec.Cmd keeps it, so that each process's
// start can pass the slice as it is (worker.Spec.EnvUnique) rather than
// de-duplicate a copy of it.
func slotEnv(env []string, slot int) []string {
	if env == nil {
		env = os.Environ()
	}
	out := make([]string, 0, len(env)+1)
	seen := make(map[string]bool, len(env))
	// From the end, so that a name's last value is the one kept.
	for i := len(env) - 1; i >= 0; i-- {
		kv := env[i]
		name, _, ok := strings.Cut(kv, "=")
		if !ok {
			if kv != "" {
				out = append(out, kv) // not NAME=VALUE: left as it is, as exec.Cmd leaves it
			}
			continue
		}
		if name == SlotEnv || seen[name] {
			continue
		}
		seen[name] = true
		out = append(out, kv)
	}
	slices.Reverse(out)
	return append(out, SlotEnv+"="+strconv.Itoa(slot))
}

// syncHold puts the slot in the state the pool wants, pausing or
// continuing its process s (nil between processes), and says so on
// holdAck. A runner busy elsewhere when it was asked does it once it
// comes back: the request is not lost.
func (r *runner) syncHold(s *worker.Session) {
	want := r.p.holdWant.Load()
	if want != r.paused {
		r.paused = want
		if s != nil {
			if want {
				s.Pause()
			} else {
				s.Continue()
			}
		}
	}
	select {
	case r.holdAck <- want:
	default:
	}
}

// waitHeld waits, while the slot is paused between processes, for the
// pool to let it go on. It reports false when the pool stops meanwhile.
func (r *runner) waitHeld() bool {
	r.syncHold(nil)
	for r.paused {
		select {
		case <-r.holdKick:
			r.syncHold(nil)
		case <-r.p.abortCh:
			return false
		case <-r.p.quit:
			return false
		}
	}
	return true
}

func (r *runner) run() {
	defer r.p.runners.Done()
	r.env = slotEnv(r.p.cfg.Env, r.slot+1)
	if r.p.mem.Mode().PerWorker() {
		// Named by the slot as $SAFEPOOL_SLOT has it: w1, w2, ...
		name := "w" + strconv.Itoa(r.slot+1)
		g, err := r.p.mem.NewGroup(name, r.limit())
		if err == nil && r.p.cfg.Protocol == OneShot {
			var spare *memory.Group
			if spare, err = r.p.mem.NewGroup(name+"b", r.limit()); err == nil {
				r.spare = spare
				defer spare.Remove()
			} else {
				g.Remove()
			}
		}
		if err != nil {
			r.p.abortFor(0, fmt.Errorf("creating the cgroup of slot %d: %w", r.slot+1, err))
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

// waitForMemory waits until the memory governor lets the slot start a
// persistent worker (governor.mayStartWorker). It reports false when the
// pool stops meanwhile.
func (r *runner) waitForMemory() bool {
	for !r.p.gov.mayStartWorker(r.slot) {
		select {
		case <-time.After(200 * time.Millisecond):
		case <-r.holdKick:
			r.syncHold(nil)
		case <-r.p.abortCh:
			return false
		case <-r.p.quit:
			return false
		}
	}
	return r.waitHeld()
}

// waitForWork waits, before the slot replaces a worker that ended, while
// the pool takes no more tasks (Close) and none waits to run: the tasks
// left run on other workers, and a new one would only start to be retired
// at the end, which holds the pool's end for its start or for Grace. A
// task that comes back to the queue (its worker died, a retry) ends the
// wait. It reports false when the pool stops meanwhile.
func (r *runner) waitForWork() bool {
	for closed(r.p.closeCh) && r.p.Stats().Queued == 0 {
		select {
		case <-time.After(20 * time.Millisecond):
		case <-r.holdKick:
			r.syncHold(nil)
		case <-r.p.abortCh:
			return false
		case <-r.p.quit:
			return false
		}
	}
	return true
}

// restartDelay is the wait before the slot's next worker after
// failedStarts failures in a row: 100 ms, doubled after each further
// failure, up to Config.MaxBackoff.
func (r *runner) restartDelay() time.Duration {
	d := 100 * time.Millisecond
	for i := 1; i < r.failedStarts && d < r.p.cfg.MaxBackoff; i++ {
		d *= 2
	}
	return min(d, max(r.p.cfg.MaxBackoff, 100*time.Millisecond))
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

// runPersistent runs one process after another in the slot, and hands
// each what the loop dispatches while it has room.
func (r *runner) runPersistent() {
	defer r.setIdle(false)
	abortC, killC, quitC := r.p.abortCh, r.p.killCh, r.p.quit
	for {
		if r.s == nil {
			r.setIdle(false)
			if r.stopping() || !r.waitHeld() {
				return
			}
			if r.failedStarts > 0 {
				// Give a failing command a moment before the next try,
				// longer after each failure; the loop aborts the pool
				// after too many failures in a row.
				select {
				case <-time.After(r.restartDelay()):
				case <-r.p.abortCh:
				case <-r.p.quit:
				}
				if r.stopping() {
					return
				}
			}
			if r.replacing && !r.waitForWork() {
				return
			}
			if !r.waitForMemory() {
				return
			}
			r.replacing = true
			if !r.spawn() {
				r.p.gov.workerLive(r.slot, false)
				r.failedStarts++
				continue
			}
		}
		s := r.s
		// An idle worker takes tasks from dispatch; a busy one with room
		// from pipeline, which the loop offers only while no worker is idle.
		var dispatch, pipeline chan *task
		room := !r.paused && !r.p.holdWant.Load() && r.hasRoom()
		r.setIdle(room && s.InFlight() == 0)
		if r.idle {
			dispatch = r.p.dispatch
		} else if room {
			pipeline = r.p.pipeline
		}
		select {
		case t := <-dispatch:
			r.idle = false // the loop counted it out as it handed t over
			r.send(t)
			r.takeMore()
			s.Flush()
		case t := <-pipeline:
			if r.p.idle.Load() > 0 || !r.hasRoom() {
				// A worker became idle, or this one has had no room since
				// it chose to wait (the task it runs has run long), while
				// the loop offered t: t goes back to the queue's head,
				// uncharged, for the idle worker or one with room.
				r.p.send(report{kind: reportRequeue, task: t})
				break
			}
			r.send(t)
			r.takeMore()
			s.Flush()
		case ev := <-s.Events():
			s.Handle(ev)
		case <-s.Done():
			r.reap()
		case <-s.Deadline():
			s.CheckDeadlines()
		case <-s.Probe():
			s.Look(time.Now())
		case err := <-s.WriteErr():
			s.PipeBroken(err)
		case id := <-r.preempt:
			if id == shedIdle {
				// The memory governor needs what an idle worker holds.
				if s.InFlight() == 0 {
					s.Retire()
				}
				break
			}
			s.Preempt(id)
		case <-r.holdKick:
			r.syncHold(s)
		case <-s.OverLimit():
			s.Kill(CauseMemoryLimit)
		case <-quitC:
			quitC = nil
			s.Continue()
			s.Retire()
		case <-abortC:
			abortC = nil
			s.Continue() // to act on its SIGTERM
			s.Cancel(false)
		case <-killC:
			killC = nil
			s.Cancel(true)
		}
	}
}

// takeMore takes what else the loop offers busy workers while the process
// has room, so that it is written at once with what was just taken.
func (r *runner) takeMore() {
	for r.hasRoom() {
		select {
		case t := <-r.p.pipeline:
			r.send(t)
		default:
			return
		}
	}
}

// setIdle records whether the runner waits, with its worker ready and
// holding no task, for one on dispatch, and counts it in Pool.idle. When
// the last idle runner stops being so without a task, it tells the loop,
// which then offers its head to busy workers again.
func (r *runner) setIdle(idle bool) {
	if idle == r.idle {
		return
	}
	r.idle = idle
	if idle {
		r.p.idle.Add(1)
		return
	}
	if r.p.idle.Add(-1) == 0 {
		r.p.send(report{kind: reportIdleGone})
	}
}

// hasRoom reports whether the current process may take another task.
func (r *runner) hasRoom() bool {
	if !r.s.HasRoom() {
		return false
	}
	// A framed process with work queued takes no more than its share of
	// the backlog, so that a few long tasks are not all queued behind one
	// another on the first worker ready while the others start or idle.
	// With a long backlog the share is the whole pipeline. (A line worker
	// has its own bound: about 10 ms of work, by its time per line.)
	if n := r.s.InFlight(); n > 0 && r.p.cfg.Protocol == Framed {
		w := int64(r.p.cfg.Workers)
		if share := (r.p.backlog.Load() + w - 1) / w; int64(n) >= share {
			return false
		}
	}
	// A task that has failed before runs with nothing queued behind it, so
	// that no task dispatched after it keeps it from counting as running
	// alone (the memory governor's poison rule).
	if f := r.s.Last(); f != nil {
		if t := f.Task.(*task); t.charged() > 0 || t.need > 0 {
			return false
		}
	}
	return true
}

// send hands t to the current process.
func (r *runner) send(t *task) {
	if r.p.gov != nil {
		r.p.gov.bind(t.id, r.slot)
	}
	r.s.Send(&worker.Flight{ID: t.id, Input: t.t.Input, Timeout: t.timeout(&r.p.cfg),
		TimeoutGrace: t.timeoutGrace(&r.p.cfg), Task: t, Items: t.items})
}

// sessionConfig is what a session of this slot runs with, for spec.
func (r *runner) sessionConfig(spec worker.Spec) worker.Config {
	cfg := &r.p.cfg
	return worker.Config{
		Spec:         spec,
		Group:        r.group,
		Shim:         r.shim(),
		Limit:        r.limit(),
		MemLimit:     cfg.MemLimit,
		Witness:      r.p.mem.OOMWitness(),
		OOMLog:       r.p.oomLog,
		Frame:        appendTask,
		Timeout:      cfg.Timeout,
		StartTimeout: cfg.StartTimeout,
		StallTimeout: cfg.StallTimeout,
		Grace:        cfg.Grace,
		TimeoutGrace: cfg.TimeoutGrace,
		Pipeline:     cfg.Pipeline,
		MaxLine:      cfg.MaxLine,
		MaxTasks:     cfg.MaxTasksPerWorker,
		MaxRSS:       cfg.MaxRSS,
		ItemTime:     r.itemTime,
	}
}

// spawn starts a new worker process in the slot. It reports whether it did.
func (r *runner) spawn() bool {
	cfg := &r.p.cfg
	// Every worker of the pool writes its stderr to the same stream: a
	// line one leaves unfinished as it dies is ended there.
	spec := worker.Spec{Args: cfg.Command, Env: r.env, Dir: cfg.Dir, Stdout: cfg.Stdout, Stderr: cfg.Stderr, EndStderrLine: true}
	if spec.Stderr == nil {
		spec.Stderr = os.Stderr
	}
	if spec.Stdout == nil {
		spec.Stdout = spec.Stderr
	}
	spec.IO = worker.IOLine
	if cfg.Protocol == Framed {
		spec.IO = worker.IOFramed
	}
	var token string
	if r.p.left != nil && r.group == nil {
		spec.Env, token = r.p.left.mark(r.env)
	}
	s, err := worker.StartSession(r.sessionConfig(spec), (*sessionHost)(r))
	if err != nil {
		if token != "" {
			r.p.left.ended(token) // what a worker that failed to start began
		}
		r.p.send(report{kind: reportStartupFailure, start: &StartError{Command: cfg.Command, Err: err}})
		return false
	}
	r.token = token
	r.started(s)
	return true
}

// started records that session s began in the slot.
func (r *runner) started(s *worker.Session) {
	r.s = s
	r.p.count(func(s *Stats) { s.WorkersStarted++ })
	r.p.emit(Event{Kind: EventWorkerStarted, WorkerPID: s.PID(), Time: s.Spawned()})
	if w := s.Watch(); w != nil {
		r.p.gov.setWatch(r.slot, w) // the governor measures the worker by it
	}
}

// shim readies a worker that has no cgroup of its own before its code runs:
// its oom_score_adj and, backing Config.MemLimit, its data size limit,
// which what it forks then inherits; with one exec where the host allows
// it (memory.Manager.Shim).
func (r *runner) shim() memory.Shim {
	if r.p.cfg.NoDataLimit {
		return r.p.mem.Shim(0)
	}
	return r.p.mem.Shim(memory.DataLimitFor(r.p.cfg.MemLimit))
}

// sessionHost is the runner as its session's worker.Host: it reports to
// the loop and emits events.
type sessionHost runner

func (h *sessionHost) Up() { h.p.send(report{kind: reportWorkerUp}) }

func (h *sessionHost) Ready() { h.p.gov.workerUp(h.slot) }

func (h *sessionHost) Started(f *worker.Flight) {
	h.p.emit(Event{Kind: EventAttemptStarted, TaskID: f.ID, WorkerPID: h.s.PID(), Time: f.StartedAt()})
}

func (h *sessionHost) Ended(f *worker.Flight, o worker.Outcome, output []byte) {
	h.itemTime = h.s.ItemTime()
	t := f.Task.(*task)
	h.p.send(report{kind: reportAttempt, task: t, att: attemptOf(o), output: output, answers: f.Answers,
		lines: lineItems(t, f), out: f.Out})
}

func (h *sessionHost) Answered(f *worker.Flight, a worker.Answer, i int) {
	h.p.send(report{kind: reportAnswered, task: f.Task.(*task), answers: []worker.Answer{a}, running: i,
		att: Attempt{WorkerPID: h.s.PID(), Start: f.StartedAt()}})
}

// lineItems are the items of line batch t that flight f answered, done,
// each with its answer line (in f.Out) and the time its answer came; nil
// for other flights. An item runs from the answer before it (or from the
// flight's start) to its own: the line protocol says no more.
func lineItems(t *task, f *worker.Flight) []Item {
	if f.Out == nil {
		return nil
	}
	items := make([]Item, 0, f.Marks[len(f.Marks)-1].N)
	out, start := f.Out, f.StartedAt()
	for _, m := range f.Marks {
		for len(items) < m.N {
			i := bytes.IndexByte(out, '\n')
			k := t.items[len(items)]
			items = append(items, Item{ID: t.base + uint64(k), Index: int(k), Output: out[:i:i], Start: start, End: m.At})
			out = out[i+1:]
		}
		start = m.At
	}
	return items
}

func (h *sessionHost) Note(n worker.Note) {
	kind := EventWorkerStalled
	switch n.Kind {
	case worker.NoteOutOfStep:
		kind = EventWorkerOutOfStep
		if n.Answered > 0 {
			h.p.count(func(s *Stats) { s.OutOfStep++ })
		}
	case worker.NoteOverMaxRSS:
		if h.p.saidOverMaxRSS.Swap(true) {
			return // once per pool: it is about every worker
		}
		kind = EventWorkerOverMaxRSS
	}
	h.p.emit(Event{Kind: kind, TaskID: n.ID, WorkerPID: h.s.PID(), Message: n.Message})
}

// attemptOf is the attempt that o describes.
func attemptOf(o worker.Outcome) Attempt {
	return Attempt{Cause: o.Cause, WorkerPID: o.PID, Start: o.Start, End: o.End, ExitCode: o.ExitCode,
		Signal: o.Signal, PeakRSS: o.PeakRSS, Message: o.Message}
}

// stopWait is how long the report of a worker that died of a stop signal
// the pool did not send waits for the pool to be aborted (awaitStop). A
// variable for tests.
var stopWait = time.Second

// stoppedWith reports whether cause is a death by SIGTERM, SIGINT or
// SIGHUP: the signals with which a batch scheduler or a service manager
// stops a whole job (slurm's scancel and time limit, systemctl stop with
// its default KillMode=control-group), sent to each of its processes, the
// workers as well as the supervisor.
func stoppedWith(cause Cause) bool {
	switch cause {
	case SignalCause(syscall.SIGTERM), SignalCause(syscall.SIGINT), SignalCause(syscall.SIGHUP):
		return true
	}
	return false
}

// awaitStop holds the report of a worker that died of cause, which the pool
// did not kill (killed is empty), for up to stopWait when cause is a stop
// signal: the same signal sent to the supervisor is then on its way, and
// the Abort that follows it must find the task still running, to end it
// Cancelled like the other tasks the stop ends, rather than Failed (the
// CLI's --resume runs cancelled tasks again, and skips failed ones).
// Without that wait, which of the two comes first is a race. A death the
// pool does not follow with an abort is only reported stopWait later.
func (r *runner) awaitStop(cause, killed Cause) {
	if killed != "" || !stoppedWith(cause) {
		return
	}
	t := time.NewTimer(stopWait)
	defer t.Stop()
	select {
	case <-t.C:
	case <-r.p.abortCh:
	case <-r.p.quit:
	}
}
