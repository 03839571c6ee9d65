package pool_test

import (
	"errors"
	"fmt"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/safepool/safepool/internal/testenv"
	"github.com/safepool/safepool/pool"
)

// events collects the events of a pool, for tests.
type events struct {
	mu   sync.Mutex
	list []pool.Event
}

func (e *events) observe(ev pool.Event) {
	e.mu.Lock()
	e.list = append(e.list, ev)
	e.mu.Unlock()
}

// of returns the events of kind k.
func (e *events) of(k pool.EventKind) []pool.Event {
	e.mu.Lock()
	defer e.mu.Unlock()
	var out []pool.Event
	for _, ev := range e.list {
		if ev.Kind == k {
			out = append(out, ev)
		}
	}
	return out
}

// lineConfig returns a line pool configuration with workers of mode.
func lineConfig(mode string, workers int) pool.Config {
	cfg := config(pool.Line, workers)
	cfg.Env = workerEnvFor(mode)
	return cfg
}

// TestLineBanner: a line worker that writes a banner on stdout before it
// reads its first line never has the banner taken for an answer. Every
// worker does it, so the pool fails to start, with the banner quoted.
func TestLineBanner(t *testing.T) {
	got, p := run(t, lineConfig("banner", 1), "1", "2", "3", "4", "5", "6")
	for id, r := range got {
		if r.State == pool.Done {
			t.Errorf("task %d = done %q: an answer out of step was delivered", id, r.Output)
		}
	}
	var se *pool.StartError
	if err := p.Err(); !errors.As(err, &se) || se.Cause != pool.CauseProtocol || !strings.Contains(err.Error(), `"Loading model..."`) {
		t.Errorf("Err() = %v, want a *StartError with cause protocol quoting the banner", err)
	}
	if len(got) != 6 {
		t.Errorf("got %d results, want 6", len(got))
	}
}

// TestLineExtraLine: a line worker that writes two lines for one input (at
// once) fails that task with CauseProtocol; no answer is attached to the
// wrong input, and the pool says the worker was out of step.
func TestLineExtraLine(t *testing.T) {
	var ev events
	cfg := config(pool.Line, 1)
	cfg.Observer = ev.observe
	inputs := []string{"a", "b", "twice", "c", "d"}
	got, p := run(t, cfg, inputs...)
	for id, r := range got {
		in := inputs[id-1]
		if in == "twice" {
			if r.State != pool.Failed || r.Cause() != pool.CauseProtocol || !strings.Contains(r.Attempts[0].Message, `"extra"`) {
				t.Errorf("task %d (%s) = %s %s %+v, want failed with protocol quoting the extra line", id, in, r.State, r.Cause(), r.Attempts)
			}
			continue
		}
		if r.State != pool.Done || string(r.Output) != "ok:"+in {
			t.Errorf("task %d (%s) = %s %q, want done %q", id, in, r.State, r.Output, "ok:"+in)
		}
	}
	if s := p.Stats(); s.OutOfStep != 1 {
		t.Errorf("Stats().OutOfStep = %d, want 1 (the worker had answered before)", s.OutOfStep)
	}
	if e := ev.of(pool.EventWorkerOutOfStep); len(e) != 1 || !strings.Contains(e[0].Message, "may belong to other lines") {
		t.Errorf("out-of-step events = %+v, want one that says earlier answers may be wrong", e)
	}
}

// TestLineExtraLineCounted: a worker that writes a stray line after the
// answers to several lines, all in one write, is out of step, and the
// message counts the lines it wrote in that write and the lines due, as
// they were: more lines than were due.
func TestLineExtraLineCounted(t *testing.T) {
	var ev events
	cfg := lineConfig("extra-per-read", 1)
	cfg.Pipeline = 32
	cfg.Observer = ev.observe
	inputs := make([]string, 200)
	for i := range inputs {
		inputs[i] = strconv.Itoa(i + 1)
	}
	run(t, cfg, inputs...)
	// A new worker's first line goes alone, to a worker seen reading; the
	// lines after it go ahead once it has answered, and a read brings
	// several: one such read must have been seen out of step.
	several := false
	for _, e := range ev.of(pool.EventWorkerOutOfStep) {
		i := strings.Index(e.Message, "the worker wrote ")
		var wrote, due int
		if i < 0 || !strings.Contains(e.Message, " due (") {
			continue // a stray line caught another way
		}
		var verb string
		if _, err := fmt.Sscanf(e.Message[i:], "the worker wrote %d lines where %d %s due", &wrote, &due, &verb); err != nil {
			t.Fatalf("out-of-step event %q: %v", e.Message, err)
		}
		if want := map[bool]string{true: "was", false: "were"}[due == 1]; verb != want {
			t.Errorf("out-of-step event %q: %q where %q belongs", e.Message, verb, want)
		}
		// One read of the supervisor's may bring more than one of the
		// worker's writes, each with its stray line: more lines written
		// than were due, not always one more.
		if wrote <= due {
			t.Errorf("out-of-step event %q: want more lines written than were due", e.Message)
		}
		several = several || due > 1
	}
	if !several {
		t.Errorf("out-of-step events = %+v, want one for a read of several lines", ev.of(pool.EventWorkerOutOfStep))
	}
}

