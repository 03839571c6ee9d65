package worker

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"strconv"
	"time"
)

// The line protocol's checks. The protocol itself carries no ids, so the
// session watches for what it can prove:
//
//   - Output before the first line. A new worker gets no line until it is
//     seen waiting for input (the start gate), and its result pipe is not
//     read until then: whatever is in it was written before any line was
//     sent, and is a protocol error (a banner such as "Loading model...").
//   - A line that cannot be an answer: more lines than lines unanswered, or
//     a line that arrives before the worker has read the line it would
//     answer (the task pipe still holds part of it).
//   - A stall: the worker has read every line it was sent, is blocked
//     reading for more, uses no CPU, and has not answered. It most likely
//     holds its answers in an output buffer.
//
// What it cannot prove is said in docs/protocol.md.

const (
	// gateFirstLook and gateMaxLook pace the looks at a new line worker
	// before its first line: quick at first, for workers that start in a
	// millisecond, then every 50 ms.
	gateFirstLook = time.Millisecond
	gateMaxLook   = 50 * time.Millisecond
	// stallLook is how often a line worker that has not answered for that
	// long is looked at for a stall.
	stallLook = 500 * time.Millisecond
	// stallNotice is how long a stall lasts before EventWorkerStalled.
	stallNotice = 2 * time.Second
	// quoteMax is how much of a worker's stray output a message quotes.
	quoteMax = 120
)

// flushHint says how to make common programs flush each line.
const flushHint = "make it flush after each line: python3 -u (or PYTHONUNBUFFERED=1), " +
	"awk -W interactive (mawk) or fflush() after print, $| = 1 in Perl, stdbuf -oL for C programs, or an explicit flush"

// wholeStreamHint points a command that answers only at the end of its
// input, which no flush can make a line worker, to block mode.
const wholeStreamHint = "a command that answers only at the end of its input (sort, wc -l) " +
	"runs with map --pipe, as a process per block"

// oneLineHint says what a line worker must write.
const oneLineHint = "a line worker must write exactly one line to stdout for each line it reads, " +
	"and other messages to stderr; a program that cannot keep to that should speak the framed protocol (map --framed)"

// lineState is what the session knows about the current line worker beyond
// its flights. It is reset for every new process, and touched only by the
// owner's goroutine.
type lineState struct {
	sent      int64         // bytes of lines handed to the writer
	gateOpen  bool          // the worker may be given lines
	gateUntil time.Time     // when the gate opens at the latest
	gateLook  time.Duration // the time to the next look while the gate is shut
	looked    bool          // cpu holds a reading
	cpu       uint64        // the tree's CPU time at the last look
	stallFrom time.Time     // first look of the current stall; zero when none
	noticed   bool          // EventWorkerStalled was sent for this process
	stalled   bool          // the session killed the process for a stall
	progress  time.Time     // when a line was last sent or answered
}

// armProbe sets the timer for the next look at a line worker: soon while
// its start gate is shut, every stallLook while it holds lines. It does
// nothing when a look is already due.
func (s *Session) armProbe() {
	if s.probe != nil || s.cfg.Spec.IO == IONone || s.killed != "" || s.retired || !s.pausedAt.IsZero() {
		return
	}
	var d time.Duration
	switch {
	case s.cfg.Spec.IO == IOFramed:
		// A framed worker has no start gate: it is looked at for a
		// stall once it holds tasks (checkHeld).
		if !s.ready || len(s.inflight) == 0 {
			return
		}
		d = stallLook
	case !s.line.gateOpen:
		d = s.line.gateLook
		s.line.gateLook = min(2*d, gateMaxLook)
	case len(s.inflight) > 0:
		d = stallLook
	default:
		return
	}
	s.probe = time.NewTimer(d)
}

// Look is the probe's turn: the start gate, or the check of a worker that
// holds lines.
func (s *Session) Look(now time.Time) {
	s.probe = nil
	if s.killed != "" || s.retired {
		return
	}
	if s.cfg.Spec.IO == IOLine && !s.line.gateOpen {
		s.checkGate(now)
	} else {
		s.checkHeld(now)
	}
	s.armProbe()
}

