package pool_test

import (
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/safepool/safepool/pool"
)

// TestFramedStrayFrame: a framed worker that breaks the protocol once its
// task is answered (a second result frame, or the last byte of a result
// whose length field was one short) is killed with no task charged. That
// was silent: the worker was replaced, every task ended done, and nothing
// told its author, although a frame cut short had delivered a wrong
// result. The pool now says so (EventWorkerOutOfStep) and counts the
// worker in Stats.OutOfStep.
func TestFramedStrayFrame(t *testing.T) {
	tests := []struct {
		name   string
		inputs []string
		want   map[string]string // output by input
		says   string            // what the event's message holds
	}{
		{
			name:   "answer twice",
			inputs: []string{"a", "answer-twice", "b", "c"},
			want:   map[string]string{"a": "ok:a", "answer-twice": "ok:answer-twice", "b": "ok:b", "c": "ok:c"},
			says:   "result frame for task 2, which is not in flight",
		},
		{
			name:   "length one short",
			inputs: []string{"a", "short-length", "b"},
			// The frame that is one byte short is taken for a whole
			// one: that is why the message says results may be wrong.
			want: map[string]string{"a": "ok:a", "short-length": "ok:short-lengt", "b": "ok:b"},
			says: "bad frame",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var ev events
			cfg := config(pool.Framed, 1)
			cfg.Env = workerEnvFor("framed-raw")
			cfg.Pipeline = 1
			cfg.Observer = ev.observe
			got, p := run(t, cfg, tt.inputs...)
			for id, r := range got {
				in := tt.inputs[id-1]
				if r.State != pool.Done || string(r.Output) != tt.want[in] {
					t.Errorf("task %d (%s) = %s %v %q, want done %q", id, in, r.State, r.Cause(), r.Output, tt.want[in])
				}
			}
			if len(got) != len(tt.inputs) {
				t.Errorf("got %d results, want %d", len(got), len(tt.inputs))
			}
			e := ev.of(pool.EventWorkerOutOfStep)
			if len(e) != 1 || !strings.Contains(e[0].Message, tt.says) || !strings.Contains(e[0].Message, "no task was running") ||
				!strings.Contains(e[0].Message, "may be wrong") {
				t.Errorf("out-of-step events = %+v, want one saying %q, that no task was charged and results may be wrong", e, tt.says)
			}
			if s := p.Stats(); s.OutOfStep != 1 {
				t.Errorf("Stats().OutOfStep = %d, want 1", s.OutOfStep)
			}
		})
	}
}

// TestFramedStall: a framed worker that leaves its result frame in a
// buffer and waits for its next task (no flush of fd 4, the commonest
// mistake of a worker written without an SDK) waits for the supervisor
// while the supervisor waits for it. That hung forever without a timeout;
// now it is noticed as a line worker's stall is, and the task fails with
// CauseProtocol, the message naming the flush.
func TestFramedStall(t *testing.T) {
	var ev events
	cfg := config(pool.Framed, 1)
	cfg.Env = workerEnvFor("framed-raw")
	cfg.StallTimeout = time.Second
	cfg.Pipeline = 1 // a task sent behind it would flush the buffer
	cfg.Observer = ev.observe
	inputs := []string{"a", "unflushed-result", "b"}
	got, _ := run(t, cfg, inputs...)
	for id, r := range got {
		in := inputs[id-1]
		if in == "unflushed-result" {
			if r.State != pool.Failed || r.Cause() != pool.CauseProtocol || !strings.Contains(r.Attempts[0].Message, "flush fd 4") {
				t.Errorf("task %d (%s) = %s %+v, want failed with protocol, naming the flush", id, in, r.State, r.Attempts)
			}
			continue
		}
		if r.State != pool.Done || string(r.Output) != "ok:"+in {
			t.Errorf("task %d (%s) = %s %v %q, want done %q", id, in, r.State, r.Cause(), r.Output, "ok:"+in)
		}
	}
	if len(got) != len(inputs) {
		t.Errorf("got %d results, want %d", len(got), len(inputs))
	}
	if st := ev.of(pool.EventWorkerStalled); len(st) == 0 || st[0].TaskID != 2 || !strings.Contains(st[0].Message, "flush") {
		t.Errorf("stall events = %+v, want one for task 2 that names the fix", st)
	}
}

// TestFramedSlowIsNotStalled: a serve worker whose task sleeps longer than
// StallTimeout is working, not stalled: serve reads the task pipe through
// the Go runtime's poller, which rules a stall out, as a sleep does.
func TestFramedSlowIsNotStalled(t *testing.T) {
	var ev events
	cfg := config(pool.Framed, 1)
	cfg.StallTimeout = time.Second
	cfg.Observer = ev.observe
	got, _ := run(t, cfg, "sleep:2500", "a")
	for id, r := range got {
		if r.State != pool.Done {
			t.Errorf("task %d = %s %+v, want done", id, r.State, r.Attempts)
		}
	}
	if st := ev.of(pool.EventWorkerStalled); len(st) != 0 {
		t.Errorf("stall events = %+v, want none", st)
	}
}

// TestFramedExitZeroReading: a framed worker that exits 0 after reading a
// task's frame, before it starts it, gets one uncharged run elsewhere; the
// second time the task is charged, and its failure says why. It said
// ", while it read the task's frame, before it started it", a clause
// with no sentence, and nothing of the uncharged run before.
func TestFramedExitZeroReading(t *testing.T) {
	cfg := config(pool.Framed, 1)
	cfg.Env = workerEnvFor("framed-raw")
	got, _ := run(t, cfg, "exit0-reading")
	r := got[1]
	if r.State != pool.Failed || r.Cause() != pool.ExitCause(0) || len(r.Attempts) != 1 {
		t.Fatalf("task = %s %v after %d attempts, want failed exit:0 after 1", r.State, r.Cause(), len(r.Attempts))
	}
	if m := r.Attempts[0].Message; !strings.HasPrefix(m, "the worker exited 0 after reading this task's frame") ||
		!strings.Contains(m, "already run once, uncharged") {
		t.Errorf("message %q, want one that says the worker exited 0 reading the task, which had run once uncharged", m)
	}
}

// TestFramedDeathMidFrame: a framed worker killed while it writes a
// result (the OOM killer, taking a worker with a large result) leaves a
// frame cut short. The task's cause is the death, not protocol: the end of
// the pipe inside a frame was taken for a protocol error at once, before
// the exit status could say how the worker died.
func TestFramedDeathMidFrame(t *testing.T) {
	cfg := config(pool.Framed, 1)
	cfg.Env = workerEnvFor("framed-raw")
	got, _ := run(t, cfg, "die-mid-frame", "a")
	if r := got[1]; r.State != pool.Failed || r.Cause() != pool.SignalCause(syscall.SIGKILL) {
		t.Errorf("task die-mid-frame = %s %v %+v, want failed with signal:SIGKILL", r.State, r.Cause(), r.Attempts)
	}
	if r := got[2]; r.State != pool.Done {
		t.Errorf("task a = %s %v, want done", r.State, r.Cause())
	}
}
