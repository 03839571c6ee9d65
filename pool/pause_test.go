package pool_test

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/safepool/safepool/pool"
)

// TestPauseResume: Pause stops every worker's process group and starts no
// task until Resume; the time paused counts against no task's timeout.
// For one-shot jobs and persistent line workers.
func TestPauseResume(t *testing.T) {
	for _, proto := range []pool.Protocol{pool.OneShot, pool.Line} {
		t.Run(string(proto), func(t *testing.T) {
			var mu sync.Mutex
			var pids []int
			cfg := config(proto, 2)
			cfg.Timeout = 2500 * time.Millisecond
			cfg.Observer = func(e pool.Event) {
				if e.Kind == pool.EventAttemptStarted {
					mu.Lock()
					pids = append(pids, e.WorkerPID)
					mu.Unlock()
				}
			}
			p, err := pool.New(cfg)
			if err != nil {
				t.Fatal(err)
			}
			for i := 0; i < 4; i++ {
				p.Submit(t.Context(), pool.Task{Input: []byte("sleep:" + strconv.Itoa(500+i))})
			}
			p.Close()
			for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(10 * time.Millisecond) {
				mu.Lock()
				n := len(pids)
				mu.Unlock()
				if n == 2 {
					break
				}
				if time.Now().After(deadline) {
					t.Fatalf("%d attempts started in 10s, want 2", n)
				}
			}
			time.Sleep(300 * time.Millisecond)
			p.Pause()
			mu.Lock()
			running := append([]int(nil), pids...)
			mu.Unlock()
			for _, pid := range running {
				// SIGSTOP takes effect as the process is next scheduled.
				st := stateOf(pid)
				for deadline := time.Now().Add(time.Second); st != "T" && time.Now().Before(deadline); st = stateOf(pid) {
					time.Sleep(5 * time.Millisecond)
				}
				if st != "T" {
					t.Errorf("worker %d is %q after Pause, want stopped (T)", pid, st)
				}
			}
			// Longer than the timeout: the sleeps end meanwhile, but the
			// workers, stopped, cannot answer, and no task may start.
			time.Sleep(3 * time.Second)
			mu.Lock()
			started := len(pids)
			mu.Unlock()
			if started != 2 {
				t.Errorf("%d attempts started while paused, want none", started-2)
			}
			resumed := time.Now()
			p.Resume()
			n := 0
			for r := range p.Results() {
				n++
				if r.State != pool.Done {
					t.Errorf("task %d ended %s (%s), want done: the pause counts against no timeout", r.ID, r.State, r.Cause())
				}
				if r.ID > 2 && len(r.Attempts) > 0 && r.Attempts[0].Start.Before(resumed) {
					t.Errorf("task %d started at %v, while paused (resumed at %v)", r.ID, r.Attempts[0].Start, resumed)
				}
			}
			if n != 4 {
				t.Errorf("%d results, want 4", n)
			}
		})
	}
}

// stateOf returns the state letter of process pid, from /proc.
func stateOf(pid int) string {
	b, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "stat"))
	if err != nil {
		return ""
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 || i+2 >= len(s) {
		return ""
	}
	return s[i+2 : i+3]
}
