package worker

import (
	"bytes"
	"fmt"
	"os"
	"syscall"
	"time"

	"github.com/safepool/safepool/internal/bytesize"
	"github.com/safepool/safepool/internal/memory"
	"github.com/safepool/safepool/internal/protocol"
)

const (
	// linger is how long a dead worker's pipes, still held open by a
	// grandchild, may keep delivering what it wrote before it died; past
	// that the grandchild is ignored. (A result pipe with no writer left is
	// read to its end, however long that takes: see drainResults.)
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
	// that ends sooner is charged the last reading.
	peakEvery = 100 * time.Millisecond
)

// PipelineAhead is about how much work, by the recent time per item (a
// line, a framed task, an item of a batch), a persistent worker may hold
// beyond the one it runs: a line worker in its stdin, a framed worker in
// its task pipe. Tasks sent ahead save a round trip each, which matters
// for tasks of microseconds; for tasks of seconds they would only keep
// idle workers from the last tasks, and hold a short task behind a long
// one.
var PipelineAhead = 10 * time.Millisecond

// Config says how a Session runs its process, beyond the process itself.
type Config struct {
	// Spec is the process. Its Cgroup is set from Group or Shim; for
	// IOFramed the protocol's variables are added to its Env.
	Spec Spec
	// Group is the slot's memory cgroup, which the process starts in and
	// whose counters and peak judge it; nil without one.
	Group *memory.Group
	// Shim readies a process without a Group before its code runs.
	Shim memory.Shim
	// Limit is Group's memory limit, for messages; 0 means none.
	Limit int64
	// MemLimit is the limit on the private memory of a process without a
	// Group, which a memory.Watch enforces; 0 means none.
	MemLimit int64
	// Witness confirms OOM kills where workers share the supervisor's
	// cgroup; nil where it cannot.
	Witness *memory.OOMWitness
	// OOMLog names the kernel OOM killer's victims; nil where the kernel
	// log cannot be read.
	OOMLog *memory.OOMLog
	// Frame appends a task frame for id to buf (IOFramed).
	Frame func(buf []byte, id uint64, payload []byte) []byte
	// Timeout is the default limit on an attempt, for messages; a Flight
	// carries its own.
	Timeout time.Duration
	// StartTimeout bounds how long a framed worker may take to be ready,
	// and how long a line worker's start gate stays shut.
	StartTimeout time.Duration
	// StallTimeout is how long a line worker may stall before its attempt
	// fails; 0 means never.
	StallTimeout time.Duration
	// Grace is the time between SIGTERM and SIGKILL when the process is
	// stopped, and the patience given to a retired process.
	Grace time.Duration
	// TimeoutGrace is the time between SIGTERM and SIGKILL when an attempt
	// runs out of time, for the job to clean up, unless its Flight gives
	// its own; 0 or less means SIGKILL at once.
	TimeoutGrace time.Duration
	// Pipeline is the most tasks in flight at once.
	Pipeline int
	// MaxLine bounds an answer line (IOLine).
	MaxLine int64
	// MaxTasks retires the process after that many answers; 0: never.
	MaxTasks int
	// MaxRSS retires the process once its memory is over it; 0: never.
	MaxRSS int64
	// ItemTime is the recent time per item of the slot's previous process
	// (see Session.ItemTime); 0 if none.
	ItemTime time.Duration
}

// Host is told what happens in a Session while its process lives. Its
// methods are called on the goroutine that calls the Session's methods.
type Host interface {
	// Up is called when the process became ready (its ready frame) or gave
	// its first answer.
	Up()
	// Ready is called once the process has started: a framed worker's
	// ready frame, or a line worker seen waiting for its first line (or
	// past StartTimeout). What its start-up took is in its memory by then.
	Ready()
	// Started is called when f started running.
	Started(f *Flight)
	// Ended is called when f ended while the process lives: with a result
	// (o.Cause empty, output set) or a task error.
	Ended(f *Flight, o Outcome, output []byte)
	// Answered is called when the worker of batch f answered a range of
	// its items (an items frame) and other items of f remain: a is that
	// answer, f.Answers[i]. Its items are done, as the items answered
	// before are, whatever happens to the rest of f; f.Answers keeps a for
	// Ended and for a death.
	Answered(f *Flight, a Answer, i int)
	// Note is called with something a user should hear about the process.
	Note(n Note)
}

// NoteKind says what a Note is about.
type NoteKind int

const (
	// NoteOutOfStep: a line worker wrote a line that cannot be an answer,
	// or a framed worker broke the protocol while no task was running.
	NoteOutOfStep NoteKind = iota
	// NoteStalled: a line worker has stalled for a while.
	NoteStalled
	// NoteOverMaxRSS: a worker is over Config.MaxRSS after its first task.
	NoteOverMaxRSS
)

