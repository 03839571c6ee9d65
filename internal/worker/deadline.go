package worker

import (
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/safepool/safepool/internal/protocol"
)

// A Session's liveness: the deadlines of its attempts, the framed worker's
// start-up deadline, the patience given to a worker whose pipe closed or
// broke, and what the result pipe says.

// armDeadline sets the timer for the earliest of: an attempt's timeout, the
// framed worker's start-up deadline, and the end of the patience given to a
// worker whose pipe closed or broke.
func (s *Session) armDeadline() {
	if !s.pausedAt.IsZero() {
		return // Continue arms it
	}
	if s.deadline != nil {
		s.deadline.Stop()
		s.deadline = nil
	}
	if !s.termAt.IsZero() {
		// The process is being ended for a timeout: only the end of its
		// grace counts now.
		if at := s.graceEnds(); !at.IsZero() {
			s.deadline = time.NewTimer(time.Until(at))
		}
		return
	}
	var at time.Time
	earliest := func(t time.Time) {
		if !t.IsZero() && (at.IsZero() || t.Before(at)) {
			at = t
		}
	}
	for _, f := range s.inflight {
		if f.Timeout > 0 && f.started {
			earliest(f.clock.Add(f.Timeout))
			if s.watchesPage(f) {
				earliest(time.Now().Add(pagePoll(f.Timeout)))
			}
		}
	}
	if f := s.waitingToStart(); f != nil && f.Timeout > 0 {
		earliest(s.waitingSince(f).Add(f.Timeout))
	}
	if s.cfg.Spec.IO == IOFramed && !s.ready {
		earliest(s.startBy.at)
	}
	for _, t := range []time.Time{s.eofAt, s.brokenAt} {
		if !t.IsZero() {
			earliest(t.Add(eofPatience))
		}
	}
	if !at.IsZero() {
		s.deadline = time.NewTimer(time.Until(at))
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
func (d *startDeadline) extend(proc *Process, now time.Time, timeout time.Duration) bool {
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
func (s *Session) waitingToStart() *Flight {
	if s.cfg.Spec.IO != IOFramed || len(s.inflight) == 0 || s.runningFlight() != nil {
		return nil
	}
	return s.inflight[0]
}

// waitingSince is when f, waiting to start, could have started: when it was
// handed over, or when the worker last finished a task, whichever is later.
func (s *Session) waitingSince(f *Flight) time.Time {
	if f.sent.After(s.freeAt) {
		return f.sent
	}
	return s.freeAt
}

// CheckDeadlines kills the process when a deadline has passed, and arms the
// timer for the next one.
func (s *Session) CheckDeadlines() {
	s.deadline = nil
	now := time.Now()
	cfg := &s.cfg
	if s.proc.Exited() {
		// The process died by itself before a deadline made it, and its
		// owner, late on a loaded machine, looked at the deadline before
		// Done: its exit status, which Done brings, names the cause (an
		// OOM kill, a signal), not a closed pipe or the clock.
		return
	}
	if !s.termAt.IsZero() {
		if at := s.graceEnds(); !at.IsZero() && !now.Before(at) {
			s.graceOver = true
			s.Kill(CauseTimeout)
			return
		}
		s.armDeadline()
		return
	}
	switch {
	case !s.eofAt.IsZero() && !now.Before(s.eofAt.Add(eofPatience)):
		if s.eofMsg != "" {
			s.protocolError(s.eofMsg)
			return
		}
		s.Kill(CauseProtocol)
		return
	case !s.brokenAt.IsZero() && !now.Before(s.brokenAt.Add(eofPatience)):
		s.brokenPipe()
		return
	case cfg.Spec.IO == IOFramed && !s.ready && !now.Before(s.startBy.at):
		if s.startBy.extend(s.proc, now, cfg.StartTimeout) {
			break // still busy starting
		}
		s.killMsg = "it sent no ready frame within " + cfg.StartTimeout.String()
		if s.startBy.moved > 0 {
			s.killMsg = fmt.Sprintf("it sent no ready frame within %v, and stopped working",
				now.Sub(s.spawned).Round(time.Millisecond))
		}
		s.Kill(CauseTimeout)
		return
	}
	s.lookAtPage(now)
	for _, f := range s.inflight {
		if f.Timeout > 0 && f.started && !now.Before(f.clock.Add(f.Timeout)) {
			s.timeOut(f)
			return
		}
	}
	if f := s.waitingToStart(); f != nil && f.Timeout > 0 && !now.Before(s.waitingSince(f).Add(f.Timeout)) {
		// The worker took the task and never started it: its time runs
		// from when it could have.
		f.unstarted = true
		s.startFlight(f, s.waitingSince(f))
		s.timeOut(f)
		return
	}
	s.armDeadline()
}

// Handle processes one event from the result pipe.
func (s *Session) Handle(ev Event) {
	if ev.err == nil && !s.termAt.IsZero() {
		// Written after its attempt ran out of time (or read after): the
		// timed-out task is not answered late, and the tasks sent behind
		// it go back to the queue as when the worker is killed at once.
		return
	}
	if ev.err != nil {
		s.readerDone = true
		if s.killed == "" && s.eofAt.IsZero() {
			// The worker closed its result pipe, or wrote garbage. Either way
			// it can no longer be trusted; give it a moment to die by itself
			// so that its exit status can tell more.
			switch {
			case errors.Is(ev.err, io.ErrUnexpectedEOF):
				// A frame cut short by the end of the pipe: most
				// likely the worker died writing it (an OOM kill of
				// a large result), which its exit status will say.
				s.eofMsg = "the worker closed its result pipe in the middle of a frame"
			case ev.err != io.EOF:
				s.protocolError(ev.err.Error())
				return
			}
			s.eofAt = time.Now()
			s.armDeadline()
		}
		return
	}
	if s.cfg.Spec.IO == IOLine {
		s.handleLines(ev)
		return
	}
	if len(ev.frames) > 0 {
		s.line.progress, s.line.stallFrom = time.Now(), time.Time{} // no stall while frames come
	}
	for _, f := range ev.frames {
		s.handleFrame(f)
	}
}

// handleFrame processes one frame from a framed worker.
func (s *Session) handleFrame(fr protocol.Frame) {
	switch fr.Kind {
	case protocol.KindReady:
		v, err := protocol.ParseReady(fr.Payload)
		switch {
		case s.ready:
			s.protocolError("a second ready frame")
		case err != nil:
			s.protocolError(err.Error())
		case v < protocol.Version || v > protocol.BiasVersion:
			s.protocolError(fmt.Sprintf("worker speaks protocol version %d, supervisor %d to %d",
				v, protocol.Version, protocol.BiasVersion))
		default:
			s.ready, s.batches, s.ranges = true, v >= protocol.BatchVersion, v >= protocol.PageVersion
			s.host.Ready()
			s.host.Up()
		}
	case protocol.KindStart:
		f := s.flightByID(fr.ID)
		if f != nil && f.Items != nil {
			s.startItem(f, fr.Payload)
			return
		}
		if f == nil || f.started || len(fr.Payload) != 0 {
			s.protocolError(fmt.Sprintf("start frame for task %d, which is not waiting to start", fr.ID))
			return
		}
		s.startFlight(f, time.Now())
	case protocol.KindItem, protocol.KindItemError:
		s.answerItem(fr)
	case protocol.KindItems:
		s.answerRange(fr)
	case protocol.KindResult, protocol.KindError:
		f := s.flightByID(fr.ID)
		if f == nil || f.Items != nil {
			s.protocolError(fmt.Sprintf("%s frame for task %d, which is not in flight", fr.Kind, fr.ID))
			return
		}
		if !f.started {
			s.startFlight(f, time.Now()) // lenient: a worker may skip the start frame
		}
		if fr.Kind == protocol.KindResult {
			s.succeed(f, fr.Payload)
		} else {
			s.endFlight(f, Outcome{Cause: CauseTaskError, ExitCode: -1, Message: string(fr.Payload)}, nil)
		}
	case protocol.KindHeartbeat:
	default:
		s.protocolError(fmt.Sprintf("unexpected %s frame", fr.Kind))
	}
}

// nextItem is the index of the item of batch f that the worker must start
// or answer next; ok is false when every item is answered.
func nextItem(f *Flight) (index uint32, ok bool) {
	if f.answered >= len(f.Items) {
		return 0, false
	}
	return f.Items[f.answered], true
}

// startItem handles the start frame of an item of batch f: the batch starts
// with its first item, and each item's timeout runs from its start.
func (s *Session) startItem(f *Flight, p []byte) {
	i, _, ok := protocol.ItemIndex(p)
	want, more := nextItem(f)
	if !ok || !more || i != want {
		s.protocolError(fmt.Sprintf("start frame for item %q of batch task %d, which is not the next to start",
			p, f.ID))
		return
	}
	now := time.Now()
	f.seen = f.answered
	if !f.started {
		s.startFlight(f, now)
		return
	}
	f.clock = now
	if f.Timeout > 0 {
		s.armDeadline()
	}
}

// answerItem handles the answer of an item of a batch: the batch ends when
// its last item is answered.
func (s *Session) answerItem(fr protocol.Frame) {
	f := s.flightByID(fr.ID)
	i, rest, ok := protocol.ItemIndex(fr.Payload)
	var want uint32
	more := false
	if f != nil && f.Items != nil {
		want, more = nextItem(f)
	}
	if !ok || !more || i != want {
		s.protocolError(fmt.Sprintf("%s frame for task %d, item %d, which is not the next item of a batch in flight",
			fr.Kind, fr.ID, i))
		return
	}
	now := time.Now()
	if !f.started {
		s.startFlight(f, now) // lenient: a worker may skip the start frame
	}
	a := Answer{Index: i, Start: f.clock, End: now}
	if fr.Kind == protocol.KindItem {
		a.Output = rest
	} else {
		a.Failed, a.Message = true, string(rest)
	}
	s.recordAnswer(f, a, 1, now)
}

// recordAnswer records answer a of n items of batch f, which came at now: the
// next item's time runs from here until its start frame (or the page
// shows it), and the batch ends with its last item.
func (s *Session) recordAnswer(f *Flight, a Answer, n int, now time.Time) {
	f.Answers = append(f.Answers, a)
	f.answered += n
	f.clock, f.seen = now, f.answered
	if f.answered == len(f.Items) {
		s.succeed(f, nil)
		return
	}
	if a.Span > 0 {
		// A range before the batch's end (a worker sends one after some
		// time, or early in a long batch, see docs/protocol.md): its
		// items may be delivered now, not when the batch ends.
		s.host.Answered(f, a, len(f.Answers)-1)
	}
}

// answerRange handles an items frame: the answers of the next items of a
// batch, in one output (protocol.PageVersion).
func (s *Session) answerRange(fr protocol.Frame) {
	f := s.flightByID(fr.ID)
	first, n, out, ok := protocol.ParseItems(fr.Payload)
	var want uint32
	more := false
	if f != nil && f.Items != nil && s.ranges {
		want, more = nextItem(f)
	}
	if !ok || !more || first != want || int(n) > len(f.Items)-f.answered || !consecutive(f.Items[f.answered:f.answered+int(n)]) {
		s.protocolError(fmt.Sprintf("items frame for task %d, items %d to %d, which are not the next items of a batch in flight",
			fr.ID, first, uint64(first)+uint64(n)-1))
		return
	}
	now := time.Now()
	if !f.started {
		s.startFlight(f, now) // lenient: a worker may skip the start frame
	}
	s.recordAnswer(f, Answer{Index: first, Span: int(n), Output: out, Start: f.clock, End: now}, int(n), now)
}

// consecutive reports whether the indexes follow each other, as those of a
// range must.
func consecutive(ix []uint32) bool {
	for i := 1; i < len(ix); i++ {
		if ix[i] != ix[i-1]+1 {
			return false
		}
	}
	return true
}

// pagePoll is how often the session reads the page of a worker that runs a
// batch whose items have a timeout: an item's time runs from when the
// session first saw it in the page, so an item may overrun its timeout by
// up to this much, never run less.
func pagePoll(timeout time.Duration) time.Duration {
	return min(max(timeout/16, 2*time.Millisecond), 250*time.Millisecond)
}

// watchesPage reports whether f's items are timed through the page: f is
// a started batch with a timeout, run by a worker that marks its items
// there.
func (s *Session) watchesPage(f *Flight) bool {
	return f.Items != nil && f.started && f.Timeout > 0 && s.ranges && s.proc.page != nil
}

// lookAtPage moves the clock of the running batch to now when the page
// shows that a later item of it has started.
func (s *Session) lookAtPage(now time.Time) {
	f := s.runningFlight()
	if f == nil || !s.watchesPage(f) {
		return
	}
	if m, ok := s.proc.readPage(); ok && m.id == f.ID && int(m.pos) > f.seen && int(m.pos) < len(f.Items) {
		f.seen, f.clock = int(m.pos), now
	}
}

// runningItem is the position in f's Items of the item the worker was
// running when it died: the item its page names, when the page names one
// of f's unanswered items, or else the first unanswered. f has started.
func (s *Session) runningItem(f *Flight) int {
	pos := f.answered
	if m, ok := s.proc.readPage(); ok && s.ranges && m.id == f.ID && int(m.pos) > pos && int(m.pos) < len(f.Items) {
		pos = int(m.pos)
	}
	return max(pos, f.seen)
}
