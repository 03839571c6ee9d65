package cluster_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/safepool/safepool/internal/cluster"
	"github.com/safepool/safepool/internal/memory"
	"github.com/safepool/safepool/internal/testenv"
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

// workersOf lists the processes under p that run a helper task ("sleep:"
// in their arguments).
func workersOf(p *proc) []int {
	var out []int
	for _, pid := range descendants(p.cmd.Process.Pid) {
		b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
		if bytes.Contains(b, []byte("sleep:")) {
			out = append(out, pid)
		}
	}
	return out
}

// TestSubmitterInterrupted: Ctrl-C (SIGINT) of the submitter stops the
// run: the agents stop its running workers, within the grace period, and
// drop its queued tasks. A submitter whose terminal hangs up (SIGHUP)
// leaves its run going, to be collected with --run-id.
func TestSubmitterInterrupted(t *testing.T) {
	t.Parallel()
	dir, url := newCluster(t)
	agent := startAgent(t, dir, "agent1", url, "-j", "2", "--grace", "1s")
	sub := submit(t, dir, "run", url, sleeps(6, 30000))
	runIDOf(t, sub)
	deadline := time.Now().Add(30 * time.Second)
	for len(workersOf(agent)) < 2 {
		if time.Now().After(deadline) {
			t.Fatalf("the agent started no worker:\n%s", agent.stderr())
		}
		time.Sleep(50 * time.Millisecond)
	}
	sub.cmd.Process.Signal(syscall.SIGINT)
	if st := sub.wait(t, 20*time.Second); st != 3 {
		t.Fatalf("run exited %d after SIGINT, want 3\n%s", st, sub.stderr())
	}
	if !strings.Contains(sub.stderr(), "the agents stop its running tasks") {
		t.Errorf("stderr does not say the run stopped:\n%s", sub.stderr())
	}
	deadline = time.Now().Add(10 * time.Second)
	for len(workersOf(agent)) > 0 {
		if time.Now().After(deadline) {
			t.Fatalf("workers %v of the interrupted run still run on the agent:\n%s", workersOf(agent), agent.stderr())
		}
		time.Sleep(50 * time.Millisecond)
	}
	// Nothing more of the run starts.
	time.Sleep(2 * time.Second)
	if n := startsOf(dir, "agent1"); n != 2 {
		t.Errorf("%d tasks started on the agent, want the 2 that ran when the run was stopped", n)
	}

	hup := submit(t, dir, "hup", url, sleeps(2, 3000))
	run := runIDOf(t, hup)
	// Both tasks are published once both run.
	deadline = time.Now().Add(30 * time.Second)
	for startsOf(dir, "agent1") < 4 {
		if time.Now().After(deadline) {
			t.Fatalf("the agent did not start the second run's tasks:\n%s", agent.stderr())
		}
		time.Sleep(20 * time.Millisecond)
	}
	hup.cmd.Process.Signal(syscall.SIGHUP)
	if st := hup.wait(t, 20*time.Second); st != 3 {
		t.Fatalf("run exited %d after SIGHUP, want 3\n%s", st, hup.stderr())
	}
	if !strings.Contains(hup.stderr(), "goes on on the agents") {
		t.Errorf("stderr does not say the run goes on:\n%s", hup.stderr())
	}
	// Its tasks were not cancelled: the summary counts them apart.
	if !strings.Contains(hup.stderr(), "0 done, 0 failed, 2 not collected (going on on the agents) of 2 tasks") {
		t.Errorf("the summary does not count the 2 running tasks as not collected:\n%s", hup.stderr())
	}
	waitRecorded(t, url, run, 2, 30*time.Second)
}