// Note is something a user should hear about a process.
type Note struct {
	Kind NoteKind
	// ID is the task concerned; 0 if none.
	ID uint64
	// Message says what happened.
	Message string
	// Answered is how many answers the process gave before.
	Answered int
}

// Flight is one task handed to a Session's process.
type Flight struct {
	// ID identifies the task to the worker (framed) and to the Host.
	ID uint64
	// Input is the task's line or payload.
	Input []byte
	// Timeout is the limit on the attempt; 0 means none.
	Timeout time.Duration
	// TimeoutGrace, when the attempt runs out of Timeout, is the time
	// between SIGTERM and SIGKILL in place of Config.TimeoutGrace: 0 means
	// Config.TimeoutGrace, a negative value SIGKILL at once.
	TimeoutGrace time.Duration
	// Task is the caller's own record of the task.
	Task any
	// Items, for a batch task, are the indexes of the items of Input to
	// run, in order; nil for a plain task. For a framed worker
	// (protocol.BatchVersion) Input is the batch's payload; for a line
	// worker, Input holds one line per item, each ended by a newline, and
	// Items must be a range of consecutive indexes, whose lines are written
	// to the worker at once. The worker answers each item; the flight ends
	// when the last is answered, or with the process.
	Items []uint32
	// Answers are the answers of a framed batch's items so far, in the
	// order of Items; an answer of a range (Answer.Span) stands for
	// several.
	Answers []Answer
	// answered counts the items that Answers answer.
	answered int
	// seen is the position in Items of the running item of a framed
	// batch that the session last saw, in a start frame, an answer or the
	// worker's page; clock is when it saw it.
	seen int
	// Out, for a line batch, holds the answer lines so far, each with its
	// newline, in the order of Items; Marks says when they came.
	Out   []byte
	Marks []Mark
	// lines is what was written of a line batch: the lines of its items.
	lines []byte
	// done counts a line batch's answered lines; next and nextOff are a
	// line of lines (counting from 0) and where it starts, a cursor that
	// only moves on.
	done, next, nextOff int
	// clock is when the running item of a batch started (for a plain
	// task, the task): its timeout runs from there.
	clock time.Time

	started bool
	start   time.Time
	sent    time.Time // when it was handed to the writer
	peak    int64     // the highest peak reading taken while it ran
	// off and end bound the task's line in the bytes written to a line
	// worker's stdin, or its frame in those written to a framed worker's
	// task pipe: the worker has read it when it has read end.
	off, end int64
	// unstarted says that a framed worker never sent the start frame of
	// this flight, which was timed from when it was handed over.
	unstarted bool
}

// Mark says when the answers of a line batch came: the answers up to the
// N-th (counting from 1) had come by At.
type Mark struct {
	N  int
	At time.Time
}

// Answered is how many items of a batch the worker has answered.
func (f *Flight) Answered() int {
	if f.lines != nil {
		return f.done
	}
	return f.answered // an answer of a range stands for several
}

// lineStart is where the n-th line of a line batch (from 0) starts in
// f.lines.
func (f *Flight) lineStart(n int) int {
	if n < f.next {
		f.next, f.nextOff = 0, 0
	}
	for f.next < n {
		i := bytes.IndexByte(f.lines[f.nextOff:], '\n')
		f.nextOff += i + 1
		f.next++
	}
	return f.nextOff
}

// runningID is the id of the item of f that runs: for a batch, its first
// unanswered item.
func (f *Flight) runningID() uint64 {
	if f.Items == nil || f.Answered() >= len(f.Items) {
		return f.ID
	}
	return f.ID + uint64(f.Items[f.Answered()]-f.Items[0])
}

// LineSpan returns the lines of input, which holds lines each ended by a
// newline, from the first-th (counting from 0) to the one before end.
func LineSpan(input []byte, first, end int) []byte {
	if first == 0 && bytes.Count(input, []byte{'\n'}) == end {
		return input[:len(input):len(input)]
	}
	off := 0
	for i := 0; i < first; i++ {
		off += bytes.IndexByte(input[off:], '\n') + 1
	}
	stop := off
	for i := first; i < end; i++ {
		stop += bytes.IndexByte(input[stop:], '\n') + 1
	}
	return input[off:stop:stop]
}

// StartedAt is when f started running; zero if it has not.
func (f *Flight) StartedAt() time.Time { return f.start }

// Clock is when f's running item started (for a plain task, when the task
// started); zero if it has not.
func (f *Flight) Clock() time.Time { return f.clock }

// Answer is the answer of one item of a batch, or of a range of its items.
type Answer struct {
	// Index is the item's index in the batch's payload; for a range, its
	// first item's.
	Index uint32
	// Span, for the answer of a range (an items frame), is how many items
	// it answers: the next Span items of the batch's Items from Index on,
	// whose results Output holds together. 0 for one item's answer.
	Span int
	// Output is the item's result (the range's); nil for an item error.
	Output []byte
	// Failed reports an item error, whose text is Message.
	Failed  bool
	Message string
	// Start and End bound the item's run.
	Start, End time.Time
}

