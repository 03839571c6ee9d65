package pool

import (
	"errors"
	"fmt"
	"os"
	"strconv"
	"time"

	"github.com/safepool/safepool/internal/worker"
)

// The line protocol's checks. The protocol itself carries no ids, so the
// runner watches for what it can prove:
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
	"awk -W interactive (mawk) or fflush() after print, stdbuf -oL for C programs, or an explicit flush"

// oneLineHint says what a line worker must write.
const oneLineHint = "a line worker must write exactly one line to stdout for each line it reads, " +
	"and other messages to stderr; a program that cannot keep to that should speak the framed protocol (map --framed)"

// lineState is what the runner knows about the current line worker beyond
// its flights. It is reset for every new process, and touched only by the
// runner's goroutine.
type lineState struct {
	sent      int64         // bytes of lines handed to the writer
	gateOpen  bool          // the worker may be given lines
	gateUntil time.Time     // when the gate opens at the latest
	gateLook  time.Duration // the time to the next look while the gate is shut
	looked    bool          // cpu holds a reading
	cpu       uint64        // the tree's CPU time at the last look
	stallFrom time.Time     // first look of the current stall; zero when none
	noticed   bool          // EventWorkerStalled was sent for this process
	stalled   bool          // the runner killed the process for a stall
	progress  time.Time     // when a line was last sent or answered
}

// armProbe sets the timer for the next look at a line worker: soon while
// its start gate is shut, every stallLook while it holds lines. It does
// nothing when a look is already due.
func (r *runner) armProbe() {
	if r.probe != nil || r.proc == nil || r.p.cfg.Protocol != Line || r.killed != "" || r.retired {
		return
	}
	var d time.Duration
	switch {
	case !r.line.gateOpen:
		d = r.line.gateLook
		r.line.gateLook = min(2*d, gateMaxLook)
	case len(r.inflight) > 0:
		d = stallLook
	default:
		return
	}
	r.probe = time.NewTimer(d)
}

// look is the probe's turn: the start gate, or the check of a worker that
// holds lines.
func (r *runner) look(now time.Time) {
	if r.killed != "" || r.retired {
		return
	}
	if !r.line.gateOpen {
		r.checkGate(now)
	} else {
		r.checkHeld(now)
	}
	r.armProbe()
}

// errNoReader says that a line worker's stdin has no reader left.
var errNoReader = errors.New("no process reads it any more")

// checkHeld looks at a line worker that holds lines and has not answered
// for stallLook. A worker that closed its stdin can take no more lines (it
// must not close it while it lives); one that waits for more input without
// answering may be stalled.
func (r *runner) checkHeld(now time.Time) {
	if len(r.inflight) == 0 || now.Sub(r.line.progress) < stallLook {
		r.line.stallFrom = time.Time{}
		return
	}
	if worker.ReaderGone(r.proc.Tasks) {
		r.pipeBroken(errNoReader)
		return
	}
	if r.p.cfg.StallTimeout > 0 {
		r.checkStall(now)
	}
}

// checkGate looks at a line worker that has not been given a line. Its
// stdout must be empty: the result reader has not started, so anything there
// was written before any line was sent. Once it waits for input, or
// StartTimeout has passed, or /proc cannot tell, it may have lines.
func (r *runner) checkGate(now time.Time) {
	proc := r.proc
	a, err := proc.Observe()
	cpuSame := r.line.looked && a.CPU == r.line.cpu
	r.line.looked, r.line.cpu = err == nil && !a.Partial, a.CPU
	ready := err != nil || a.WaitsForInput(cpuSame) || !now.Before(r.line.gateUntil)
	// Looked at after the worker was seen waiting, the pipe holds all that
	// it wrote before it waited. Output, or a stdin with no reader, is a
	// fault unless the worker dies of something else within eofPatience
	// (see gateFault).
	if n, err := worker.Backlog(proc.Results); err == nil && n > 0 || worker.ReaderGone(proc.Tasks) {
		if r.brokenAt.IsZero() {
			r.brokenAt = now
			r.armDeadline()
		}
		return
	}
	if ready {
		r.line.gateOpen = true
		r.startReader()
	}
}

// gateFault fails a line worker that, before it was given a line, wrote on
// stdout or closed its stdin.
func (r *runner) gateFault() {
	if n, err := worker.Backlog(r.proc.Results); err == nil && n > 0 {
		r.earlyOutput(n)
		return
	}
	r.protocolError("the worker closed its stdin before it was given a line")
}

// earlyOutput fails a line worker that wrote n bytes on stdout before it
// was given a line.
func (r *runner) earlyOutput(n int) {
	buf := make([]byte, min(n, quoteMax+1))
	k, _ := r.proc.Results.Read(buf) // the reader has not started: nobody else reads
	r.outOfStep(fmt.Sprintf("the worker wrote %s on stdout before it was given a line", quoteOutput(buf[:k], n)))
}

