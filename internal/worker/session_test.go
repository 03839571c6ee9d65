package worker

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"os/signal"
	"runtime"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/safepool/safepool/internal/protocol"
)

// The test binary is also the worker the Session tests run: TestMain turns
// it into one when helperEnv names a mode. Each task's input says what the
// worker does with it (see behave).
const helperEnv = "SAFEPOOL_WORKER_HELPER"

func TestMain(m *testing.M) {
	if mode := os.Getenv(helperEnv); mode != "" {
		os.Exit(runHelper(mode))
	}
	os.Exit(m.Run())
}

// runHelper runs the test binary as a worker of mode: "framed", "line", or
// "oneshot" (its last argument is its one task).
func runHelper(mode string) int {
	switch mode {
	case "framed":
		in := protocol.NewReader(os.NewFile(3, "tasks"), 0)
		res := os.NewFile(4, "results")
		out := protocol.NewWriter(res)
		out.WriteFrame(protocol.Frame{Kind: protocol.KindReady, Payload: protocol.ReadyPayload()})
		out.Flush()
		for {
			f, err := in.ReadFrame()
			if err != nil {
				return 0
			}
			if string(f.Payload) == "freedstart" {
				startAfterDeath(res, f.ID) // never returns
			}
			out.WriteFrame(protocol.Frame{Kind: protocol.KindStart, ID: f.ID})
			out.Flush()
			switch input := string(f.Payload); input {
			case "garbage":
				res.Write([]byte("this is not a frame header at all\n"))
				time.Sleep(time.Hour)
			case "close":
				res.Close() // and live on
				time.Sleep(time.Hour)
			case "fail":
				out.WriteFrame(protocol.Frame{Kind: protocol.KindError, ID: f.ID, Payload: []byte("bad input")})
			default:
				out.WriteFrame(protocol.Frame{Kind: protocol.KindResult, ID: f.ID, Payload: []byte(behave(input))})
			}
			out.Flush()
		}
	case "silent":
		time.Sleep(time.Hour) // never ready
		return 0
	case "line":
		in := bufio.NewReader(os.Stdin)
		for {
			line, err := in.ReadString('\n')
			if err != nil {
				return 0
			}
			input := strings.TrimSuffix(line, "\n")
			if input == "longafter" {
				// Its answer and, in the same write, a line over any
				// limit of a few KiB.
				os.Stdout.WriteString("ok:longafter\n" + strings.Repeat("x", 8000) + "\n")
				continue
			}
			if input == "twice" {
				// A line too many, written with the answer in one write so
				// that both reach the session in one read: written apart,
				// the session may match the first with the line and only
				// then see the second, with nothing in flight.
				os.Stdout.WriteString("ok:twice\nok:twice\n")
				continue
			}
			fmt.Println(behave(input))
		}
	case "oneshot":
		behave(os.Args[len(os.Args)-1])
		return 0
	case "cghog", "nap":
		return runTreeHelper(mode, os.Args[slices.Index(os.Args, "--")+1:])
	}
	return 2
}

// behave does what input says: "die" exits 3 at once, "exit0" exits 0,
// "kill" SIGKILLs itself, "halfline" does so after half a line of stderr, "hang" sleeps, "nap" sleeps 20 ms and answers,
// "lateanswer" answers when it gets SIGTERM (and lives on), "termgrow" holds 128 MiB more once it gets SIGTERM,
// "lategrow:MB[:FILE]" grows by MB MiB after 400 ms (see lateGrow),
// "gofault:private:N" and "gofault:data:N" crash as a Go runtime that
// faulted, N bytes in (see goFault);
// anything else is answered "ok:input".
func behave(input string) string {
	if arg, ok := strings.CutPrefix(input, "lategrow:"); ok {
		lateGrow(arg)
	}
	if arg, ok := strings.CutPrefix(input, "gofault:"); ok {
		goFault(arg)
	}
	switch input {
	case "lateanswer":
		term := make(chan os.Signal, 1)
		signal.Notify(term, syscall.SIGTERM)
		<-term
	case "termgrow":
		term := make(chan os.Signal, 1)
		signal.Notify(term, syscall.SIGTERM)
		<-term
		b := make([]byte, 128<<20)
		for i := 0; i < len(b); i += 4096 {
			b[i] = 1
		}
		time.Sleep(time.Hour)
		runtime.KeepAlive(b)
	case "nap":
		time.Sleep(20 * time.Millisecond)
	case "die":
		fmt.Fprintln(os.Stderr, "worker: giving up on", input)
		os.Exit(3)
	case "exit0":
		os.Exit(0)
	case "kill":
		syscall.Kill(os.Getpid(), syscall.SIGKILL)
		time.Sleep(time.Hour)
	case "halfline":
		// Killed in the middle of a line of its stderr.
		os.Stderr.WriteString("worker: half a li")
		syscall.Kill(os.Getpid(), syscall.SIGKILL)
		time.Sleep(time.Hour)
	case "hang":
		time.Sleep(time.Hour)
	}
	return "ok:" + input
}

