package pool_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/safepool/safepool/pool"
)

// TestFramedWorkerDiesReadingTask: a framed worker that dies each time it
// reads a task, before it starts it (as one whose memory limit is below
// the task's input does, killed as it reads the frame), gets the task
// charged: it was requeued uncharged at every death, and the pool started
// worker after worker forever, the task never ending and the tasks behind
// it never running on a pool of one worker. The first such death is given
// a pass, as a line worker's exit 0 is: the worker may have died between
// tasks with the frame read ahead.
func TestFramedWorkerDiesReadingTask(t *testing.T) {
	cfg := config(pool.Framed, 1)
	cfg.Env = workerEnvFor("framed-raw")
	cfg.Retries = 1
	p, err := pool.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	inputs := []string{"die-reading", "a"}
	go func() {
		defer p.Close()
		for _, in := range inputs {
			if _, err := p.Submit(context.Background(), pool.Task{Input: []byte(in)}); err != nil {
				return
			}
		}
	}()
	got := map[string]pool.Result{}
	timeout := time.After(20 * time.Second)
	for done := false; !done; {
		select {
		case r, ok := <-p.Results():
			if !ok {
				done = true
				break
			}
			got[string(r.Input)] = r
		case <-timeout:
			started := p.Stats().WorkersStarted
			p.Abort(errors.New("test timed out"))
			p.Abort(nil)
			for range p.Results() {
			}
			t.Fatalf("pool did not end within 20s (%d workers started); results: %d", started, len(got))
		}
	}
	if r := got["a"]; r.State != pool.Done {
		t.Errorf("task a = %s %v, want done", r.State, r.Cause())
	}
	r := got["die-reading"]
	if r.State != pool.Failed || r.Cause() != pool.ExitCause(9) || len(r.Attempts) != 2 {
		t.Fatalf("task die-reading = %s %v after %d attempts, want failed exit:9 after 2 (Retries 1)", r.State, r.Cause(), len(r.Attempts))
	}
	for i, a := range r.Attempts {
		if !strings.Contains(a.Message, "while it read the task's frame, before it started it") || a.Start.IsZero() {
			t.Errorf("attempt %d: start %v, message %q, want a start and one that says the task was being read", i+1, a.Start, a.Message)
		}
	}
	// One pass, two charged attempts, and a worker for "a" at most.
	if s := p.Stats(); s.WorkersStarted > 4 {
		t.Errorf("WorkersStarted = %d, want at most 4", s.WorkersStarted)
	}
	if err := p.Err(); err != nil {
		t.Errorf("Err() = %v, want nil: the task failed, the command works", err)
	}
}

// TestFramedTaskTooLarge: Submit refuses a framed task whose frame would be
// over the protocol's 1 GiB limit, which any worker refuses: the worker
// then exited without starting it, and the task, requeued uncharged, went
// from worker to worker forever.
func TestFramedTaskTooLarge(t *testing.T) {
	cfg := config(pool.Framed, 1)
	p, err := pool.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		p.Close()
		for range p.Results() {
		}
	}()
	big := make([]byte, 1<<30+1) // never touched: no memory is used
	if _, err := p.Submit(context.Background(), pool.Task{Input: big}); !errors.Is(err, pool.ErrTooLarge) {
		t.Errorf("Submit of %d bytes = %v, want ErrTooLarge", len(big), err)
	}
	if _, err := p.Submit(context.Background(), pool.Task{Input: big[:1<<30-8], Items: 2}); !errors.Is(err, pool.ErrTooLarge) {
		t.Errorf("Submit of a batch of %d bytes = %v, want ErrTooLarge", 1<<30-8, err)
	}
	if _, err := p.Submit(context.Background(), pool.Task{Input: []byte("a")}); err != nil {
		t.Errorf("Submit of a small task after = %v", err)
	}
}