// errNoReader says that a line worker's stdin has no reader left.
var errNoReader = errors.New("no process reads it any more")

// checkHeld looks at a line worker that holds lines and has not answered
// for stallLook. A worker that closed its stdin can take no more lines (it
// must not close it while it lives); one that waits for more input without
// answering may be stalled.
func (s *Session) checkHeld(now time.Time) {
	if len(s.inflight) == 0 || now.Sub(s.line.progress) < stallLook {
		s.line.stallFrom = time.Time{}
		return
	}
	if ReaderGone(s.proc.Tasks) {
		s.PipeBroken(errNoReader)
		return
	}
	if s.cfg.StallTimeout > 0 {
		s.checkStall(now)
	}
}

// checkGate looks at a line worker that has not been given a line. Its
// stdout must be empty: the result reader has not started, so anything there
// was written before any line was sent. Once it waits for input, or
// StartTimeout has passed, or /proc cannot tell, it may have lines.
func (s *Session) checkGate(now time.Time) {
	proc := s.proc
	a, err := proc.Observe()
	cpuSame := s.line.looked && a.CPU == s.line.cpu
	s.line.looked, s.line.cpu = err == nil && !a.Partial, a.CPU
	ready := err != nil || a.WaitsForInput(cpuSame) || !now.Before(s.line.gateUntil)
	// Looked at after the worker was seen waiting, the pipe holds all that
	// it wrote before it waited. Output, or a stdin with no reader, is a
	// fault unless the worker dies of something else within eofPatience
	// (see gateFault).
	if n, err := Backlog(proc.Results); err == nil && n > 0 || ReaderGone(proc.Tasks) {
		if s.brokenAt.IsZero() {
			s.brokenAt = now
			s.armDeadline()
		}
		return
	}
	if ready {
		s.line.gateOpen = true
		s.startReader()
		s.host.Ready()
	}
}

// gateFault fails a line worker that, before it was given a line, wrote on
// stdout or closed its stdin.
func (s *Session) gateFault() {
	if n, err := Backlog(s.proc.Results); err == nil && n > 0 {
		s.earlyOutput(n)
		return
	}
	s.protocolError("the worker closed its stdin before it was given a line")
}

// earlyOutput fails a line worker that wrote n bytes on stdout before it
// was given a line.
func (s *Session) earlyOutput(n int) {
	buf := make([]byte, min(n, quoteMax+1))
	k, _ := s.proc.Results.Read(buf) // the reader has not started: nobody else reads
	s.outOfStep(fmt.Sprintf("the worker wrote %s on stdout before it was given a line", quoteOutput(buf[:k], n)))
}

// handleLines matches the answer lines of a chunk with the lines in
// flight, oldest first: a plain flight takes one, a block (a line batch) as
// many as it has unanswered, counted in bulk. When a read brings more lines
// than there are lines unanswered, the worker wrote a line too many, most
// likely for the last line it read: that line fails, and the worker is
// killed.
func (s *Session) handleLines(ev Event) {
	if s.killed == CauseProtocol {
		return // what follows a protocol error is not trusted
	}
	data := ev.chunk
	got, due := bytes.Count(data, newline), s.unanswered()
	take := got
	if got > due {
		take = max(due-1, 0)
	}
	now := time.Now()
	for take > 0 {
		head := s.inflight[0]
		var k int
		if head.lines != nil {
			k = min(take, len(head.Items)-head.done)
		} else {
			k = 1
		}
		// Each line taken must answer a line the worker had read.
		if head.lines != nil && ev.consumed < head.off+int64(head.lineStart(head.done+k)) {
			read := 0
			for read < k && ev.consumed >= head.off+int64(head.lineStart(head.done+read+1)) {
				read++
			}
			k = read // the lines before the first unread one are answers
		}
		if k == 0 || head.lines == nil && ev.consumed < head.end {
			first := data[:bytes.IndexByte(data, '\n')]
			s.outOfStep(fmt.Sprintf("the worker wrote %s before it had read the line of task %d",
				quoteOutput(first, len(first)), head.runningID()))
			return
		}
		cut := len(data)
		if k < take || got > take {
			cut = lineCut(data, k)
		}
		part := data[:cut:cut]
		data = data[cut:]
		take -= k
		s.noteItemTime(now.Sub(head.clock) / time.Duration(k))
		s.line.progress, s.line.stallFrom = now, time.Time{}
		if head.lines == nil {
			s.succeed(head, part[:len(part)-1])
		} else {
			s.answerLines(head, part, k, now)
		}
		if len(s.inflight) > 0 && s.inflight[0] != head {
			// The next line runs from the moment this one was answered,
			// which is when its attempt ended.
			now = time.Now()
			s.startFlight(s.inflight[0], now)
		}
	}
	if got > due {
		first := data[:bytes.IndexByte(data, '\n')]
		if due == 0 {
			s.outOfStep(fmt.Sprintf("the worker wrote %s when no line was waiting for an answer", quoteOutput(first, len(first))))
			return
		}
		// The lines before the last one due were taken as answers; from
		// the last one due on, none is.
		were := "were"
		if due == 1 {
			were = "was"
		}
		s.outOfStep(fmt.Sprintf("the worker wrote %d lines where %d %s due (%s and the lines after it not taken as answers)",
			got, due, were, quoteOutput(first, len(first))))
	}
}

