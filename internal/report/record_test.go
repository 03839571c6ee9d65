package report_test

import (
	"bufio"
	"context"
	"database/sql"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/safepool/safepool/internal/memory"
	"github.com/safepool/safepool/internal/testenv"
	"github.com/safepool/safepool/pool"
)

// The test binary is also the line workers of the recorded run: TestMain
// turns it into one when workerEnv is set.
const workerEnv = "SAFEPOOL_REPORT_TEST_WORKER"

func TestMain(m *testing.M) {
	if os.Getenv(workerEnv) != "" {
		os.Exit(lineWorker())
	}
	if path := os.Getenv(writerEnv); path != "" {
		os.Exit(killedWriter(path))
	}
	if path := os.Getenv(loaderEnv); path != "" {
		fmt.Println(loadSummary(path))
		os.Exit(0)
	}
	if path := os.Getenv(runnerEnv); path != "" {
		os.Exit(runningJournal(path))
	}
	if path := os.Getenv(idleWriterEnv); path != "" {
		os.Exit(idleWriter(path))
	}
	if path := os.Getenv(rollbackWriterEnv); path != "" {
		os.Exit(rollbackWriter(path))
	}
	os.Exit(m.Run())
}

// lineWorker answers each line of stdin as behave says.
func lineWorker() int {
	in := bufio.NewReader(os.Stdin)
	for {
		line, err := in.ReadString('\n')
		if err != nil {
			return 0
		}
		fmt.Println(behave(strings.TrimSuffix(line, "\n")))
	}
}

// behave does what input asks:
//
//	work:MB:MS      hold MB MiB for MS milliseconds, then free it and answer
//	hog             allocate and touch memory until killed
//	once:FILE:VERB  do VERB the first time (FILE does not exist yet), work:8:50 afterwards
//	exit:N          exit with status N
//
// Memory is mapped outside the Go heap, so that a worker built with -race
// (this test binary) holds what it is asked to, without the race
// detector's shadow of it.
func behave(in string) string {
	verb, arg, _ := strings.Cut(in, ":")
	switch verb {
	case "work":
		mb, ms, _ := strings.Cut(arg, ":")
		n, _ := strconv.Atoi(mb)
		d, _ := strconv.Atoi(ms)
		// Grow in ten steps over the first half, so the samples see a
		// ramp, then hold.
		var held [][]byte
		for i := 0; i < 10; i++ {
			held = append(held, touch(n<<20/10))
			time.Sleep(time.Duration(d) * time.Millisecond / 20)
		}
		time.Sleep(time.Duration(d) * time.Millisecond / 2)
		for _, b := range held {
			syscall.Munmap(b)
		}
	case "hog":
		for {
			touch(16 << 20)
			time.Sleep(10 * time.Millisecond)
		}
	case "once":
		file, verb, _ := strings.Cut(arg, ":")
		if f, err := os.OpenFile(file, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o600); err == nil {
			f.Close()
			return behave(verb)
		}
		return behave("work:8:50")
	case "exit":
		n, _ := strconv.Atoi(arg)
		os.Exit(n)
	}
	return "ok:" + in
}

// touch maps n bytes of anonymous memory and touches every page.
func touch(n int) []byte {
	b, err := syscall.Mmap(-1, 0, n, syscall.PROT_READ|syscall.PROT_WRITE, syscall.MAP_ANON|syscall.MAP_PRIVATE)
	if err != nil {
		panic(err)
	}
	for i := 0; i < len(b); i += 4096 {
		b[i] = 1
	}
	return b
}

// requireCgroups skips (or, in CI, fails) a test that needs a memory
// cgroup per worker: the recorded run needs real OOM kills.
func requireCgroups(t *testing.T) {
	t.Helper()
	m, err := memory.NewManager()
	if err != nil {
		testenv.SkipOrFail(t, "memory cgroups: "+err.Error())
		return
	}
	mode, reason := m.Mode(), m.Reason()
	m.Close()
	if !mode.PerWorker() {
		testenv.SkipOrFail(t, reason)
	}
}

