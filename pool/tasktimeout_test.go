package pool_test

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/safepool/safepool/pool"
)

// runTasks submits tasks to a new pool built from cfg and returns the
// results by task id. It fails the test if the pool does not end within a
// minute.
func runTasks(t *testing.T, cfg pool.Config, tasks ...pool.Task) map[uint64]pool.Result {
	t.Helper()
	p, err := pool.New(cfg)
	if err != nil {
		t.Fatalf("New() = %v", err)
	}
	go func() {
		defer p.Close()
		for _, tk := range tasks {
			if _, err := p.Submit(context.Background(), tk); err != nil {
				return
			}
		}
	}()
	got := map[uint64]pool.Result{}
	timeout := time.After(time.Minute)
	for {
		select {
		case r, ok := <-p.Results():
			if !ok {
				return got
			}
			got[r.ID] = r
		case <-timeout:
			p.Abort(errors.New("test timed out"))
			p.Abort(nil)
			t.Fatalf("pool did not end within a minute; %d results so far", len(got))
		}
	}
}

// TestTaskTimeout: a task's own Timeout replaces Config.Timeout for that
// task only, shorter or longer, and only the task over its limit is
// charged.
func TestTaskTimeout(t *testing.T) {
	for _, proto := range protocols {
		t.Run(string(proto), func(t *testing.T) {
			cfg := config(proto, 2)
			cfg.Timeout = 800 * time.Millisecond
			got := runTasks(t, cfg,
				pool.Task{Input: []byte("hang"), Timeout: 1200 * time.Millisecond},
				pool.Task{Input: []byte("sleep:1500"), Timeout: 30 * time.Second},
				pool.Task{Input: []byte("hang")},
			)
			if len(got) != 3 {
				t.Fatalf("got %d results, want 3", len(got))
			}
			for id, wantMsg := range map[uint64]string{1: "killed after 1.2s", 3: "killed after 800ms"} {
				r := got[id]
				if r.State != pool.Failed || len(r.Attempts) != 1 || r.Attempts[0].Cause != pool.CauseTimeout ||
					r.Attempts[0].Message != wantMsg {
					t.Errorf("task %d = %s %+v, want failed once with timeout, %q", id, r.State, r.Attempts, wantMsg)
					continue
				}
				if d := r.Attempts[0].End.Sub(r.Attempts[0].Start); d > 20*time.Second {
					t.Errorf("task %d ran %v", id, d)
				}
			}
			if r := got[2]; r.State != pool.Done || len(r.Attempts) != 1 {
				t.Errorf("task with a longer timeout = %s %+v, want done once", r.State, r.Attempts)
			}
		})
	}
}

// TestGovernorMemHint: tasks whose MemHint is more than half the budget
// never run two at a time, while the same tasks without the hint do.
func TestGovernorMemHint(t *testing.T) {
	requireCgroups(t)
	const m = 256 << 20
	for _, hint := range []int64{0, 2 * m} {
		t.Run(fmt.Sprint("hint=", hint), func(t *testing.T) {
			var c concurrency
			cfg := config(pool.Framed, 4)
			cfg.MemBudget, cfg.MemPerTask, cfg.Observer = 3*m, 16<<20, c.observe
			var tasks []pool.Task
			for i := 0; i < 4; i++ {
				tasks = append(tasks, pool.Task{Input: []byte("sleep:400"), MemHint: hint})
			}
			got := runTasks(t, cfg, tasks...)
			for id, r := range got {
				if r.State != pool.Done {
					t.Errorf("task %d = %s %s, want done", id, r.State, r.Cause())
				}
			}
			c.mu.Lock()
			defer c.mu.Unlock()
			if hint > 0 && c.most != 1 {
				t.Errorf("with a hint of 2/3 of the budget, %d attempts ran at once, want 1", c.most)
			}
			if hint == 0 && c.most < 2 {
				t.Errorf("without a hint, at most %d attempt ran at once, want more", c.most)
			}
		})
	}
}