// TestLineAnswerBeforeInput: a line that comes before the worker has read
// the line it would answer (the task pipe still holds it) is not taken for
// its answer. The worker is killed and counted out of step (the answer it
// gave before, "extra", was a stray line); the unread line runs elsewhere,
// uncharged.
func TestLineAnswerBeforeInput(t *testing.T) {
	var ev events
	cfg := config(pool.Line, 1)
	cfg.Observer = ev.observe
	inputs := []string{"a", "twice-slow", "c", "d"}
	got, p := run(t, cfg, inputs...)
	for _, id := range []uint64{3, 4} {
		if r := got[id]; r.State != pool.Done || len(r.Attempts) != 1 || string(r.Output) != "ok:"+inputs[id-1] {
			t.Errorf("task %d (%s) = %s %q %+v, want done once", id, inputs[id-1], r.State, r.Output, r.Attempts)
		}
	}
	if got[3].Attempts[0].WorkerPID == got[1].Attempts[0].WorkerPID {
		t.Errorf("task 3 ran on the worker that was out of step")
	}
	if s := p.Stats(); s.OutOfStep != 1 {
		t.Errorf("Stats().OutOfStep = %d, want 1", s.OutOfStep)
	}
	e := ev.of(pool.EventWorkerOutOfStep)
	if len(e) != 1 || !strings.Contains(e[0].Message, `"ok:twice-slow" before it had read the line of task 3`) {
		t.Errorf("out-of-step events = %+v, want one: the answer came before line 3 was read", e)
	}
}

// TestLineOutputAfterStop: a line written after the worker was told to stop
// (its stdin closed, nothing in flight) is counted: the answers it gave may
// be out of step.
func TestLineOutputAfterStop(t *testing.T) {
	var ev events
	cfg := lineConfig("footer", 1)
	cfg.Observer = ev.observe
	_, p := run(t, cfg, "a", "b", "c")
	if s := p.Stats(); s.OutOfStep != 1 {
		t.Errorf("Stats().OutOfStep = %d, want 1", s.OutOfStep)
	}
	if e := ev.of(pool.EventWorkerOutOfStep); len(e) != 1 || !strings.Contains(e[0].Message, `"done, bye"`) {
		t.Errorf("out-of-step events = %+v, want one quoting the stray line", e)
	}
}

// TestLineStall: a line worker that never flushes its answers is noticed
// (EventWorkerStalled, naming the fix) and its attempt fails with
// CauseProtocol after StallTimeout, instead of hanging forever. Such a
// worker never answers, so the pool gives up as for a worker that cannot
// start. The same holds for a Go worker with a timer pending, whose
// runtime keeps a thread waiting in epoll_wait.
func TestLineStall(t *testing.T) {
	for _, mode := range []string{"unflushed", "unflushed-ticker", "unflushed-timer"} {
		t.Run(mode, func(t *testing.T) {
			t.Parallel()
			var ev events
			cfg := lineConfig(mode, 1)
			cfg.StallTimeout = time.Second
			cfg.Observer = ev.observe
			start := time.Now()
			got, p := run(t, cfg, "a", "b", "c", "d", "e")
			r := got[1]
			if r.State != pool.Failed || r.Cause() != pool.CauseProtocol || !strings.Contains(r.Attempts[0].Message, "python3 -u") {
				t.Errorf("task 1 = %s %+v, want failed with protocol, naming the fix", r.State, r.Attempts)
			}
			st := ev.of(pool.EventWorkerStalled)
			if len(st) == 0 || st[0].TaskID != 1 || !strings.Contains(st[0].Message, "flush") {
				t.Errorf("stall events = %+v, want one for task 1 that names the fix", st)
			}
			var se *pool.StartError
			if err := p.Err(); !errors.As(err, &se) || se.Cause != pool.CauseProtocol {
				t.Errorf("Err() = %v, want a *StartError with cause protocol", err)
			}
			t.Logf("ended in %v", time.Since(start))
		})
	}
}

