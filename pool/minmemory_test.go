package pool_test

import (
	"context"
	"os/exec"
	"strings"
	"testing"

	"github.com/safepool/safepool/pool"
)

// TestMinMemory: a memory limit or budget too small for any process to
// start (a size given without its unit) is refused by New with the reason.
// In a cgroup capped at a few bytes, starting a process failed with ENFILE
// ("too many open files in system"), and the supervisor's starting thread,
// charged to that cgroup, sometimes died with it ("fatal error: runtime:
// cannot allocate memory").
func TestMinMemory(t *testing.T) {
	tests := []struct {
		name string
		cfg  pool.Config
	}{
		{"MemLimit", pool.Config{MemLimit: 10}},
		{"MemBudget", pool.Config{MemBudget: 10}},
		{"MemLimit below", pool.Config{MemLimit: pool.MinMemory - 1}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := refused(t, tt.cfg)
			if err == nil {
				t.Fatalf("New(%s %d) = nil error, want one", tt.name, max(tt.cfg.MemLimit, tt.cfg.MemBudget))
			}
			if !strings.Contains(err.Error(), "MinMemory") {
				t.Errorf("New(%s %d) = %v, want an error that names MinMemory", tt.name, max(tt.cfg.MemLimit, tt.cfg.MemBudget), err)
			}
		})
	}
}

// TestMinMemoryRuns: a process starts and ends done in a cgroup capped at
// MinMemory, so the bound refuses only limits that cannot work.
func TestMinMemoryRuns(t *testing.T) {
	requireCgroups(t)
	tr, err := exec.LookPath("true")
	if err != nil {
		t.Fatal(err)
	}
	rs, _ := run(t, pool.Config{Command: []string{tr}, Workers: 2, MemLimit: pool.MinMemory}, "a", "b", "c")
	for _, r := range rs {
		if r.State != pool.Done {
			t.Errorf("task %d = %s %s (%s), want done", r.ID, r.State, r.Cause(), r.Attempts[len(r.Attempts)-1].Message)
		}
	}
}

// TestReserveLeavesNoMemory: with a cgroup per worker, a reserve as large
// as the host's memory leaves a budget of nothing, which would cap every
// worker's cgroup at a byte: New refuses it and says why, where every task
// used to fail with exit:127 and "too many open files in system".
func TestReserveLeavesNoMemory(t *testing.T) {
	requireCgroups(t)
	tr, err := exec.LookPath("true")
	if err != nil {
		t.Fatal(err)
	}
	p, err := pool.New(pool.Config{Command: []string{tr}, Workers: 1, MemReserve: 1 << 50})
	if err == nil {
		go func() {
			defer p.Close()
			p.Submit(context.Background(), pool.Task{Input: []byte("a")})
		}()
		for r := range p.Results() {
			t.Logf("task %d = %s %s", r.ID, r.State, r.Cause())
		}
		t.Fatal("New with a reserve of 1 PiB = nil error, want one")
	}
	if want := "leaves the workers no memory of the host's"; !strings.Contains(err.Error(), want) {
		t.Errorf("New with a reserve of 1 PiB = %v, want an error that says %q", err, want)
	}
}

// TestWatermarkLeavesNoMemory: a PreemptAbove so low that the budget under
// it is below MinMemory is refused with PreemptAbove named; the error used
// to blame the memory reserve ("a memory reserve of 2 GiB leaves the
// workers only 25 B"), which had nothing to do with it.
func TestWatermarkLeavesNoMemory(t *testing.T) {
	requireCgroups(t)
	p, err := pool.New(pool.Config{Command: []string{"true"}, Workers: 1, PreemptAbove: 1e-9})
	if err == nil {
		p.Close()
		for range p.Results() {
		}
		t.Fatal("New with PreemptAbove 1e-9 = nil error, want one")
	}
	// Refused as below 1% (a fraction taken for a percentage), or as
	// leaving the workers too little: either way PreemptAbove is named,
	// and the reserve is not blamed.
	if want := "Config.PreemptAbove of 1e-09 "; !strings.Contains(err.Error(), want) || strings.Contains(err.Error(), "reserve") {
		t.Errorf("New with PreemptAbove 1e-9 = %v, want an error that names %q, not the reserve", err, want)
	}
}