// Outcome is how an attempt ended.
type Outcome struct {
	// Cause is empty for a result.
	Cause Cause
	// PID is the worker's process id.
	PID int
	// Start and End bound the attempt.
	Start, End time.Time
	// ExitCode is the exit status when the process exited during the
	// attempt, and -1 otherwise.
	ExitCode int
	// Signal names the signal that killed the process, or is empty.
	Signal string
	// PeakRSS is the peak memory charged to the attempt; 0 if unknown.
	PeakRSS int64
	// Message gives detail.
	Message string
}

// Session owns the life of one worker process: its start in the slot's
// cgroup or shim, the goroutines that read and write its pipes, the
// protocol's checks, its deadlines and stall watch, its reaping, and the
// classification of its death into a Cause. A new process is a new
// Session. All methods must be called from one goroutine, the owner's
// (a pool's runner), which ends the Session by calling Reap once Done is
// closed.
type Session struct {
	cfg  Config
	host Host
	proc *Process
	// watch samples the process's private memory where it has no cgroup of
	// its own (cfg.Group is nil); nil otherwise.
	watch *memory.Watch

	events   chan Event    // from the reader
	writes   chan []byte   // to the writer; nil for IONone
	writeErr chan error    // from the writer: its first write error
	begin    chan struct{} // closed when the reader may start reading results
	begun    bool          // begin is closed
	gone     chan struct{} // closed when the session abandons the process
	pipe     *taskPipe     // the task pipe, counting what was written
	pending  []byte        // tasks encoded but not yet handed to the writer
	// framedSent is the bytes of frames encoded so far (framed): a
	// flight's frame is bytes off to end of them, as a line's is of
	// lineState.sent.
	framedSent int64

	inflight  []*Flight // sent to the process, oldest first
	ready     bool      // the framed worker sent ready
	batches   bool      // the framed worker takes batch tasks
	ranges    bool      // and answers them in ranges, marking its items in the page
	answered  int       // tasks the process finished
	retiring  bool      // no more tasks; end the process when idle
	retired   bool      // the session told the process to end
	killed    Cause     // why the session killed the process, or ""
	killMsg   string    // what the worker did wrong, when killed for it
	victim    *Flight   // the flight that timed out or erred, if any
	eofAt     time.Time // when the result pipe reached EOF
	eofMsg    string    // what the worker did wrong if it lives on past eofPatience, or ""
	brokenAt  time.Time // when a write to the task pipe failed
	brokenErr error     // how it failed
	// readerDone: the result reader sent its last event.
	readerDone bool

	// termAt is when the session sent SIGTERM to the process group
	// because an attempt ran out of time, giving it the victim's grace to
	// end before SIGKILL; zero otherwise. From then on nothing the worker
	// writes is taken as an answer.
	termAt time.Time
	// sentKill: the session sent SIGKILL, or may have (Process.Stop).
	sentKill bool
	// graceOver: the process outlived the grace and was sent SIGKILL.
	graceOver bool
	// overLimit: the session killed the process over MemLimit.
	overLimit bool

	oomBase uint64 // the group's oom_kill count when the process or attempt began
	// groupCounts: the group's own counter could be read at the start, so
	// that it, not the enclosing cgroup's witness, judges an OOM kill.
	groupCounts bool
	oomMark     memory.OOMMark // the enclosing cgroup's OOM witness then
	deadline    *time.Timer    // earliest timeout, start-up deadline or patience
	probe       *time.Timer    // line protocol: the next look at the worker
	spawned     time.Time      // when the process started
	freeAt      time.Time      // framed: when the process last had no task running
	startBy     startDeadline  // framed: when the process must be ready
	line        lineState      // line protocol: the checks
	itemTime    time.Duration  // recent time per item (line, framed task, batch item); 0 before the first

	// oomSince starts the window in which a kill that the kernel log
	// names in the process's tree is the death's cause: the start, or
	// when the idle worker last took a task.
	oomSince time.Time
	// oomVictim is the process of the tree whose OOM kill classify
	// found in the kernel log, for the death's message.
	oomVictim memory.Victim

	// pausedAt is when Pause stopped the process; zero when it runs.
	pausedAt time.Time

	// The group's peak is read and reset at most every peakEvery.
	peakAt   time.Time // when the peak was last reset
	peakRead bool      // peakLast is a reading that peakFor took at peakAt (not one at an idle worker's start)
	peakLast int64     // the last reading: the peak of the interval before peakAt
}