// host records what a Session tells its owner.
type host struct {
	ups   int
	ended []ending
	notes []Note
	// slow is how long Ended takes, as a pool's runner does when the
	// pool's loop is slow to take its report.
	slow time.Duration
}

type ending struct {
	id     uint64
	o      Outcome
	output string
}

func (h *host) Up()                                 {}
func (h *host) Ready()                              {}
func (h *host) Started(f *Flight)                   {}
func (h *host) Answered(f *Flight, a Answer, i int) {}
func (h *host) Note(n Note)                         { h.notes = append(h.notes, n) }
func (h *host) Ended(f *Flight, o Outcome, output []byte) {
	time.Sleep(h.slow)
	h.ended = append(h.ended, ending{f.ID, o, string(output)})
}

// helperConfig is a Session's configuration for the helper in mode.
func helperConfig(mode string, io IO, args ...string) Config {
	return Config{
		Spec: Spec{Args: append([]string{os.Args[0], "-test.run=^$"}, args...),
			Env: append(os.Environ(), helperEnv+"="+mode), IO: io},
		Frame: func(buf []byte, id uint64, payload []byte) []byte {
			b := frameBuf(buf)
			w := protocol.NewWriter(&b)
			w.WriteFrame(protocol.Frame{Kind: protocol.KindTask, ID: id, Payload: payload})
			w.Flush()
			return b
		},
		StartTimeout: 5 * time.Second,
		// A helper built with -race sleeps a second as it exits
		// (GORACE atexit_sleep_ms): give it longer before SIGTERM.
		Grace:    5 * time.Second,
		Pipeline: 4,
		MaxLine:  1 << 20,
	}
}

type frameBuf []byte

func (b *frameBuf) Write(p []byte) (int, error) { *b = append(*b, p...); return len(p), nil }

// drive starts a Session with cfg, sends it the inputs once it has room,
// retires it after the last when retire is set, and runs it, as a pool's
// runner does, until its process dies or limit passes (then it is
// cancelled). It returns the host and the Death.
func drive(t *testing.T, cfg Config, inputs []string, retire bool, limit time.Duration) (*host, *Death) {
	t.Helper()
	h := &host{}
	s, err := StartSession(cfg, h)
	if err != nil {
		t.Fatalf("StartSession() = %v", err)
	}
	give := time.NewTimer(limit)
	defer give.Stop()
	for {
		if len(inputs) > 0 && (cfg.Spec.IO == IONone || s.HasRoom()) {
			id := uint64(len(h.ended) + len(s.inflight) + 1)
			s.Send(&Flight{ID: id, Input: []byte(inputs[0]), Timeout: cfg.Timeout})
			s.Flush()
			inputs = inputs[1:]
			if len(inputs) == 0 && retire {
				s.Retire()
			}
			continue
		}
		select {
		case ev := <-s.Events():
			s.Handle(ev)
		case <-s.Done():
			return h, s.Reap()
		case <-s.Deadline():
			s.CheckDeadlines()
		case <-s.Probe():
			s.Look(time.Now())
		case err := <-s.WriteErr():
			s.PipeBroken(err)
		case <-give.C:
			s.Cancel(true)
		}
	}
}

