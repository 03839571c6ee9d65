package pool

import "time"

// The task state machine. Two pure functions decide every task's fate:
//
//   - blame, in the runner whose worker died: which of the tasks it had in
//     flight is charged with the death (only the runner knows what each
//     flight had started or read), and which go back uncharged;
//   - settle, in the loop: what becomes of a task whose attempt ended, or
//     that a runner gave back.
//
// The loop applies settle's verdict (queues, counters, events, Result) and
// decides nothing else. blame's rules, in order, first match wins:
//
//	flight                                         | fate
//	-----------------------------------------------+------------------------
//	framed, oldest, read but not started, first    | back, uncharged, once
//	time for the task (the worker's own death)     |
//	framed, oldest, read but not started, again    | charged
//	never started (line: sent behind the running)  | back, uncharged
//	bystander of another flight's timeout/protocol | back, uncharged
//	line not read at all (cause not preempt/cancel)| back, uncharged
//	line worker exit:0, first time for the line    | back, uncharged, once
//	otherwise                                      | charged
//
// settle's rules, in order, first match wins ("memory OOM" is an OOM kill
// the governor owns, see governor.ownsOOM):
//
//	ending                   | charge | verdict
//	-------------------------+--------+---------------------------------------
//	given back (blame)       | -      | cancelled if aborting, else requeue
//	success                  | -      | done
//	cancelled, or aborting   | (1)    | cancelled
//	preempted                | -      | requeue at the head, need raised (2)
//	memory OOM, alone, whole | ooms   | poison (and abort under Abort) (3)
//	memory OOM, alone, crowded| ooms  | failed (and abort under Abort) (4)
//	memory OOM, otherwise    | ooms   | retry after backoff(ooms), need raised
//	task-error, retries left | errors | retry after backoff(errors)
//	task-error, none left    | errors | failed
//	death, retries left (5)  | deaths | retry after backoff(deaths)
//	death, otherwise         | deaths | failed (and abort under Abort)
//
// (1) While aborting, an attempt is still charged by its cause (a task
// error to errors, any worker death, an OOM kill too, to deaths), but the
// task ends Cancelled whatever its retries. (2) With the governor on. (3)
// "alone, whole": the attempt ran with no other beside it and had the whole
// budget (memVerdict.whole). An attempt that merely happened to run alone
// (one worker, the last task of a batch) with a need below the memory it
// could have, says nothing yet of what the task needs: it is retried with
// its need raised, which at least doubles each time up to the whole
// budget. (4) "alone, crowded": the attempt ran alone and had all the
// memory that processes other than the workers left it, and that was less
// than the budget (memVerdict.crowded): they, not the task, are why it did
// not fit, so it is not poison; nor is it run again and again against the
// same wall.
//
// (5) Under Retry and Abort; Skip has no retries (New refuses Retries
// with it).
//
// "retries left" is TaskErrorRetries for task errors and Retries for worker
// deaths, counted after the charge: a task runs at most 1+Retries times for
// deaths. OOM kills the governor owns do not count against Retries: the
// task runs again until it fits or is poison.

// fate is what becomes of a task when an attempt ends.
type fate int

const (
	fateDone      fate = iota // terminal: Done
	fateFailed                // terminal: Failed
	fatePoison                // terminal: Poison
	fateCancelled             // terminal: Cancelled
	fateRequeue               // back to the head of the queue at once
	fateRetry                 // to the queue after verdict.delay
)

// charge says which of the task's counts an attempt adds to.
type charge int

const (
	chargeNone  charge = iota
	chargeDeath        // task.deaths: the worker died (Config.Retries)
	chargeError        // task.errors: a task error (Config.TaskErrorRetries)
	chargeOOM          // task.ooms: an OOM kill the governor owns
)

// addTo counts the charge in the matching one of a task's counters.
func (c charge) addTo(deaths, errors, ooms *int) {
	switch c {
	case chargeDeath:
		*deaths++
	case chargeError:
		*errors++
	case chargeOOM:
		*ooms++
	}
}

// taskView is what settle needs to know of a task.
type taskView struct {
	deaths, errors, ooms int  // charged attempts so far, by kind
	alone                bool // the attempt ran with no other beside it
}

// policy is the pool's configuration and state, as settle needs them.
type policy struct {
	onDeath           Action
	retries           int // Config.Retries
	taskErrorRetries  int // Config.TaskErrorRetries
	backoff, maxDelay time.Duration
	aborting          bool
}

// memVerdict is what the memory governor says of the attempt.
type memVerdict struct {
	governed bool  // the governor runs
	ownsOOM  bool  // an OOM kill is the governor's to handle
	need     int64 // what the task needs after this attempt's peak
	// whole says the attempt had the whole budget: its peak reached it,
	// or the task's need was all of it and processes other than the
	// workers left it that much (governor.judgeAlone).
	whole bool
	// crowded says the attempt had all the memory that processes other
	// than the workers left it, and that was less than the budget
	// (governor.judgeAlone).
	crowded bool
}

// ending is how an attempt ended.
type ending struct {
	cause Cause
	// givenBack says the runner gave the task back uncharged (blame, a
	// one-shot process that found no file descriptors): no attempt ran.
	givenBack bool
}