// StartSession starts a process as cfg says and returns its Session. For
// IOLine and IOFramed it starts the goroutines that read and write the
// process's pipes, which Reap ends. An error is Start's.
func StartSession(cfg Config, host Host) (*Session, error) {
	s := &Session{cfg: cfg, host: host, itemTime: cfg.ItemTime}
	spec := cfg.Spec
	if spec.IO == IOFramed {
		spec.Env = withEnv(spec.Env, protocol.EnvProtocol+"="+protocol.Framed,
			protocol.EnvTaskFD+"=3", protocol.EnvResultFD+"=4")
	}
	if cfg.Group != nil {
		spec.Cgroup = cfg.Group
		var err error
		s.oomBase, err = cfg.Group.OOMKills()
		s.groupCounts = err == nil
		// The peak is the new process's from its start: a persistent
		// slot's group held the process this one replaces, whose peak
		// was charged, at the first task here, to that task's death.
		// (For a one-shot job, the attempt is the process.)
		_ = cfg.Group.ResetPeak()
	} else {
		spec.Cgroup = cfg.Shim
	}
	s.markOOM()
	s.spawned = time.Now()
	s.oomSince = s.spawned
	proc, err := Start(spec)
	if err != nil {
		return nil, err
	}
	s.proc, s.freeAt = proc, s.spawned
	if cfg.Group == nil {
		s.watch = memory.StartWatch(proc.Pid, cfg.MemLimit)
	}
	if spec.IO == IONone {
		return s, nil
	}
	s.events = make(chan Event, 64)
	s.writes = make(chan []byte, cfg.Pipeline+1)
	s.writeErr = make(chan error, 1)
	s.gone = make(chan struct{})
	s.begin = make(chan struct{})
	s.pipe = &taskPipe{f: proc.Tasks}
	rd := resultReader{framed: spec.IO == IOFramed, r: proc.Results, events: s.events, gone: s.gone,
		begin: s.begin, maxLine: cfg.MaxLine, pipe: s.pipe}
	go rd.run()
	go writeTasks(s.pipe, s.writes, s.writeErr)
	if spec.IO == IOLine {
		// The first line waits until the worker is seen waiting for it.
		s.line = lineState{gateUntil: s.spawned.Add(cfg.StartTimeout), gateLook: gateFirstLook}
		s.armProbe()
	} else {
		s.startReader()
		s.startBy = startDeadline{at: s.spawned.Add(cfg.StartTimeout)}
		s.armDeadline()
	}
	return s, nil
}

// withEnv returns env (or the supervisor's environment when nil) with vars
// added.
func withEnv(env []string, vars ...string) []string {
	if env == nil {
		env = os.Environ()
	}
	return append(append([]string(nil), env...), vars...)
}

// PID is the process's id.
func (s *Session) PID() int { return s.proc.Pid }

// Spawned is when the process was started.
func (s *Session) Spawned() time.Time { return s.spawned }

// Watch is the sampler of the process's private memory, or nil where it
// has a cgroup of its own.
func (s *Session) Watch() *memory.Watch { return s.watch }

// ItemTime is the recent time per item of a persistent worker (a line, a
// framed task, an item of a framed batch), a moving average; 0 before the
// first answer.
func (s *Session) ItemTime() time.Duration { return s.itemTime }

// noteItemTime adds d, the time an item took, to the moving average.
func (s *Session) noteItemTime(d time.Duration) {
	if s.itemTime == 0 {
		s.itemTime = max(d, 1)
	} else {
		s.itemTime = max(s.itemTime+(d-s.itemTime)/8, 1)
	}
}

// Done is closed once the process has ended; then call Reap.
func (s *Session) Done() <-chan struct{} { return s.proc.Done() }

// Events delivers what the result reader read; hand each to Handle.
func (s *Session) Events() <-chan Event { return s.events }

// WriteErr delivers the writer's first error; hand it to PipeBroken.
func (s *Session) WriteErr() <-chan error { return s.writeErr }

// Deadline fires at the earliest deadline; then call CheckDeadlines.
func (s *Session) Deadline() <-chan time.Time {
	if s.deadline == nil {
		return nil
	}
	return s.deadline.C
}

// Pause stops the process's group where it is (SIGSTOP) until Continue,
// as a terminal's Ctrl-Z stops a foreground job, and stops its deadlines'
// timers: a paused process is never timed out or found stalled. A
// process the session is killing is left alone.
func (s *Session) Pause() {
	if !s.pausedAt.IsZero() || s.killed != "" {
		return
	}
	s.pausedAt = time.Now()
	_ = s.proc.Signal(syscall.SIGSTOP)
	for _, t := range []**time.Timer{&s.deadline, &s.probe} {
		if *t != nil {
			(*t).Stop()
			*t = nil
		}
	}
}