func TestSessionCause(t *testing.T) {
	tests := []struct {
		name    string
		mode    string
		io      IO
		timeout time.Duration
		inputs  []string
		answers int    // results before the death
		cause   Cause  // the Death's cause
		message string // in the dead flight's Outcome.Message
		killed  Cause
	}{
		{name: "framed dies mid-task", mode: "framed", io: IOFramed, inputs: []string{"a", "die"}, answers: 1,
			cause: ExitCause(3), message: "worker: giving up on die"},
		{name: "framed exits 0 early", mode: "framed", io: IOFramed, inputs: []string{"exit0"}, cause: ExitCause(0)},
		{name: "framed garbage frame", mode: "framed", io: IOFramed, inputs: []string{"garbage"},
			cause: CauseProtocol, killed: CauseProtocol, message: "frame"},
		{name: "framed closes its result pipe", mode: "framed", io: IOFramed, inputs: []string{"close"},
			cause: CauseProtocol, killed: CauseProtocol, message: "closed its result pipe"},
		{name: "framed SIGKILLed", mode: "framed", io: IOFramed, inputs: []string{"kill"},
			cause: SignalCause(syscall.SIGKILL)},
		{name: "framed hangs", mode: "framed", io: IOFramed, timeout: 300 * time.Millisecond, inputs: []string{"hang"},
			cause: CauseTimeout, killed: CauseTimeout, message: "killed after 300ms"},
		{name: "line dies mid-task", mode: "line", io: IOLine, inputs: []string{"a", "die"}, answers: 1,
			cause: ExitCause(3), message: "giving up"},
		{name: "line SIGKILLed", mode: "line", io: IOLine, inputs: []string{"kill"}, cause: SignalCause(syscall.SIGKILL)},
		{name: "line hangs", mode: "line", io: IOLine, timeout: 300 * time.Millisecond, inputs: []string{"hang"},
			cause: CauseTimeout, killed: CauseTimeout},
		{name: "oneshot dies", mode: "oneshot", io: IONone, inputs: []string{"die"}, cause: ExitCause(3)},
		{name: "oneshot SIGKILLed", mode: "oneshot", io: IONone, inputs: []string{"kill"},
			cause: SignalCause(syscall.SIGKILL)},
		{name: "oneshot hangs", mode: "oneshot", io: IONone, timeout: 300 * time.Millisecond, inputs: []string{"hang"},
			cause: CauseTimeout, killed: CauseTimeout, message: "killed after 300ms"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			var args []string
			if tt.io == IONone {
				args = []string{"--", tt.inputs[0]}
			}
			cfg := helperConfig(tt.mode, tt.io, args...)
			cfg.Timeout = tt.timeout
			h, d := drive(t, cfg, tt.inputs, false, 20*time.Second)
			if d.Cause != tt.cause || d.Killed != tt.killed {
				t.Fatalf("Death = cause %q killed %q, want %q, %q (stderr %q)", d.Cause, d.Killed, tt.cause, tt.killed, d.Stderr)
			}
			if len(h.ended) != tt.answers {
				t.Errorf("answers before the death = %v, want %d", h.ended, tt.answers)
			}
			for _, e := range h.ended {
				if e.o.Cause != "" || e.output != "ok:a" {
					t.Errorf("answer = %+v, want ok:a", e)
				}
			}
			if len(d.Flights) != 1 {
				t.Fatalf("flights at the death = %d, want 1", len(d.Flights))
			}
			c := d.Flights[0]
			if !c.Started || c.Outcome.Cause != tt.cause || c.Outcome.PID != d.PID {
				t.Errorf("casualty = %+v, want started, cause %q, pid %d", c, tt.cause, d.PID)
			}
			if !strings.Contains(c.Outcome.Message, tt.message) {
				t.Errorf("Outcome.Message = %q, want it to contain %q", c.Outcome.Message, tt.message)
			}
			if d.Expected() {
				t.Errorf("Death.Expected() = true for a death the session did not intend")
			}
		})
	}
}

