package pool_test

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/safepool/safepool/pool"
)

// TestArgumentTooLong: a one-shot task whose argument is longer than Linux
// allows fails with a message that names the user's command and says
// "argument list too long", not the shell of the cgroup v1 shim or the
// program's path.
func TestArgumentTooLong(t *testing.T) {
	cfg := pool.Config{Command: []string{"echo", "{}"}, Workers: 1}
	got, _ := run(t, cfg, "ok", strings.Repeat("a", 300<<10))
	if r := got[1]; r.State != pool.Done {
		t.Fatalf("task 1 = %s %s, want done", r.State, r.Cause())
	}
	r := got[2]
	if r.State != pool.Failed || len(r.Attempts) != 1 {
		t.Fatalf("task 2 = %s after %d attempts, want failed after 1", r.State, len(r.Attempts))
	}
	msg := r.Attempts[0].Message
	if !strings.Contains(msg, "echo: argument list too long") || strings.Contains(msg, "/bin/") {
		t.Errorf("message = %q, want it to name echo and say \"argument list too long\", without a path", msg)
	}
	if !strings.Contains(msg, "307200 bytes") {
		t.Errorf("message = %q, want it to give the size of the long argument", msg)
	}
	t.Logf("message: %s", msg)
}

// TestArgumentWithNUL: a one-shot task whose argument holds a NUL byte
// (an input read by lines that held one) fails with a message that names
// the user's command and the argument, not "fork/exec /usr/bin/echo:
// invalid argument" after the path of a cgroup's start.
func TestArgumentWithNUL(t *testing.T) {
	cfg := pool.Config{Command: []string{"echo", "x", "{}"}, Workers: 1}
	got, _ := run(t, cfg, "ok", "a\x00b")
	if r := got[1]; r.State != pool.Done {
		t.Fatalf("task 1 = %s %s, want done", r.State, r.Cause())
	}
	r := got[2]
	if r.State != pool.Failed || len(r.Attempts) != 1 || r.Cause() != pool.ExitCause(127) {
		t.Fatalf("task 2 = %s %s after %d attempts, want failed exit:127 after 1", r.State, r.Cause(), len(r.Attempts))
	}
	msg := r.Attempts[0].Message
	if want := "echo: invalid argument (argument 2 holds a NUL byte"; !strings.Contains(msg, want) || strings.Contains(msg, "/bin/") {
		t.Errorf("message = %q, want it to say %q, without a path", msg, want)
	}
}

// TestInputsFaultFirst: tasks whose inputs no program can be given (an
// argument too long, or holding a NUL byte) fail on their own, exit:127,
// when they come first too: they say nothing of whether the command can
// start. Three of them before any task was done were taken for a command
// that cannot start, and the pool aborted, the tasks after them cancelled.
func TestInputsFaultFirst(t *testing.T) {
	for _, bad := range []string{strings.Repeat("a", 300<<10), "a\x00b"} {
		cfg := pool.Config{Command: []string{"echo", "{}"}, Workers: 1}
		got, p := run(t, cfg, bad, bad, bad, bad, "ok")
		for id := uint64(1); id <= 4; id++ {
			if r := got[id]; r.State != pool.Failed || r.Cause() != pool.ExitCause(127) {
				t.Errorf("task %d = %s %s, want failed exit:127", id, r.State, r.Cause())
			}
		}
		if r := got[5]; r.State != pool.Done {
			t.Errorf("task 5 = %s %s, want done", r.State, r.Cause())
		}
		if err := p.Err(); err != nil {
			t.Errorf("the pool ended with %v, want no error", err)
		}
	}
}

// TestOneShotReusedCgroup: a slot's memory cgroup serves every one-shot
// attempt it runs, one process at a time. An OOM kill in the second
// attempt is that attempt's cause and not the next one's, and each
// attempt's peak is its own, not the group's lifetime peak.
func TestOneShotReusedCgroup(t *testing.T) {
	requireCgroups(t)
	cfg := config(pool.OneShot, 1)
	cfg.MemLimit = 200 << 20
	got, p := run(t, cfg, "sleep:20", "hog", "sleep:20", "sleep:20")
	if !strings.HasPrefix(p.MemoryMode(), "cgroup-") {
		t.Fatalf("MemoryMode() = %s (%s), want a cgroup per worker", p.MemoryMode(), p.MemoryModeReason())
	}
	if r := got[2]; r.State != pool.Failed || r.Cause() != pool.CauseOOM {
		t.Fatalf("task 2 (hog) = %s %q, want failed with oom", r.State, r.Cause())
	} else if peak := r.Attempts[0].PeakRSS; peak < 150<<20 {
		t.Errorf("task 2 peak = %d, want near the 200 MiB limit", peak)
	}
	for _, id := range []uint64{1, 3, 4} {
		r := got[id]
		if r.State != pool.Done || len(r.Attempts) != 1 {
			t.Errorf("task %d = %s %q, %d attempts, want done at once", id, r.State, r.Cause(), len(r.Attempts))
			continue
		}
		if peak := r.Attempts[0].PeakRSS; peak <= 0 || peak >= 100<<20 {
			t.Errorf("task %d peak = %d, want its own (a few MiB), not the hog's", id, peak)
		}
	}
}

