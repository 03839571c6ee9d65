package pool_test

import (
	"context"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/safepool/safepool/pool"
)

// TestSlotEnv: every worker process, of every protocol, has its slot's
// number in SAFEPOOL_SLOT, from 1 to Workers, in place of one the
// supervisor's environment has; a process that replaces one that died or
// was recycled takes the slot it replaces, so that no more than Workers
// numbers are ever seen and each process keeps one.
func TestSlotEnv(t *testing.T) {
	const workers = 2
	for _, proto := range protocols {
		t.Run(string(proto), func(t *testing.T) {
			cfg := config(proto, workers)
			cfg.Env = append(cfg.Env, pool.SlotEnv+"=99")
			cfg.MaxTasksPerWorker = 3
			var inputs []string
			for i := 0; i < 24; i++ {
				inputs = append(inputs, "slot:"+strconv.Itoa(i))
				if i%7 == 3 {
					inputs = append(inputs, "kill")
				}
			}
			got, p := run(t, cfg, inputs...)
			slotOf := map[string]string{} // pid -> slot
			seen := map[string]bool{}
			for id, r := range got {
				if inputs[id-1] == "kill" {
					continue
				}
				x, rest, _ := strings.Cut(strings.TrimSpace(string(r.Output)), "/")
				slot, pid, _ := strings.Cut(rest, "/")
				if r.State != pool.Done || x != strings.TrimPrefix(inputs[id-1], "slot:") {
					t.Fatalf("task %d (%s) = %s %q, want done", id, inputs[id-1], r.State, r.Output)
				}
				if n, err := strconv.Atoi(slot); err != nil || n < 1 || n > workers {
					t.Errorf("task %d: %s = %q, want 1..%d", id, pool.SlotEnv, slot, workers)
				}
				if s, ok := slotOf[pid]; ok && s != slot {
					t.Errorf("worker %s has slots %s and %s", pid, s, slot)
				}
				slotOf[pid] = slot
				seen[slot] = true
			}
			if s := p.Stats(); s.WorkersStarted <= workers {
				t.Errorf("WorkersStarted = %d, want replacements", s.WorkersStarted)
			}
			if len(seen) != workers {
				t.Errorf("slots seen = %v, want %d of them", seen, workers)
			}
		})
	}
}

// TestSlotArgs: a one-shot task's SlotArgs makes each attempt's argument
// vector from the slot that runs it, the one in its SAFEPOOL_SLOT, retries
// included; Result.Args stays the task's Args.
func TestSlotArgs(t *testing.T) {
	const workers = 3
	cfg := config(pool.OneShot, workers)
	cfg.Retries = 2
	p, err := pool.New(cfg)
	if err != nil {
		t.Fatalf("New() = %v", err)
	}
	const n = 30
	go func() {
		defer p.Close()
		for i := 0; i < n; i++ {
			task := pool.Task{Input: []byte("x"), SlotArgs: func(slot int) []string {
				return append(workerCmd("oneshot"), "slot:"+strconv.Itoa(slot))
			}}
			if i%5 == 0 {
				// Fails at every attempt: each attempt is retried in
				// whichever slot is free, with that slot's arguments.
				task.SlotArgs = func(slot int) []string {
					return append(workerCmd("oneshot"), "exit:"+strconv.Itoa(10+slot))
				}
			}
			if _, err := p.Submit(context.Background(), task); err != nil {
				return
			}
		}
	}()
	count := 0
	timeout := time.After(time.Minute)
	for count < n {
		select {
		case r, ok := <-p.Results():
			if !ok {
				t.Fatalf("results closed after %d", count)
			}
			count++
			if r.Args != nil {
				t.Errorf("task %d: Args = %q, want nil as submitted", r.ID, r.Args)
			}
			if (r.ID-1)%5 == 0 {
				if r.State != pool.Failed || len(r.Attempts) != 3 {
					t.Errorf("task %d = %s with %d attempts, want failed after 3", r.ID, r.State, len(r.Attempts))
				}
				for _, a := range r.Attempts {
					if a.ExitCode < 11 || a.ExitCode > 10+workers {
						t.Errorf("task %d: attempt exit %d, want 11..%d", r.ID, a.ExitCode, 10+workers)
					}
				}
				continue
			}
			x, rest, _ := strings.Cut(strings.TrimSpace(string(r.Output)), "/")
			slot, _, _ := strings.Cut(rest, "/")
			if r.State != pool.Done || x != slot || x == "" {
				t.Errorf("task %d = %s %q, want done with the argument's slot in %s", r.ID, r.State, r.Output, pool.SlotEnv)
			}
		case <-timeout:
			t.Fatalf("timed out after %d results", count)
		}
	}
}
