package cluster_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/safepool/safepool/internal/cluster"
	"github.com/safepool/safepool/internal/testenv"
)

// echoes returns n inputs that sleep ms each and print themselves.
func echoes(n, ms int) []string {
	var in []string
	for i := 0; i < n; i++ {
		in = append(in, fmt.Sprintf("echo:%d", ms+i))
	}
	return in
}

// TestServerStopped: the server is stopped (SIGSTOP) in the middle of a
// run kept in order (-k), longer than AckWait: the connections stay open
// but nothing answers. The submitter and the agent say within seconds,
// not the minutes NATS's own pings take, that they lost the server, with
// how far the run got, and say so again when it is back. Every task's
// output is shown once, in order, no task is counted lost or run twice,
// and the run exits 0.
func TestServerStopped(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	port := freePort(t)
	url := fmt.Sprintf("nats://127.0.0.1:%d", port)
	server := startServer(t, dir, "server", port)
	agent := startAgent(t, dir, "agent1", url, "-j", "2")
	const n = 12
	in := echoes(n, 1000)
	sub := submit(t, dir, "run", url, in, "-k")
	run := runIDOf(t, sub)
	waitRecorded(t, url, run, 2, 60*time.Second)
	server.cmd.Process.Signal(syscall.SIGSTOP)
	stopped := true
	defer func() {
		if stopped {
			server.cmd.Process.Signal(syscall.SIGCONT)
		}
	}()
	// NATS's default pings (every 2 min, 2 unanswered) would take 6 min.
	sub.waitLog(t, "lost the connection to the NATS server", 60*time.Second)
	agent.waitLog(t, "lost the connection to the NATS server", 60*time.Second)
	if s := sub.stderr(); !strings.Contains(s, fmt.Sprintf("tasks submitted, ")) || !strings.Contains(s, "stopped answering") {
		t.Errorf("the submitter does not say why, or how far the run got:\n%s", s)
	}
	server.cmd.Process.Signal(syscall.SIGCONT)
	stopped = false
	sub.waitLog(t, "reconnected to the NATS server", 60*time.Second)
	agent.waitLog(t, "reconnected to the NATS server", 60*time.Second)
	if st := sub.wait(t, 90*time.Second); st != 0 {
		t.Fatalf("run exited %d, want 0\n%s", st, sub.stderr())
	}
	if got, want := sub.out.String(), strings.Join(in, "\n")+"\n"; got != want {
		t.Errorf("stdout = %q, want every input once, in order: %q", got, want)
	}
	s := summaryOf(t, dir, "run")
	if s.Tasks.Done != n || s.Attempts != n || s.WorkerDeaths != 0 || len(s.Recovered) != 0 {
		t.Errorf("summary = %+v, want %d tasks done in %d attempts, no worker death, none recovered", s, n, n)
	}
	if starts := startsOf(dir, "agent1"); starts != n {
		t.Errorf("%d task starts, want %d", starts, n)
	}
	checkRecorded(t, url, run, n)
}

// TestServerNotAnswering: a server that takes connections but does not
// answer (stopped with SIGSTOP, hung) is no server: an agent started
// against it waits for it, saying so, as for a server not started yet,
// and serves once it answers; a submitter does not wait, and exits 2
// saying that no server answers.
func TestServerNotAnswering(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	port := freePort(t)
	url := fmt.Sprintf("nats://127.0.0.1:%d", port)
	server := startServer(t, dir, "server", port)
	server.cmd.Process.Signal(syscall.SIGSTOP)
	stopped := true
	defer func() {
		if stopped {
			server.cmd.Process.Signal(syscall.SIGCONT)
		}
	}()
	agent := start(t, dir, "agent1", "agent", "--nats", url, "--name", "agent1", "-j", "2")
	agent.waitLog(t, "until a server answers", 30*time.Second)
	sub := submit(t, dir, "early", url, sleeps(2, 100))
	if st := sub.wait(t, 30*time.Second); st != 2 {
		t.Errorf("a submitter with no server answering exited %d, want 2\n%s", st, sub.stderr())
	}
	if s := sub.stderr(); !strings.Contains(s, "no NATS server answers at "+url) {
		t.Errorf("the submitter does not say that no server answers:\n%s", s)
	}
	server.cmd.Process.Signal(syscall.SIGCONT)
	stopped = false
	agent.waitLog(t, " per task (memory classes", 60*time.Second)
	again := submit(t, dir, "run", url, sleeps(4, 100))
	if st := again.wait(t, 60*time.Second); st != 0 {
		t.Fatalf("run exited %d, want 0\n%s", st, again.stderr())
	}
	checkOutputs(t, again, 4)
}