// TestStdoutClosed: a submitter whose stdout's reader has gone (| head -1)
// stops the run at its first output, as a local run does: exit 3, "stdout
// was closed", its queued tasks removed and its running workers stopped on
// the agent, rather than waiting for every task to run for nobody.
func TestStdoutClosed(t *testing.T) {
	t.Parallel()
	dir, url := newCluster(t)
	agent := startAgent(t, dir, "agent1", url, "-j", "2", "--grace", "1s")
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	r.Close() // the reader is gone before the first output
	defer w.Close()
	inputs := append([]string{"sleep:10"}, sleeps(5, 30000)...)
	sub := startWith(t, dir, "run", func(c *exec.Cmd) { c.Stdout = w },
		append(append([]string{"run", "--nats", url, "--json", "run.json"}, helperCmd()...), append([]string{":::"}, inputs...)...)...)
	w.Close()
	if st := sub.wait(t, 25*time.Second); st != 3 {
		t.Fatalf("run exited %d with its stdout closed, want 3\n%s", st, sub.stderr())
	}
	if !strings.Contains(sub.stderr(), "aborted because stdout was closed") {
		t.Errorf("stderr does not say stdout was closed:\n%s", sub.stderr())
	}
	if strings.Contains(sub.stderr(), "broken pipe") {
		t.Errorf("stderr names a broken pipe:\n%s", sub.stderr())
	}
	s := summaryOf(t, dir, "run")
	if s.Tasks.Submitted != 6 || s.Tasks.Done != 0 || s.Tasks.Cancelled == 0 {
		t.Errorf("tasks %+v, want 6 submitted, none done (the output was not written), some cancelled", s.Tasks)
	}
	deadline := time.Now().Add(10 * time.Second)
	for len(workersOf(agent)) > 0 {
		if time.Now().After(deadline) {
			t.Fatalf("workers %v of the stopped run still run on the agent:\n%s", workersOf(agent), agent.stderr())
		}
		time.Sleep(50 * time.Millisecond)
	}
	time.Sleep(2 * time.Second)
	if n := startsOf(dir, "agent1"); n > 3 {
		t.Errorf("%d tasks started on the agent after the run stopped, want at most the 3 that could run before", n)
	}
}

