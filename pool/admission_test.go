package pool_test

import (
	"sync"
	"testing"
	"time"

	"github.com/safepool/safepool/pool"
)

// TestAdmissionWaitEvents: tasks whose MemHint is more than half the
// budget wait for memory one after the other, and the pool says when each
// wait begins and ends: waits as long as the task that holds the memory.
func TestAdmissionWaitEvents(t *testing.T) {
	requireCgroups(t)
	const m = 256 << 20
	var mu sync.Mutex
	var waits, ends int
	var began time.Time
	var waited time.Duration
	cfg := config(pool.Framed, 3)
	cfg.MemBudget, cfg.MemPerTask = 3*m, 16<<20
	cfg.Observer = func(ev pool.Event) {
		mu.Lock()
		defer mu.Unlock()
		switch ev.Kind {
		case pool.EventAdmissionWait:
			if !began.IsZero() {
				t.Errorf("two admission-wait events without an end between them")
			}
			waits++
			began = ev.Time
		case pool.EventAdmissionWaitEnded:
			if began.IsZero() {
				t.Errorf("an admission-wait-ended event without a wait before it")
				return
			}
			ends++
			waited += ev.Time.Sub(began)
			began = time.Time{}
		}
	}
	var tasks []pool.Task
	for range 3 {
		tasks = append(tasks, pool.Task{Input: []byte("sleep:400"), MemHint: 2 * m})
	}
	for id, r := range runTasks(t, cfg, tasks...) {
		if r.State != pool.Done {
			t.Errorf("task %d = %s %s, want done", id, r.State, r.Cause())
		}
	}
	mu.Lock()
	defer mu.Unlock()
	// Three tasks one at a time: the queue waits while the first and the
	// second run, about 800 ms.
	if waits < 1 || ends != waits || waited < 600*time.Millisecond {
		t.Errorf("admission waits, ends, time waited = %d, %d, %v; want at least 1, as many, at least 600ms", waits, ends, waited)
	}
}
