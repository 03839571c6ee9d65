package worker

import (
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/safepool/safepool/internal/bytesize"
	"github.com/safepool/safepool/internal/memory"
)

// The end of a Session: what its process wrote before it died, its exit,
// and the Cause of its death. This file is where a death's cause is decided
// (see docs/architecture.md).

// Death is how a Session's process ended, and what it had in flight.
type Death struct {
	// PID is the process's id.
	PID int
	// Exit is its exit status.
	Exit Exit
	// Cause is why it ended: why the session killed it, or what classify
	// found. Empty only for an IONone process that exited 0.
	Cause Cause
	// Killed is why the session killed it, or empty.
	Killed Cause
	// Retired reports whether the session told it to end.
	Retired bool
	// Answered is how many tasks it finished.
	Answered int
	// Stalled reports whether it was killed for a stall (line protocol).
	Stalled bool
	// Flights are its tasks in flight at its death, oldest first.
	Flights []Casualty
	// Failure says what went wrong, for a process that never worked; nil
	// when there is nothing to say beyond Cause.
	Failure error
	// Stderr is the last few KiB it wrote to stderr.
	Stderr string
}

// Expected reports whether the owner ended the process on purpose: it was
// retired, cancelled or preempted.
func (d *Death) Expected() bool {
	return d.Retired || d.Killed == CauseCancelled || d.Killed == CausePreempted
}

// Casualty is a flight whose process died.
type Casualty struct {
	Flight *Flight
	// Started reports whether the flight had started.
	Started bool
	// Bystander reports that another flight's timeout or protocol error
	// killed the process.
	Bystander bool
	// Unread reports that a line worker never read a byte of its line.
	Unread bool
	// Reading reports that a framed worker had read some or all of the
	// frame of its oldest flight and not started it: it died reading or
	// decoding it, or between tasks with it read ahead. (The frames
	// behind a started flight may have been read ahead: never those.)
	Reading bool
	// Outcome is the attempt, if the owner charges it with the death.
	Outcome Outcome
	// Running, for a batch, is the position in its Items of the item the
	// process was running, the one to charge: the item that its page or
	// its last start frame names, or else the first unanswered. The items
	// between those answered (Flight.Answered) and it were run, but their
	// answers were not sent.
	Running int
}

// Reap ends the Session once Done is closed: it collects what the process
// wrote before dying (results still count, through the Host), ends the
// reader and writer, closes the pipes, and says how the process died.
func (s *Session) Reap() *Death {
	proc := s.proc
	read := int64(-1)
	if s.cfg.Spec.IO != IONone {
		s.startReader() // what a worker wrote before its first line is read, and blamed
		s.drainResults()
		read = s.pipe.readAtLeast() // before the pipe is closed
		close(s.gone)
		close(s.writes)
	}
	proc.CloseIO(linger)
	if s.watch != nil {
		s.watch.Stop()
	}
	s.stopTimers()

	exit := proc.Exit()
	d := &Death{PID: proc.Pid, Exit: exit, Cause: s.deathCause(exit), Killed: s.killed, Retired: s.retired,
		Answered: s.answered, Stalled: s.line.stalled, Stderr: proc.StderrTail()}
	line := s.cfg.Spec.IO == IOLine
	for i, f := range s.inflight {
		o := s.exitOutcome(exit, d.Cause, f)
		if d.Cause == CauseTimeout && f.unstarted {
			o.Message += ", handed over but never started (no start frame)"
		}
		off := f.off
		if f.lines != nil {
			off += int64(f.lineStart(f.done)) // the line of a block that runs
		}
		c := Casualty{Flight: f, Started: f.started, Outcome: o, Running: f.answered,
			Bystander: s.victim != nil && f != s.victim,
			Unread:    line && read >= 0 && read <= off,
			Reading:   s.cfg.Spec.IO == IOFramed && i == 0 && !f.started && read > f.off}
		if f.Items != nil && f.lines == nil && f.started {
			c.Running = s.runningItem(f)
		}
		if c.Reading {
			// Charged, if it is, from when it was handed over.
			c.Outcome.Start = f.sent
			if c.Outcome.End.Before(f.sent) {
				c.Outcome.End = f.sent
			}
			const reading = "while it read the task's frame, before it started it"
			if c.Outcome.Message == "" {
				c.Outcome.Message = reading // an exit 0 says nothing else
			} else {
				c.Outcome.Message += ", " + reading
			}
		}
		d.Flights = append(d.Flights, c)
	}
	proc.freePage()
	switch {
	case s.killMsg != "":
		d.Failure = errors.New(s.killMsg)
	case d.Cause == CauseTimeout:
		d.Failure = fmt.Errorf("it had not read its first line after %v", s.cfg.Timeout)
	}
	s.inflight, s.pending = nil, nil
	return d
}

