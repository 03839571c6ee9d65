package pool

import (
	"fmt"

	"github.com/safepool/safepool/internal/bytesize"
)

// What becomes of a persistent worker's attempts when it dies. How the
// death is named is the session's (internal/worker/reap.go); what each
// flight's task suffers for it is blame's (settle.go).

// reap ends the current session, whose process has died: the attempts that
// were running are charged, and the tasks that had not started requeued.
func (r *runner) reap() {
	d := r.s.Reap()
	if r.group != nil {
		// The slot's group serves the next worker too: what this one left
		// there out of reach of its process group (a setsid descendant)
		// must not weigh on that one's memory, peak or OOM count, nor be
		// killed for memory while it runs, which would be blamed on its
		// task. As endShot does for a one-shot job; Kill waits a few
		// seconds at most.
		_ = r.group.Kill()
	}
	if r.token != "" {
		// Without one, what it left is swept soon, by its token.
		r.p.left.ended(r.token)
		r.token = ""
	}
	if !d.Expected() {
		r.p.count(func(s *Stats) { s.WorkerDeaths++ })
	}
	r.p.emit(Event{Kind: EventWorkerExited, WorkerPID: d.PID, Time: d.Exit.Time})
	if !d.Expected() {
		r.awaitStop(d.Cause, d.Killed)
	}

	charged := false
	line := r.p.cfg.Protocol == Line
	// The loop puts each requeued task at the head of its queue: requeue
	// the newest first, so that they run again in the order they came.
	var requeue []*task
	for _, c := range d.Flights {
		t := c.Flight.Task.(*task)
		v := flightView{started: c.Started, bystander: c.Bystander, unread: c.Unread, line: line, passed: t.passed,
			reading: c.Reading && !d.Expected()}
		b := blame(v, d.Cause)
		if t.items != nil && (c.Flight.Answered() > 0 || b == blameCharge || (line && b == blamePass)) {
			// A batch: its answered items are done, the item it was
			// running is charged (or not), the rest go back. A line
			// block's pass is the running line's, not the block's: that
			// line goes back alone, passed, so that the next such death
			// on it is charged.
			att := attemptOf(c.Outcome)
			att.Start = c.Flight.Clock()
			if b == blameCharge {
				noteSecondExitZero(&att, v, d.Cause)
			}
			r.p.send(report{kind: reportAttempt, task: t, att: att, answers: c.Flight.Answers,
				lines: lineItems(t, c.Flight), out: c.Flight.Out, charge: b == blameCharge,
				pass: line && b == blamePass, running: c.Running})
			charged = charged || b == blameCharge
			continue
		}
		switch b {
		case blameRequeue:
			requeue = append(requeue, t)
		case blamePass:
			t.passed = true
			requeue = append(requeue, t)
		default:
			att := attemptOf(c.Outcome)
			noteSecondExitZero(&att, v, d.Cause)
			r.p.send(report{kind: reportAttempt, task: t, att: att})
			charged = true
		}
	}
	// A worker that died before it took any task, or that never answered
	// the one it took and held (a stall), cannot do the work: such failures
	// in a row abort the pool. A death during a task is that task's.
	if !d.Expected() && d.Answered == 0 && (!charged || d.Stalled) {
		se := &StartError{Command: r.p.cfg.Command, Cause: d.Cause, Stderr: d.Stderr, Err: d.Failure}
		if d.Cause == CauseOOM && se.Err == nil {
			se.Err = r.startOOM()
		}
		r.p.send(report{kind: reportStartupFailure, charged: charged, start: se})
		r.failedStarts++
	} else {
		r.failedStarts = 0
	}
	for i := len(requeue) - 1; i >= 0; i-- {
		r.p.send(report{kind: reportRequeue, task: requeue[i]})
	}
	r.p.gov.workerLive(r.slot, false)
	r.s = nil
}

// noteSecondExitZero says, in the charged attempt att of a line whose
// worker exited 0 after reading it (flight v), that the line had already
// run once uncharged for the same reason (blame): such a worker writes
// nothing on stderr, and the failure would say nothing of why it counts.
func noteSecondExitZero(att *Attempt, v flightView, cause Cause) {
	if cause != ExitCause(0) || !v.passed {
		return
	}
	if v.reading {
		// A framed worker's: the worker's own message says no more.
		att.Message = "the worker exited 0 after reading this task's frame, before it started it; " +
			"the task had already run once, uncharged, on a worker that did the same"
		return
	}
	if !v.line {
		return
	}
	note := "the worker exited 0 after reading this line, without answering it; the line had already run once, uncharged, on a worker that did the same"
	if att.Message == "" {
		att.Message = note
	} else {
		att.Message = note + ": " + att.Message
	}
}

// startOOM says why a worker that the OOM killer took before it took a
// task may have been taken, and what to try. With a cgroup per worker,
// its cgroup's limit may be less than it needs to start; and in every
// mode, every slot starts its worker at once, so the workers' start-up
// memory together may not fit the memory the pool may use.
func (r *runner) startOOM() error {
	if r.group != nil && r.p.cfg.MemLimit > 0 && r.limit() == r.p.cfg.MemLimit {
		return fmt.Errorf("killed by the OOM killer before it took a task; its cgroup is limited to %s (the memory limit), which may be less than it needs to start",
			bytesize.Format(r.limit()))
	}
	within := "the memory around them (the enclosing cgroup's limit or the host's)"
	if g := r.p.gov; g != nil {
		within = "the memory budget of " + bytesize.Format(g.budget)
	}
	if r.group != nil {
		return fmt.Errorf("killed by the OOM killer before it took a task: one worker may need more than %s to start (its cgroup's limit), or %d workers starting at once more than that; try fewer workers",
			within, r.p.cfg.Workers)
	}
	return fmt.Errorf("killed by the OOM killer before it took a task: %d workers starting at once may need more than %s; try fewer workers",
		r.p.cfg.Workers, within)
}