// TestSessionTimeoutGrace: a persistent worker whose task ran out of time
// gets SIGTERM, and SIGKILL after TimeoutGrace; what it writes in the
// grace, here the timed-out task's answer, is not taken: the task ends
// with CauseTimeout.
func TestSessionTimeoutGrace(t *testing.T) {
	for _, io := range []IO{IOFramed, IOLine} {
		mode := map[IO]string{IOFramed: "framed", IOLine: "line"}[io]
		t.Run(mode, func(t *testing.T) {
			t.Parallel()
			cfg := helperConfig(mode, io)
			cfg.Timeout, cfg.TimeoutGrace = 300*time.Millisecond, 700*time.Millisecond
			start := time.Now()
			h, d := drive(t, cfg, []string{"lateanswer"}, false, 20*time.Second)
			if took := time.Since(start); took < cfg.Timeout+cfg.TimeoutGrace {
				t.Errorf("the worker ended %v after its start, before its grace was over", took)
			}
			if len(h.ended) != 0 {
				t.Errorf("answers = %+v, want none: the answer came after the timeout", h.ended)
			}
			if d.Cause != CauseTimeout || d.Killed != CauseTimeout || d.Exit.Signal != syscall.SIGKILL || len(d.Flights) != 1 {
				t.Fatalf("Death = %+v, want killed for a timeout by SIGKILL, one flight", d)
			}
			if o := d.Flights[0].Outcome; o.Cause != CauseTimeout ||
				o.Message != "killed after 300ms: SIGTERM, then SIGKILL after a grace of 700ms" {
				t.Errorf("Outcome = %+v, want the timeout, SIGTERM then SIGKILL", o)
			}
		})
	}
}

// TestSessionTimeoutGraceOverLimit: a process without a cgroup of its own
// is held to MemLimit during its grace after a timeout too: one that grows
// past it then is killed at once, and its death is memory-limit.
func TestSessionTimeoutGraceOverLimit(t *testing.T) {
	cfg := helperConfig("oneshot", IONone, "--", "termgrow")
	// The timeout leaves the worker time to set its SIGTERM handler: a
	// race build on a loaded machine had not in 200 ms, and died of the
	// SIGTERM itself.
	cfg.Timeout, cfg.TimeoutGrace, cfg.MemLimit = 3*time.Second, 30*time.Second, 32<<20
	s, err := StartSession(cfg, &host{})
	if err != nil {
		t.Fatal(err)
	}
	s.Send(&Flight{ID: 1, Timeout: cfg.Timeout})
	start := time.Now()
	give := time.NewTimer(20 * time.Second)
	defer give.Stop()
	for done := false; !done; {
		select {
		case <-s.Done():
			done = true
		case <-s.Deadline():
			s.CheckDeadlines()
		case <-s.OverLimit():
			s.Kill(CauseMemoryLimit)
		case <-give.C:
			s.Cancel(true)
		}
	}
	d := s.Reap()
	if d.Cause != CauseMemoryLimit || len(d.Flights) != 1 || d.Flights[0].Outcome.Cause != CauseMemoryLimit {
		t.Errorf("Death = %+v after %v, want memory-limit", d, time.Since(start))
	}
	if took := time.Since(start); took > 10*time.Second {
		t.Errorf("the process ended %v after its start, want at once when over the limit in its grace", took)
	}
}

func TestSessionAnswersAndRetires(t *testing.T) {
	for _, mode := range []string{"framed", "line"} {
		t.Run(mode, func(t *testing.T) {
			t.Parallel()
			io := IOFramed
			if mode == "line" {
				io = IOLine
			}
			cfg := helperConfig(mode, io)
			h, d := drive(t, cfg, []string{"a", "a", "a"}, true, 20*time.Second)
			if len(h.ended) != 3 {
				t.Fatalf("answers = %v, want 3", h.ended)
			}
			if !d.Retired || !d.Expected() || d.Cause != ExitCause(0) || len(d.Flights) != 0 || d.Answered != 3 {
				t.Errorf("Death = %+v, want retired, exit:0, no flights, 3 answered", d)
			}
		})
	}
}

