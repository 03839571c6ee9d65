package pool_test

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/safepool/safepool/pool"
)

// TestPauseStopsDaemons: Pause stops the processes that tasks started in a
// session of their own, not only the workers' process groups, and Resume
// lets them go on. Such a daemon ran on while the pool was paused.
func TestPauseStopsDaemons(t *testing.T) {
	file := filepath.Join(t.TempDir(), "daemon.pid")
	p, err := pool.New(config(pool.Line, 1))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { // on a failure too: the daemon ends with the pool
		p.Resume()
		p.Abort(nil)
		for range p.Results() {
		}
	})
	if _, err := p.Submit(t.Context(), pool.Task{Input: []byte("escape:" + file)}); err != nil {
		t.Fatal(err)
	}
	r := <-p.Results()
	if r.Err() != nil || string(r.Output) != "ok" {
		t.Fatalf("escape: %q, %v", r.Output, r.Err())
	}
	b, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	daemon, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil {
		t.Fatal(err)
	}
	waitState := func(want bool, what string) {
		t.Helper()
		// SIGSTOP takes effect as the process is next scheduled.
		for deadline := time.Now().Add(2 * time.Second); (stateOf(daemon) == "T") != want; time.Sleep(5 * time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatalf("the daemon (pid %d, a session of its own) is in state %q 2s after %s", daemon, stateOf(daemon), what)
			}
		}
	}
	p.Pause()
	waitState(true, "Pause")
	p.Resume()
	waitState(false, "Resume")
	p.Close()
	for range p.Results() {
	}
	if st := stateOf(daemon); st != "" && st != "Z" {
		t.Errorf("the daemon (pid %d) is in state %q after the pool ended", daemon, st)
	}
}