// drainResults hands on what the dead worker wrote before it died, which is
// still in the pipe unless the reader has already said it reached the end.
// linger bounds the wait for a result pipe that a grandchild still holds
// open; with no writer left, the reader's EOF is sure to come, and the
// drain waits for it, however long the Host takes over what comes before
// (a bound on that time would leave answers unread, and charge their
// lines with the death).
func (s *Session) drainResults() {
	drain := time.NewTimer(linger)
	defer drain.Stop()
	for open := !s.readerDone; open; {
		select {
		case ev := <-s.events:
			if ev.err != nil {
				open = false
				break
			}
			// Results written before the death still count.
			s.Handle(ev)
		case <-drain.C:
			open = WritersGone(s.proc.Results)
		}
	}
}

// stopTimers stops the deadline and the probe.
func (s *Session) stopTimers() {
	for _, t := range []**time.Timer{&s.deadline, &s.probe} {
		if *t != nil {
			(*t).Stop()
			*t = nil
		}
	}
}

// exitOutcome is the outcome of flight f, ended as the process exited, of
// cause (empty: a one-shot process that succeeded). Its peak is the most of
// what the group or watch read and f's peak, a reading taken while it ran,
// and, in a group, the last reading when it is recent (see peakFor).
func (s *Session) exitOutcome(exit Exit, cause Cause, f *Flight) Outcome {
	end := exit.Time
	if end.Before(f.start) {
		end = f.start // its start frame was read from the pipe after the death
	}
	o := Outcome{Cause: cause, PID: s.proc.Pid, Start: f.start, End: end, ExitCode: exit.Code, PeakRSS: ownPeak(exit.MaxRSS)}
	if exit.Signal != 0 {
		o.Signal = SignalName(exit.Signal)
	}
	if g := s.cfg.Group; g != nil {
		if p, err := g.Peak(); err == nil && p > 0 {
			o.PeakRSS = max(p, f.peak)
		}
		if f.started && !s.peakAt.IsZero() && end.Sub(s.peakAt) < peakEvery {
			// As peakFor charges an attempt that ends within peakEvery
			// of the last reading: that reading may have been taken, and
			// the peak started anew, as the worker was dying, its memory
			// already freed (the answer or the start frame before the
			// death is often read after it), so that the group's peak
			// since holds only what the dead worker left there.
			o.PeakRSS = max(o.PeakRSS, s.peakLast)
		}
	} else if s.watch != nil && s.watch.Peak() > 0 {
		o.PeakRSS = sampledPeak(max(s.watch.Peak(), f.peak), s.watch.Samples(), o.PeakRSS, s.watch.LastResident())
	}
	if cause != "" {
		o.Message = s.deathMessage(cause, o.PeakRSS)
	}
	return o
}

func (s *Session) deathMessage(c Cause, peak int64) string {
	switch c {
	case CausePreempted:
		return "stopped by the memory governor to save memory (not charged)"
	case CauseOOM:
		return joinMessage(s.oomMessage(peak), LastLines(s.proc.StderrTail(), 3))
	case CauseProtocol:
		if s.killMsg != "" {
			return s.killMsg
		}
		return "the worker closed its result pipe"
	case CauseTimeout:
		limit := s.cfg.Timeout
		if s.victim != nil {
			limit = s.victim.Timeout
		}
		if s.termAt.IsZero() {
			return "killed after " + limit.String()
		}
		if s.graceOver {
			return fmt.Sprintf("killed after %v: SIGTERM, then SIGKILL after a grace of %v", limit, s.timeoutGrace(s.victim))
		}
		return "killed after " + limit.String() + ": SIGTERM, and " + s.exitPhrase()
	case CauseMemoryLimit:
		return "over the memory limit of " + bytesize.Format(s.cfg.MemLimit)
	}
	if h := s.proc.StderrCrash(); h != "" {
		// A Go program's crash: its first line says what happened, the
		// last ones are stacks.
		return h
	}
	return LastLines(s.proc.StderrTail(), 3)
}

// oomMessage says whether an OOM kill came from the worker's own cgroup
// limit or from memory running out around it (the host, or an enclosing
// cgroup such as a container's).
func (s *Session) oomMessage(peak int64) string {
	limit := s.cfg.Limit
	if v := s.oomVictim; v.PID != 0 {
		return fmt.Sprintf("the OOM killer killed process %d (%s) of the worker's tree (confirmed by the kernel log); %s",
			v.PID, v.Comm, s.exitPhrase())
	}
	if s.cfg.Group == nil {
		return "killed by the OOM killer (confirmed by the enclosing cgroup's oom_kill counter or the kernel log)"
	}
	if limit > 0 && peak >= limit-limit/50 {
		return "killed by the OOM killer at the worker's limit of " + bytesize.Format(limit)
	}
	return "killed by the OOM killer when memory ran out outside the worker's limit (host or enclosing cgroup)"
}