func TestSessionTaskError(t *testing.T) {
	cfg := helperConfig("framed", IOFramed)
	h, d := drive(t, cfg, []string{"fail"}, true, 20*time.Second)
	if len(h.ended) != 1 || h.ended[0].o.Cause != CauseTaskError || h.ended[0].o.Message != "bad input" {
		t.Fatalf("ended = %+v, want one task-error \"bad input\"", h.ended)
	}
	if !d.Expected() {
		t.Errorf("Death = %+v, want retired", d)
	}
}

func TestSessionNeverReady(t *testing.T) {
	cfg := helperConfig("silent", IOFramed)
	cfg.StartTimeout = 200 * time.Millisecond
	_, d := drive(t, cfg, nil, false, 20*time.Second)
	if d.Cause != CauseTimeout || d.Failure == nil || !strings.Contains(d.Failure.Error(), "no ready frame") {
		t.Fatalf("Death = cause %q, failure %v; want timeout, no ready frame", d.Cause, d.Failure)
	}
}

func TestSessionOutOfStep(t *testing.T) {
	cfg := helperConfig("line", IOLine)
	h, d := drive(t, cfg, []string{"a", "twice"}, false, 20*time.Second)
	if d.Cause != CauseProtocol || d.Killed != CauseProtocol {
		t.Fatalf("Death = cause %q killed %q, want protocol, protocol", d.Cause, d.Killed)
	}
	if len(h.notes) != 1 || h.notes[0].Kind != NoteOutOfStep || h.notes[0].Answered != 1 ||
		!strings.Contains(h.notes[0].Message, "the 1 answers it gave before may belong to other lines") {
		t.Errorf("notes = %+v, want one out-of-step note after 1 answer", h.notes)
	}
}

func TestSessionCancel(t *testing.T) {
	cfg := helperConfig("framed", IOFramed)
	_, d := drive(t, cfg, []string{"hang"}, false, 300*time.Millisecond)
	if d.Cause != CauseCancelled || !d.Expected() || len(d.Flights) != 1 || !d.Flights[0].Started {
		t.Fatalf("Death = %+v, want cancelled with the hung flight", d)
	}
}

func TestSessionOneShotSucceeds(t *testing.T) {
	cfg := helperConfig("oneshot", IONone, "--", "a")
	_, d := drive(t, cfg, []string{"a"}, false, 20*time.Second)
	if d.Cause != "" || len(d.Flights) != 1 || d.Flights[0].Outcome.Cause != "" || d.Flights[0].Outcome.ExitCode != 0 {
		t.Fatalf("Death = %+v, want a success", d)
	}
}

// TestSessionLateOwner: a worker is SIGKILLed, so its result pipe reaches
// EOF and it dies at once; its owner, late on a loaded machine, looks at a
// deadline that has passed (the EOF patience, or the task's timeout) only
// with Done ready too. The death is still the signal, not a closed pipe or
// a timeout.
func TestSessionLateOwner(t *testing.T) {
	for _, late := range []string{"eof", "timeout"} {
		t.Run(late, func(t *testing.T) {
			s, err := StartSession(helperConfig("framed", IOFramed), &host{})
			if err != nil {
				t.Fatalf("StartSession() = %v", err)
			}
			give := time.After(20 * time.Second)
			next := func() {
				select {
				case ev := <-s.Events():
					s.Handle(ev)
				case <-give:
					s.Cancel(true)
					<-s.Done()
					t.Fatalf("the worker was not ready, or not killed, within 20s (death %+v)", s.Reap())
				}
			}
			for !s.HasRoom() {
				next()
			}
			s.Send(&Flight{ID: 1, Input: []byte("kill"), Timeout: time.Millisecond})
			s.Flush()
			for s.eofAt.IsZero() {
				next()
			}
			<-s.Done()
			if late == "eof" {
				s.eofAt = time.Now().Add(-time.Second) // the patience has passed
			} else {
				s.eofAt = time.Time{} // only the task's 1ms has passed
			}
			s.CheckDeadlines()
			d := s.Reap()
			if d.Cause != SignalCause(syscall.SIGKILL) || d.Killed != "" {
				t.Fatalf("Death = cause %q killed %q, want %q by nobody", d.Cause, d.Killed, SignalCause(syscall.SIGKILL))
			}
		})
	}
}