var newline = []byte{'\n'}

// lineCut is where the first k lines of data end.
func lineCut(data []byte, k int) int {
	off := 0
	for ; k > 0; k-- {
		off += bytes.IndexByte(data[off:], '\n') + 1
	}
	return off
}

// answerLines records k answer lines, part, of line batch f, which came
// at now: the batch ends with its last line; until then, its next line
// runs from now.
func (s *Session) answerLines(f *Flight, part []byte, k int, now time.Time) {
	if s.answered == 0 {
		s.host.Up()
	}
	s.answered += k
	f.done += k
	switch {
	case f.Out == nil && f.done == len(f.Items):
		f.Out = part // the whole block's answers came at once
	case f.Out == nil:
		// Room for answers about as long as the lines, as often they are.
		f.Out = append(make([]byte, 0, max(len(f.lines), 2*len(part))), part...)
	default:
		f.Out = append(f.Out, part...)
	}
	f.Marks = append(f.Marks, Mark{N: f.done, At: now})
	if f.done == len(f.Items) {
		s.succeed(f, nil)
		return
	}
	f.clock = now
	if f.Timeout > 0 {
		s.armDeadline()
	}
}

// outOfStep kills a line worker that wrote a line that cannot be the answer
// to the line it was given. The line it was running, if any, fails with
// CauseProtocol; the lines sent behind it go back to the queue.
func (s *Session) outOfStep(what string) {
	if s.killed != "" {
		return
	}
	var id uint64
	if len(s.inflight) > 0 {
		id = s.inflight[0].runningID()
	}
	msg := what + "; " + oneLineHint
	if s.answered > 0 {
		// Answers already delivered may belong to other lines.
		msg = fmt.Sprintf("%s; the %d answers it gave before may belong to other lines", msg, s.answered)
	}
	s.host.Note(Note{Kind: NoteOutOfStep, ID: id, Answered: s.answered,
		Message: "worker " + strconv.Itoa(s.proc.Pid) + " is out of step: " + msg})
	s.protocolError(msg)
}

// checkStall looks at a line worker that holds lines and has not answered
// for stallLook: a stall that lasts is noticed, then fails the attempt.
func (s *Session) checkStall(now time.Time) {
	l := &s.line
	cpu, idle := s.idleOnInput()
	switch {
	case !idle:
		l.stallFrom = time.Time{}
		return
	case l.stallFrom.IsZero() || cpu != l.cpu:
		l.stallFrom, l.cpu = now, cpu // a stall starts here, or the worker worked
		return
	}
	d, limit := now.Sub(l.stallFrom), s.cfg.StallTimeout
	if s.cfg.Spec.IO == IOFramed {
		s.framedStall(d, limit)
		return
	}
	head := s.inflight[0]
	if !l.noticed && d >= min(stallNotice, limit/2) {
		l.noticed = true
		s.host.Note(Note{Kind: NoteStalled, ID: head.runningID(), Answered: s.answered, Message: fmt.Sprintf(
			"worker %d read the line of task %d but has not answered it for %v, and waits for more input: "+
				"it most likely holds its answers in an output buffer%s (the attempt fails after %v of this)",
			s.proc.Pid, head.runningID(), d.Round(100*time.Millisecond), s.stallHint(), limit)})
	}
	if d >= limit {
		l.stalled = true
		s.protocolError(fmt.Sprintf("the worker read its line, then waited for more input for %v without answering: "+
			"it does not flush its output%s", limit, s.stallHint()))
	}
}