// TestLineStallWholeStream: a command that answers only at the end of its
// input (sort, wc -l) stalls as a line worker; its failure names map
// --pipe, which runs such commands, not only the flush that cannot help.
func TestLineStallWholeStream(t *testing.T) {
	var ev events
	cfg := pool.Config{Command: []string{"sort"}, Protocol: pool.Line, Workers: 1,
		StallTimeout: time.Second, Grace: 500 * time.Millisecond, Observer: ev.observe}
	got, _ := run(t, cfg, "b", "a")
	if r := got[1]; r.State != pool.Failed || r.Cause() != pool.CauseProtocol || !strings.Contains(r.Attempts[0].Message, "map --pipe") {
		t.Errorf("task 1 = %s %+v, want failed with protocol, naming map --pipe", r.State, r.Attempts)
	}
	if st := ev.of(pool.EventWorkerStalled); len(st) == 0 || !strings.Contains(st[0].Message, "map --pipe") {
		t.Errorf("stall events = %+v, want one that names map --pipe", st)
	}
}

// TestLineStallSkipped: a worker that answers lines, then reads one and
// writes nothing for it, stalls on its last line. Its answers after the
// skipped line were taken for the answers of the lines before their own:
// the failure says that it may have skipped a line and that the answers it
// gave may belong to other lines, not only that it buffers its output.
func TestLineStallSkipped(t *testing.T) {
	var ev events
	cfg := pool.Config{Command: []string{"sh", "-c", `while read l; do [ "$l" = b ] || echo "ok:$l"; done`},
		Protocol: pool.Line, Workers: 1, StallTimeout: time.Second, Grace: 500 * time.Millisecond, Observer: ev.observe}
	got, _ := run(t, cfg, "a", "b", "c")
	// Which line stalls depends on how the lines were sent: b, sent
	// alone, or c, after b in a block.
	failed := 0
	for id, r := range got {
		if r.State != pool.Failed {
			continue
		}
		failed++
		if m := r.Attempts[0].Message; r.Cause() != pool.CauseProtocol || !strings.Contains(m, "no answer for a line") ||
			!strings.Contains(m, "answers it gave before may belong to other lines") {
			t.Errorf("task %d = %s %+v, want failed with protocol, saying a line may have been skipped", id, r.State, r.Attempts)
		}
	}
	if failed == 0 {
		t.Errorf("results = %+v, want a line failed", got)
	}
	if st := ev.of(pool.EventWorkerStalled); len(st) == 0 || !strings.Contains(st[0].Message, "no answer for a line") {
		t.Errorf("stall events = %+v, want one that says a line may have been skipped", st)
	}
}

// TestLineStallMawk: Debian's awk buffers its output on a pipe; without
// -W interactive it stalls, and is caught. With it, it works.
func TestLineStallMawk(t *testing.T) {
	if _, err := exec.LookPath("mawk"); err != nil {
		testenv.SkipOrFail(t, "mawk is not installed (test.sh installs it)")
	}
	cfg := pool.Config{Command: []string{"mawk", "{ print toupper($0) }"}, Protocol: pool.Line, Workers: 1,
		StallTimeout: time.Second, Grace: 500 * time.Millisecond}
	got, _ := run(t, cfg, "a", "b")
	if r := got[1]; r.State != pool.Failed || r.Cause() != pool.CauseProtocol || !strings.Contains(r.Attempts[0].Message, "awk -W interactive") {
		t.Errorf("task 1 = %s %+v, want failed with protocol, naming the fix", r.State, r.Attempts)
	}
	cfg.Command = []string{"mawk", "-W", "interactive", "{ print toupper($0) }"}
	got, _ = run(t, cfg, "a", "b")
	if r := got[2]; r.State != pool.Done || string(r.Output) != "B" {
		t.Errorf("with -W interactive: task 2 = %s %q, want done %q", r.State, r.Output, "B")
	}
}

