package pool_test

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/safepool/safepool/internal/memory"
	"github.com/safepool/safepool/internal/testenv"
	"github.com/safepool/safepool/pool"
)

// allocTask is a Python one-shot worker: "allocTask MB MS" touches MB
// megabytes and holds them MS milliseconds. Python's memory is what it
// allocates; a Go worker built with -race would need several times more.
const allocTask = "import sys, time; b = b'x' * (int(sys.argv[1]) << 20); time.sleep(int(sys.argv[2]) / 1000)"

// python returns the path of python3, or skips the test.
func python(t *testing.T) string {
	t.Helper()
	py, err := exec.LookPath("python3")
	if err != nil {
		testenv.SkipOrFail(t, "python3 is not installed")
	}
	return py
}

// concurrency is an Observer that tracks how many attempts run at once.
type concurrency struct {
	mu        sync.Mutex
	now, most int
	memory    []pool.MemoryState
}

func (c *concurrency) observe(e pool.Event) {
	c.mu.Lock()
	defer c.mu.Unlock()
	switch e.Kind {
	case pool.EventAttemptStarted:
		c.now++
		c.most = max(c.most, c.now)
	case pool.EventAttemptEnded:
		c.now--
	case pool.EventMemory:
		c.memory = append(c.memory, *e.Memory)
	}
}

// TestGovernorAdmission runs N tasks of M bytes with a budget of 3M bytes:
// never more than 3 attempts run at once, though there are 8 workers.
func TestGovernorAdmission(t *testing.T) {
	requireCgroups(t)
	py := python(t)
	const m = 64 << 20
	var c concurrency
	cfg := pool.Config{
		Command:    []string{py, "-c", allocTask, "{}", "100"},
		Workers:    8,
		MemBudget:  3 * m,
		MemPerTask: m,
		Observer:   c.observe,
		Stderr:     io.Discard,
	}
	var inputs []string
	for i := 0; i < 8; i++ {
		inputs = append(inputs, "48")
	}
	got, p := run(t, cfg, inputs...)
	for id, r := range got {
		if r.State != pool.Done {
			t.Errorf("task %d = %s %s, want done", id, r.State, r.Cause())
		}
	}
	if c.most > 3 || c.most < 2 {
		t.Errorf("at most %d attempts ran at once, want 2 or 3 (budget 3 × %d bytes)", c.most, m)
	}
	st, ok := p.Memory()
	if !ok || st.Basis != pool.BasisPeaks || st.Allows < 1 || st.Allows > 3 {
		t.Errorf("Memory() = %+v, %v; want the governor on, planning from peaks, allowing 1 to 3", st, ok)
	}
	if len(c.memory) == 0 {
		t.Errorf("no memory events")
	}
	t.Logf("most at once: %d; memory: %+v", c.most, st)
}

// growTask is a Python one-shot worker that grows: "growTask MB MS" waits
// MS milliseconds, then touches MB megabytes and holds them MS/4.
const growTask = "import sys, time; ms = int(sys.argv[2]); time.sleep(ms / 1000); b = b'x' * (int(sys.argv[1]) << 20); time.sleep(ms / 4000)"

// TestGovernorLearnsGrowth: the governor samples each attempt's memory over
// its life and learns that these tasks use little at first and their peak
// at the end.
func TestGovernorLearnsGrowth(t *testing.T) {
	requireCgroups(t)
	py := python(t)
	cfg := pool.Config{
		Command:   []string{py, "-c", growTask, "{}", "1500"},
		Workers:   2,
		MemBudget: 1 << 30,
		Stderr:    io.Discard,
	}
	got, p := run(t, cfg, "64", "64", "64")
	for id, r := range got {
		if r.State != pool.Done {
			t.Errorf("task %d = %s %s, want done", id, r.State, r.Cause())
		}
	}
	env, lives, ok := pool.Growth(p)
	if !ok || len(lives) != 3 {
		t.Fatalf("Growth() = %v, %v, %v: want the lives of 3 attempts", env, lives, ok)
	}
	if env[0] > 0.5 || env[len(env)-1] != 1 {
		t.Errorf("profile envelope %.2f: want it to start well below the peak and end at it", env)
	}
	for _, l := range lives {
		if l < 1500*time.Millisecond {
			t.Errorf("a life of %v, shorter than the task's own wait", l)
		}
	}
}

// TestGovernorOff: without the governor, all workers run at once whatever
// the budget says.
func TestGovernorOff(t *testing.T) {
	requireCgroups(t)
	var c concurrency
	cfg := config(pool.Line, 4)
	cfg.NoGovernor = true
	cfg.MemBudget = 1 << 20
	cfg.Observer = c.observe
	inputs := []string{"sleep:300", "sleep:300", "sleep:300", "sleep:300"}
	got, p := run(t, cfg, inputs...)
	if len(got) != 4 {
		t.Fatalf("got %d results, want 4", len(got))
	}
	if _, ok := p.Memory(); ok {
		t.Errorf("Memory() reports a governor with NoGovernor set")
	}
	t.Logf("most at once: %d", c.most)
}

