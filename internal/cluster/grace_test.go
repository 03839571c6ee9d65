package cluster_test

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestRunTimeoutGrace: a run's --timeout-grace goes with it to the agents,
// in place of the agent's own: an agent whose grace is 30s SIGKILLs at
// once the task of a run submitted with --timeout-grace 0 (its SIGTERM
// handler never runs), and after 1s the task of a run with
// --timeout-grace 1s that ignores SIGTERM; a run without the flag gets the
// agent's grace, in which its task's handler runs.
func TestRunTimeoutGrace(t *testing.T) {
	t.Parallel()
	dir, url := newCluster(t)
	startAgent(t, dir, "agent1", url, "-j", "3", "--timeout-grace", "30s")
	zero, own := filepath.Join(dir, "zero"), filepath.Join(dir, "own")
	runs := []struct {
		name, input string
		args        []string
		msg         string // the failed task's message
	}{
		{"zero", "termtrap:" + zero, []string{"--timeout-grace", "0"}, "killed after 2s"},
		{"short", "termignore:0", []string{"--timeout-grace", "1s"}, "killed after 2s: SIGTERM, then SIGKILL after a grace of 1s"},
		{"agents", "termtrap:" + own, nil, "killed after 2s: SIGTERM, and the worker exited with 7"},
	}
	procs := make([]*proc, len(runs))
	begin := time.Now()
	for i, r := range runs {
		// Long enough for the helper, built with -race on a busy machine,
		// to set its SIGTERM handler before the timeout: with 300ms it
		// sometimes died of the SIGTERM first.
		procs[i] = submit(t, dir, r.name, url, []string{r.input}, append([]string{"--timeout", "2s"}, r.args...)...)
	}
	for i, r := range runs {
		procs[i].wait(t, 60*time.Second)
		s := summaryOf(t, dir, r.name)
		if len(s.Failed) != 1 || s.Failed[0].Cause != "timeout" || s.Failed[0].Message != r.msg {
			t.Errorf("run %s: failed = %+v, want one timeout, %q", r.name, s.Failed, r.msg)
		}
	}
	if took := time.Since(begin); took > 20*time.Second {
		t.Errorf("the runs took %v, want their own graces, not the agent's 30s", took)
	}
	if _, err := os.Stat(zero); err == nil {
		t.Errorf("with the run's --timeout-grace 0, the task's SIGTERM handler ran")
	}
	if b, err := os.ReadFile(own); !strings.Contains(string(b), "cleaned") {
		t.Errorf("in the agent's grace, the task's SIGTERM handler did not run: %q, %v", b, err)
	}
}