// recorder turns a pool's events, and samples of its memory and
// concurrency, into journal rows, as the journal writer does.
type recorder struct {
	mu      sync.Mutex
	results map[uint64]*pool.Result
	// attempts are the attempts in the order they ended, with their task.
	attempts []recordedAttempt
	events   []eventRow
	samples  []sampleRow
	// last is each task's last ended attempt's cause, to tell a retry.
	last map[uint64]pool.Cause
	// live are the worker processes running, sampled one by one.
	live map[int]bool
}

type recordedAttempt struct {
	task uint64
	pool.Attempt
}

type eventRow struct {
	at     time.Time
	kind   string
	task   uint64
	pid    int
	detail string
}

type sampleRow struct {
	at     time.Time
	pid    int
	series string
	value  int64
}

func newRecorder() *recorder {
	return &recorder{results: map[uint64]*pool.Result{}, last: map[uint64]pool.Cause{}, live: map[int]bool{}}
}

func (r *recorder) observe(ev pool.Event) {
	r.mu.Lock()
	defer r.mu.Unlock()
	switch ev.Kind {
	case pool.EventWorkerStarted:
		r.live[ev.WorkerPID] = true
		r.events = append(r.events, eventRow{ev.Time, "worker-started", 0, ev.WorkerPID, ""})
	case pool.EventWorkerExited:
		delete(r.live, ev.WorkerPID)
		r.events = append(r.events, eventRow{ev.Time, "worker-exited", 0, ev.WorkerPID, ""})
	case pool.EventAttemptStarted:
		if c, ok := r.last[ev.TaskID]; ok && c != pool.CausePreempted {
			r.events = append(r.events, eventRow{ev.Time, "retry", ev.TaskID, ev.WorkerPID, "after " + string(c)})
		}
	case pool.EventAttemptEnded:
		a := *ev.Attempt
		r.attempts = append(r.attempts, recordedAttempt{ev.TaskID, a})
		r.last[ev.TaskID] = a.Cause
		switch a.Cause {
		case pool.CauseOOM, pool.CausePreempted:
			r.events = append(r.events, eventRow{a.End, string(a.Cause), ev.TaskID, a.WorkerPID, a.Message})
		}
	case pool.EventTaskEnded:
		res := *ev.Result
		r.results[ev.TaskID] = &res
		if res.State == pool.Poison {
			r.events = append(r.events, eventRow{ev.Time, "poison", ev.TaskID, 0, string(res.Cause())})
		}
	}
}

// sample records the pool's memory and concurrency, and each live
// worker's resident memory, every interval until stop is closed.
func (r *recorder) sample(p *pool.Pool, interval time.Duration, stop <-chan struct{}) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		now := time.Now()
		st := p.Stats()
		mem, governed := p.Memory()
		r.mu.Lock()
		r.samples = append(r.samples, sampleRow{now, 0, "running", int64(st.Running)})
		if governed {
			r.samples = append(r.samples,
				sampleRow{now, 0, "total", mem.InUse},
				sampleRow{now, 0, "budget", mem.Budget},
				sampleRow{now, 0, "allowed", int64(mem.Allows)})
		}
		for pid := range r.live {
			if rss, ok := residentOf(pid); ok {
				r.samples = append(r.samples, sampleRow{now, pid, "worker", rss})
			}
		}
		r.mu.Unlock()
		select {
		case <-stop:
			return
		case <-t.C:
		}
	}
}

// residentOf reads a process's resident memory from /proc.
func residentOf(pid int) (int64, bool) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, false
	}
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, "VmRSS:"); ok {
			kb, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
			return kb << 10, err == nil
		}
	}
	return 0, false
}