// TestLineSlowIsNotStalled: lines that take longer than StallTimeout, on
// the CPU or asleep (in the worker or in a child), are never taken for a
// stall.
func TestLineSlowIsNotStalled(t *testing.T) {
	tests := []struct {
		name string
		cfg  pool.Config
		in   string
	}{
		{"sleep", config(pool.Line, 1), "sleep:2500"},
		{"busy", config(pool.Line, 1), "spin:2500"},
		{"child", pool.Config{Command: []string{"sh", "-c", "while read l; do sleep 2.5; echo ok:$l; done"},
			Protocol: pool.Line, Workers: 1}, "x"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var ev events
			cfg := tt.cfg
			cfg.StallTimeout = time.Second
			cfg.Observer = ev.observe
			got, _ := run(t, cfg, tt.in)
			if r := got[1]; r.State != pool.Done || string(r.Output) != "ok:"+tt.in {
				t.Errorf("task = %s %q %+v, want done", r.State, r.Output, r.Attempts)
			}
			if st := ev.of(pool.EventWorkerStalled); len(st) != 0 {
				t.Errorf("stall events = %+v, want none", st)
			}
		})
	}
}

// TestLineClosesStdin: a line worker that closes its stdin and lives on
// cannot take the lines sent to it: it is killed with cause protocol, the
// line it was running is charged if it read it, and the lines it never read
// run elsewhere, uncharged.
func TestLineClosesStdin(t *testing.T) {
	tests := []struct {
		name   string
		inputs []string
		failed string // the input that fails with cause protocol, if any
	}{
		// It closes it after an answer; the next line, written before or
		// after, was never read.
		{"after answering", []string{"a", "closein", "b", "c"}, ""},
		// It closes it holding the line it read.
		{"holding a line", []string{"a", "closein-hang", "b", "c"}, "closein-hang"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, p := run(t, config(pool.Line, 1), tt.inputs...)
			for id, r := range got {
				in := tt.inputs[id-1]
				if in == tt.failed {
					if r.State != pool.Failed || r.Cause() != pool.CauseProtocol || !strings.Contains(r.Attempts[0].Message, "closed its stdin") {
						t.Errorf("task %d (%s) = %s %+v, want failed: protocol, closed its stdin", id, in, r.State, r.Attempts)
					}
					continue
				}
				if r.State != pool.Done || len(r.Attempts) != 1 || string(r.Output) != "ok:"+in {
					t.Errorf("task %d (%s) = %s %q %+v, want done once", id, in, r.State, r.Output, r.Attempts)
				}
			}
			if len(got) != len(tt.inputs) || p.Err() != nil {
				t.Errorf("got %d results, Err() = %v; want %d, nil", len(got), p.Err(), len(tt.inputs))
			}
		})
	}
}

// TestLineTooLong: an answer line without end fails its task with
// CauseProtocol once it passes MaxLine; the other tasks are done.
func TestLineTooLong(t *testing.T) {
	cfg := config(pool.Line, 1)
	cfg.MaxLine = 1 << 20
	inputs := []string{"a", "endless", "b"}
	got, _ := run(t, cfg, inputs...)
	if r := got[2]; r.State != pool.Failed || r.Cause() != pool.CauseProtocol || !strings.Contains(r.Attempts[0].Message, "longer than the limit of 1 MiB") {
		t.Errorf("endless task = %s %+v, want failed with protocol: line too long", r.State, r.Attempts)
	}
	for _, id := range []uint64{1, 3} {
		if r := got[id]; r.State != pool.Done {
			t.Errorf("task %d = %s, want done", id, r.State)
		}
	}
}

// TestLineStallPerl: a Perl line worker buffers its output on a pipe, as
// Python does; the stall's message names Perl's fix, $| = 1, which it
// left out.
func TestLineStallPerl(t *testing.T) {
	if _, err := exec.LookPath("perl"); err != nil {
		t.Skip("no perl:", err)
	}
	var ev events
	cfg := pool.Config{Command: []string{"perl", "-ne", "print"}, Protocol: pool.Line, Workers: 1,
		StallTimeout: time.Second, Grace: 500 * time.Millisecond, Observer: ev.observe}
	got, _ := run(t, cfg, "a")
	if r := got[1]; r.State != pool.Failed || r.Cause() != pool.CauseProtocol || !strings.Contains(r.Attempts[0].Message, "$| = 1 in Perl") {
		t.Errorf("task 1 = %s %+v, want failed with protocol, naming $| = 1", r.State, r.Attempts)
	}
}
