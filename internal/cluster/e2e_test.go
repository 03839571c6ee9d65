package cluster_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/safepool/safepool/internal/cluster"
	"github.com/safepool/safepool/internal/memory"
	"github.com/safepool/safepool/internal/testenv"
	"github.com/safepool/safepool/pool"
)

// The tests run the real safepool binary, built once by TestMain, as
// servers, agents and submitters on the loopback interface. The test binary
// is also the tasks' worker (helperEnv): it allocates memory, or sleeps.

const helperEnv = "SAFEPOOL_CLUSTER_HELPER"

// startsEnv names a file to which a sleeping helper appends its input as it
// starts.
const startsEnv = "SAFEPOOL_CLUSTER_STARTS"

var safepoolBin string

func TestMain(m *testing.M) {
	if os.Getenv(helperEnv) != "" {
		os.Exit(helper(os.Args[len(os.Args)-1]))
	}
	dir, err := os.MkdirTemp("", "safepool-cluster-test")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	safepoolBin = filepath.Join(dir, "safepool")
	build := exec.Command("go", append(append([]string{"build"}, raceBuild...), "-o", safepoolBin, "github.com/safepool/safepool/cmd/safepool")...)
	build.Stderr = os.Stderr
	if err := build.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "building safepool:", err)
		os.RemoveAll(dir)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// helper is a task: "alloc:N" touches N MiB and prints "ok N"; "sleep:MS"
// sleeps MS milliseconds and prints "ok"; "killagent:0" SIGKILLs its agent;
// "failon:NAME:MS" fails on agent NAME only; "spew:N" writes N MiB to
// stderr and exits 3; "touch:N" is "alloc:N" outside
// the Go heap (no race detector's shadow of it). "hold:N", not a task,
// holds N MiB, says "ready" and holds them until its stdin ends.
// "fail:N" prints "failing N" on stderr and exits 4; "echo:MS" sleeps MS
// milliseconds and prints its argument.
// "termtrap:FILE" waits for SIGTERM, then writes "cleaned" to FILE and
// exits 7; "termignore:0" ignores SIGTERM and sleeps.
func helper(arg string) int {
	what, n, _ := strings.Cut(arg, ":")
	v, _ := strconv.Atoi(n)
	switch what {
	case "touch", "hold":
		b, err := syscall.Mmap(-1, 0, v<<20, syscall.PROT_READ|syscall.PROT_WRITE, syscall.MAP_ANON|syscall.MAP_PRIVATE)
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		for i := 0; i < len(b); i += 4096 {
			b[i] = 1
		}
		if what == "hold" {
			fmt.Println("ready")
			io.Copy(io.Discard, os.Stdin)
			return 0
		}
		time.Sleep(200 * time.Millisecond)
		fmt.Println("ok", v)
	case "alloc":
		b := make([]byte, v<<20)
		for i := 0; i < len(b); i += 4096 {
			b[i] = 1
		}
		time.Sleep(200 * time.Millisecond)
		fmt.Println("ok", v, b[len(b)/2])
	case "termtrap":
		term := make(chan os.Signal, 1)
		signal.Notify(term, syscall.SIGTERM)
		<-term
		os.WriteFile(n, []byte("cleaned"), 0o644)
		return 7
	case "termignore":
		signal.Ignore(syscall.SIGTERM)
		time.Sleep(time.Minute)
	case "killagent":
		// A task that ends whatever machine runs it: it SIGKILLs its
		// agent, the process that started it.
		syscall.Kill(os.Getppid(), syscall.SIGKILL)
		time.Sleep(time.Minute)
	case "sleep":
		noteStart(arg)
		time.Sleep(time.Duration(v) * time.Millisecond)
		fmt.Println("ok")
	case "fail":
		noteStart(arg)
		fmt.Fprintln(os.Stderr, "failing", v)
		return 4
	case "echo":
		noteStart(arg)
		time.Sleep(time.Duration(v) * time.Millisecond)
		fmt.Println(arg)
	case "spew":
		// "spew:N" writes 100 KiB to stdout, N MiB to stderr ending
		// "the end", and exits 3.
		fmt.Println(strings.Repeat("o", 100<<10))
		os.Stderr.WriteString(strings.Repeat("e", v<<20) + "\nthe end\n")
		return 3
	case "failon":
		// "failon:NAME:MS" fails after 300 ms on the agent called NAME,
		// and elsewhere sleeps MS milliseconds and succeeds.
		noteStart(arg)
		name, ms, _ := strings.Cut(n, ":")
		if strings.HasSuffix(os.Getenv(startsEnv), "starts-"+name) {
			time.Sleep(300 * time.Millisecond)
			return 1
		}
		d, _ := strconv.Atoi(ms)
		time.Sleep(time.Duration(d) * time.Millisecond)
		fmt.Println("ok")
	}
	return 0
}

// noteStart notes a task's start in the file startsEnv names, for tests
// that count how often tasks ran, and where.
func noteStart(arg string) {
	if f := os.Getenv(startsEnv); f != "" {
		if fh, err := os.OpenFile(f, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o644); err == nil {
			fh.WriteString(arg + "\n")
			fh.Close()
		}
	}
}

// helperCmd is the one-shot command of a run whose inputs are helper args.
func helperCmd() []string {
	return []string{"env", helperEnv + "=1", os.Args[0], "-test.run=^$", "{}"}
}