// TestGovernorHog: a task that allocates without end, under a budget and
// no per-worker limit, is killed at its cgroup's limit (the budget), reported
// as oom with that attribution, retried alone, and marked poison; it does
// not retry forever, and the other tasks finish.
func TestGovernorHog(t *testing.T) {
	requireCgroups(t)
	for _, proto := range []pool.Protocol{pool.OneShot, pool.Line} {
		t.Run(string(proto), func(t *testing.T) {
			cfg := config(proto, 2)
			cfg.MemBudget = 100 << 20
			inputs := []string{"sleep:50", "hog", "sleep:50", "sleep:50", "sleep:50", "sleep:50"}
			got, _ := run(t, cfg, inputs...)
			for id, r := range got {
				if id != 2 && r.State != pool.Done {
					t.Errorf("task %d = %s %s, want done", id, r.State, r.Cause())
				}
			}
			r := got[2]
			if r.State != pool.Poison || r.Cause() != pool.CauseOOM {
				t.Fatalf("hog = %s %q after %d attempts, want poison after oom", r.State, r.Cause(), len(r.Attempts))
			}
			if n := len(r.Attempts); n > 3 {
				t.Errorf("hog had %d attempts, want at most 3 (it needs the whole budget, then runs alone)", n)
			}
			// Killed alone at the whole budget, it is poison at once, and
			// its one attempt says so (below) instead.
			first := r.Attempts[0]
			if !strings.Contains(first.Message, "at the worker's limit") && len(r.Attempts) > 1 || first.PeakRSS < 90<<20 {
				t.Errorf("first attempt = %q, peak %d; want an OOM kill at the worker's limit near 100 MiB", first.Message, first.PeakRSS)
			}
			last := r.Attempts[len(r.Attempts)-1]
			if !strings.Contains(last.Message, "running alone with the whole memory budget") {
				t.Errorf("last attempt message = %q, want it to say the task ran alone with the whole budget", last.Message)
			}
		})
	}
}

// TestGovernorPreemption runs a supervisor inside a 400 MiB memory cgroup,
// as in a container, with two tasks that each grow to 120 MiB while the
// governor was told (MemPerTask) they need 8 MiB. The preemption watermark
// is lowered to half the cgroup's limit, so both together cross it: the
// younger is killed, requeued without charge, and completes later, alone.
// Afterwards the supervisor's cgroups are gone.
func TestGovernorPreemption(t *testing.T) {
	requireCgroups(t)
	py := python(t)
	m, err := memory.NewManager()
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	g, err := m.NewGroup("preempt", 400<<20)
	if err != nil {
		t.Fatal(err)
	}
	text, err := superviseIn(t, g.Path(), true, workerEnv+"=preempt", "PREEMPT_PYTHON="+py)
	if err != nil {
		t.Fatalf("supervisor: %v; output:\n%s", err, text)
	}
	if strings.Count(text, " done ") != 2 || !strings.Contains(text, "preempted=1") && !strings.Contains(text, "preempted=2") {
		t.Errorf("supervisor output:\n%s\nwant both tasks done and a preempted attempt", text)
	}
	if !strings.Contains(text, "uncharged") {
		t.Errorf("supervisor output:\n%s\nwant the preempted attempt uncharged", text)
	}
	entries, err := os.ReadDir(g.Path())
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		if e.IsDir() {
			t.Errorf("cgroup %s left behind in %s", e.Name(), g.Path())
		}
	}
	t.Logf("supervisor output:\n%s", text)
}

// runPreempt is the supervisor of TestGovernorPreemption. It prints one line
// per task with its attempts' causes, and the number of preemptions.
func runPreempt() int {
	cfg := pool.Config{
		Command:      []string{os.Getenv("PREEMPT_PYTHON"), "-c", allocTask, "{}", "1500"},
		Workers:      2,
		MemPerTask:   8 << 20,
		PreemptAbove: 0.5,
		PreemptPSI:   -1,
		Stderr:       io.Discard,
	}
	p, err := pool.New(cfg)
	if err != nil {
		fmt.Println(err)
		return 1
	}
	go func() {
		defer p.Close()
		for i := 0; i < 2; i++ {
			p.Submit(context.Background(), pool.Task{Input: []byte("120")})
		}
	}()
	for r := range p.Results() {
		var causes []string
		for i, a := range r.Attempts {
			c := string(a.Cause)
			if c == "" {
				c = "ok"
			}
			if a.Cause == pool.CausePreempted && i+1 < len(r.Attempts) && r.Attempts[i+1].Number == a.Number {
				c += "(uncharged)"
			}
			causes = append(causes, c)
		}
		fmt.Printf("task %d %s %s\n", r.ID, r.State, strings.Join(causes, ","))
	}
	fmt.Printf("preempted=%d\n", p.Stats().Preempted)
	return 0
}