// Continue lets a paused process go on (SIGCONT), with every clock its
// deadlines and stall checks count from moved on by the time it was
// paused, and that time added to its running-item page's time paused
// (protocol.PagePausedOff) for the worker's own clocks.
func (s *Session) Continue() {
	if s.pausedAt.IsZero() {
		return
	}
	d := time.Since(s.pausedAt)
	s.pausedAt = time.Time{}
	shift := func(t *time.Time) {
		if !t.IsZero() {
			*t = t.Add(d)
		}
	}
	for _, f := range s.inflight {
		shift(&f.clock)
		shift(&f.sent)
	}
	for _, t := range []*time.Time{&s.freeAt, &s.startBy.at, &s.eofAt, &s.brokenAt,
		&s.line.gateUntil, &s.line.stallFrom, &s.line.progress} {
		shift(t)
	}
	// Before SIGCONT: the worker reads it as soon as it runs.
	s.proc.addPaused(d)
	_ = s.proc.Signal(syscall.SIGCONT)
	s.armDeadline()
	s.armProbe()
}

// Probe fires when a line worker is due a look; then call Look.
func (s *Session) Probe() <-chan time.Time {
	if s.probe == nil {
		return nil
	}
	return s.probe.C
}

// OverLimit is closed once the process's private memory went over
// MemLimit, where it has no cgroup of its own and is not being killed
// already (a process in its grace after a timeout still is held to the
// limit); otherwise it is nil.
func (s *Session) OverLimit() <-chan struct{} {
	if s.watch == nil || s.sentKill || s.killed != "" && s.termAt.IsZero() {
		return nil
	}
	return s.watch.Over()
}

// Last returns the newest flight, or nil.
func (s *Session) Last() *Flight {
	if len(s.inflight) == 0 {
		return nil
	}
	return s.inflight[len(s.inflight)-1]
}

// InFlight is how many tasks the process has been sent and not ended.
func (s *Session) InFlight() int { return len(s.inflight) }

// HasRoom reports whether the process may take another task.
func (s *Session) HasRoom() bool {
	cfg := &s.cfg
	if s.retiring || s.killed != "" || !s.eofAt.IsZero() || len(s.inflight) >= cfg.Pipeline {
		return false
	}
	switch cfg.Spec.IO {
	case IOFramed:
		if !s.ready || !s.aheadRoom() {
			return false
		}
	case IOLine:
		if !s.line.gateOpen || !s.aheadRoom() {
			return false
		}
	}
	if cfg.MaxTasks > 0 && s.answered+s.unanswered() >= cfg.MaxTasks {
		return false
	}
	select {
	case <-s.proc.Done():
		return false // it exited between tasks: reap it first
	default:
		return true
	}
}

// aheadRoom reports whether the process may be sent one more task beyond
// those it holds: at once when it holds none; with tasks in flight, only
// while its items are known to be short: the one it runs has not run for
// PipelineAhead, and those it holds are fewer than it answers in
// PipelineAhead by its recent time per item (so one at most behind an
// item of a few milliseconds, none behind one of 10 ms or more, none before
// its first answer). A line block or a framed batch is one task of many
// items. A task sent to a worker cannot be taken back: one sent behind a
// task that turns out long waits for it, even if another worker is free by
// then; this bound keeps that to tasks sent while items were short.
func (s *Session) aheadRoom() bool {
	if len(s.inflight) == 0 {
		return true
	}
	if s.itemTime <= 0 {
		return false
	}
	if f := s.runningFlight(); f != nil && time.Since(f.clock) >= PipelineAhead {
		return false
	}
	return int64(s.unanswered()) < 1+int64(PipelineAhead/s.itemTime)
}

// unanswered counts the tasks in flight, each item of a batch as one, less
// the items the worker has answered.
func (s *Session) unanswered() int {
	n := 0
	for _, f := range s.inflight {
		if f.Items != nil {
			n += len(f.Items) - f.Answered()
		} else {
			n++
		}
	}
	return n
}

