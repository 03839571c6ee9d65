package pool_test

import (
	"context"
	"syscall"
	"testing"
	"time"

	"github.com/safepool/safepool/pool"
)

// TestStopSignalBeforeAbort: a batch scheduler or a service manager stops
// a job by sending SIGTERM to each of its processes, the workers as well as
// the supervisor (slurm's scancel, systemctl stop). A worker may die of it
// before the supervisor, told by the same signal, aborts the pool: its task
// must end Cancelled, as the stop's doing, not Failed, which would make a
// resumed run skip it.
func TestStopSignalBeforeAbort(t *testing.T) {
	defer pool.SetStopWait(10 * time.Second)()
	for _, proto := range []pool.Protocol{pool.OneShot, pool.Line} {
		for _, sig := range []syscall.Signal{syscall.SIGTERM, syscall.SIGHUP} {
			t.Run(string(proto)+"/"+pool.SignalName(sig), func(t *testing.T) {
				cfg := config(proto, 2)
				started := make(chan int, 2)
				cfg.Observer = func(e pool.Event) {
					if e.Kind == pool.EventAttemptStarted {
						started <- e.WorkerPID
					}
				}
				p, err := pool.New(cfg)
				if err != nil {
					t.Fatal(err)
				}
				for range 2 {
					if _, err := p.Submit(context.Background(), pool.Task{Input: []byte("sleep:60000")}); err != nil {
						t.Fatal(err)
					}
				}
				p.Close()
				var pids []int
				for range 2 {
					select {
					case pid := <-started:
						pids = append(pids, pid)
					case <-time.After(time.Minute):
						p.Abort(nil)
						t.Fatal("the tasks did not start within a minute")
					}
				}
				// A line worker that had not read its line yet would give
				// it back uncharged: let it read.
				time.Sleep(300 * time.Millisecond)
				for _, pid := range pids {
					syscall.Kill(pid, sig)
				}
				// The supervisor's own signal comes a moment later.
				time.Sleep(500 * time.Millisecond)
				start := time.Now()
				p.Abort(nil)
				for r := range p.Results() {
					if r.State != pool.Cancelled {
						t.Errorf("task %d killed by %s before the abort: %s (%v), want cancelled", r.ID, pool.SignalName(sig), r.State, r.Cause())
					}
				}
				if d := time.Since(start); d > 5*time.Second {
					t.Errorf("the pool ended %v after the abort, want at once", d)
				}
			})
		}
	}
}

// TestStopSignalWithoutAbort: a worker killed by SIGTERM with no abort to
// follow is a failure like any other death, only reported stopWait later.
func TestStopSignalWithoutAbort(t *testing.T) {
	defer pool.SetStopWait(200 * time.Millisecond)()
	for _, proto := range []pool.Protocol{pool.OneShot, pool.Line} {
		t.Run(string(proto), func(t *testing.T) {
			cfg := config(proto, 1)
			started := make(chan int, 1)
			cfg.Observer = func(e pool.Event) {
				if e.Kind == pool.EventAttemptStarted {
					started <- e.WorkerPID
				}
			}
			p, err := pool.New(cfg)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := p.Submit(context.Background(), pool.Task{Input: []byte("sleep:60000")}); err != nil {
				t.Fatal(err)
			}
			p.Close()
			pid := <-started
			time.Sleep(300 * time.Millisecond) // a line worker reads its line
			syscall.Kill(pid, syscall.SIGTERM)
			for r := range p.Results() {
				if r.State != pool.Failed || r.Cause() != pool.SignalCause(syscall.SIGTERM) {
					t.Errorf("task %d = %s (%v), want failed (signal:SIGTERM)", r.ID, r.State, r.Cause())
				}
			}
		})
	}
}
