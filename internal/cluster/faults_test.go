package cluster_test

import (
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestServerLostStore: the server is killed and started again on an empty
// store (no persistence, or its disk lost) in the middle of a run. The run
// cannot complete, since its queue and results are gone: the submitter
// says so and exits 3 rather than wait for ever, and the agent sets the
// queue up again and runs the next run.
func TestServerLostStore(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	port := freePort(t)
	url := fmt.Sprintf("nats://127.0.0.1:%d", port)
	server := startServer(t, dir, "server", port)
	agent := startAgent(t, dir, "agent1", url, "-j", "2")
	sub := submit(t, dir, "run", url, sleeps(10, 1000))
	run := runIDOf(t, sub)
	waitRecorded(t, url, run, 1, 30*time.Second)
	server.kill()
	startServer(t, dir, "server-empty", port, "--store", filepath.Join(dir, "empty"))
	if st := sub.wait(t, 40*time.Second); st != 3 {
		t.Fatalf("run exited %d, want 3\n%s", st, sub.stderr())
	}
	if want := "the NATS server no longer holds run " + run; !strings.Contains(sub.stderr(), want) {
		t.Errorf("stderr does not say %q:\n%s", want, sub.stderr())
	}
	agent.waitLog(t, "set it up again", 20*time.Second)
	// The agent serves a new run on the new store.
	again := submit(t, dir, "again", url, sleeps(3, 10))
	if st := again.wait(t, 40*time.Second); st != 0 {
		t.Fatalf("a new run exited %d, want 0\n%s", st, again.stderr())
	}
	checkOutputs(t, again, 3)
}