// proc is a safepool process a test started; its stderr goes to a file.
type proc struct {
	cmd    *exec.Cmd
	log    string
	waited chan struct{}
	out    bytes.Buffer // stdout, for submitters
}

// start starts safepool with args in dir; Cleanup kills it.
func start(t *testing.T, dir, name string, args ...string) *proc {
	t.Helper()
	return startProg(t, dir, name, safepoolBin, nil, args...)
}

// startWith starts safepool as start does, first calling set, when not
// nil, on its command: to give it another stdin or stdout.
func startWith(t *testing.T, dir, name string, set func(*exec.Cmd), args ...string) *proc {
	t.Helper()
	return startProg(t, dir, name, safepoolBin, set, args...)
}

// startProg is startWith with another program than safepool, such as a
// shell that runs it.
func startProg(t *testing.T, dir, name, prog string, set func(*exec.Cmd), args ...string) *proc {
	t.Helper()
	p := &proc{log: filepath.Join(dir, name+".log"), waited: make(chan struct{})}
	f, err := os.Create(p.log)
	if err != nil {
		t.Fatal(err)
	}
	p.cmd = exec.Command(prog, args...)
	p.cmd.Dir = dir
	p.cmd.Env = append(os.Environ(), startsEnv+"="+filepath.Join(dir, "starts-"+name))
	p.cmd.Stdout = &p.out
	p.cmd.Stderr = f
	p.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if set != nil {
		set(p.cmd)
	}
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { p.cmd.Wait(); f.Close(); close(p.waited) }()
	t.Cleanup(func() {
		p.cmd.Process.Signal(syscall.SIGCONT)
		p.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-p.waited:
		case <-time.After(10 * time.Second):
			p.kill()
		}
		b, _ := os.ReadFile(p.log)
		if bytes.Contains(b, []byte("DATA RACE")) {
			t.Errorf("%s: the race detector found a data race", name)
		}
		if t.Failed() {
			t.Logf("%s stderr:\n%s", name, b)
		}
	})
	return p
}

// kill SIGKILLs p and every process under it, at once.
func (p *proc) kill() {
	pids := descendants(p.cmd.Process.Pid)
	p.cmd.Process.Kill()
	for _, pid := range pids {
		syscall.Kill(pid, syscall.SIGKILL)
	}
	<-p.waited
}

// descendants lists the processes under pid, from /proc.
func descendants(pid int) []int {
	parent := map[int][]int{}
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		n, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", n))
		if err != nil {
			continue
		}
		s := string(b)
		f := strings.Fields(s[strings.LastIndexByte(s, ')')+2:])
		pp, _ := strconv.Atoi(f[1])
		parent[pp] = append(parent[pp], n)
	}
	var out []int
	todo := []int{pid}
	for len(todo) > 0 {
		c := parent[todo[0]]
		todo = append(todo[1:], c...)
		out = append(out, c...)
	}
	return out
}

// wait waits for p to exit and returns its exit status.
func (p *proc) wait(t *testing.T, d time.Duration) int {
	t.Helper()
	select {
	case <-p.waited:
	case <-time.After(d):
		b, _ := os.ReadFile(p.log)
		t.Fatalf("safepool %s still running after %v; stderr:\n%s", strings.Join(p.cmd.Args[1:], " "), d, b)
	}
	return p.cmd.ProcessState.ExitCode()
}

// stderr returns what p wrote on stderr so far.
func (p *proc) stderr() string {
	b, _ := os.ReadFile(p.log)
	return string(b)
}