// Send encodes f for the process; Flush hands what was encoded to the
// writer. For IONone the flight is the process's one task, running since
// the process started.
func (s *Session) Send(f *Flight) {
	f.sent = time.Now()
	s.inflight = append(s.inflight, f)
	switch s.cfg.Spec.IO {
	case IONone:
		s.startFlight(f, s.spawned)
	case IOLine:
		f.off = s.line.sent
		if f.Items != nil {
			// A block of lines, written at once.
			first := int(f.Items[0])
			f.lines = LineSpan(f.Input, first, first+len(f.Items))
			if len(s.pending) == 0 {
				s.pending = f.lines // no copy; its capacity ends with it
			} else {
				s.pending = append(s.pending, f.lines...)
			}
			s.line.sent += int64(len(f.lines))
		} else {
			s.pending = append(append(s.pending, f.Input...), '\n')
			s.line.sent += int64(len(f.Input)) + 1
		}
		f.end = s.line.sent
		s.line.progress = f.sent
		s.armProbe()
		// A line worker answers in order, and the line protocol cannot say
		// when a task starts: the oldest line in flight is the one running,
		// from when it was sent or the previous line was answered.
		if len(s.inflight) == 1 {
			s.startFlight(f, f.sent)
		}
	case IOFramed:
		before := len(s.pending)
		defer func() {
			f.off = s.framedSent
			s.framedSent += int64(len(s.pending) - before)
			f.end = s.framedSent
		}()
		s.line.progress = f.sent
		s.armProbe()
		if f.Items == nil {
			s.pending = s.cfg.Frame(s.pending, f.ID, f.Input)
			break
		}
		if !s.batches {
			// Charged to the batch's first item, whose attempt says why.
			s.startFlight(f, f.sent)
			s.protocolError(fmt.Sprintf("the worker speaks framed/%d, which has no batch tasks (framed/%d)",
				protocol.Version, protocol.BatchVersion))
			return
		}
		if s.ranges && len(f.Items) < protocol.BatchRange && consecutive(f.Items) {
			// Its items are a range (the pool only splits batches so): the
			// compact form, with no index list.
			s.pending = protocol.AppendBatchRange(s.pending, f.ID, f.Items[0], uint32(len(f.Items)), f.Input)
			break
		}
		s.pending = protocol.AppendBatch(s.pending, f.ID, f.Items, f.Input)
	}
}

// Flush hands the encoded tasks to the writer in one message. The writes
// channel holds one message per task at most, so this never blocks.
func (s *Session) Flush() {
	if len(s.pending) == 0 {
		return
	}
	s.writes <- s.pending
	s.pending = nil
	if s.cfg.Spec.IO == IOFramed && s.timed() {
		s.armDeadline() // a task the worker never starts is timed from now
	}
}

// timed reports whether an attempt in flight may time out.
func (s *Session) timed() bool {
	for _, f := range s.inflight {
		if f.Timeout > 0 {
			return true
		}
	}
	return false
}

// startReader lets the result reader start reading.
func (s *Session) startReader() {
	if !s.begun && s.begin != nil {
		s.begun = true
		close(s.begin)
	}
}

// startFlight marks f running since at.
func (s *Session) startFlight(f *Flight, at time.Time) {
	f.started, f.start, f.clock = true, at, at
	g := s.cfg.Group
	if len(s.inflight) == 1 && s.cfg.Spec.IO != IONone {
		s.markOOM() // the worker was idle: its window starts anew
		if s.groupCounts {
			// So does its group's count: a kill counted while the worker
			// lived on (the OOM killer took a task's child, and the
			// worker answered) is not the next death's cause.
			if n, err := g.OOMKills(); err == nil {
				s.oomBase = n
			}
		}
		if s.watch != nil {
			s.watch.ResetPeak() // and its peak
			s.oomSince = at     // and the kernel log's window
		}
		if g != nil && at.Sub(s.peakAt) >= peakEvery {
			// The worker was idle: measure its peak from here. The peak
			// until here is kept: a worker that dies right after its
			// start frame may be dying already, its memory freed, when
			// the frame is read (exitOutcome charges it this reading).
			last, err := g.Peak()
			if g.ResetPeak() == nil {
				s.peakAt, s.peakRead, s.peakLast = at, false, 0
				if err == nil {
					s.peakLast = last
				}
			}
		}
	}
	s.host.Started(f)
	s.armDeadline()
}

// markOOM starts the window in which the enclosing cgroup's OOM witness
// judges the process's death, where workers share that cgroup. A process
// whose group counts its own OOM kills needs no window (and its start no
// read of the enclosing counter).
func (s *Session) markOOM() {
	if s.cfg.Witness != nil && !s.groupCounts {
		s.oomMark = s.cfg.Witness.Snapshot()
	}
}

// peakFor is the peak memory to charge to f as it ends at now: the peak read
// now, or, within peakEvery of the last reading, that reading. A reading
// also raises the peak of every other running attempt.
func (s *Session) peakFor(f *Flight, now time.Time) int64 {
	g := s.cfg.Group
	if g == nil {
		if s.watch != nil {
			return max(f.peak, s.watch.Peak())
		}
		return 0
	}
	if !s.peakRead || now.Sub(s.peakAt) >= peakEvery {
		if p, err := g.Peak(); err == nil {
			s.peakLast, s.peakRead = p, true
			if g.ResetPeak() == nil {
				s.peakAt = now
			}
			for _, o := range s.inflight {
				if o.started {
					o.peak = max(o.peak, p)
				}
			}
		}
	}
	return max(f.peak, s.peakLast)
}

