package pool_test

import (
	"context"
	"errors"
	"io"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/safepool/safepool/pool"
)

// TestBadFirstInputs: a worker that dies of the first inputs it is given
// charges those inputs, and the run goes on with the others: a death during
// a task is the task's, never a worker that cannot start.
func TestBadFirstInputs(t *testing.T) {
	for _, proto := range []pool.Protocol{pool.Line, pool.Framed} {
		t.Run(string(proto), func(t *testing.T) {
			cfg := config(proto, 2)
			cfg.Retries = 1
			inputs := []string{"segv", "segv", "segv"}
			for i := 0; i < 10; i++ {
				inputs = append(inputs, strconv.Itoa(i))
			}
			got, p := run(t, cfg, inputs...)
			if err := p.Err(); err != nil {
				t.Fatalf("Err() = %v, want nil", err)
			}
			for id, r := range got {
				in := inputs[id-1]
				if in == "segv" {
					if r.State != pool.Failed || len(r.Attempts) != 2 || r.Cause() != pool.CauseSegfault {
						t.Errorf("task %d (%s) = %s %+v, want failed after 2 segfaults", id, in, r.State, r.Attempts)
					}
				} else if r.State != pool.Done {
					t.Errorf("task %d (%s) = %s, want done", id, in, r.State)
				}
			}
			if len(got) != len(inputs) {
				t.Errorf("got %d results, want %d", len(got), len(inputs))
			}
		})
	}
}

// TestFramedSelfKills: framed workers that SIGKILL themselves on some
// tasks, every worker on its first task and all at once, never make the
// pool abort: with retries, every task is done.
func TestFramedSelfKills(t *testing.T) {
	dir := t.TempDir()
	cfg := config(pool.Framed, 4)
	cfg.Retries = 5
	cfg.Pipeline = 1
	cfg.NoGovernor = true // its cold start runs one task at a time
	at := time.Now().Add(2 * time.Second).UnixMilli()
	var inputs []string
	for i := 0; i < 200; i++ {
		in := "t" + strconv.Itoa(i)
		switch {
		case i < 4: // the four workers' first tasks
			in = "once:" + filepath.Join(dir, strconv.Itoa(i)) + ":killat:" + strconv.FormatInt(at, 10)
		case i%20 == 7:
			in = "once:" + filepath.Join(dir, strconv.Itoa(i)) + ":kill"
		}
		inputs = append(inputs, in)
	}
	got, p := run(t, cfg, inputs...)
	if err := p.Err(); err != nil {
		t.Fatalf("Err() = %v, want nil", err)
	}
	for id, r := range got {
		want := 1
		if strings.HasPrefix(inputs[id-1], "once:") {
			want = 2
		}
		if r.State != pool.Done || len(r.Attempts) != want {
			t.Errorf("task %d (%s) = %s %+v, want done after %d attempts", id, inputs[id-1], r.State, r.Attempts, want)
		}
	}
	if len(got) != len(inputs) {
		t.Errorf("got %d results, want %d", len(got), len(inputs))
	}
}

// TestFramedNoReady: a framed worker that never sends its ready frame is
// killed after StartTimeout, and the pool ends with a *StartError.
func TestFramedNoReady(t *testing.T) {
	cfg := config(pool.Framed, 2)
	cfg.Env = workerEnvFor("framed-silent")
	cfg.StartTimeout = 500 * time.Millisecond
	cfg.Timeout = 100 * time.Millisecond // counts for tasks, not for the start
	start := time.Now()
	got, p := run(t, cfg, "a", "b")
	var se *pool.StartError
	if err := p.Err(); !errors.As(err, &se) || se.Cause != pool.CauseTimeout || !strings.Contains(err.Error(), "no ready frame within") {
		t.Fatalf("Err() = %v, want a *StartError: timeout, no ready frame", err)
	}
	if len(got) != 2 {
		t.Errorf("got %d results, want 2", len(got))
	}
	t.Logf("ended in %v", time.Since(start))
}