// verdict is settle's answer.
type verdict struct {
	fate   fate
	charge charge
	delay  time.Duration // fateRetry: the backoff
	need   int64         // > 0: the task's new memory need
	abort  bool          // abort the pool for this task (the Abort policy)
	// number is Attempt.Number: the charged attempts so far, counting this
	// one; an uncharged attempt (success, preempted, cancelled) is one more.
	number int
	// crowded says the task failed because processes other than the
	// workers left it too little memory (memVerdict.crowded), which its
	// message says.
	crowded bool
}

// settle decides what becomes of task t whose attempt ended as e.
func settle(t taskView, e ending, pol policy, mem memVerdict) verdict {
	if e.givenBack {
		if pol.aborting {
			return verdict{fate: fateCancelled}
		}
		return verdict{fate: fateRequeue}
	}
	c := e.cause
	memOOM := c == CauseOOM && mem.ownsOOM && !pol.aborting
	v := verdict{charge: chargeOf(c, memOOM)}
	v.charge.addTo(&t.deaths, &t.errors, &t.ooms)
	v.number = t.deaths + t.errors + t.ooms
	if v.charge == chargeNone {
		v.number++
	}
	switch {
	case c == "":
		v.fate = fateDone
	case pol.aborting || c == CauseCancelled:
		v.fate = fateCancelled
	case c == CausePreempted:
		v.fate = fateRequeue
		if mem.governed {
			v.need = mem.need // it was stopped before its peak: wait for more room
		}
	case memOOM && t.alone && mem.whole:
		v.fate, v.abort = fatePoison, pol.onDeath == Abort
	case memOOM && t.alone && mem.crowded:
		v.fate, v.abort, v.crowded = fateFailed, pol.onDeath == Abort, true
	case memOOM:
		v.fate, v.need, v.delay = fateRetry, mem.need, pol.backoffAfter(t.ooms)
	case c == CauseTaskError && t.errors <= pol.taskErrorRetries:
		v.fate, v.delay = fateRetry, pol.backoffAfter(t.errors)
	case c == CauseTaskError:
		v.fate = fateFailed
	case pol.onDeath != Skip && t.deaths <= pol.retries:
		// Under Abort too, as GNU parallel's --retries with --halt
		// now,fail=1: the run stops for a task that failed them all.
		v.fate, v.delay = fateRetry, pol.backoffAfter(t.deaths)
	default:
		v.fate, v.abort = fateFailed, pol.onDeath == Abort
	}
	return v
}

// chargeOf says which count an attempt that ended of cause c adds to.
func chargeOf(c Cause, memOOM bool) charge {
	switch {
	case memOOM:
		return chargeOOM
	case c.IsWorkerDeath():
		return chargeDeath
	case c == CauseTaskError:
		return chargeError
	}
	return chargeNone
}

// backoffAfter is the wait before the next run of a task charged n times
// of one kind: Backoff doubled each time, at most MaxBackoff.
func (pol policy) backoffAfter(n int) time.Duration {
	d := pol.backoff << (n - 1)
	if d > pol.maxDelay || d <= 0 {
		d = pol.maxDelay
	}
	return d
}

// flightView is what blame needs to know of one flight on a dead worker.
type flightView struct {
	started bool
	// bystander: another flight's timeout or protocol error killed the
	// worker.
	bystander bool
	// unread: a line worker never read a byte of this flight's line.
	unread bool
	line   bool // the line protocol
	// passed: the task was given back once already, for a line worker's
	// exit 0 or a framed worker's death while it read the task
	// (task.passed).
	passed bool
	// reading: a framed worker that died on its own (not stopped by the
	// pool) had read into this flight's frame, the oldest it held, and
	// not started it.
	reading bool
}

// blameFate is what blame decides for one flight.
type blameFate int

const (
	blameCharge  blameFate = iota // an attempt is charged with the death
	blameRequeue                  // back to the queue, nothing charged
	blamePass                     // back to the queue once, uncharged (task.passed)
)

// blame decides what becomes of flight f when its worker died of cause.
func blame(f flightView, cause Cause) blameFate {
	switch {
	case f.reading && !f.bystander:
		// The worker died with the task's frame read, or part of it,
		// before it started it: reading a task too large for its memory,
		// say. Requeued uncharged every time, such a task made the pool
		// start worker after worker forever. It may have died between
		// tasks with the frame read ahead: one uncharged run elsewhere,
		// as for a line worker's exit 0; a second time, charge it.
		if f.passed {
			return blameCharge
		}
		return blamePass
	case !f.started:
		return blameRequeue
	case f.bystander && (cause == CauseTimeout || cause == CauseProtocol):
		return blameRequeue
	case f.unread && cause != CausePreempted && cause != CauseCancelled:
		// Whatever happened to the worker, the line had no part in it.
		return blameRequeue
	case cause == ExitCause(0) && f.line && !f.passed:
		// A line worker that exits 0 after reading the line most likely
		// read it ahead and did so between tasks: the line protocol cannot
		// tell. Give the task one uncharged run elsewhere; a second time,
		// charge it.
		return blamePass
	}
	return blameCharge
}