// stallHint ends the message of a stall with its other likely cause and
// the fixes. A worker that never answered may be a command that answers
// only at the end of its input; one that answered lines before may have
// written nothing for one of them, and then its answers since were taken
// for the answers of the lines before their own.
func (s *Session) stallHint() string {
	if s.answered == 0 {
		return "; " + flushHint + "; " + wholeStreamHint
	}
	return fmt.Sprintf(", or it wrote no answer for a line it read, and then the %d answers it gave before "+
		"may belong to other lines; %s; %s", s.answered, flushHint, oneLineHint)
}

// idleOnInput reports whether the worker has read every line it was sent,
// has not written an answer the reader has yet to read, and does nothing
// but wait for more input; with the CPU time its tree has used.
func (s *Session) idleOnInput() (uint64, bool) {
	sent := s.line.sent
	if s.cfg.Spec.IO == IOFramed {
		sent = s.framedSent
	}
	if s.pipe.written.Load() != sent {
		return 0, false // the writer still has lines to write
	}
	for _, f := range []*os.File{s.proc.Tasks, s.proc.Results} {
		if n, err := Backlog(f); err != nil || n > 0 {
			return 0, false
		}
	}
	a, err := s.proc.Observe()
	if err != nil || !a.StallsOnInput() {
		return 0, false
	}
	return a.CPU, true
}

// quoteOutput quotes the start of b, which is the first bytes of n that a
// worker wrote: its first line, at most quoteMax bytes of it.
func quoteOutput(b []byte, n int) string {
	more := n > len(b)
	for i, c := range b {
		if c == '\n' {
			b, more = b[:i], more || i+1 < len(b)
			break
		}
	}
	if len(b) > quoteMax {
		b, more = b[:quoteMax], true
	}
	q := strconv.Quote(string(b))
	if more {
		q += " (and more)"
	}
	return q
}

// framedHint says what most likely keeps a framed worker that waits for a
// task from answering the one it holds.
const framedHint = "its result frame most likely sits in a buffer: flush fd 4 after each frame " +
	"(in Python, results.flush() after results.write()); or the length in a frame's header is larger " +
	"than the payload it wrote, and the supervisor waits for the rest"

// framedStall handles a framed worker that holds tasks, has read every
// frame it was sent, and has waited for more on its task pipe, using no
// CPU, for d: the supervisor and the worker wait for each other. It is
// noticed, then fails once d reaches limit. A worker that reads its tasks
// from a thread of its own (serve reads them through the Go runtime's
// poller, which counts as a poll) while another works is never seen so.
func (s *Session) framedStall(d, limit time.Duration) {
	l := &s.line
	head := s.runningFlight()
	if head == nil {
		head = s.inflight[0]
	}
	if !l.noticed && d >= min(stallNotice, limit/2) {
		l.noticed = true
		s.host.Note(Note{Kind: NoteStalled, ID: head.runningID(), Answered: s.answered, Message: fmt.Sprintf(
			"worker %d read task %d but has not answered it for %v, and waits for another task on its task pipe: "+
				"%s (the attempt fails after %v of this)",
			s.proc.Pid, head.runningID(), d.Round(100*time.Millisecond), framedHint, limit)})
	}
	if d < limit {
		return
	}
	l.stalled = true
	if f := s.waitingToStart(); f != nil {
		// Read and never started: charged all the same, or it would go
		// back to the queue, uncharged, to stall worker after worker.
		s.startFlight(f, s.waitingSince(f))
	}
	s.protocolError(fmt.Sprintf("the worker read its task, then waited for another on its task pipe for %v without answering: %s",
		limit, framedHint))
}