// TestSessionLongLineAfterAnswers: a line worker writes an answer and, in
// the same write, a line longer than MaxLine. The answer, read with the
// long line, is still an answer: only what the long line answers is at
// fault.
func TestSessionLongLineAfterAnswers(t *testing.T) {
	cfg := helperConfig("line", IOLine)
	cfg.MaxLine = 1024
	h, d := drive(t, cfg, []string{"a", "longafter"}, false, 20*time.Second)
	if d.Cause != CauseProtocol {
		t.Fatalf("Death = cause %q, want %q", d.Cause, CauseProtocol)
	}
	var got []string
	for _, e := range h.ended {
		if e.o.Cause != "" {
			t.Errorf("answer %d ended with cause %q (%s), want answered", e.id, e.o.Cause, e.o.Message)
		}
		got = append(got, e.output)
	}
	if strings.Join(got, ",") != "ok:a,ok:longafter" {
		t.Errorf("answers = %q, want ok:a and ok:longafter", got)
	}
	for _, c := range d.Flights {
		t.Errorf("flight %d in flight at the death (%s), want none", c.Flight.ID, c.Outcome.Message)
	}
}

// TestSessionLateWriter: a line worker reads its line and SIGKILLs itself
// while the goroutine that wrote the line, late on a loaded machine, has
// not yet counted what write(2) took. The line was read: its flight is
// charged with the death, not taken for unread and given back (which
// would let a line that kills every worker run, and kill, once more than
// its retries allow).
func TestSessionLateWriter(t *testing.T) {
	s, err := StartSession(helperConfig("line", IOLine), &host{})
	if err != nil {
		t.Fatalf("StartSession() = %v", err)
	}
	reaped := make(chan struct{})
	s.pipe.wrote = func() {
		// Counted only once the worker is dead and the session has
		// reaped it, or has waited a second for the count.
		<-s.Done()
		select {
		case <-reaped:
		case <-time.After(time.Second):
		}
	}
	give := time.NewTimer(20 * time.Second)
	defer give.Stop()
	for sent := false; ; {
		if !sent && s.HasRoom() {
			s.Send(&Flight{ID: 1, Input: []byte("kill")})
			s.Flush()
			sent = true
			continue
		}
		select {
		case ev := <-s.Events():
			s.Handle(ev)
		case <-s.Probe():
			s.Look(time.Now())
		case <-give.C:
			s.Cancel(true)
		case <-s.Done():
			d := s.Reap()
			close(reaped)
			if d.Cause != SignalCause(syscall.SIGKILL) || len(d.Flights) != 1 {
				t.Fatalf("Death = cause %q with %d flights, want %q with 1", d.Cause, len(d.Flights), SignalCause(syscall.SIGKILL))
			}
			if c := d.Flights[0]; !c.Started || c.Unread {
				t.Errorf("casualty = started %v, unread %v; want started, read (the worker died of it)", c.Started, c.Unread)
			}
			return
		}
	}
}

