package pool_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
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
			cfg.TimeoutGrace = 300 * time.Millisecond // "hang" ignores SIGTERM
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
					!strings.HasPrefix(r.Attempts[0].Message, wantMsg+": SIGTERM, then SIGKILL") {
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

// TestTimeoutGrace: an attempt that runs out of time gets SIGTERM first.
// A job that traps it runs its handler (it writes a file) and exits by
// itself, and its cause is still CauseTimeout; a job that ignores it is
// SIGKILLed once the grace has passed; with a negative grace (the CLI's
// --timeout-grace 0) it is SIGKILLed at once and its handler never runs.
// The same for each protocol: a persistent worker is ended with the task
// it runs.
func TestTimeoutGrace(t *testing.T) {
	for _, proto := range protocols {
		t.Run(string(proto), func(t *testing.T) {
			dir := t.TempDir()
			trapped, killed := dir+"/trapped", dir+"/killed"
			cfg := config(proto, 2)
			cfg.Timeout = 500 * time.Millisecond
			cfg.TimeoutGrace = 1500 * time.Millisecond
			got := runTasks(t, cfg,
				pool.Task{Input: []byte("termtrap:" + trapped + ":7")},
				pool.Task{Input: []byte("hang")},
			)
			if r := got[1]; r.State != pool.Failed || len(r.Attempts) != 1 || r.Cause() != pool.CauseTimeout {
				t.Errorf("trapping task = %s %+v, want failed once with timeout", r.State, r.Attempts)
			} else {
				a := r.Attempts[0]
				if a.ExitCode != 7 || a.Signal != "" || !strings.Contains(a.Message, "killed after 500ms: SIGTERM, and the worker exited with 7") {
					t.Errorf("trapping task's attempt = exit %d, signal %q, %q; want exit 7 after SIGTERM", a.ExitCode, a.Signal, a.Message)
				}
				if d := a.End.Sub(a.Start); d > cfg.Timeout+cfg.TimeoutGrace {
					t.Errorf("trapping task ran %v, want it to end on SIGTERM, before the grace is over", d)
				}
			}
			if b, err := os.ReadFile(trapped); string(b) != "cleaned" {
				t.Errorf("the SIGTERM handler did not run: %q, %v", b, err)
			}
			if r := got[2]; r.State != pool.Failed || len(r.Attempts) != 1 || r.Cause() != pool.CauseTimeout {
				t.Errorf("task ignoring SIGTERM = %s %+v, want failed once with timeout", r.State, r.Attempts)
			} else {
				a := r.Attempts[0]
				if a.Signal != "SIGKILL" || !strings.Contains(a.Message, "SIGKILL after a grace of 1.5s") {
					t.Errorf("ignoring task's attempt = signal %q, %q; want SIGKILL after the grace", a.Signal, a.Message)
				}
				if d := a.End.Sub(a.Start); d < cfg.Timeout+cfg.TimeoutGrace {
					t.Errorf("task ignoring SIGTERM ended after %v, before the grace was over", d)
				}
			}

			cfg.TimeoutGrace = -1 // SIGKILL at once
			got = runTasks(t, cfg, pool.Task{Input: []byte("termtrap:" + killed + ":7")})
			if r := got[1]; r.State != pool.Failed || r.Cause() != pool.CauseTimeout || r.Attempts[0].Signal != "SIGKILL" ||
				r.Attempts[0].Message != "killed after 500ms" {
				t.Errorf("without a grace: %s %+v, want failed with timeout, SIGKILL", r.State, r.Attempts)
			}
			if _, err := os.Stat(killed); err == nil {
				t.Errorf("without a grace, the SIGTERM handler ran")
			}
		})
	}
}

// TestTaskTimeoutGrace: a task's own TimeoutGrace replaces
// Config.TimeoutGrace for that task only, longer or shorter: in a pool that
// SIGKILLs at once, a task with a grace runs its SIGTERM handler, and one
// without is killed before it can; in a pool with a long grace, a task whose
// own grace is negative is SIGKILLed at once, and one with a short grace is
// SIGKILLed when it is over, not the pool's.
func TestTaskTimeoutGrace(t *testing.T) {
	for _, proto := range protocols {
		t.Run(string(proto), func(t *testing.T) {
			dir := t.TempDir()
			cfg := config(proto, 2)
			cfg.Timeout = 400 * time.Millisecond
			cfg.TimeoutGrace = -1 // SIGKILL at once
			got := runTasks(t, cfg,
				pool.Task{Input: []byte("termtrap:" + dir + "/own:7"), TimeoutGrace: 5 * time.Second},
				pool.Task{Input: []byte("termtrap:" + dir + "/pools:7")},
			)
			if r := got[1]; r.State != pool.Failed || r.Cause() != pool.CauseTimeout || r.Attempts[0].ExitCode != 7 ||
				!strings.Contains(r.Attempts[0].Message, "SIGTERM, and the worker exited with 7") {
				t.Errorf("task with its own grace = %s %+v, want failed with timeout, exit 7 after SIGTERM", r.State, r.Attempts)
			}
			if b, err := os.ReadFile(dir + "/own"); string(b) != "cleaned" {
				t.Errorf("the SIGTERM handler of the task with its own grace did not run: %q, %v", b, err)
			}
			if r := got[2]; r.State != pool.Failed || r.Cause() != pool.CauseTimeout || r.Attempts[0].Signal != "SIGKILL" ||
				r.Attempts[0].Message != "killed after 400ms" {
				t.Errorf("task with the pool's grace = %s %+v, want failed with timeout, SIGKILL at once", r.State, r.Attempts)
			}
			if _, err := os.Stat(dir + "/pools"); err == nil {
				t.Errorf("the SIGTERM handler of a task in a pool without a grace ran")
			}

			cfg.TimeoutGrace = 30 * time.Second
			got = runTasks(t, cfg,
				pool.Task{Input: []byte("termtrap:" + dir + "/none:7"), TimeoutGrace: -1},
				pool.Task{Input: []byte("hang"), TimeoutGrace: 300 * time.Millisecond},
			)
			if r := got[1]; r.State != pool.Failed || r.Cause() != pool.CauseTimeout || r.Attempts[0].Signal != "SIGKILL" ||
				r.Attempts[0].Message != "killed after 400ms" {
				t.Errorf("task with a negative grace = %s %+v, want failed with timeout, SIGKILL at once", r.State, r.Attempts)
			}
			if _, err := os.Stat(dir + "/none"); err == nil {
				t.Errorf("the SIGTERM handler of a task with a negative grace ran")
			}
			if r := got[2]; r.State != pool.Failed || r.Cause() != pool.CauseTimeout || r.Attempts[0].Signal != "SIGKILL" ||
				!strings.Contains(r.Attempts[0].Message, "SIGKILL after a grace of 300ms") {
				t.Errorf("task with a short grace = %s %+v, want failed with timeout, SIGKILL after 300ms", r.State, r.Attempts)
			} else if d := r.Attempts[0].End.Sub(r.Attempts[0].Start); d > 20*time.Second {
				t.Errorf("task with a short grace ran %v, want it SIGKILLed after its own grace, not the pool's", d)
			}
		})
	}
}

// TestTimeoutGraceOOM: a job that the OOM killer takes during its grace
// after a timeout is named as any OOM kill is, by its cgroup's counter:
// oom, not timeout. The others time out as usual.
func TestTimeoutGraceOOM(t *testing.T) {
	requireCgroups(t)
	for _, proto := range protocols {
		t.Run(string(proto), func(t *testing.T) {
			cfg := config(proto, 2)
			cfg.MemLimit = 100 << 20
			cfg.NoGovernor = true
			cfg.Timeout = 300 * time.Millisecond
			cfg.TimeoutGrace = 20 * time.Second
			got := runTasks(t, cfg, pool.Task{Input: []byte("termhog")}, pool.Task{Input: []byte("termtrap:" + t.TempDir() + "/f:0")})
			if r := got[1]; r.State != pool.Failed || len(r.Attempts) != 1 || r.Cause() != pool.CauseOOM {
				t.Errorf("task hogging in its grace = %s %+v, want failed once with oom", r.State, r.Attempts)
			} else if d := r.Attempts[0].End.Sub(r.Attempts[0].Start); d > 10*time.Second {
				t.Errorf("task hogging in its grace ran %v, want it killed by the OOM killer, not after the grace", d)
			}
			if r := got[2]; r.State != pool.Failed || r.Cause() != pool.CauseTimeout || r.Attempts[0].ExitCode != 0 {
				t.Errorf("task exiting 0 in its grace = %s %+v, want failed with timeout", r.State, r.Attempts)
			}
		})
	}
}

// TestTimeoutGraceAbort: an abort during the grace after a timeout does not
// wait for the grace: the worker is stopped as on any abort, SIGKILLed
// after Config.Grace, and a second Abort kills it at once. A long grace
// keeps neither the pool nor a goroutine alive.
func TestTimeoutGraceAbort(t *testing.T) {
	for _, proto := range protocols {
		for _, twice := range []bool{false, true} {
			t.Run(fmt.Sprintf("%s/twice=%v", proto, twice), func(t *testing.T) {
				cfg := config(proto, 1) // Grace 500ms
				cfg.Timeout = 200 * time.Millisecond
				cfg.TimeoutGrace = time.Minute
				started := make(chan struct{}, 1)
				cfg.Observer = func(e pool.Event) {
					if e.Kind == pool.EventAttemptStarted {
						select {
						case started <- struct{}{}:
						default:
						}
					}
				}
				p, err := pool.New(cfg)
				if err != nil {
					t.Fatal(err)
				}
				if _, err := p.Submit(context.Background(), pool.Task{Input: []byte("hang")}); err != nil {
					t.Fatal(err)
				}
				<-started
				time.Sleep(cfg.Timeout + 300*time.Millisecond) // into the grace
				begin := time.Now()
				p.Abort(nil)
				if twice {
					p.Abort(nil)
				}
				var got []pool.Result
				timeout := time.After(20 * time.Second)
			read:
				for {
					select {
					case r, ok := <-p.Results():
						if !ok {
							break read
						}
						got = append(got, r)
					case <-timeout:
						t.Fatalf("the pool did not end within 20s of the abort, in a grace of %v", cfg.TimeoutGrace)
					}
				}
				took := time.Since(begin)
				if took > 5*time.Second || twice && took > 2*time.Second {
					t.Errorf("the pool ended %v after the abort, want within Config.Grace and a little", took)
				}
				if len(got) == 1 {
					t.Logf("%s after %v: %s %+v", got[0].State, took, got[0].Cause(), got[0].Attempts)
				}
				if len(got) != 1 || got[0].State != pool.Cancelled && got[0].State != pool.Failed {
					t.Errorf("results = %+v, want the task ended", got)
				}
			})
		}
	}
}