// TestRecordedTaskAgain: a second message of a task whose result is
// recorded (published again by a submitter resumed after JetStream's
// de-duplication window of an hour) is acknowledged without running the
// task again.
func TestRecordedTaskAgain(t *testing.T) {
	t.Parallel()
	dir, url := newCluster(t)
	startAgent(t, dir, "agent1", url, "-j", "2")
	sub := submit(t, dir, "run", url, sleeps(2, 10))
	run := runIDOf(t, sub)
	if st := sub.wait(t, 60*time.Second); st != 0 {
		t.Fatalf("run exited %d, want 0\n%s", st, sub.stderr())
	}
	js := jetStreamOf(t, url)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	// Task 1 again, as a new message (another message id).
	argv := append(helperCmd()[:len(helperCmd())-1], "sleep:10")
	body, _ := json.Marshal(cluster.TaskMsg{Run: run, Seq: 1, Input: []byte("sleep:10"), Args: argv})
	if _, err := js.Publish(ctx, "safepool.task.0."+run, body); err != nil {
		t.Fatal(err)
	}
	// The message is answered (the queue is empty), and the task did not
	// start again.
	st, err := js.Stream(ctx, cluster.StreamName)
	if err != nil {
		t.Fatal(err)
	}
	for {
		info, err := st.Info(ctx)
		if err == nil && info.State.Msgs == 0 {
			break
		}
		if ctx.Err() != nil {
			t.Fatalf("the second message of task 1 was never answered: %v", err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	time.Sleep(500 * time.Millisecond)
	if n := startsOf(dir, "agent1"); n != 2 {
		t.Errorf("%d task starts, want 2: a task whose result was recorded ran again", n)
	}
	checkRecorded(t, url, run, 2)
}

// TestLargeOutput: a result whose input and output together do not fit a
// NATS message leaves its input out (the submitter has it) rather than
// lose its output: a 500 KiB line echoed by cat comes back whole under the
// default 1 MiB limit. An output too large to fit alone is output-lost,
// saying how much fits and how to allow more; with the server's
// --max-payload raised, it fits. A lost output is not counted a worker
// death, as on one machine.
func TestLargeOutput(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	port := freePort(t)
	url := fmt.Sprintf("nats://127.0.0.1:%d", port)
	server := startServer(t, dir, "server", port)
	agent := startAgent(t, dir, "agent1", url, "-j", "2")
	big := strings.Repeat("y", 500_000)
	if err := os.WriteFile(filepath.Join(dir, "in.txt"), []byte("a\n"+big+"\nb\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	mapWith := func(name, worker string) *proc {
		return start(t, dir, name, "map", "--nats", url, "-k", "--json", name+".json", "-a", "in.txt", "--worker", worker)
	}
	p := mapWith("cat", "cat")
	if st := p.wait(t, 60*time.Second); st != 0 {
		t.Fatalf("map --worker cat exited %d, want 0\n%s", st, p.stderr())
	}
	if got := p.out.String(); got != "a\n"+big+"\nb\n" {
		t.Errorf("map --worker cat: stdout has %d bytes, want %d", len(got), len(big)+5)
	}
	// Each line twice over: 1000 KB of output, more than fits.
	p = mapWith("double", "sed -u 's/.*/&&/'")
	if st := p.wait(t, 60*time.Second); st != 1 {
		t.Fatalf("map --worker sed exited %d, want 1\n%s", st, p.stderr())
	}
	s := summaryOf(t, dir, "double")
	if len(s.Failed) != 1 || s.Failed[0].ID != 2 || s.Failed[0].Cause != "output-lost" ||
		!strings.Contains(s.Failed[0].Message, "holds 765 KiB of output") || !strings.Contains(s.Failed[0].Message, "--max-payload") {
		t.Errorf("failed = %+v, want task 2 output-lost, saying what fits", s.Failed)
	}
	// As on one machine, a lost output fails its task once: no worker
	// died.
	if s.WorkerDeaths != 0 {
		t.Errorf("worker_deaths = %d with an output lost and no worker dead, want 0", s.WorkerDeaths)
	}
	server.kill()
	agent.kill()
	startServer(t, dir, "server-large", port, "--store", filepath.Join(dir, "server"), "--max-payload", "4MiB")
	startAgent(t, dir, "agent2", url, "-j", "2")
	p = mapWith("double-large", "sed -u 's/.*/&&/'")
	if st := p.wait(t, 60*time.Second); st != 0 {
		t.Fatalf("map --worker sed exited %d under --max-payload 4MiB, want 0\n%s", st, p.stderr())
	}
	if got := p.out.String(); got != "aa\n"+big+big+"\nbb\n" {
		t.Errorf("map --worker sed: stdout has %d bytes, want %d", len(got), 2*len(big)+7)
	}
}

// TestStoppedAgentLate: an agent stopped (SIGSTOP) for longer than AckWait
// while it runs a task is taken for lost, and the task is given to
// another agent. When the stopped agent is continued, its attempt's late
// failure must not take the place of the newer attempt, which succeeds:
// the task is recorded done, once.
func TestStoppedAgentLate(t *testing.T) {
	t.Parallel()
	dir, url := newCluster(t)
	stopped := startAgent(t, dir, "agent1", url, "-j", "1")
	sub := submit(t, dir, "run", url, []string{"failon:agent1:5000", "sleep:10"})
	run := runIDOf(t, sub)
	deadline := time.Now().Add(30 * time.Second)
	for startsOf(dir, "agent1") < 1 {
		if time.Now().After(deadline) {
			t.Fatalf("agent1 started no task:\n%s", stopped.stderr())
		}
		time.Sleep(10 * time.Millisecond)
	}
	stopped.cmd.Process.Signal(syscall.SIGSTOP)
	// Its task fails meanwhile (its worker is not stopped); another agent
	// takes the task once AckWait has passed, and runs it for 4 s.
	startAgent(t, dir, "agent2", url, "-j", "1")
	time.Sleep(cluster.AckWait + 2*time.Second)
	stopped.cmd.Process.Signal(syscall.SIGCONT)
	if st := sub.wait(t, 60*time.Second); st != 0 {
		t.Fatalf("run exited %d, want 0: the stopped agent's late failure was kept\n%s", st, sub.stderr())
	}
	if s := summaryOf(t, dir, "run"); s.Tasks.Done != 2 {
		t.Errorf("tasks = %+v, want 2 done", s.Tasks)
	}
	checkRecorded(t, url, run, 2)
	stopped.waitLog(t, "its failed (exit:1) here is dropped", 10*time.Second)
}

// TestOtherVersion: the submitter names an agent that runs another version
// of safepool (here one advertised by hand), and not the agents of its
// own version.
func TestOtherVersion(t *testing.T) {
	t.Parallel()
	dir, url := newCluster(t)
	startAgent(t, dir, "agent1", url, "-j", "2")
	js := jetStreamOf(t, url)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	kv, err := js.KeyValue(ctx, cluster.AgentsBucket)
	if err != nil {
		t.Fatal(err)
	}
	old, _ := json.Marshal(cluster.AgentInfo{Name: "old1", Host: "oldhost", Slots: 1, Capacity: 1 << 30, MaxClass: 4, Updated: time.Now(), Version: "v0.9.0"})
	if _, err := kv.Put(ctx, "old1", old); err != nil {
		t.Fatal(err)
	}
	sub := submit(t, dir, "run", url, sleeps(2, 4000))
	sub.waitLog(t, "agent old1 on oldhost runs safepool v0.9.0, not safepool ", 20*time.Second)
	if st := sub.wait(t, 60*time.Second); st != 0 {
		t.Fatalf("run exited %d, want 0\n%s", st, sub.stderr())
	}
	if strings.Contains(sub.stderr(), "agent agent1 ") {
		t.Errorf("the submitter names an agent of its own version:\n%s", sub.stderr())
	}
}

// slowProxy forwards connections on a loopback port to target, each byte
// delay late in each direction, like a link to a far machine; it returns
// the port. Cleanup closes it and its connections.
func slowProxy(t *testing.T, target int, delay time.Duration) int {
	t.Helper()
	port, _ := testenv.Proxy(t, target, delay)
	return port
}

// TestSlowAgent: an agent 400 ms (there and back) from the server, as on
// another continent, starts and runs its share of a run. Its set-up made
// 26 requests one after the other within 10 s, and it could not start.
func TestSlowAgent(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	port := freePort(t)
	url := fmt.Sprintf("nats://127.0.0.1:%d", port)
	startServer(t, dir, "server", port)
	far := slowProxy(t, port, 200*time.Millisecond)
	startAgent(t, dir, "far", fmt.Sprintf("nats://127.0.0.1:%d", far), "-j", "2")
	began := time.Now()
	sub := submit(t, dir, "run", url, sleeps(6, 1000))
	if st := sub.wait(t, 90*time.Second); st != 0 {
		t.Fatalf("run exited %d, want 0\n%s", st, sub.stderr())
	}
	t.Logf("6 tasks of 1 s on 2 slots 400 ms away: %v", time.Since(began).Round(100*time.Millisecond))
	checkOutputs(t, sub, 6)
	if n := startsOf(dir, "far"); n != 6 {
		t.Errorf("%d task starts on the far agent, want 6", n)
	}
}

// TestSmallAgentPoison: a task killed for memory on the only agent, whose
// --mem-limit is below class 0's bound (64 MiB), is recorded poison once.
// It was published again into its own class, where JetStream dropped it as
// a duplicate of the message being answered, and the run waited for ever.
func TestSmallAgentPoison(t *testing.T) {
	t.Parallel()
	m, err := memory.NewManager()
	if err != nil {
		testenv.SkipOrFail(t, "memory cgroups: "+err.Error())
		return
	}
	mode, reason := m.Mode(), m.Reason()
	m.Close()
	if !mode.PerWorker() {
		testenv.SkipOrFail(t, reason)
		return
	}
	dir, url := newCluster(t)
	startAgent(t, dir, "small", url, "-j", "1", "--mem-limit", "32MiB")
	sub := submit(t, dir, "run", url, []string{"alloc:100", "sleep:10"})
	if st := sub.wait(t, 60*time.Second); st != 1 {
		t.Fatalf("run exited %d, want 1 (one poison task)\n%s", st, sub.stderr())
	}
	s := summaryOf(t, dir, "run")
	if s.Tasks.Done != 1 || s.Tasks.Poison != 1 || len(s.Failed) != 1 || s.Failed[0].ID != 1 ||
		!strings.Contains(s.Failed[0].Message, "on the largest agent") {
		t.Errorf("summary = %+v, want task 1 poison on the largest agent and 1 done", s)
	}
}

// TestSlowSubmitter: a submitter 200 ms (there and back) from the server
// keeps collecting results and publishing tasks while it checks what may
// keep its run waiting. The checks (some 40 requests) ran on the loop that
// collects results and feeds the publisher, and held it most of the time:
// 20 of 100 trivial tasks done in a minute. (It then published a task a
// round trip, 0.2 s; TestFarSubmitterQueues checks that it no longer
// does.)
func TestSlowSubmitter(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	port := freePort(t)
	startServer(t, dir, "server", port)
	startAgent(t, dir, "agent1", fmt.Sprintf("nats://127.0.0.1:%d", port), "-j", "2")
	far := slowProxy(t, port, 100*time.Millisecond)
	began := time.Now()
	sub := submit(t, dir, "run", fmt.Sprintf("nats://127.0.0.1:%d", far), sleeps(40, 10))
	// Unhindered, 40 tasks take about 10 s; held by its checks, the
	// submitter took well over a minute.
	if st := sub.wait(t, 50*time.Second); st != 0 {
		t.Fatalf("run exited %d, want 0\n%s", st, sub.stderr())
	}
	t.Logf("40 tasks from 200 ms away: %v", time.Since(began).Round(100*time.Millisecond))
	checkOutputs(t, sub, 40)
}

// TestFarSubmitterQueues: a submitter 400 ms (there and back) from the
// server queues 200 tasks without a round trip each, and each runs once.
// Publishing one task a round trip, the submitter needed at least
// 200 x 0.4 s = 80 s only to queue them. The tasks are echo, not the
// test's helper, so that starting 200 of them takes little of the machine.
func TestFarSubmitterQueues(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	port := freePort(t)
	url := fmt.Sprintf("nats://127.0.0.1:%d", port)
	startServer(t, dir, "server", port)
	startAgent(t, dir, "agent1", url, "-j", "4")
	far := slowProxy(t, port, 200*time.Millisecond)
	const n = 200
	var in []string
	for i := 1; i <= n; i++ {
		in = append(in, fmt.Sprintf("task%d", i))
	}
	began := time.Now()
	args := append([]string{"run", "--nats", fmt.Sprintf("nats://127.0.0.1:%d", far), "--json", "run.json", "echo", "{}", ":::"}, in...)
	sub := start(t, dir, "run", args...)
	run := runIDOf(t, sub)
	if st := sub.wait(t, 50*time.Second); st != 0 {
		t.Fatalf("run exited %d, want 0\n%s", st, sub.stderr())
	}
	t.Logf("%d tasks from 400 ms away: %v", n, time.Since(began).Round(100*time.Millisecond))
	out := strings.Fields(sub.out.String())
	slices.Sort(out)
	slices.Sort(in)
	if !slices.Equal(out, in) {
		t.Errorf("stdout holds %d lines, not each input once:\n%s", len(out), sub.out.String())
	}
	if s := summaryOf(t, dir, "run"); s.Tasks.Done != n {
		t.Errorf("tasks = %+v, want %d done", s.Tasks, n)
	}
	checkRecorded(t, url, run, n)
	if q := queuedEver(t, url); q != n {
		t.Errorf("the stream stored %d messages, want %d", q, n)
	}
}

// queuedEver returns how many messages the task stream on url ever
// stored: its last sequence number.
func queuedEver(t *testing.T, url string) uint64 {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	s, err := jetStreamOf(t, url).Stream(ctx, cluster.StreamName)
	if err != nil {
		t.Fatal(err)
	}
	info, err := s.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	return info.State.LastSeq
}

// TestServerKilledMidPublish: the server is SIGKILLed as the first tasks
// of a far submitter reach it, and their acknowledgements, on the way
// back, are lost with the link; the server is started again on its store. The submitter sends again what was
// not acknowledged, with the same message ids: each task is queued once
// (the stream stored n messages in all) and runs once.
func TestServerKilledMidPublish(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	port := freePort(t)
	url := fmt.Sprintf("nats://127.0.0.1:%d", port)
	server := startServer(t, dir, "server", port)
	far, cut := testenv.Proxy(t, port, 200*time.Millisecond)
	const n = 100
	sub := submit(t, dir, "run", fmt.Sprintf("nats://127.0.0.1:%d", far), sleeps(n, 0))
	run := runIDOf(t, sub)
	deadline := time.Now().Add(30 * time.Second)
	for queuedEver(t, url) == 0 {
		if time.Now().After(deadline) {
			t.Fatalf("no task queued after 30 s:\n%s", sub.stderr())
		}
		time.Sleep(5 * time.Millisecond)
	}
	cut() // the acknowledgements on the way are lost
	server.kill()
	startServer(t, dir, "server-again", port, "--store", filepath.Join(dir, "server"))
	t.Logf("%d tasks on the restarted server's store", queuedEver(t, url))
	startAgent(t, dir, "agent1", url, "-j", "4")
	if st := sub.wait(t, 60*time.Second); st != 0 {
		t.Fatalf("run exited %d, want 0\n%s", st, sub.stderr())
	}
	checkOutputs(t, sub, n)
	if starts := startsOf(dir, "agent1"); starts != n {
		t.Errorf("%d task starts, want %d", starts, n)
	}
	checkRecorded(t, url, run, n)
	if q := queuedEver(t, url); q != n {
		t.Errorf("the stream stored %d messages, want %d: a task was queued twice, or lost", q, n)
	}
}

// TestQuietInputLostPublish: the link of a submitter that reads a pipe
// kept open (tail -f jobs | safepool run --nats ...) breaks just after it
// published two inputs, which are lost with it, and the input then stays
// quiet. The submitter sends them again although no input comes: their
// tasks run and their results are shown. It sent them again only at its
// next input or the input's end, and they waited, unqueued, for as long
// as the input was quiet.
func TestQuietInputLostPublish(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	port := freePort(t)
	url := fmt.Sprintf("nats://127.0.0.1:%d", port)
	startServer(t, dir, "server", port)
	startAgent(t, dir, "agent1", url, "-j", "2")
	link := testenv.NewLink(t, port, 0)
	in, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	outPath := filepath.Join(dir, "run.out")
	out, err := os.Create(outPath)
	if err != nil {
		t.Fatal(err)
	}
	defer out.Close()
	args := append([]string{"run", "--nats", fmt.Sprintf("nats://127.0.0.1:%d", link.Port), "--json", "run.json"}, helperCmd()...)
	sub := startWith(t, dir, "run", func(c *exec.Cmd) { c.Stdin, c.Stdout = in, out }, args...)
	in.Close()
	run := runIDOf(t, sub)
	// lines returns how many results the submitter has shown.
	lines := func() int {
		b, _ := os.ReadFile(outPath)
		return bytes.Count(b, []byte("\n"))
	}
	waitLines := func(n int, limit time.Duration) {
		t.Helper()
		deadline := time.Now().Add(limit)
		for lines() < n {
			if time.Now().After(deadline) {
				t.Fatalf("%d results shown after %v with the input open and quiet, want %d; %d tasks queued ever\n%s", lines(), limit, n, queuedEver(t, url), sub.stderr())
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	fmt.Fprintln(w, "sleep:100")
	waitLines(1, 30*time.Second)

	// The next two inputs are published into a link that holds them, then
	// breaks: they never reach the server.
	link.Hold()
	fmt.Fprintln(w, "sleep:101")
	fmt.Fprintln(w, "sleep:102")
	deadline := time.Now().Add(10 * time.Second)
	for held := link.Held(); !bytes.Contains(held, []byte(run+".2.c")) || !bytes.Contains(held, []byte(run+".3.c")); held = link.Held() {
		if time.Now().After(deadline) {
			t.Fatalf("inputs 2 and 3 not published after 10 s:\n%s", sub.stderr())
		}
		time.Sleep(10 * time.Millisecond)
	}
	link.Cut()
	if q := queuedEver(t, url); q != 1 {
		t.Fatalf("%d tasks queued when the link broke, want 1", q)
	}
	cutAt := time.Now()
	waitLines(3, 30*time.Second)
	t.Logf("the lost tasks' results shown %v after the link broke", time.Since(cutAt).Round(10*time.Millisecond))

	w.Close()
	if st := sub.wait(t, 30*time.Second); st != 0 {
		t.Fatalf("run exited %d, want 0\n%s", st, sub.stderr())
	}
	if s := summaryOf(t, dir, "run"); s.Tasks.Done != 3 {
		t.Errorf("tasks = %+v, want 3 done", s.Tasks)
	}
	checkRecorded(t, url, run, 3)
	if q := queuedEver(t, url); q != 3 {
		t.Errorf("the stream stored %d messages, want 3: a task was queued twice, or lost", q)
	}
}

// TestAgentSameName: a second agent given the name of a live agent is
// refused (exit status 2, naming the other), rather than overwrite its
// entry in the agents bucket and delete it when either stops. An agent
// started again under the name of one that was SIGKILLed, whose entry has
// not expired yet, takes the name over once the entry goes unrefreshed.
func TestAgentSameName(t *testing.T) {
	t.Parallel()
	dir, url := newCluster(t)
	ready := " per task (memory classes"
	first := start(t, dir, "first", "agent", "--nats", url, "--name", "dup", "-j", "1")
	first.waitLog(t, ready, 30*time.Second)
	second := start(t, dir, "second", "agent", "--nats", url, "--name", "dup", "-j", "1")
	if st := second.wait(t, 40*time.Second); st != 2 {
		t.Fatalf("a second agent named dup exited %d, want 2\n%s", st, second.stderr())
	}
	if s := second.stderr(); !strings.Contains(s, fmt.Sprintf("agent dup runs on %s, pid %d; give this one another --name", hostname(t), first.cmd.Process.Pid)) {
		t.Errorf("the second agent does not name the first:\n%s", s)
	}
	js := jetStreamOf(t, url)
	kv, err := js.KeyValue(context.Background(), cluster.AgentsBucket)
	if err != nil {
		t.Fatal(err)
	}
	e, err := kv.Get(context.Background(), "dup")
	var info struct {
		PID int `json:"pid"`
	}
	if err == nil {
		err = json.Unmarshal(e.Value(), &info)
	}
	if err != nil || info.PID != first.cmd.Process.Pid {
		t.Errorf("the entry of agent dup = %+v (%v), want the first agent's (pid %d)", info, err, first.cmd.Process.Pid)
	}
	first.kill()
	third := start(t, dir, "third", "agent", "--nats", url, "--name", "dup", "-j", "1")
	third.waitLog(t, ready, 40*time.Second)
	if s := third.stderr(); !strings.Contains(s, "waiting up to") {
		t.Errorf("the agent started again as dup does not say that it waits for the old entry:\n%s", s)
	}
}

func hostname(t *testing.T) string {
	h, err := os.Hostname()
	if err != nil {
		t.Fatal(err)
	}
	return h
}

// TestFailedOutputTooLarge: a task that fails (exit 3) having written more
// stderr than a NATS message holds keeps its cause, its output cut to what
// fits (stdout's first bytes, stderr's last), saying so. And the summary
// counts the worker deaths a local run counts: the exit, not the job the
// pool ended for its timeout.
func TestFailedOutputTooLarge(t *testing.T) {
	t.Parallel()
	dir, url := newCluster(t)
	startAgent(t, dir, "agent1", url, "-j", "3")
	p := submit(t, dir, "run", url, []string{"spew:2", "sleep:60000", "sleep:10"}, "--timeout", "3s", "--timeout-grace", "0")
	if st := p.wait(t, 60*time.Second); st != 1 {
		t.Fatalf("run exited %d, want 1\n%s", st, p.stderr())
	}
	s := summaryOf(t, dir, "run")
	if len(s.Failed) != 2 || s.Failed[0].ID != 1 || s.Failed[0].Cause != "exit:3" ||
		!strings.Contains(s.Failed[0].Message, "output cut to fit a NATS message") || !strings.Contains(s.Failed[0].Message, "kept of 2 MiB (the last)") ||
		s.Failed[1].ID != 2 || s.Failed[1].Cause != "timeout" {
		t.Errorf("failed = %+v, want task 1 exit:3 saying its output was cut, task 2 timeout", s.Failed)
	}
	// Each failed task names the agent it failed on.
	if len(s.Failed) == 2 && (s.Failed[0].Agent != "agent1" || s.Failed[1].Agent != "agent1") {
		t.Errorf("failed = %+v, want both on agent1", s.Failed)
	}
	if !strings.Contains(p.stderr(), "exit:3 after 1 attempt on agent1") {
		t.Errorf("the text summary does not name the agent of task 1:\n%s", p.stderr())
	}
	if !strings.Contains(p.stderr(), "the end\n") {
		t.Errorf("the submitter's stderr lacks the end of the task's stderr")
	}
	if !strings.Contains(p.out.String(), strings.Repeat("o", 100<<10)) {
		t.Errorf("the submitter's stdout lacks the task's stdout (%d bytes)", p.out.Len())
	}
	if s.WorkerDeaths != 1 {
		t.Errorf("worker_deaths = %d, want 1 as on one machine: the exit, not the timeout", s.WorkerDeaths)
	}
}