// Kill ends the process at once and remembers why, unless it was already
// being killed for another cause. (Over the memory limit during the grace
// after a timeout, the death is the memory limit's: see deathCause.)
func (s *Session) Kill(c Cause) {
	if s.killed == "" {
		s.killed = c
	}
	if c == CauseMemoryLimit && !s.sentKill {
		s.overLimit = true
	}
	s.sentKill = true
	s.proc.Kill()
}

// timeOut ends the process because flight f ran out of time: SIGTERM to
// its process group, so that the job may clean up (remove its temporary
// files, write a checkpoint), then SIGKILL once f's grace (timeoutGrace)
// has passed if anything is left of it; SIGKILL at once without a grace. The
// deadline timer, the owner's like every other, brings the SIGKILL
// (CheckDeadlines); Reap stops it. The attempt's cause is CauseTimeout
// however the process then ends, unless memory ends it first.
func (s *Session) timeOut(f *Flight) {
	s.victim = f
	if s.timeoutGrace(f) <= 0 || s.killed != "" {
		s.Kill(CauseTimeout)
		return
	}
	s.killed, s.termAt = CauseTimeout, time.Now()
	s.proc.Terminate()
	if s.probe != nil {
		s.probe.Stop()
		s.probe = nil
	}
	s.armDeadline()
}

// graceEnds is when the grace after a timeout's SIGTERM ends; zero when
// none runs.
func (s *Session) graceEnds() time.Time {
	if s.termAt.IsZero() || s.sentKill {
		return time.Time{}
	}
	return s.termAt.Add(s.timeoutGrace(s.victim))
}

// timeoutGrace is the time between SIGTERM and SIGKILL when flight f runs
// out of time: its own Flight.TimeoutGrace, else cfg.TimeoutGrace; 0 or
// less means SIGKILL at once.
func (s *Session) timeoutGrace(f *Flight) time.Duration {
	if f != nil && f.TimeoutGrace != 0 {
		return f.TimeoutGrace
	}
	return s.cfg.TimeoutGrace
}

// Preempt stops the process if it runs task id (for a line worker: holds
// its line, which is in the way of the memory the worker holds). It
// reports whether it did.
func (s *Session) Preempt(id uint64) bool {
	for _, f := range s.inflight {
		if f.ID == id && (f.started || s.cfg.Spec.IO == IOLine) {
			s.Kill(CausePreempted)
			return true
		}
	}
	return false
}

// The stop sequence is Process.Stop and Retire, not exec.Cmd's Cancel and
// WaitDelay. Cancel runs only when a context is done and signals one pid,
// not the process group; WaitDelay only bounds the copying goroutines
// exec.Cmd starts, and our pipes are our own. Neither keeps the guarantee
// that Process.wait gives: the one waiter sees the death with
// waitid(WNOWAIT) and SIGKILLs the whole group before it reaps, so the
// group id cannot be reused by then; nor the steps a retired worker gets
// (EOF on its task pipe, patience, SIGTERM, grace, SIGKILL).

// Cancel ends the process because the pool aborts: with SIGTERM, then
// SIGKILL after Config.Grace, or at once when now is set. A persistent
// process's attempts are cancelled whatever else was killing it; a one-shot
// process the pool had already ended keeps that cause, and one that had
// ended by itself, its job done or failed, keeps its own end: the stop came
// too late to change it.
func (s *Session) Cancel(now bool) {
	switch {
	case s.cfg.Spec.IO != IONone:
		s.killed = CauseCancelled
	case s.killed == "" && !s.proc.Exited() && !s.proc.exiting():
		// Its runner may see the stop before its end (both are ready, or
		// the process has exited and is not reaped yet, or is exiting):
		// taken for cancelled, a job that had done its work ran again on
		// --resume. It is signalled all the same: a process whose first
		// thread has exited may have others.
		s.killed = CauseCancelled
	}
	s.sentKill = true // now, or after Grace
	if now {
		s.proc.Kill()
		return
	}
	s.proc.Stop(s.cfg.Grace)
}

// Retire ends the process once it has no task in flight.
func (s *Session) Retire() {
	s.retiring = true
	s.retireIfIdle()
}

func (s *Session) retireIfIdle() {
	if s.retiring && len(s.inflight) == 0 && s.killed == "" && !s.retired {
		s.retired = true
		s.proc.Retire(s.cfg.Grace, s.cfg.Grace)
	}
}

// PipeBroken handles a failed write to the task pipe. A worker that exits
// makes writes fail too; it is given a moment to be reaped, so that its exit
// status says what happened, before brokenPipe blames it.
func (s *Session) PipeBroken(err error) {
	if s.killed != "" || s.retired || !s.brokenAt.IsZero() {
		return // the session closed the pipe itself, or already knows
	}
	s.brokenAt, s.brokenErr = time.Now(), err
	s.armDeadline()
}

