package pool_test

import (
	"path/filepath"
	"strings"
	"testing"

	"github.com/safepool/safepool/pool"
)

// TestPersistentCgroupEmptiedBetweenWorkers: a persistent slot's cgroup
// serves the worker that replaces the one before it, whether that one was
// recycled (MaxTasksPerWorker) or died. What the old worker left there out
// of reach of its process group (a setsid descendant) is gone before the
// new worker runs: it would weigh on the new worker's memory, peak and OOM
// count, and a death there would be blamed on the new worker's task.
func TestPersistentCgroupEmptiedBetweenWorkers(t *testing.T) {
	requireCgroups(t)
	for _, c := range []struct {
		name string
		end  string // how the worker that started the escaped process ends
	}{{"recycled", ""}, {"died", "kill"}} {
		t.Run(c.name, func(t *testing.T) {
			file := filepath.Join(t.TempDir(), "pid")
			cfg := config(pool.Framed, 1)
			inputs := []string{"escape:" + file}
			if c.end == "" {
				cfg.MaxTasksPerWorker = 1
			} else {
				inputs = append(inputs, c.end)
			}
			inputs = append(inputs, "groupprocs", "alive:"+file)
			got, _ := run(t, cfg, inputs...)
			if r := got[1]; r.State != pool.Done {
				t.Fatalf("task 1 = %s %q, want done", r.State, r.Cause())
			}
			n := uint64(len(inputs))
			if r := got[n-1]; r.State != pool.Done || strings.TrimSpace(string(r.Output)) != "1" {
				t.Errorf("groupprocs = %s %q, output %q; want done and only the new worker in its cgroup", r.State, r.Cause(), r.Output)
			}
			if r := got[n]; r.State != pool.Done || strings.TrimSpace(string(r.Output)) != "gone" {
				t.Errorf("alive = %s %q, output %q; want done and the escaped process gone", r.State, r.Cause(), r.Output)
			}
		})
	}
}
