package pool_test

import (
	"context"
	"fmt"
	"io"
	"strings"
	"testing"

	"github.com/safepool/safepool/pool"
)

// TestIdleWorkersShedUnprivileged: three line workers that each hold
// 100 MiB from their start, in a 500 MiB container, as nobody, and a task
// that takes 250 MiB more. Beside the two idle workers it does not fit, and
// the OOM killer takes it; alone with its worker it fits. The task ran
// "alone" (no other task ran) with the whole budget as its need while the
// idle workers still held 200 MiB, and it was marked poison: "it needs more
// memory than the pool may use", though it needed less than the budget.
// The governor now asks idle workers to end before a task that has a need
// of its own and does not fit beside them, and starts no other worker
// meanwhile: the task is done.
func TestIdleWorkersShedUnprivileged(t *testing.T) {
	dir := containerFor(t, 500<<20)
	text, err := superviseAsNobody(t, dir, workerEnv+"=container-idle-workers")
	if err != nil {
		t.Fatalf("supervisor: %v; output:\n%s", err, text)
	}
	t.Log(text)
	if !strings.Contains(text, "done 19 of 19, err <nil>\n") {
		t.Errorf("supervisor output:\n%s\nwant every task done", text)
	}
}

// runContainerIdleWorkers is the supervisor of
// TestIdleWorkersShedUnprivileged.
func runContainerIdleWorkers() int {
	cfg := config(pool.Line, 3)
	cfg.Env = append(workerEnvFor("fat-map-start"), "FAT_MB=100")
	cfg.Stderr = io.Discard
	p, err := pool.New(cfg)
	if err != nil {
		fmt.Println(err)
		return 1
	}
	// Enough tasks before the large one for all three workers to be
	// started and idle by then.
	inputs := []string{}
	for range 12 {
		inputs = append(inputs, "sleep:300")
	}
	inputs = append(inputs, "hold:250")
	for range 6 {
		inputs = append(inputs, "sleep:300")
	}
	go func() {
		defer p.Close()
		for _, in := range inputs {
			p.Submit(context.Background(), pool.Task{Input: []byte(in)})
		}
	}()
	done := 0
	for r := range p.Results() {
		if string(r.Input) == "hold:250" {
			for _, a := range r.Attempts {
				fmt.Printf("hold attempt %d: %s, peak %d MiB\n", a.Number, a.Cause, a.PeakRSS>>20)
			}
		}
		if r.State == pool.Done {
			done++
		} else {
			fmt.Printf("task %d %s %s: %s\n", r.ID, r.State, r.Cause(), r.Err())
		}
	}
	fmt.Printf("done %d of %d, err %v\n", done, len(inputs), p.Err())
	st := p.Stats()
	fmt.Printf("memory mode: %s; started %d workers, %d attempts\n", p.MemoryMode(), st.WorkersStarted, st.Attempts)
	return 0
}
