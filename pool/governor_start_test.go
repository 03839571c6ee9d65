package pool_test

import (
	"context"
	"fmt"
	"os/exec"
	"testing"

	"github.com/safepool/safepool/internal/testenv"
	"github.com/safepool/safepool/pool"
)

// TestGovernorStartsRoomy: with memory far above what the workers could
// take at the start (eight workers, a budget of many GiB), the governor
// does not space out the first admissions: eight sleeps of 3 s on eight workers
// all run at once, as they do without the governor.
func TestGovernorStartsRoomy(t *testing.T) {
	requireCgroups(t)
	sleep, err := exec.LookPath("sleep")
	if err != nil {
		t.Fatal(err)
	}
	var c concurrency
	cfg := pool.Config{Command: []string{sleep, "{}"}, Workers: 8, Observer: c.observe}
	p, err := pool.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	st, ok := p.Memory()
	if !ok || st.Budget < 16<<30 {
		p.Close()
		for range p.Results() {
		}
		testenv.SkipOrFail(t, fmt.Sprintf("needs the governor on with a budget of 16 GiB or more; Memory() = %+v, %v", st, ok))
		return
	}
	go func() {
		defer p.Close()
		for i := 0; i < 8; i++ {
			p.Submit(context.Background(), pool.Task{Input: []byte("3")})
		}
	}()
	n := 0
	for r := range p.Results() {
		n++
		if r.State != pool.Done {
			t.Errorf("task %d = %s %s, want done", r.ID, r.State, r.Cause())
		}
	}
	if n != 8 {
		t.Errorf("got %d results, want 8", n)
	}
	if c.most != 8 {
		t.Errorf("at most %d attempts ran at once, want all 8 (memory: %+v)", c.most, st)
	}
}