// TestOneShotCgroupEmptiedBetweenAttempts: a process that one attempt
// leaves in its cgroup, out of reach of its process group (setsid), is
// never in the group of another attempt: the slot's next attempt runs in
// the slot's other group, and the one after, back in the first group, finds
// the process gone, so that it cannot weigh on another attempt's memory,
// peak or OOM count.
func TestOneShotCgroupEmptiedBetweenAttempts(t *testing.T) {
	requireCgroups(t)
	file := filepath.Join(t.TempDir(), "pid")
	cfg := config(pool.OneShot, 1)
	got, _ := run(t, cfg, "escape:"+file, "groupprocs", "groupprocs", "alive:"+file)
	if r := got[1]; r.State != pool.Done {
		t.Fatalf("task 1 = %s %q, want done", r.State, r.Cause())
	}
	for _, id := range []uint64{2, 3} {
		if r := got[id]; r.State != pool.Done || strings.TrimSpace(string(r.Output)) != "1" {
			t.Errorf("task %d = %s %q, output %q; want done and only itself in its cgroup", id, r.State, r.Cause(), r.Output)
		}
	}
	if r := got[4]; r.State != pool.Done || strings.TrimSpace(string(r.Output)) != "gone" {
		t.Errorf("task 4 = %s %q, output %q; want done and the escaped process gone", r.State, r.Cause(), r.Output)
	}
}

// TestOneShotAloneAtOneWorker: with one worker every attempt runs alone,
// even when the runner takes the next task as soon as the previous job's
// process has ended, before that job's report reaches the loop. A hog
// among quick tasks is killed at the whole budget and is poison at its
// first attempt, not retried as if it had run beside another.
func TestOneShotAloneAtOneWorker(t *testing.T) {
	requireCgroups(t)
	cfg := config(pool.OneShot, 1)
	cfg.MemBudget = 100 << 20
	cfg.MemPerTask = 1 << 20 // admitted while the job before still holds its reservation
	got, _ := run(t, cfg, "sleep:5", "sleep:5", "sleep:5", "hog", "sleep:5", "sleep:5")
	r := got[4]
	if r.State != pool.Poison || r.Cause() != pool.CauseOOM || len(r.Attempts) != 1 {
		t.Fatalf("hog = %s %q after %d attempts, want poison after one oom", r.State, r.Cause(), len(r.Attempts))
	}
	for id, r := range got {
		if id != 4 && r.State != pool.Done {
			t.Errorf("task %d = %s %q, want done", id, r.State, r.Cause())
		}
	}
}

// TestOneShotRunningCount: Stats.Running never counts more attempts than
// there are workers, although a runner takes its next task before the
// report of the job that just ended reaches the loop.
func TestOneShotRunningCount(t *testing.T) {
	cfg := config(pool.OneShot, 1)
	p, err := pool.New(cfg)
	if err != nil {
		t.Fatalf("New() = %v", err)
	}
	stop := make(chan struct{})
	most := make(chan int)
	go func() {
		n := 0
		for {
			select {
			case <-stop:
				most <- n
				return
			default:
			}
			n = max(n, p.Stats().Running)
			time.Sleep(100 * time.Microsecond)
		}
	}()
	go func() {
		defer p.Close()
		for i := 0; i < 10; i++ {
			if _, err := p.Submit(context.Background(), pool.Task{Input: []byte("x")}); err != nil {
				return
			}
		}
	}()
	done := 0
	for r := range p.Results() {
		if r.State == pool.Done {
			done++
		}
	}
	close(stop)
	if n := <-most; n > 1 {
		t.Errorf("Stats().Running reached %d with 1 worker, want at most 1", n)
	}
	if done != 10 {
		t.Errorf("%d tasks done, want 10", done)
	}
}

// TestOneShotCommandFoundOnce: a one-shot pool looks its program up in
// PATH once, in New, and runs the file it found for every task that names
// it, even when PATH would now find another one first; a task whose own
// Args name another program has it looked up when it runs.
func TestOneShotCommandFoundOnce(t *testing.T) {
	dirA, dirB := t.TempDir(), t.TempDir()
	script := func(dir, name, out string) {
		t.Helper()
		if err := os.WriteFile(filepath.Join(dir, name), []byte("#!/bin/sh\necho "+out+"\n"), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	script(dirA, "sp-prog", "a")
	script(dirB, "sp-prog", "b")
	script(dirB, "sp-other", "other")
	path := os.Getenv("PATH")
	t.Setenv("PATH", dirA+":"+path)
	p, err := pool.New(pool.Config{Command: []string{"sp-prog", "{}"}, Protocol: pool.OneShot, Workers: 1})
	if err != nil {
		t.Fatalf("New() = %v", err)
	}
	// From now on PATH finds dirB's sp-prog first.
	t.Setenv("PATH", dirB+":"+dirA+":"+path)
	tasks := []pool.Task{
		{Input: []byte("1")},
		{Input: []byte("2"), Args: []string{"sp-prog", "2"}},
		{Input: []byte("3"), Args: []string{"sp-other"}},
	}
	go func() {
		defer p.Close()
		for _, tk := range tasks {
			if _, err := p.Submit(context.Background(), tk); err != nil {
				return
			}
		}
	}()
	got := map[uint64]string{}
	timeout := time.After(time.Minute)
	for done := false; !done; {
		select {
		case r, ok := <-p.Results():
			if !ok {
				done = true
				break
			}
			if r.State != pool.Done {
				t.Errorf("task %d = %s %q, want done", r.ID, r.State, r.Cause())
			}
			got[r.ID] = strings.TrimSpace(string(r.Output))
		case <-timeout:
			p.Abort(nil)
			p.Abort(nil)
			t.Fatalf("pool did not end within a minute")
		}
	}
	want := map[uint64]string{1: "a", 2: "a", 3: "other"}
	for id, w := range want {
		if got[id] != w {
			t.Errorf("task %d output = %q, want %q", id, got[id], w)
		}
	}
}