// brokenPipe kills a worker that is alive but can no longer take tasks.
// The task it was running is charged (for a line worker, only if it read
// some of its line); the others go back to the queue.
func (s *Session) brokenPipe() {
	line := s.cfg.Spec.IO == IOLine
	if line && !s.line.gateOpen {
		s.gateFault()
		return
	}
	what := "its task pipe"
	if line {
		what = "its stdin"
	}
	s.protocolError(fmt.Sprintf("the worker closed %s with %d of the tasks sent to it unanswered (%v)",
		what, len(s.inflight), s.brokenErr))
}

func (s *Session) protocolError(msg string) {
	if s.killed == "" {
		// The running attempts get the message through their Outcome.
		for _, f := range s.inflight {
			if f.started {
				s.victim = f
				break
			}
		}
		s.killMsg = msg
		if s.victim == nil && s.ready {
			s.strayFrame(msg)
		}
	}
	s.Kill(CauseProtocol)
}

// strayFrame tells the user of a framed worker killed for a protocol error
// when no task was running: no attempt carries the message, and without a
// note the worker would be replaced without a word (a second answer, or the
// rest of a frame whose length field was too short, once its task is done).
func (s *Session) strayFrame(msg string) {
	note := fmt.Sprintf("worker %d broke the framed protocol and was killed: %s; no task was running, so none was charged", s.proc.Pid, msg)
	if s.answered > 0 {
		// A frame cut short is taken for a whole one: the results
		// before the error may hold the wrong bytes.
		results := "the 1 result"
		if s.answered > 1 {
			results = fmt.Sprintf("the %d results", s.answered)
		}
		note += "; " + results + " it sent before went out as they came, and may be wrong"
	}
	s.host.Note(Note{Kind: NoteOutOfStep, Answered: s.answered, Message: note})
}

// succeed ends f with its output and checks whether the process should be
// retired.
func (s *Session) succeed(f *Flight, output []byte) {
	if s.answered == 0 {
		s.host.Up()
	}
	if f.lines == nil {
		s.answered++ // a line batch counts its lines as they are answered
	}
	cfg := &s.cfg
	if cfg.MaxTasks > 0 && s.answered >= cfg.MaxTasks {
		s.retiring = true
	}
	if cfg.MaxRSS > 0 {
		if rss, err := s.memoryInUse(); err == nil && rss > cfg.MaxRSS {
			s.retiring = true
			if s.answered <= max(len(f.Items), 1) {
				// Over MaxRSS after its first task: most likely every
				// worker is, once started, and each task then waits for
				// a start, with nothing else to say why it is slow.
				s.host.Note(Note{Kind: NoteOverMaxRSS, ID: f.ID, Answered: s.answered, Message: fmt.Sprintf(
					"worker %d holds %s after its first task, over the max RSS of %s, and is replaced: "+
						"a worker that holds as much once started is replaced after every task, and each task then waits for a new worker to start; "+
						"give a max RSS above what a worker holds once started",
					s.proc.Pid, bytesize.Format(rss), bytesize.Format(cfg.MaxRSS))})
			}
		}
	}
	s.endFlight(f, Outcome{ExitCode: -1}, output)
}

// memoryInUse is the process's memory: its cgroup's usage less the
// inactive page cache where it has one (a worker that read a large file
// once is not bloated), otherwise what its process tree alone holds.
func (s *Session) memoryInUse() (int64, error) {
	if s.cfg.Group != nil {
		return s.cfg.Group.WorkingSet()
	}
	return memory.TreePrivateMemory(s.proc.Pid)
}

// endFlight removes f from the flights and tells the host how it ended.
func (s *Session) endFlight(f *Flight, o Outcome, output []byte) {
	for i, g := range s.inflight {
		if g == f {
			s.inflight = append(s.inflight[:i], s.inflight[i+1:]...)
			break
		}
	}
	o.PID, o.Start, o.End = s.proc.Pid, f.start, time.Now()
	o.PeakRSS = s.peakFor(f, o.End)
	if s.cfg.Spec.IO == IOFramed {
		if o.Cause == "" || o.Cause == CauseTaskError {
			n := time.Duration(max(len(f.Items), 1))
			s.noteItemTime(o.End.Sub(f.start) / n)
		}
		if s.runningFlight() == nil {
			s.freeAt = o.End // the next task's time runs from here if it is not started
		}
	}
	s.host.Ended(f, o, output)
	s.armDeadline()
	s.retireIfIdle()
}

// runningFlight returns the oldest started flight, or nil.
func (s *Session) runningFlight() *Flight {
	for _, f := range s.inflight {
		if f.started {
			return f
		}
	}
	return nil
}

func (s *Session) flightByID(id uint64) *Flight {
	for _, f := range s.inflight {
		if f.ID == id {
			return f
		}
	}
	return nil
}