// TestFramedSlowStart: a framed worker that works (uses CPU) for longer
// than StartTimeout before it is ready is not killed for it.
func TestFramedSlowStart(t *testing.T) {
	cfg := config(pool.Framed, 1)
	cfg.Env = workerEnvFor("framed-slow-start")
	cfg.StartTimeout = 500 * time.Millisecond
	got, p := run(t, cfg, "a", "b")
	if err := p.Err(); err != nil {
		t.Fatalf("Err() = %v, want nil", err)
	}
	for id, r := range got {
		if r.State != pool.Done {
			t.Errorf("task %d = %s %+v, want done", id, r.State, r.Attempts)
		}
	}
}

// TestFramedNeverStarted: a framed worker that reads a task and never
// starts nor answers it is killed when the task's Timeout runs out, counted
// from when the task was handed over; the task fails with CauseTimeout, the
// others are done.
func TestFramedNeverStarted(t *testing.T) {
	cfg := config(pool.Framed, 1)
	cfg.Env = workerEnvFor("framed-raw")
	cfg.Pipeline = 1
	cfg.Timeout = time.Second
	inputs := []string{"a", "swallow", "b", "c"}
	got, _ := run(t, cfg, inputs...)
	for id, r := range got {
		if inputs[id-1] == "swallow" {
			if r.State != pool.Failed || r.Cause() != pool.CauseTimeout || !strings.Contains(r.Attempts[0].Message, "never started") {
				t.Errorf("swallowed task = %s %+v, want failed: timeout, never started", r.State, r.Attempts)
			}
			continue
		}
		if r.State != pool.Done {
			t.Errorf("task %d (%s) = %s %+v, want done", id, inputs[id-1], r.State, r.Attempts)
		}
	}
	if len(got) != len(inputs) {
		t.Errorf("got %d results, want %d", len(got), len(inputs))
	}
}

// TestStartOOMSaysWhy: persistent workers that the OOM killer takes as
// they start, before any task, abort the pool; the StartError says why
// and what to try, not a bare "dies at start-up (oom)": the worker's
// cgroup limit (Config.MemLimit) may be too small for it to start, or
// the workers starting at once may need more than the memory budget.
func TestStartOOMSaysWhy(t *testing.T) {
	requireCgroups(t)
	py := systemPython(t)
	for _, c := range []struct {
		name string
		cfg  func(*pool.Config)
		want string
	}{
		{"memory limit", func(c *pool.Config) { c.MemLimit = 24 << 20 },
			"its cgroup is limited to 24 MiB (the memory limit), which may be less than it needs to start"},
		{"budget", func(c *pool.Config) { c.MemBudget = 24 << 20 },
			"one worker may need more than the memory budget of 24 MiB to start (its cgroup's limit), or 2 workers starting at once more than that; try fewer workers"},
	} {
		t.Run(c.name, func(t *testing.T) {
			cfg := pool.Config{
				// 64 MiB at start-up, then a line worker.
				Command:  []string{py, "-c", "import sys\nfat = b'x' * (64 << 20)\nfor line in sys.stdin: print(line, end='', flush=True)"},
				Protocol: pool.Line,
				Workers:  2,
				Stderr:   io.Discard,
			}
			c.cfg(&cfg)
			p, err := pool.New(cfg)
			if err != nil {
				t.Fatal(err)
			}
			go func() {
				defer p.Close()
				p.Submit(context.Background(), pool.Task{Input: []byte("a")})
			}()
			for range p.Results() {
			}
			var se *pool.StartError
			if err := p.Err(); !errors.As(err, &se) || se.Cause != pool.CauseOOM {
				t.Fatalf("Err() = %v, want a StartError of cause oom", err)
			}
			if !strings.Contains(se.Error(), c.want) {
				t.Errorf("StartError = %q, want it to say %q", se.Error(), c.want)
			}
		})
	}
}
