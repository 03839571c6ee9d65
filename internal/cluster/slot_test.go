package cluster_test

import (
	"strings"
	"testing"
	"time"
)

// TestAgentSlot: a task that an agent runs has the agent's slot in
// SAFEPOOL_SLOT, 1 to the agent's -j, as a local run's job has its own
// (docs/cluster.md).
func TestAgentSlot(t *testing.T) {
	t.Parallel()
	dir, url := newCluster(t)
	startAgent(t, dir, "agent1", url, "-j", "2")
	p := start(t, dir, "run", "run", "--nats", url, "-k", "sh", "-c", `echo "slot=$SAFEPOOL_SLOT"`, ":::", "a", "b", "c", "d")
	if st := p.wait(t, 60*time.Second); st != 0 {
		t.Fatalf("run exited %d\n%s", st, p.stderr())
	}
	lines := strings.Split(strings.TrimSpace(p.out.String()), "\n")
	if len(lines) != 4 {
		t.Fatalf("stdout = %q, want 4 lines", p.out.String())
	}
	for _, l := range lines {
		if l != "slot=1" && l != "slot=2" {
			t.Errorf("a task printed %q, want slot=1 or slot=2", l)
		}
	}
}