// exitPhrase says how the worker ended after a process of its tree was
// killed.
func (s *Session) exitPhrase() string {
	exit := s.proc.Exit()
	if exit.Signal != 0 {
		return "the worker was killed by " + SignalName(exit.Signal)
	}
	return "the worker exited with " + strconv.Itoa(exit.Code)
}

// joinMessage joins the parts that are not empty with "; ".
func joinMessage(a, b string) string {
	if a == "" || b == "" {
		return a + b
	}
	return a + "; " + b
}

// LastLines returns the last n lines of s that carry text, joined with
// " | ". Blank lines and lines that only point at the line above (the ^^^
// and ~~~ under the code in a Python traceback) say nothing alone, and would
// push the error line itself out.
func LastLines(s string, n int) string {
	var keep []string
	for _, l := range strings.Split(s, "\n") {
		if strings.Trim(l, " \t\r^~") != "" {
			keep = append(keep, strings.TrimSpace(l))
		}
	}
	if len(keep) > n {
		keep = keep[len(keep)-n:]
	}
	return strings.Join(keep, " | ")
}

// deathCause decides why the process ended: why the session killed it,
// or else what classify finds (nothing for a one-shot process that exited
// 0). A process sent SIGTERM for a timeout is the timeout's however it then
// ends (its own exit, SIGTERM, the SIGKILL after the grace), unless memory
// ended it during the grace, as it would have without the timeout: an OOM
// kill that memoryCause confirms, or the session's kill over MemLimit.
func (s *Session) deathCause(exit Exit) Cause {
	switch {
	case s.killed == CauseTimeout && !s.termAt.IsZero():
		if s.overLimit {
			return CauseMemoryLimit
		}
		if c := s.memoryCause(exit, s.spawned); c != "" {
			return c
		}
		return CauseTimeout
	case s.killed != "":
		return s.killed
	case s.cfg.Spec.IO != IONone || exit.Code != 0 || exit.Signal != 0:
		return s.classify(exit, s.spawned)
	}
	return ""
}

// classify names the cause of a death the session did not cause itself.
func (s *Session) classify(exit Exit, started time.Time) Cause {
	if c := s.memoryCause(exit, started); c != "" {
		return c
	}
	if exit.Signal == 0 {
		return ExitCause(exit.Code)
	}
	return SignalCause(exit.Signal)
}

// memoryCause names a death that memory caused: an OOM kill that the
// worker cgroup's counter, the enclosing cgroup's witness or the kernel log
// confirms, or, without a cgroup, the kernel's refusal of memory past the
// data size limit. It is "" for any other death.
func (s *Session) memoryCause(exit Exit, started time.Time) Cause {
	// The OOM killer may have taken a process inside the worker (sh -c
	// 'prog'), after which the worker itself exits with 137: the group's
	// counter tells, whatever the worker's own status.
	// The counter is raised for every OOM kill of a process in the group,
	// by its own limit or for want of memory elsewhere, before the signal is
	// sent; when it can be read, it is the whole answer, and the kernel log
	// need not be waited for.
	counted := false
	if g := s.cfg.Group; g != nil {
		if n, err := g.OOMKills(); err == nil {
			counted = true
			if n > s.oomBase {
				s.oomBase = n
				return CauseOOM
			}
		}
	}
	// Where workers share the supervisor's cgroup, its counter confirms
	// a kill only when its rise is accounted for by exactly the deaths
	// that may be kills (memory.OOMWitness). A worker the session retired
	// or ended after a timeout may have been SIGKILLed by the session
	// itself, which is never an OOM kill.
	if !counted && !s.retired && !s.sentKill && memory.MaybeOOMKilled(exit.Signal, exit.Code) {
		if w := s.cfg.Witness; w != nil && w.Confirm(s.oomMark) {
			return CauseOOM
		}
	}
	// Without a cgroup, the kernel refuses a worker memory past its data
	// size limit, and the worker fails in its own way: say memory-limit
	// when that failure was the refusal.
	if s.cfg.Group == nil && s.watch != nil && s.cfg.Shim.DataLimit > 0 && memory.RefusedMemory(memory.Failure{
		Signal: exit.Signal, ExitCode: exit.Code,
		Stderr: s.proc.StderrCrash() + "\n" + s.proc.StderrTail(), Crash: s.proc.StderrCrash(),
		Private: s.watch.Last(), Limit: s.cfg.MemLimit,
		Data: s.watch.LastData(), DataLimit: s.cfg.Shim.DataLimit,
	}) {
		return CauseMemoryLimit
	}
	if !counted && s.cfg.OOMLog != nil && s.oomInTree(exit, started) {
		return CauseOOM
	}
	return ""
}

