package cluster_test

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/safepool/safepool/internal/memory"
	"github.com/safepool/safepool/internal/testenv"
)

// TestCrowdedOut: an agent runs as nobody in a container of 600 MiB (a
// cgroup it cannot make cgroups in) beside a process that holds 360 MiB,
// as a program on that machine would. A task that grows to 300 MiB, which
// the agent's budget of 536 MiB would hold, is OOM-killed even when it
// runs alone: it was crowded out. That is not the task's own need: the
// agent neither hands it on a class up nor records it poison (it did, on
// the largest agent). Without --retries it fails, cause oom, the message
// saying what the others held and naming the agent. With --retries it is
// handed back in its class, and once the other process is gone it is done
// on the same agent.
func TestCrowdedOut(t *testing.T) {
	t.Parallel()
	if os.Geteuid() != 0 {
		testenv.SkipOrFail(t, "making a container's cgroup needs root")
		return
	}
	if _, err := exec.LookPath("setpriv"); err != nil {
		testenv.SkipOrFail(t, "setpriv (util-linux) is not installed")
		return
	}
	m, err := memory.NewManager()
	if err != nil {
		testenv.SkipOrFail(t, "memory cgroups: "+err.Error())
		return
	}
	t.Cleanup(func() {
		if err := m.Close(); err != nil {
			t.Errorf("removing the container's cgroup: %v", err)
		}
	})
	g, err := m.NewGroup("container", 600<<20)
	if err != nil {
		testenv.SkipOrFail(t, "a container's cgroup: "+err.Error())
		return
	}
	cg := g.Path()
	dir, url := newCluster(t)
	// nobody runs the agent and its workers (this test binary): copies
	// where nobody may run them.
	bins, err := os.MkdirTemp("", "safepool-nobody-") // t.TempDir's parent is root's alone
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(bins) })
	if err := os.Chmod(bins, 0o755); err != nil {
		t.Fatal(err)
	}
	agentBin, workerBin := filepath.Join(bins, "safepool"), filepath.Join(bins, "worker")
	copyFile(t, safepoolBin, agentBin)
	copyFile(t, os.Args[0], workerBin)

	// The process beside the agent. The kernel may take it too: on a
	// loaded machine, a second OOM kill while the first victim was still
	// exiting took it, and the counter then rose by two for one worker's
	// death, which confirms neither (as it must). What the test checks
	// needs it alive, so a phase in which it died is run again with a new
	// one.
	type hogProc struct {
		stop   func()
		exited chan struct{}
		state  string // how it ended, once exited is closed
	}
	startHog := func() *hogProc {
		hog := exec.Command("sh", "-c", `echo $$ > "$0/cgroup.procs" && exec "$1" -test.run='^$' hold:360`, cg, workerBin)
		hog.Env = append(os.Environ(), helperEnv+"=1")
		hog.Stderr = os.Stderr
		in, err := hog.StdinPipe()
		if err != nil {
			t.Fatal(err)
		}
		out, err := hog.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		if err := hog.Start(); err != nil {
			t.Fatal(err)
		}
		h := &hogProc{exited: make(chan struct{})}
		go func() {
			hog.Wait()
			h.state = hog.ProcessState.String()
			close(h.exited)
		}()
		h.stop = func() {
			hog.Process.Kill()
			in.Close()
			<-h.exited
		}
		t.Cleanup(h.stop)
		if line, err := bufio.NewReader(out).ReadString('\n'); line != "ready\n" {
			t.Fatalf("the process beside the agent did not start: %q %v", line, err)
		}
		return h
	}
	gone := func(h *hogProc) bool {
		select {
		case <-h.exited:
			return true
		default:
			return false
		}
	}
	hog := startHog()

	agent := startProg(t, dir, "crowded", "sh", nil, "-c",
		`echo $$ > "$0/cgroup.procs" && exec setpriv --reuid 65534 --regid 65534 --clear-groups "$1" agent --nats "$2" --name crowded -j 1`,
		cg, agentBin, url)
	agent.waitLog(t, " per task (memory classes", 30*time.Second)
	worker := []string{"env", helperEnv + "=1", workerBin, "-test.run=^$", "{}"}
	run := func(name string, extra ...string) *proc {
		args := append([]string{"run", "--nats", url, "--json", name + ".json"}, extra...)
		args = append(append(args, worker...), ":::", "touch:300", "sleep:10")
		return start(t, dir, name, args...)
	}
	const tries = 3

	// No retries: failed, not poison.
	var s summaryJSON
	var once *proc
	for try := 1; ; try++ {
		name := fmt.Sprintf("once%d", try)
		once = run(name)
		st := once.wait(t, 90*time.Second)
		if gone(hog) && try < tries {
			t.Logf("the process beside the agent ended (%s) during %s (exit %d), the run is made again:\n%s", hog.state, name, st, once.stderr())
			hog = startHog()
			continue
		}
		if st != 1 {
			t.Fatalf("run exited %d, want 1 (one failed task)\n%s", st, once.stderr())
		}
		s = summaryOf(t, dir, name)
		break
	}
	if s.Tasks.Done != 1 || s.Tasks.Failed != 1 || s.Tasks.Poison != 0 || len(s.Failed) != 1 {
		t.Fatalf("tasks = %+v, failed %+v; want 1 done and 1 failed, not poison\n%s", s.Tasks, s.Failed, once.stderr())
	}
	f := s.Failed[0]
	if f.ID != 1 || f.State != "failed" || f.Cause != "oom" {
		t.Errorf("failed = %+v, want task 1 failed, cause oom", f)
	}
	for _, want := range []string{"processes other than the pool's workers held ", " of the enclosing cgroup's limit of 600 MiB", "on agent crowded"} {
		if !strings.Contains(f.Message, want) {
			t.Errorf("message %q does not say %q", f.Message, want)
		}
	}
	if l := agent.stderr(); strings.Contains(l, "handed on") {
		t.Errorf("the agent handed the task on to a larger class:\n%s", l)
	}

	// Retries: handed back in its class, done once the other process is
	// gone.
	var again *proc
	var againName string
	for try := 1; ; try++ {
		name := fmt.Sprintf("again%d", try)
		againName = name
		seen := strings.Count(agent.stderr(), "crowded out here")
		again = run(name, "--retries", "5")
		deadline := time.Now().Add(60 * time.Second)
		for strings.Count(agent.stderr(), "crowded out here") == seen && !gone(hog) && time.Now().Before(deadline) {
			time.Sleep(50 * time.Millisecond)
		}
		if strings.Count(agent.stderr(), "crowded out here") > seen {
			break
		}
		if !gone(hog) || try == tries {
			t.Fatalf("no new \"crowded out here\" in the agent's stderr after 60s:\n%s", agent.stderr())
		}
		st := again.wait(t, 90*time.Second)
		t.Logf("the process beside the agent ended (%s) during %s (exit %d), the run is made again:\n%s", hog.state, name, st, again.stderr())
		hog = startHog()
	}
	hog.stop()
	if st := again.wait(t, 90*time.Second); st != 0 {
		t.Fatalf("run exited %d, want 0\n%s", st, again.stderr())
	}
	s = summaryOf(t, dir, againName)
	if s.Tasks.Done != 2 || len(s.Recovered) != 1 || s.Recovered[0].ID != 1 || !slices.Contains(s.Recovered[0].Causes, "oom") {
		t.Errorf("tasks = %+v, recovered %+v; want both done, task 1 after oom", s.Tasks, s.Recovered)
	}
	l := agent.stderr()
	if !strings.Contains(l, "handed back to class 0") || strings.Contains(l, "handed on") {
		t.Errorf("want the agent to hand the task back in class 0, not on:\n%s", l)
	}
	t.Logf("agent:\n%s", l)
}

// copyFile copies the executable src to dst.
func copyFile(t *testing.T, src, dst string) {
	t.Helper()
	in, err := os.Open(src)
	if err != nil {
		t.Fatal(err)
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o755)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		t.Fatal(err)
	}
	if err := out.Close(); err != nil {
		t.Fatal(err)
	}
}