// write writes what r recorded as run runID of j.
func (r *recorder) write(t *testing.T, j *testJournal, runID int64, command string, inputs []string) {
	t.Helper()
	r.mu.Lock()
	defer r.mu.Unlock()
	tx, err := j.db.Begin()
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback()
	must := func(_ sql.Result, err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	for i, in := range inputs {
		id := uint64(i + 1)
		res := r.results[id]
		state, attempts := "pending", 0
		var cause, ended, peak any
		if res != nil {
			state, attempts = string(res.State), len(res.Attempts)
			if res.State != pool.Done {
				cause = string(res.Cause())
			}
			var p int64
			for _, a := range res.Attempts {
				p = max(p, a.PeakRSS)
				ended = a.End.UnixNano()
			}
			peak = nullInt(p)
		}
		must(tx.Exec(`INSERT INTO task (run_id, id, key, input, state, attempts, cause, peak, ended)
			VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)`, runID, id, taskKey(command, []byte(in)), []byte(in),
			state, attempts, cause, peak, ended))
	}
	for _, a := range r.attempts {
		var sig any
		if a.Signal != "" {
			sig = a.Signal
		}
		must(tx.Exec(`INSERT INTO attempt (run_id, task_id, number, worker_pid, started, ended, cause, exit_code, signal, peak, message)
			VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`, runID, a.task, a.Number, a.WorkerPID,
			a.Start.UnixNano(), a.End.UnixNano(), string(a.Cause), a.ExitCode, sig, nullInt(a.PeakRSS), a.Message))
	}
	for _, e := range r.events {
		must(tx.Exec(`INSERT INTO event (run_id, at, kind, task_id, worker_pid, detail) VALUES (?, ?, ?, ?, ?, ?)`,
			runID, e.at.UnixNano(), e.kind, nullInt(int64(e.task)), nullInt(int64(e.pid)), e.detail))
	}
	for _, s := range r.samples {
		must(tx.Exec(`INSERT INTO sample (run_id, at, worker_pid, series, value) VALUES (?, ?, ?, ?, ?)`,
			runID, s.at.UnixNano(), s.pid, s.series, s.value))
	}
	if err := tx.Commit(); err != nil {
		t.Fatal(err)
	}
}

// recordRun runs a small real workload and journals it: four line
// workers, each capped at 160 MiB in its own memory cgroup, under a 320
// MiB budget, over 30 tasks that hold 10 to 90 MiB for 100 to 600 ms. Task
// 8 allocates without end on its first attempt, is OOM-killed and retried;
// task 17 does so on every attempt and fails with oom; task 23's worker
// exits 3 once.
func recordRun(t *testing.T) (j *testJournal, runID int64) {
	t.Helper()
	requireCgroups(t)
	dir := t.TempDir()
	var inputs []string
	for i := 1; i <= 30; i++ {
		inputs = append(inputs, fmt.Sprintf("work:%d:%d", 10+(i*37)%81, 100+(i*53)%501))
	}
	inputs[7] = "once:" + filepath.Join(dir, "hog8") + ":hog"
	inputs[16] = "hog"
	inputs[22] = "once:" + filepath.Join(dir, "exit23") + ":exit:3"

	rec := newRecorder()
	cfg := pool.Config{
		Command:   []string{os.Args[0], "-test.run=^$"},
		Env:       append(os.Environ(), workerEnv+"=line"),
		Protocol:  pool.Line,
		Workers:   4,
		Retries:   1,
		MemLimit:  160 << 20,
		MemBudget: 320 << 20,
		Observer:  rec.observe,
	}
	started := time.Now()
	p, err := pool.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	stop := make(chan struct{})
	sampled := make(chan struct{})
	go func() {
		defer close(sampled)
		rec.sample(p, 50*time.Millisecond, stop)
	}()
	go func() {
		defer p.Close()
		for _, in := range inputs {
			if _, err := p.Submit(context.Background(), pool.Task{Input: []byte(in)}); err != nil {
				return
			}
		}
	}()
	for range p.Results() {
	}
	close(stop)
	<-sampled
	if err := p.Err(); err != nil {
		t.Fatalf("pool: %v", err)
	}
	j = newTestJournal(t)
	command := strings.Join(cfg.Command, " ")
	runID = j.addRun(t, runRow{started: started, ended: time.Now(), kind: "map", command: command,
		argv: []string{"safepool", "map", "-j", "4", "--retries", "1", "--mem-limit", "160MiB",
			"--mem-budget", "320MiB", "--", "./worker"},
		workers: 4, memoryMode: p.MemoryMode(), budget: cfg.MemBudget, limit: cfg.MemLimit, exitStatus: 1})
	rec.write(t, j, runID, command, inputs)
	return j, runID
}