// TestRetriesExhausted: a task that always fails, run with --retries 2,
// ends failed after exactly three attempts with its cause, counted once in
// the summary; JetStream does not deliver it again afterwards. The other
// task of the run is done.
func TestRetriesExhausted(t *testing.T) {
	t.Parallel()
	dir, url := newCluster(t)
	startAgent(t, dir, "agent1", url, "-j", "2")
	sub := submit(t, dir, "run", url, []string{"fail:7", "echo:100"}, "--retries", "2", "-k")
	run := runIDOf(t, sub)
	if st := sub.wait(t, 60*time.Second); st != 1 {
		t.Fatalf("run exited %d, want 1 (a task failed)\n%s", st, sub.stderr())
	}
	if got := sub.out.String(); got != "echo:100\n" {
		t.Errorf("stdout = %q, want the other task's output", got)
	}
	s := summaryOf(t, dir, "run")
	if s.Tasks.Submitted != 2 || s.Tasks.Done != 1 || s.Tasks.Failed != 1 || s.Attempts != 4 || s.WorkerDeaths != 3 ||
		len(s.Failed) != 1 || s.Failed[0].ID != 1 || s.Failed[0].Cause != "exit:4" || !strings.Contains(s.Failed[0].Message, "failing 7") {
		t.Errorf("summary = %+v, want task 1 failed (exit:4, its stderr) after 3 attempts, task 2 done", s)
	}
	jl, err := os.ReadFile(filepath.Join(dir, "run.tsv"))
	if err != nil {
		t.Fatal(err)
	}
	if got := strings.Count(string(jl), "\nfail:7\t") + strings.Count(string(jl), "\n1\tfail:7\t"); got != 3 {
		t.Errorf("the job log has %d attempts of task 1, want 3:\n%s", got, jl)
	}
	// Past AckWait, the task has not been delivered again, and the
	// stream holds nothing of the run.
	time.Sleep(cluster.AckWait + 2*time.Second)
	b, _ := os.ReadFile(filepath.Join(dir, "starts-agent1"))
	if got := strings.Count(string(b), "fail:7\n"); got != 3 {
		t.Errorf("the failing task started %d times, want 3:\n%s", got, b)
	}
	js := jetStreamOf(t, url)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	st, err := js.Stream(ctx, cluster.StreamName)
	if err != nil {
		t.Fatal(err)
	}
	info, err := st.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if info.State.Msgs != 0 {
		t.Errorf("the stream holds %d messages after the run, want 0", info.State.Msgs)
	}
	checkRecorded(t, url, run, 2)
}

// TestAgentCutOffAlone: the only agent's link to the server holds what it
// sends for longer than AckWait while it runs two tasks, then breaks, and
// the agent reconnects. The server gives the tasks again, to that agent,
// which still runs them: they go on, run once each, and no agent is
// counted lost. (It took its own claims for those of an agent lost, and
// ran each task a second time.)
func TestAgentCutOffAlone(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	port := freePort(t)
	url := fmt.Sprintf("nats://127.0.0.1:%d", port)
	startServer(t, dir, "server", port)
	link := testenv.NewLink(t, port, 0)
	agent := startAgent(t, dir, "agent1", fmt.Sprintf("nats://127.0.0.1:%d", link.Port), "-j", "4")
	in := echoes(2, 15000)
	sub := submit(t, dir, "run", url, in, "-k")
	run := runIDOf(t, sub)
	for startsOf(dir, "agent1") < 2 {
		time.Sleep(20 * time.Millisecond)
	}
	time.Sleep(time.Second) // the claims are written
	link.Hold()
	time.Sleep(cluster.AckWait + 3*time.Second)
	link.Cut()
	if st := sub.wait(t, 60*time.Second); st != 0 {
		t.Fatalf("run exited %d, want 0\n%s", st, sub.stderr())
	}
	if got, want := sub.out.String(), strings.Join(in, "\n")+"\n"; got != want {
		t.Errorf("stdout = %q, want %q", got, want)
	}
	s := summaryOf(t, dir, "run")
	if s.Tasks.Done != 2 || s.Attempts != 2 || s.WorkerDeaths != 0 || len(s.Recovered) != 0 {
		t.Errorf("summary = %+v, want 2 tasks done in 2 attempts, no worker death, none recovered", s)
	}
	if starts := startsOf(dir, "agent1"); starts != 2 {
		t.Errorf("%d task starts, want 2", starts)
	}
	if !strings.Contains(agent.stderr(), "was given again while it runs here") {
		t.Errorf("the agent does not say that it was given its tasks again:\n%s", agent.stderr())
	}
	checkRecorded(t, url, run, 2)
}