// handleLines matches result lines with the lines in flight, oldest first.
// When a read brings more lines than there are lines in flight, the worker
// wrote a line too many, most likely for the last line it read: that line
// fails, and the worker is killed.
func (r *runner) handleLines(ev procEvent) {
	if r.killed == CauseProtocol {
		return // what follows a protocol error is not trusted
	}
	lines, extra := ev.lines, len(ev.lines)-len(r.inflight)
	if extra > 0 {
		lines = lines[:max(len(r.inflight)-1, 0)]
	}
	for _, line := range lines {
		head := r.inflight[0]
		if ev.consumed < head.end {
			r.outOfStep(fmt.Sprintf("the worker wrote %s before it had read the line of task %d",
				quoteOutput(line, len(line)), head.t.id))
			return
		}
		if d := time.Since(head.start); r.lineTime == 0 {
			r.lineTime = max(d, 1)
		} else {
			r.lineTime = max(r.lineTime+(d-r.lineTime)/8, 1)
		}
		r.succeed(head, line)
		now := time.Now()
		r.line.progress, r.line.stallFrom = now, time.Time{}
		if len(r.inflight) > 0 {
			// The next line runs from the moment this one was answered.
			r.startFlight(r.inflight[0], now)
		}
	}
	if extra > 0 {
		first := ev.lines[len(lines)]
		if len(r.inflight) == 0 {
			r.outOfStep(fmt.Sprintf("the worker wrote %s when no line was waiting for an answer", quoteOutput(first, len(first))))
			return
		}
		r.outOfStep(fmt.Sprintf("the worker wrote %d lines (the first %s) where %d were due",
			len(ev.lines)-len(lines), quoteOutput(first, len(first)), len(r.inflight)))
	}
}

// outOfStep kills a line worker that wrote a line that cannot be the answer
// to the line it was given. The line it was running, if any, fails with
// CauseProtocol; the lines sent behind it go back to the queue.
func (r *runner) outOfStep(what string) {
	if r.killed != "" {
		return
	}
	var id uint64
	if len(r.inflight) > 0 {
		id = r.inflight[0].t.id
	}
	msg := what + "; " + oneLineHint
	if r.answered > 0 {
		// Answers already delivered may belong to other lines.
		r.p.count(func(s *Stats) { s.OutOfStep++ })
		msg = fmt.Sprintf("%s; the %d answers it gave before may belong to other lines", msg, r.answered)
	}
	r.p.emit(Event{Kind: EventWorkerOutOfStep, TaskID: id, WorkerPID: r.proc.Pid,
		Message: "worker " + strconv.Itoa(r.proc.Pid) + " is out of step: " + msg})
	r.protocolError(msg)
}

// checkStall looks at a line worker that holds lines and has not answered
// for stallLook: a stall that lasts is noticed, then fails the attempt.
func (r *runner) checkStall(now time.Time) {
	l := &r.line
	cpu, idle := r.idleOnInput()
	switch {
	case !idle:
		l.stallFrom = time.Time{}
		return
	case l.stallFrom.IsZero() || cpu != l.cpu:
		l.stallFrom, l.cpu = now, cpu // a stall starts here, or the worker worked
		return
	}
	d, limit := now.Sub(l.stallFrom), r.p.cfg.StallTimeout
	head := r.inflight[0]
	if !l.noticed && d >= min(stallNotice, limit/2) {
		l.noticed = true
		r.p.emit(Event{Kind: EventWorkerStalled, TaskID: head.t.id, WorkerPID: r.proc.Pid, Message: fmt.Sprintf(
			"worker %d read the line of task %d but has not answered it for %v, and waits for more input: "+
				"it most likely holds its answers in an output buffer; %s (the attempt fails after %v of this)",
			r.proc.Pid, head.t.id, d.Round(100*time.Millisecond), flushHint, limit)})
	}
	if d >= limit {
		l.stalled = true
		r.protocolError(fmt.Sprintf("the worker read its line, then waited for more input for %v without answering: "+
			"it does not flush its output; %s", limit, flushHint))
	}
}

// idleOnInput reports whether the worker has read every line it was sent,
// has not written an answer the reader has yet to read, and does nothing
// but wait for more input; with the CPU time its tree has used.
func (r *runner) idleOnInput() (uint64, bool) {
	if r.pipe.written.Load() != r.line.sent {
		return 0, false // the writer still has lines to write
	}
	for _, f := range []*os.File{r.proc.Tasks, r.proc.Results} {
		if n, err := worker.Backlog(f); err != nil || n > 0 {
			return 0, false
		}
	}
	a, err := r.proc.Observe()
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