// oomInTree reports whether the kernel log names an OOM kill of the
// worker (when it died of SIGKILL) or of a process of its tree, such as
// the program behind "sh -c" or a child a Python worker started, in the
// window. The worker's own exit status does not matter: a shell exits
// 137, a program that saw its child die may exit 1, or die of something
// else. Like a worker cgroup's counter, the log says only that the OOM
// killer took a process of the tree, and that is the cause.
func (s *Session) oomInTree(exit Exit, started time.Time) bool {
	// The record is written as the kill is sent. The worker's own death
	// comes right after it; a descendant's comes before the worker
	// noticed it and exited, so its record is in the kernel log by now.
	// A lookup reads what the log holds before it answers (the log's
	// reading goroutine may not have run yet on a loaded machine), so a
	// failure that may not be an OOM kill at all (exit 1) waits for
	// nothing more. A shell's 137 is likely its child's SIGKILL: that
	// waits.
	wait := time.Duration(0)
	if memory.MaybeOOMKilled(exit.Signal, exit.Code) {
		wait = oomLogWait
	}
	if s.watch == nil {
		return exit.Signal == syscall.SIGKILL && s.cfg.OOMLog.KilledSince(s.proc.Pid, started, wait)
	}
	// The tree holds the worker too; its own record, in the log already,
	// is looked for first, from its start.
	if exit.Signal == syscall.SIGKILL && s.cfg.OOMLog.KilledSince(s.proc.Pid, started, 0) {
		return true
	}
	v, ok := s.cfg.OOMLog.KilledInTree(s.watch.Tree(), s.oomSince, wait)
	if ok && v.PID != s.proc.Pid {
		s.oomVictim = v
	}
	return ok
}

// sampledPeak is the peak of private memory of a worker without a cgroup
// of its own, which ended: sampled is the highest of the samples that
// watched it, samples how many there were, last what the latest read of
// its resident memory beside the private, and maxRSS its own peak resident
// memory (see ownPeak; 0: unknown). It returns 0 when the peak is unknown.
//
// The samples alone miss what a worker grows to between its last sample
// and its end, up to 100 ms: a job that held 64 MiB only in its last
// moment, after samples of a few MiB, was reported at a few MB. maxrss
// sees it, but counts shared memory and file pages, which the samples
// leave out on purpose (a 400 MiB block that every worker maps is no
// worker's): taken always, it charged each reader of such a block with
// it. Less the shared memory of the last sample, and only when it is a
// peak reached after that sample, it is what the worker grew to alone
// (see memory.Resident.LatePrivate).
func sampledPeak(sampled int64, samples int, maxRSS int64, last memory.Resident) int64 {
	if maxRSS <= 0 {
		maxRSS = 0
	}
	if samples < 2 {
		// Sampled once, 5 ms after its start: what it held then says
		// nothing of its peak (a job that grew to 60 MiB in 80 ms was
		// reported at 1.5 MiB, one that held 5 MiB likewise). Its own
		// maxrss, less the shared memory of that sample, does when
		// known; otherwise the peak is unknown.
		if maxRSS == 0 {
			return 0
		}
		return max(maxRSS-last.Shared, 0)
	}
	return max(sampled, last.LatePrivate(maxRSS))
}

// ownPeak is a process's peak resident set size from wait4 (maxrss), or 0
// when it may be the supervisor's rather than the process's own. At its
// exec the kernel keeps, as the process's maxrss, the peak of the memory
// it had before: a process that the supervisor forked (Go forks with
// CLONE_VM) had the supervisor's, so that a one-shot "sh -c 'exit 1'",
// too short-lived to be sampled, was reported with the supervisor's 20
// MiB, and the governor planned with that. A maxrss above the
// supervisor's own peak is the process's; one at or below it cannot be
// told from it: unknown.
//
// The supervisor's own peak is that of its memory since its exec (VmHWM),
// what a process forked from it inherits; not its getrusage maxrss, which
// holds in the same way the peak of whatever process started it: a
// supervisor started by a Python program of 2 GiB of arrays would have
// called unknown every job's peak below 2 GiB.
func ownPeak(maxRSS int64) int64 {
	if maxRSS <= 0 {
		return maxRSS
	}
	if maxRSS <= supervisorPeak.Load() {
		return 0 // the supervisor's peak only grows: no need to read it again
	}
	peak, err := memory.ProcessPeakRSS(os.Getpid())
	if err != nil {
		var ru syscall.Rusage
		if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
			return 0
		}
		peak = int64(ru.Maxrss) * 1024
	}
	for {
		old := supervisorPeak.Load()
		if peak <= old || supervisorPeak.CompareAndSwap(old, peak) {
			break
		}
	}
	if maxRSS <= peak {
		return 0
	}
	return maxRSS
}

// supervisorPeak is the highest of the supervisor's own peaks that ownPeak
// has read, in bytes.
var supervisorPeak atomic.Int64