// waitLog waits until p's stderr holds s.
func (p *proc) waitLog(t *testing.T, s string, d time.Duration) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !strings.Contains(p.stderr(), s) {
		exited := false
		select {
		case <-p.waited:
			exited = true
		default:
		}
		if exited || time.Now().After(deadline) {
			t.Fatalf("no %q in stderr after %v:\n%s", s, d, p.stderr())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// freePort returns a loopback port nobody listens on now, below the
// ephemeral range (32768 and up on Linux), so that no outgoing connection
// takes it before the server listens on it.
func freePort(t *testing.T) int {
	t.Helper()
	for range 100 {
		port := 20000 + rand.IntN(12000)
		l, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", port))
		if err == nil {
			l.Close()
			return port
		}
	}
	t.Fatal("no free port")
	return 0
}

// startServer starts safepool server on port with its store in dir/name.
func startServer(t *testing.T, dir, name string, port int, extra ...string) *proc {
	t.Helper()
	args := append([]string{"server", "--store", filepath.Join(dir, name), "--listen", fmt.Sprintf("127.0.0.1:%d", port)}, extra...)
	p := start(t, dir, name, args...)
	p.waitLog(t, "listening on", 30*time.Second)
	return p
}

// newCluster returns a test's directory, with a NATS server started in it
// on a free port, and the server's URL.
func newCluster(t *testing.T) (dir, url string) {
	t.Helper()
	dir = t.TempDir()
	port := freePort(t)
	startServer(t, dir, "server", port)
	return dir, fmt.Sprintf("nats://127.0.0.1:%d", port)
}

// startAgent starts an agent and waits until it says it is ready.
func startAgent(t *testing.T, dir, name, url string, extra ...string) *proc {
	t.Helper()
	args := append([]string{"agent", "--nats", url, "--name", name}, extra...)
	p := start(t, dir, name, args...)
	p.waitLog(t, " per task (memory classes", 30*time.Second)
	return p
}

// submit starts safepool run --nats over inputs, with the JSON summary in
// dir/name.json.
func submit(t *testing.T, dir, name, url string, inputs []string, extra ...string) *proc {
	t.Helper()
	args := append([]string{"run", "--nats", url, "--json", name + ".json", "--joblog", name + ".tsv"}, extra...)
	args = append(append(args, helperCmd()...), ":::")
	args = append(args, inputs...)
	return start(t, dir, name, args...)
}

// summaryOf reads a run's JSON summary.
type summaryJSON struct {
	ExitStatus   int `json:"exit_status"`
	WorkerDeaths int `json:"worker_deaths"`
	Attempts     int `json:"attempts"`
	Tasks        struct {
		Submitted, Done, Failed, Cancelled, Poison int
	} `json:"tasks"`
	Failed []struct {
		ID      uint64 `json:"id"`
		State   string `json:"state"`
		Cause   string `json:"cause"`
		Message string `json:"message"`
		Agent   string `json:"agent"`
	} `json:"failed"`
	Recovered []struct {
		ID     uint64   `json:"id"`
		Causes []string `json:"causes"`
	} `json:"recovered"`
}

func summaryOf(t *testing.T, dir, name string) summaryJSON {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(dir, name+".json"))
	if err != nil {
		t.Fatal(err)
	}
	var s summaryJSON
	if err := json.Unmarshal(b, &s); err != nil {
		t.Fatalf("%s.json: %v\n%s", name, err, b)
	}
	return s
}

// sleeps returns n inputs that sleep ms each, made distinct by a counter
// in the milliseconds.
func sleeps(n, ms int) []string {
	var in []string
	for i := 0; i < n; i++ {
		in = append(in, fmt.Sprintf("sleep:%d", ms+i))
	}
	return in
}

// checkOutputs checks that stdout holds one "ok" line per input.
func checkOutputs(t *testing.T, p *proc, n int) {
	t.Helper()
	lines := strings.Split(strings.TrimSpace(p.out.String()), "\n")
	if len(lines) != n {
		t.Errorf("stdout has %d lines, want %d:\n%s", len(lines), n, p.out.String())
	}
}

// jetStreamOf connects to url for the rest of the test and returns its
// JetStream context.
func jetStreamOf(t *testing.T, url string) jetstream.JetStream {
	t.Helper()
	nc, err := nats.Connect(url)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	return js
}

// checkRecorded checks that each of seq 1..n of run has exactly one
// result in the results bucket.
func checkRecorded(t *testing.T, url, run string, n int) {
	t.Helper()
	js := jetStreamOf(t, url)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	kv, err := js.KeyValue(ctx, cluster.ResultsBucket)
	if err != nil {
		t.Fatal(err)
	}
	var seqs []int
	for i := 1; i <= n; i++ {
		hist, err := kv.History(ctx, fmt.Sprintf("%s.%d", run, i))
		if err != nil {
			t.Errorf("task %d: no result recorded: %v", i, err)
			continue
		}
		if len(hist) != 1 {
			t.Errorf("task %d: %d values recorded, want 1", i, len(hist))
		}
		seqs = append(seqs, i)
	}
	if len(seqs) != n {
		t.Errorf("%d results recorded, want %d", len(seqs), n)
	}
}

// waitRecorded waits until at least k results of run are in the results
// bucket, as seen through url.
func waitRecorded(t *testing.T, url, run string, k int, limit time.Duration) {
	t.Helper()
	js := jetStreamOf(t, url)
	deadline := time.Now().Add(limit)
	for {
		got := 0
		func() {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			kv, err := js.KeyValue(ctx, cluster.ResultsBucket)
			if err != nil {
				return
			}
			keys, err := kv.ListKeys(ctx)
			if err != nil {
				return
			}
			for key := range keys.Keys() {
				if strings.HasPrefix(key, run+".") {
					got++
				}
			}
		}()
		if got >= k {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d results of run %s recorded after %v, want at least %d", got, run, limit, k)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// runIDOf reads the run id the submitter announced.
func runIDOf(t *testing.T, p *proc) string {
	t.Helper()
	p.waitLog(t, "--run-id ", 30*time.Second)
	s := p.stderr()
	i := strings.Index(s, "--run-id ") + len("--run-id ")
	return strings.TrimRight(strings.Fields(s[i:])[0], ")")
}

// TestAgentKilled: three agents run a batch; one is SIGKILLed with its
// workers in the middle. Every task completes, and every result is
// recorded exactly once.
func TestAgentKilled(t *testing.T) {
	t.Parallel()
	dir, url := newCluster(t)
	var agents []*proc
	for i := 1; i <= 3; i++ {
		agents = append(agents, startAgent(t, dir, fmt.Sprintf("agent%d", i), url, "-j", "2"))
	}
	const n = 30
	sub := submit(t, dir, "run", url, sleeps(n, 600))
	run := runIDOf(t, sub)
	// Kill agent2 once it has started a task, and while it runs one.
	deadline := time.Now().Add(20 * time.Second)
	for startsOf(dir, "agent2") < 3 && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	time.Sleep(100 * time.Millisecond)
	agents[1].kill()
	killedStarts := startsOf(dir, "agent2")
	if st := sub.wait(t, 60*time.Second); st != 0 {
		t.Fatalf("run exited %d, want 0\n%s", st, sub.stderr())
	}
	checkOutputs(t, sub, n)
	s := summaryOf(t, dir, "run")
	if s.Tasks.Done != n || s.Tasks.Submitted != n {
		t.Errorf("summary tasks = %+v, want %d done", s.Tasks, n)
	}
	checkRecorded(t, url, run, n)
	t.Logf("starts: agent1 %d, agent2 %d (killed), agent3 %d", startsOf(dir, "agent1"), killedStarts, startsOf(dir, "agent3"))
	// The tasks the killed agent was running ran again elsewhere.
	starts := startsOf(dir, "agent1") + startsOf(dir, "agent3") + killedStarts
	if killedStarts == 0 || starts <= n {
		t.Errorf("%d task starts for %d tasks, %d of them on the killed agent: it was running no task", starts, n, killedStarts)
	}
	// Each task the killed agent was running shows its lost attempt, as a
	// local run shows a worker death: recovered in the summary, and an
	// attempt of cause agent-lost in the job log, numbered as the attempt
	// that then succeeded (a loss does not spend --retries).
	lostIDs := map[uint64]bool{}
	for _, r := range s.Recovered {
		if slices.Contains(r.Causes, string(cluster.CauseAgentLost)) {
			lostIDs[r.ID] = true
		}
	}
	if len(lostIDs) == 0 {
		t.Errorf("recovered = %+v, want the tasks lost with agent2, cause %s", s.Recovered, cluster.CauseAgentLost)
	}
	jl, err := os.ReadFile(filepath.Join(dir, "run.tsv"))
	if err != nil {
		t.Fatal(err)
	}
	rows := map[uint64][]string{} // task id: the cause of each attempt, with its number
	for _, line := range strings.Split(strings.TrimSpace(string(jl)), "\n")[1:] {
		f := strings.Split(line, "\t")
		id, _ := strconv.ParseUint(f[0], 10, 64)
		rows[id] = append(rows[id], f[2]+":"+f[8])
	}
	for id := range lostIDs {
		if !slices.Contains(rows[id], "1:"+string(cluster.CauseAgentLost)) || !slices.Contains(rows[id], "1:-") {
			t.Errorf("task %d: job log attempts %v, want 1:%s then 1:- (done)", id, rows[id], cluster.CauseAgentLost)
		}
	}
	if s.Attempts != n+len(lostIDs) {
		t.Errorf("attempts = %d, want %d: %d tasks and %d lost attempts", s.Attempts, n+len(lostIDs), n, len(lostIDs))
	}
}

// TestTaskKillsAgents: a task that kills every agent that runs it is
// lost with MaxLost agents and then recorded failed, cause agent-lost,
// naming them, rather than handed on to take down agent after agent; the
// other tasks complete on the agent left.
func TestTaskKillsAgents(t *testing.T) {
	t.Parallel()
	dir, url := newCluster(t)
	for i := 1; i <= cluster.MaxLost+1; i++ {
		startAgent(t, dir, fmt.Sprintf("agent%d", i), url, "-j", "1")
	}
	const n = 6
	inputs := append([]string{"killagent:0"}, sleeps(n-1, 100)...)
	sub := submit(t, dir, "run", url, inputs)
	if st := sub.wait(t, 120*time.Second); st != 1 {
		t.Fatalf("run exited %d, want 1\n%s", st, sub.stderr())
	}
	checkOutputs(t, sub, n-1)
	s := summaryOf(t, dir, "run")
	if s.Tasks.Done != n-1 || s.Tasks.Failed != 1 {
		t.Errorf("summary tasks = %+v, want %d done, 1 failed", s.Tasks, n-1)
	}
	if len(s.Failed) != 1 || s.Failed[0].ID != 1 || s.Failed[0].Cause != string(cluster.CauseAgentLost) ||
		!strings.Contains(s.Failed[0].Message, fmt.Sprintf("lost with its agent %d times", cluster.MaxLost)) {
		t.Errorf("failed tasks = %+v, want task 1 %s after %d agents lost", s.Failed, cluster.CauseAgentLost, cluster.MaxLost)
	}
	if l := readLog(dir, "agent4"); !strings.Contains(l, "agent4: 1 slot, up to") {
		t.Errorf("agent4 -j 1 does not say it has 1 slot:\n%s", l)
	}
}

// TestServerRestart: the server is killed and restarted on the same store
// in the middle of a run; nothing is lost.
func TestServerRestart(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	port := freePort(t)
	url := fmt.Sprintf("nats://127.0.0.1:%d", port)
	server := startServer(t, dir, "server", port)
	startAgent(t, dir, "agent1", url, "-j", "3")
	startAgent(t, dir, "agent2", url, "-j", "3")
	const n = 40
	sub := submit(t, dir, "run", url, sleeps(n, 400))
	run := runIDOf(t, sub)
	time.Sleep(1200 * time.Millisecond)
	server.kill()
	time.Sleep(500 * time.Millisecond)
	startServer(t, dir, "server-again", port, "--store", filepath.Join(dir, "server"))
	if st := sub.wait(t, 60*time.Second); st != 0 {
		t.Fatalf("run exited %d, want 0\n%s", st, sub.stderr())
	}
	checkOutputs(t, sub, n)
	checkRecorded(t, url, run, n)
}

// TestServerRestartShortTasks: with short tasks, many are given again by
// the server started again (it forgot the deliveries) while the agents
// that took them still run them, or have just answered: none of them is
// taken for lost with its agent (cause agent-lost, a worker death,
// recovered), as one in two such runs had some.
func TestServerRestartShortTasks(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	port := freePort(t)
	url := fmt.Sprintf("nats://127.0.0.1:%d", port)
	server := startServer(t, dir, "server", port)
	startAgent(t, dir, "agent1", url, "-j", "2")
	startAgent(t, dir, "agent2", url, "-j", "2")
	const n = 200
	var inputs []string
	for range n {
		inputs = append(inputs, "sleep:10")
	}
	sub := submit(t, dir, "run", url, inputs)
	run := runIDOf(t, sub)
	waitRecorded(t, url, run, 50, 90*time.Second)
	server.kill()
	time.Sleep(500 * time.Millisecond)
	startServer(t, dir, "server-again", port, "--store", filepath.Join(dir, "server"))
	// Each task is a process of the test binary: built with -race, on a
	// busy machine, 600 of them took more than two minutes.
	if st := sub.wait(t, 300*time.Second); st != 0 {
		t.Fatalf("run exited %d, want 0\n%s", st, sub.stderr())
	}
	checkOutputs(t, sub, n)
	s := summaryOf(t, dir, "run")
	if s.WorkerDeaths != 0 || len(s.Recovered) != 0 {
		t.Errorf("worker deaths %d, recovered %+v: want none, no agent was lost\n%s", s.WorkerDeaths, s.Recovered, sub.stderr())
	}
}

// TestClusterServerKilled: a JetStream cluster of three servers holds the
// stream and buckets in three replicas; one server is killed in the middle
// of a run, and the run completes.
func TestClusterServerKilled(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	var ports, routes []int
	for i := 0; i < 3; i++ {
		ports, routes = append(ports, freePort(t)), append(routes, freePort(t))
	}
	var servers []*proc
	var urls []string
	for i := 0; i < 3; i++ {
		var rs []string
		for j := 0; j < 3; j++ {
			if j != i {
				rs = append(rs, fmt.Sprintf("nats://127.0.0.1:%d", routes[j]))
			}
		}
		name := fmt.Sprintf("s%d", i+1)
		servers = append(servers, startServer(t, dir, name, ports[i], "--name", name,
			"--cluster", fmt.Sprintf("127.0.0.1:%d", routes[i]), "--routes", strings.Join(rs, ",")))
		urls = append(urls, fmt.Sprintf("nats://127.0.0.1:%d", ports[i]))
	}
	// Agents and submitters set the stream and buckets up with three
	// replicas: the cluster must have formed and elected its JetStream
	// leader first.
	waitJetStream(t, urls)
	// Each client starts on a different server.
	rot := func(k int) string { return strings.Join(append(slices.Clone(urls[k:]), urls[:k]...), ",") }
	startAgent(t, dir, "agent1", rot(1), "-j", "3")
	startAgent(t, dir, "agent2", rot(2), "-j", "3")
	const n = 40
	sub := submit(t, dir, "run", rot(0), sleeps(n, 400))
	run := runIDOf(t, sub)
	// Mid-run: some results are recorded, most tasks are not.
	waitRecorded(t, rot(1), run, 3, 90*time.Second)
	killedAt := time.Now()
	servers[0].kill()
	if st := sub.wait(t, 3*time.Minute); st != 0 {
		t.Fatalf("run exited %d, want 0\n%s", st, sub.stderr())
	}
	t.Logf("the run ended %v after the server was killed", time.Since(killedAt).Round(time.Millisecond))
	checkOutputs(t, sub, n)
	checkRecorded(t, rot(1), run, n)
	checkReplicas(t, rot(1), 3)
}

// waitJetStream waits until JetStream answers through every server of urls.
func waitJetStream(t *testing.T, urls []string) {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for _, u := range urls {
		for {
			err := func() error {
				nc, err := nats.Connect(u)
				if err != nil {
					return err
				}
				defer nc.Close()
				js, _ := jetstream.New(nc)
				ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
				defer cancel()
				_, err = js.AccountInfo(ctx)
				return err
			}()
			if err == nil {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("JetStream at %s: %v", u, err)
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
	// And until a stream of three replicas has all three current: every
	// server is a peer of the JetStream cluster.
	nc, err := nats.Connect(strings.Join(urls, ","))
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, _ := jetstream.New(nc)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	for {
		st, err := js.CreateOrUpdateStream(ctx, jetstream.StreamConfig{Name: "PROBE", Subjects: []string{"probe"}, Replicas: 3})
		if err == nil {
			info, err := st.Info(ctx)
			current := 0
			if err == nil && info.Cluster != nil && info.Cluster.Leader != "" {
				for _, r := range info.Cluster.Replicas {
					if r.Current {
						current++
					}
				}
			}
			if current == 2 {
				js.DeleteStream(ctx, "PROBE")
				return
			}
		}
		if ctx.Err() != nil {
			t.Fatalf("the JetStream cluster did not form: %v", err)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// checkReplicas checks that the task stream and the buckets have want
// replicas.
func checkReplicas(t *testing.T, url string, want int) {
	t.Helper()
	js := jetStreamOf(t, url)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for _, name := range []string{cluster.StreamName, "KV_" + cluster.ResultsBucket, "KV_" + cluster.RunsBucket} {
		st, err := js.Stream(ctx, name)
		if err != nil {
			t.Errorf("stream %s: %v", name, err)
			continue
		}
		if r := st.CachedInfo().Config.Replicas; r != want {
			t.Errorf("stream %s has %d replicas, want %d", name, r, want)
		}
	}
}

// TestOOMMovesToLargerAgent: a task killed for memory on an agent with a
// small limit completes on an agent with a large one; a task too large for
// every agent is poison, with the reason.
func TestOOMMovesToLargerAgent(t *testing.T) {
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
	startAgent(t, dir, "small", url, "-j", "1", "--mem-limit", "64MiB")
	large := startAgent(t, dir, "large", url, "-j", "1", "--mem-limit", "512MiB")
	// The large agent is advertised but takes nothing until the small one
	// has failed the big task: stopped, once its pending pull has expired.
	time.Sleep(300 * time.Millisecond)
	large.cmd.Process.Signal(syscall.SIGSTOP)
	time.Sleep(time.Second)
	sub := submit(t, dir, "run", url, []string{"alloc:8", "alloc:200", "alloc:8", "alloc:900"})
	deadline := time.Now().Add(30 * time.Second)
	for strings.Count(readLog(dir, "small"), "handed on") < 2 {
		if time.Now().After(deadline) {
			t.Fatalf("the small agent handed on no task:\n%s", readLog(dir, "small"))
		}
		time.Sleep(50 * time.Millisecond)
	}
	large.cmd.Process.Signal(syscall.SIGCONT)
	if st := sub.wait(t, 60*time.Second); st != 1 {
		t.Fatalf("run exited %d, want 1 (one poison task)\n%s", st, sub.stderr())
	}
	s := summaryOf(t, dir, "run")
	if s.Tasks.Done != 3 || s.Tasks.Poison != 1 {
		t.Errorf("tasks = %+v, want 3 done and 1 poison", s.Tasks)
	}
	if len(s.Recovered) != 1 || s.Recovered[0].ID != 2 || !slices.Equal(s.Recovered[0].Causes, []string{"oom"}) {
		t.Errorf("recovered = %+v, want task 2 after oom", s.Recovered)
	}
	if len(s.Failed) != 1 || s.Failed[0].ID != 4 || s.Failed[0].State != "poison" || !strings.Contains(s.Failed[0].Message, "largest agent") {
		t.Errorf("failed = %+v, want task 4 poison on the largest agent", s.Failed)
	}
	// The task needs more than the small agent's 64 MiB, not 64 MiB.
	if l := readLog(dir, "small"); !strings.Contains(l, "handed on needing more than 64 MiB\n") {
		t.Errorf("the small agent's log does not say the task needs more than its 64 MiB:\n%s", l)
	}
}

// startsOf counts the task starts of the agent called name.
func startsOf(dir, name string) int {
	b, _ := os.ReadFile(filepath.Join(dir, "starts-"+name))
	return strings.Count(string(b), "\n")
}

func readLog(dir, name string) string {
	b, _ := os.ReadFile(filepath.Join(dir, name+".log"))
	return string(b)
}

// TestSubmitterRestart: the submitter is SIGKILLed in the middle of a run;
// started again with the run's id, it shows every task's result once and
// exits as the whole run would have.
func TestSubmitterRestart(t *testing.T) {
	t.Parallel()
	dir, url := newCluster(t)
	startAgent(t, dir, "agent1", url, "-j", "2")
	const n = 12
	in := sleeps(n, 500)
	first := submit(t, dir, "first", url, in)
	run := runIDOf(t, first)
	for startsOf(dir, "agent1") < 4 {
		time.Sleep(20 * time.Millisecond)
	}
	first.kill()
	again := submit(t, dir, "again", url, in, "--run-id", run)
	if st := again.wait(t, 60*time.Second); st != 0 {
		t.Fatalf("run exited %d, want 0\n%s", st, again.stderr())
	}
	if !strings.Contains(again.stderr(), "resumed") {
		t.Errorf("stderr does not say the run was resumed:\n%s", again.stderr())
	}
	checkOutputs(t, again, n)
	if s := summaryOf(t, dir, "again"); s.Tasks.Done != n {
		t.Errorf("tasks = %+v, want %d done", s.Tasks, n)
	}
	if starts := startsOf(dir, "agent1"); starts != n {
		t.Errorf("%d task starts, want %d: a resumed run ran tasks again", starts, n)
	}
	checkRecorded(t, url, run, n)
}

// TestNoAgentFits: tasks that need more memory than any live agent has are
// reported by the submitter, not left waiting silently; so is a run with no
// agent at all.
func TestNoAgentFits(t *testing.T) {
	t.Parallel()
	dir, url := newCluster(t)
	alone := submit(t, dir, "alone", url, []string{"sleep:1"})
	alone.waitLog(t, "no agent is connected", 20*time.Second)
	startAgent(t, dir, "agent1", url, "-j", "1", "--mem-limit", "64MiB")
	if st := alone.wait(t, 30*time.Second); st != 0 {
		t.Fatalf("run exited %d once an agent came, want 0\n%s", st, alone.stderr())
	}
	big := submit(t, dir, "big", url, []string{"sleep:1", "sleep:2"}, "--mem-per-task", "1GiB")
	big.waitLog(t, "2 tasks need more than 512 MiB of memory, and no agent has that much (the largest gives 64 MiB per task)", 20*time.Second)
}

// TestRunIDOtherInputs: a run id given again with other inputs (a second
// batch under yesterday's name, or two submitters at once) must not show
// the first run's results as the second's: the submitter refuses with
// exit status 2. The same inputs, or fewer or more of them, carry the run
// on.
func TestRunIDOtherInputs(t *testing.T) {
	t.Parallel()
	dir, url := newCluster(t)
	startAgent(t, dir, "agent1", url, "-j", "2")
	echo := func(name string, inputs ...string) *proc {
		args := append([]string{"run", "--nats", url, "--run-id", "nightly", "-k", "echo", "out:{}", ":::"}, inputs...)
		return start(t, dir, name, args...)
	}
	lines := func(in ...string) string {
		var b strings.Builder
		for _, s := range in {
			b.WriteString("out:" + s + "\n")
		}
		return b.String()
	}
	first := echo("first", "a", "b", "c", "d")
	if st := first.wait(t, 60*time.Second); st != 0 {
		t.Fatalf("first run exited %d\n%s", st, first.stderr())
	}
	tests := []struct {
		name   string
		inputs []string
		status int
		out    string // stdout
		errs   string // in stderr
	}{
		{"other", []string{"x", "y", "z"}, 2, "", "the run holds other inputs: task "},
		{"one-other", []string{"a", "b", "Z", "d"}, 2, "out:a\nout:b\n", `ran "c", but input 3 here is "Z"`},
		{"fewer", []string{"a", "b"}, 0, lines("a", "b"), "past this input's 2"},
		{"more", []string{"a", "b", "c", "d", "e"}, 0, lines("a", "b", "c", "d", "e"), "resumed"},
		{"more-other", []string{"a", "b", "c", "d", "f"}, 2, lines("a", "b", "c", "d"), `ran "e", but input 5 here is "f"`},
	}
	// Settings given again with the run id are the first run's: the
	// submitter says so.
	again := start(t, dir, "again", "run", "--nats", url, "--run-id", "nightly", "--retries", "2", "--timeout", "1m", "-k", "echo", "out:{}", ":::", "a")
	if st := again.wait(t, 60*time.Second); st != 0 ||
		!strings.Contains(again.stderr(), "run nightly keeps the settings it was first submitted with: --retries 0 (not 2), --on-worker-death skip (not retry), --timeout 0s (not 1m0s)\n") {
		t.Errorf("run --run-id nightly --retries 2 --timeout 1m = status %d, want 0 and the settings kept named:\n%s", st, again.stderr())
	}
	for _, tt := range tests {
		p := echo(tt.name, tt.inputs...)
		st := p.wait(t, 60*time.Second)
		if st != tt.status || p.out.String() != tt.out || !strings.Contains(p.stderr(), tt.errs) {
			t.Errorf("%s: run --run-id nightly ::: %s = status %d, stdout %q, want %d, %q and %q in stderr:\n%s",
				tt.name, strings.Join(tt.inputs, " "), st, p.out.String(), tt.status, tt.out, tt.errs, p.stderr())
		}
	}
}

// TestServerLost: while the server is gone, the submitter and the agents
// say so rather than wait in silence, and carry on when it is back,
// without waiting on acknowledgements the restarted server never answers.
// The URL's password is never shown.
func TestServerLost(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	port := freePort(t)
	url := fmt.Sprintf("nats://127.0.0.1:%d", port)
	server := startServer(t, dir, "server", port)
	// The embedded server has no accounts: it takes any user and password.
	secretURL := fmt.Sprintf("nats://batch:s3cret@127.0.0.1:%d", port)
	agent := startAgent(t, dir, "agent1", secretURL, "-j", "2")
	const n = 6
	sub := submit(t, dir, "run", secretURL, sleeps(n, 1500))
	run := runIDOf(t, sub)
	waitRecorded(t, url, run, 1, 30*time.Second)
	server.kill()
	sub.waitLog(t, "lost the connection to the NATS server", 15*time.Second)
	agent.waitLog(t, "lost the connection to the NATS server", 15*time.Second)
	startServer(t, dir, "server-again", port, "--store", filepath.Join(dir, "server"))
	agent.waitLog(t, "reconnected to the NATS server", 15*time.Second)
	// The tasks whose results were recorded while the server was gone
	// (and which a server restarted after a SIGKILL may not know were
	// delivered) must not hold the agent's slots: the run ends soon.
	if st := sub.wait(t, 40*time.Second); st != 0 {
		t.Fatalf("run exited %d, want 0\n%s", st, sub.stderr())
	}
	checkOutputs(t, sub, n)
	checkRecorded(t, url, run, n)
	for _, p := range []*proc{sub, agent} {
		if strings.Contains(p.stderr(), "s3cret") {
			t.Errorf("stderr shows the password:\n%s", p.stderr())
		}
	}
}

// TestOddBytes: arguments that are not valid UTF-8 (a Latin-1 file name)
// reach the agent's command as the same bytes, not with U+FFFD in their
// place, and so does a command template holding such bytes.
func TestOddBytes(t *testing.T) {
	t.Parallel()
	dir, url := newCluster(t)
	startAgent(t, dir, "agent1", url, "-j", "2")
	inputs := []string{"caf\xe9.wav", "b\xff\xfe\tc\r", "e\u2028f", " lead", "plain"}
	p := start(t, dir, "run", append([]string{"run", "--nats", url, "-k", "printf", "\xab%s\xbb\n", "{}", ":::"}, inputs...)...)
	if st := p.wait(t, 60*time.Second); st != 0 {
		t.Fatalf("run exited %d\n%s", st, p.stderr())
	}
	var want strings.Builder
	for _, in := range inputs {
		want.WriteString("\xab" + in + "\xbb\n")
	}
	if got := p.out.String(); got != want.String() {
		t.Errorf("stdout = %q, want %q", got, want.String())
	}
}

// TestUnreadableTask: a task an agent cannot read (one from another
// version of safepool) is recorded failed, saying why, rather than dropped
// with its submitter waiting for it for ever.
func TestUnreadableTask(t *testing.T) {
	t.Parallel()
	dir, url := newCluster(t)
	startAgent(t, dir, "agent1", url, "-j", "1")
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	conn, err := cluster.Dial(ctx, url, "test")
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	run, err := conn.Begin(ctx, cluster.RunSpec{ID: "unreadable", Protocol: pool.OneShot, Command: []string{"echo", "{}"}}, false)
	if err != nil {
		t.Fatal(err)
	}
	js := jetStreamOf(t, url)
	// Arguments of a form this version does not know.
	body := `{"run":"unreadable","seq":1,"input":"eA==","args":[["echo"],["x"]]}`
	if _, err := js.Publish(ctx, "safepool.task.0.unreadable", []byte(body)); err != nil {
		t.Fatal(err)
	}
	select {
	case rec := <-run.Results(ctx):
		r := rec.Result()
		if r.State != pool.Failed || string(r.Input) != "x" || !strings.Contains(r.Err().Error(), "cannot read the task") {
			t.Errorf("result = %s %q %v, want failed, input x and why", r.State, r.Input, r.Err())
		}
	case <-ctx.Done():
		t.Fatal("no result for a task the agent cannot read")
	}
}

// TestInputTooLarge: an input too large for a NATS message fails its own
// task, saying so; the rest of the run goes on.
func TestInputTooLarge(t *testing.T) {
	t.Parallel()
	dir, url := newCluster(t)
	startAgent(t, dir, "agent1", url, "-j", "2")
	in := "a\n" + strings.Repeat("x", 900<<10) + "\nb\nc\n"
	if err := os.WriteFile(filepath.Join(dir, "in.txt"), []byte(in), 0o644); err != nil {
		t.Fatal(err)
	}
	p := start(t, dir, "map", "map", "--nats", url, "-k", "--json", "map.json", "-a", "in.txt", "--worker", "cat")
	if st := p.wait(t, 60*time.Second); st != 1 {
		t.Fatalf("map exited %d, want 1 (one failed task)\n%s", st, p.stderr())
	}
	if got := p.out.String(); got != "a\nb\nc\n" {
		t.Errorf("stdout = %q, want a, b, c", got)
	}
	s := summaryOf(t, dir, "map")
	if s.Tasks.Done != 3 || s.Tasks.Failed != 1 || len(s.Failed) != 1 || s.Failed[0].ID != 2 ||
		!strings.Contains(s.Failed[0].Message, "more than a NATS message holds") {
		t.Errorf("summary = %+v, want 3 done and task 2 failed, too large", s)
	}
	// run prints no task's message in its text summary (the jobs' stderr
	// is printed as they end), but this one, which no job printed.
	r := start(t, dir, "run", "run", "--nats", url, "-a", "in.txt", "--", "echo", "{}")
	if st := r.wait(t, 60*time.Second); st != 1 {
		t.Fatalf("run exited %d, want 1 (one failed task)\n%s", st, r.stderr())
	}
	if !regexp.MustCompile(`task 2 \(input 'x+…'\) failed after 1 attempt: task too large: task 2 is [0-9.]+ MiB, more than a NATS message holds`).MatchString(r.stderr()) {
		t.Errorf("run's summary does not say why task 2 failed:\n%s", r.stderr())
	}
}

// TestAgentBeforeServer: an agent started before its server waits for it,
// saying so, and runs tasks once the server is up; an agent stopped while
// it waits ends at once with status 0, as a running agent does.
func TestAgentBeforeServer(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	port := freePort(t)
	url := fmt.Sprintf("nats://127.0.0.1:%d", port)
	agent := start(t, dir, "agent", "agent", "--nats", url, "--name", "early", "-j", "2")
	agent.waitLog(t, "until a server answers", 30*time.Second)
	quitter := start(t, dir, "quitter", "agent", "--nats", url, "--name", "quitter")
	quitter.waitLog(t, "until a server answers", 30*time.Second)
	quitter.cmd.Process.Signal(syscall.SIGTERM)
	if st := quitter.wait(t, 10*time.Second); st != 0 {
		t.Fatalf("an agent stopped while it waited exited %d, want 0\n%s", st, quitter.stderr())
	}
	startServer(t, dir, "server", port)
	agent.waitLog(t, " per task (memory classes", 30*time.Second)
	sub := submit(t, dir, "run", url, sleeps(4, 100))
	if st := sub.wait(t, 60*time.Second); st != 0 {
		t.Fatalf("run exited %d, want 0\n%s", st, sub.stderr())
	}
	checkOutputs(t, sub, 4)
}
