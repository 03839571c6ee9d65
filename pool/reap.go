package pool

import (
	"errors"
	"fmt"
	"strconv"
	"syscall"
	"time"

	"github.com/safepool/safepool/internal/bytesize"
	"github.com/safepool/safepool/internal/memory"
	"github.com/safepool/safepool/internal/worker"
)

// What becomes of a persistent worker's attempts when it dies, and how its
// death is named.

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
	if r.watch != nil {
		r.watch.Stop()
	}
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
		switch blame(r.flightView(f, read), cause) {
		case blameRequeue:
			requeue = append(requeue, f.t)
		case blamePass:
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
	r.proc, r.inflight, r.killMsg, r.retired, r.pending, r.watch = nil, nil, "", false, nil, nil
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

// flightView is what blame needs to know of flight f, whose worker died
// having read at least read bytes of its task pipe (-1: unknown).
func (r *runner) flightView(f *flight, read int64) flightView {
	line := r.p.cfg.Protocol == Line
	return flightView{
		started:   f.started,
		bystander: r.victim != nil && f != r.victim,
		// For a line worker: the worker never read a byte of the line.
		unread: line && read >= 0 && read <= f.off,
		line:   line,
		passed: f.t.exitZeroPass,
	}
}

// deathAttempt is the attempt of flight f, ended by its worker's death.
func (r *runner) deathAttempt(f *flight, exit worker.Exit, cause Cause) Attempt {
	a := r.exitAttempt(r.proc, exit, cause, f.start, f.peak)
	if cause == CauseTimeout && f.unstarted {
		a.Message += ", handed over but never started (no start frame)"
	}
	return a
}

// exitAttempt is an attempt that started at start and ended as proc
// exited, of cause (empty: a one-shot process that succeeded). Its peak is
// the most of what the slot's cgroup or watch read and peak, a reading
// taken while it ran.
func (r *runner) exitAttempt(proc *worker.Process, exit worker.Exit, cause Cause, start time.Time, peak int64) Attempt {
	end := exit.Time
	if end.Before(start) {
		end = start // its start frame was read from the pipe after the death
	}
	a := Attempt{Cause: cause, WorkerPID: proc.Pid, Start: start, End: end, ExitCode: exit.Code, PeakRSS: exit.MaxRSS}
	if exit.Signal != 0 {
		a.Signal = SignalName(exit.Signal)
	}
	if r.group != nil {
		if p, err := r.group.Peak(); err == nil && p > 0 {
			a.PeakRSS = max(p, peak)
		}
	} else if r.watch != nil && r.watch.Peak() > 0 {
		a.PeakRSS = max(r.watch.Peak(), peak)
	}
	if cause != "" {
		a.Message = r.deathMessage(cause, proc, a.PeakRSS)
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
		limit := r.p.cfg.Timeout
		if r.victim != nil {
			limit = r.victim.t.timeout(&r.p.cfg)
		}
		return "killed after " + limit.String()
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
		return "killed by the OOM killer (confirmed by the enclosing cgroup's oom_kill counter or the kernel log)"
	}
	if limit > 0 && peak >= limit-limit/50 {
		return "killed by the OOM killer at the worker's limit of " + bytesize.Format(limit)
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