// TestSessionSlowDrain: a line worker answers six lines after its first,
// each in a write of its own, and dies of the next while its owner is busy
// elsewhere.
// Reaping it, the owner is slow to take each answer (its Host.Ended takes
// 250 ms), so the answers take longer to hand on than a dead worker's
// pipes are given (linger). They are still answers: no pipe is held by
// anyone else, so the reader's EOF is sure to come. Only the line it died
// of is charged.
func TestSessionSlowDrain(t *testing.T) {
	defer func(d time.Duration) { PipelineAhead = d }(PipelineAhead)
	PipelineAhead = time.Hour // all seven lines in flight at once
	h := &host{}
	cfg := helperConfig("line", IOLine)
	cfg.Pipeline = 8
	s, err := StartSession(cfg, h)
	if err != nil {
		t.Fatalf("StartSession() = %v", err)
	}
	give := time.NewTimer(20 * time.Second)
	defer give.Stop()
	inputs := []string{"a", "nap", "nap", "nap", "nap", "nap", "nap", "kill"}
	for len(inputs) > 0 || len(h.ended) < 1 {
		if len(inputs) > 0 && s.HasRoom() {
			s.Send(&Flight{ID: uint64(9 - len(inputs)), Input: []byte(inputs[0])})
			s.Flush()
			inputs = inputs[1:]
			continue
		}
		select {
		case ev := <-s.Events():
			s.Handle(ev)
		case <-s.Probe():
			s.Look(time.Now())
		case <-s.Done():
			t.Fatalf("the worker died with %d lines left to send (death %+v)", len(inputs), s.Reap())
		case <-give.C:
			s.Cancel(true)
			<-s.Done()
			t.Fatalf("the lines were not all sent within 20s (death %+v)", s.Reap())
		}
	}
	<-s.Done() // the owner takes no answer until the worker is dead
	h.slow = 250 * time.Millisecond
	d := s.Reap()
	var got []uint64
	for _, e := range h.ended {
		got = append(got, e.id)
	}
	if fmt.Sprint(got) != "[1 2 3 4 5 6 7]" {
		t.Errorf("answered = %v, want [1 2 3 4 5 6 7]", got)
	}
	if len(d.Flights) != 1 || d.Flights[0].Flight.ID != 8 || !d.Flights[0].Started {
		for _, c := range d.Flights {
			t.Logf("in flight at the death: %d (started %v)", c.Flight.ID, c.Started)
		}
		t.Fatalf("%d flights at the death, want only 8, started", len(d.Flights))
	}
}

// lockedBuffer is a bytes.Buffer that a copier may write while a test reads.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// TestSessionEndStderrLine: a worker killed halfway through a line of its
// stderr leaves that line ended when its stream is shared (EndStderrLine),
// so that the next writer (another worker, the supervisor's own message)
// starts a line of its own; a stream kept as the job wrote it (a one-shot
// job's captured stderr) is left as it was.
func TestSessionEndStderrLine(t *testing.T) {
	for _, end := range []bool{true, false} {
		t.Run(fmt.Sprint("end=", end), func(t *testing.T) {
			var errs lockedBuffer
			cfg := helperConfig("line", IOLine)
			cfg.Spec.Stderr, cfg.Spec.EndStderrLine = &errs, end
			_, d := drive(t, cfg, []string{"halfline"}, false, 20*time.Second)
			if d.Cause != SignalCause(syscall.SIGKILL) {
				t.Fatalf("cause = %q, want signal:SIGKILL", d.Cause)
			}
			want := "worker: half a li"
			if end {
				want += "\n"
			}
			if got := errs.String(); got != want {
				t.Errorf("stderr = %q, want %q", got, want)
			}
		})
	}
}

// TestSessionCancelAfterExit: a one-shot process that has exited by itself
// keeps its own end when the pool's stop reaches it after that (its runner
// sees the stop and the end at once, and may take the stop first). It was
// taken for cancelled, whatever its status, so that a job that had done
// its work ran again on resume.
func TestSessionCancelAfterExit(t *testing.T) {
	tests := []struct {
		name  string
		input string
		cause Cause
	}{
		{"done", "a", ""},
		{"failed", "die", ExitCause(3)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			s, err := StartSession(helperConfig("oneshot", IONone, "--", tt.input), &host{})
			if err != nil {
				t.Fatalf("StartSession() = %v", err)
			}
			s.Send(&Flight{ID: 1, Input: []byte(tt.input)})
			s.Flush()
			<-s.Done()
			s.Cancel(false)
			d := s.Reap()
			if d.Cause != tt.cause || d.Killed != "" {
				t.Errorf("Death = cause %q killed %q, want %q and none (stderr %q)", d.Cause, d.Killed, tt.cause, d.Stderr)
			}
			if len(d.Flights) != 1 || d.Flights[0].Outcome.Cause != tt.cause {
				t.Errorf("flights = %+v, want one of cause %q", d.Flights, tt.cause)
			}
		})
	}
}
