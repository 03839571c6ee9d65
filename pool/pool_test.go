package pool_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/safepool/safepool/internal/memory"
	"github.com/safepool/safepool/internal/testenv"
	"github.com/safepool/safepool/pool"
	"golang.org/x/sys/unix"
)

func TestMain(m *testing.M) {
	if mode := os.Getenv(workerEnv); mode != "" {
		switch mode {
		case "supervisor":
			os.Exit(runSupervisor())
		case "seed":
			os.Exit(runSeed())
		case "preempt":
			os.Exit(runPreempt())
		case "fdcap", "fdsqueeze":
			os.Exit(runFileLimit(mode))
		case "gov-container":
			os.Exit(runGovContainer())
		case "container-seed":
			os.Exit(runContainerSeed())
		case "container-oneshot":
			os.Exit(runContainerOneShot())
		case "container-fatstart":
			os.Exit(runContainerFatStart())
		case "container-idle-workers":
			os.Exit(runContainerIdleWorkers())
		case "container-gocrash":
			os.Exit(runContainerGoCrash())
		case "container-peak":
			os.Exit(runContainerPeak())
		case "container-late-peak":
			os.Exit(runContainerLatePeak())
		case "container-leftovers":
			os.Exit(runContainerLeftovers(false))
		case "container-leftovers-persistent":
			os.Exit(runContainerLeftovers(true))
		case "shared-block":
			os.Exit(runSharedBlock())
		case "container-device-oom":
			os.Exit(runDeviceOOM())
		case "readme-example":
			os.Exit(runReadmeExample())
		case "oom-tree":
			os.Exit(runOOMTree())
		case "oom-tree-hog":
			os.Exit(runOOMTreeHog())
		}
		os.Exit(runWorker(mode))
	}
	goleak.VerifyTestMain(m)
}

// config returns a pool configuration whose workers are this test binary.
func config(proto pool.Protocol, workers int) pool.Config {
	cfg := pool.Config{
		Command:  workerCmd(string(proto)),
		Env:      workerEnvFor(string(proto)),
		Protocol: proto,
		Workers:  workers,
		Grace:    500 * time.Millisecond,
		Backoff:  time.Millisecond,
	}
	if proto == pool.OneShot {
		cfg.Command = append(cfg.Command, "{}")
	}
	return cfg
}

// run submits inputs to a new pool built from cfg and returns the results
// by task id, and the pool. It fails the test if the pool does not end
// within a minute: nothing may hang.
func run(t *testing.T, cfg pool.Config, inputs ...string) (map[uint64]pool.Result, *pool.Pool) {
	t.Helper()
	p, err := pool.New(cfg)
	if err != nil {
		t.Fatalf("New() = %v", err)
	}
	go func() {
		defer p.Close()
		for _, in := range inputs {
			if _, err := p.Submit(context.Background(), pool.Task{Input: []byte(in)}); err != nil {
				return
			}
		}
	}()
	got := map[uint64]pool.Result{}
	timeout := time.After(time.Minute)
	for {
		select {
		case r, ok := <-p.Results():
			if !ok {
				return got, p
			}
			if _, dup := got[r.ID]; dup {
				t.Errorf("task %d delivered twice", r.ID)
			}
			got[r.ID] = r
		case <-timeout:
			p.Abort(errors.New("test timed out"))
			p.Abort(nil)
			t.Fatalf("pool did not end within a minute; %d results so far", len(got))
		}
	}
}

var protocols = []pool.Protocol{pool.OneShot, pool.Line, pool.Framed}

func TestEveryTaskSucceeds(t *testing.T) {
	for _, proto := range protocols {
		t.Run(string(proto), func(t *testing.T) {
			var inputs []string
			for i := 0; i < 50; i++ {
				inputs = append(inputs, "task"+strconv.Itoa(i))
			}
			got, p := run(t, config(proto, 3), inputs...)
			if len(got) != len(inputs) {
				t.Fatalf("got %d results, want %d", len(got), len(inputs))
			}
			for id, r := range got {
				want := "ok:" + inputs[id-1]
				if proto == pool.OneShot {
					want += "\n"
				}
				if r.State != pool.Done || string(r.Output) != want {
					t.Errorf("task %d = %s %q, want done %q", id, r.State, r.Output, want)
				}
				if len(r.Attempts) != 1 || r.Attempts[0].WorkerPID == 0 || r.Attempts[0].Number != 1 {
					t.Errorf("task %d attempts = %+v, want one with a worker pid", id, r.Attempts)
				}
			}
			if s := p.Stats(); s.Done != len(inputs) || s.Submitted != len(inputs) || s.Running != 0 || s.Queued != 0 {
				t.Errorf("Stats() = %+v", s)
			}
			if err := p.Err(); err != nil {
				t.Errorf("Err() = %v, want nil", err)
			}
		})
	}
}

func TestKeepOrder(t *testing.T) {
	for _, proto := range protocols {
		t.Run(string(proto), func(t *testing.T) {
			cfg := config(proto, 4)
			cfg.KeepOrder = true
			p, err := pool.New(cfg)
			if err != nil {
				t.Fatal(err)
			}
			const n = 40
			go func() {
				defer p.Close()
				for i := 0; i < n; i++ {
					// Early tasks are slow, so that later ones end first.
					p.Submit(context.Background(), pool.Task{Input: []byte("sleep:" + strconv.Itoa((n-i)%7*5))})
				}
			}()
			var ids []uint64
			for r := range p.Results() {
				ids = append(ids, r.ID)
			}
			for i, id := range ids {
				if id != uint64(i+1) {
					t.Fatalf("results came in order %v, want 1..%d", ids, n)
				}
			}
			if len(ids) != n {
				t.Fatalf("got %d results, want %d", len(ids), n)
			}
		})
	}
}

// TestCauses runs one faulty task among healthy ones for each protocol and
// checks that exactly that task is charged, with the right cause, and that
// the rest complete.
func TestCauses(t *testing.T) {
	tests := []struct {
		name    string
		input   string
		protos  []pool.Protocol
		cfg     func(*pool.Config)
		want    pool.Cause
		signal  string
		exit    int
		message string
	}{
		{name: "sigkill", input: "kill", protos: protocols, want: "signal:SIGKILL", signal: "SIGKILL", exit: -1},
		{name: "segfault", input: "segv", protos: protocols, want: pool.CauseSegfault, signal: "SIGSEGV", exit: -1},
		{name: "exit code", input: "exit:3", protos: protocols, want: "exit:3", exit: 3},
		// The timeout applies to the healthy tasks too, so it leaves room
		// for a one-shot worker (this test binary, slow to start under the
		// race detector on a loaded machine) to start and answer.
		{name: "timeout", input: "hang", protos: protocols, cfg: func(c *pool.Config) { c.Timeout = 4 * time.Second },
			want: pool.CauseTimeout, signal: "SIGKILL", exit: -1, message: "killed after 4s"},
		// The line protocol cannot tell an extra line from the next result,
		// so only the framed protocol can promise to catch garbage.
		{name: "garbage", input: "garbage", protos: []pool.Protocol{pool.Framed}, want: pool.CauseProtocol, exit: -1,
			message: "bad frame"},
		{name: "closes result pipe", input: "closeout", protos: []pool.Protocol{pool.Line, pool.Framed}, want: pool.CauseProtocol,
			signal: "SIGKILL", exit: -1, message: "closed its result pipe"},
		{name: "task error", input: "fail", protos: []pool.Protocol{pool.Framed}, want: pool.CauseTaskError, exit: -1, message: "this task fails"},
	}
	for _, tt := range tests {
		for _, proto := range tt.protos {
			t.Run(tt.name+"/"+string(proto), func(t *testing.T) {
				cfg := config(proto, 2)
				if tt.cfg != nil {
					tt.cfg(&cfg)
				}
				inputs := []string{"a", "b", "c", tt.input, "d", "e", "f", "g"}
				start := time.Now()
				got, p := run(t, cfg, inputs...)
				if len(got) != len(inputs) {
					t.Fatalf("got %d results, want %d", len(got), len(inputs))
				}
				for id, r := range got {
					if inputs[id-1] != tt.input {
						if r.State != pool.Done {
							t.Errorf("healthy task %d (%s) = %s %s, want done", id, inputs[id-1], r.State, r.Cause())
						}
						continue
					}
					if r.State != pool.Failed || len(r.Attempts) != 1 {
						t.Fatalf("faulty task = %s with %d attempts, want failed with 1", r.State, len(r.Attempts))
					}
					a := r.Attempts[0]
					if a.Cause != tt.want {
						t.Errorf("cause = %q, want %q (attempt %+v)", a.Cause, tt.want, a)
					}
					if tt.signal != "" && a.Signal != tt.signal {
						t.Errorf("signal = %q, want %q", a.Signal, tt.signal)
					}
					if a.ExitCode != tt.exit && tt.want != pool.CauseProtocol {
						t.Errorf("exit code = %d, want %d", a.ExitCode, tt.exit)
					}
					if tt.message != "" && !strings.Contains(a.Message, tt.message) {
						t.Errorf("message = %q, want it to contain %q", a.Message, tt.message)
					}
					if a.Start.IsZero() || a.End.Before(a.Start) || a.WorkerPID == 0 {
						t.Errorf("attempt times/pid = %v %v %d", a.Start, a.End, a.WorkerPID)
					}
				}
				f := p.Failed()
				if len(f) != 1 || string(f[0].Input) != tt.input {
					t.Errorf("Failed() = %v, want just the %q task", f, tt.input)
				}
				t.Logf("%s/%s took %v", tt.name, proto, time.Since(start).Round(time.Millisecond))
			})
		}
	}
}

// TestPipelineBlame kills a framed worker that has several tasks queued to
// it: only the task it was running is charged; the rest run again elsewhere
// with no attempt charged.
func TestPipelineBlame(t *testing.T) {
	cfg := config(pool.Framed, 2)
	cfg.Pipeline = 16
	var inputs []string
	for i := 0; i < 60; i++ {
		in := "sleep:2"
		if i == 20 || i == 41 {
			in = "kill"
		}
		inputs = append(inputs, in)
	}
	got, _ := run(t, cfg, inputs...)
	for id, r := range got {
		if inputs[id-1] == "kill" {
			if r.State != pool.Failed || len(r.Attempts) != 1 || r.Attempts[0].Cause != "signal:SIGKILL" {
				t.Errorf("killer task %d = %s %+v, want failed once with signal:SIGKILL", id, r.State, r.Attempts)
			}
			continue
		}
		if r.State != pool.Done || len(r.Attempts) != 1 {
			t.Errorf("bystander task %d = %s with attempts %+v, want done with exactly one attempt", id, r.State, r.Attempts)
		}
	}
	if len(got) != len(inputs) {
		t.Fatalf("got %d results, want %d", len(got), len(inputs))
	}
}

// TestExitBetweenTasks: a worker that exits right after answering is
// replaced, and the tasks queued to it are not charged.
func TestExitBetweenTasks(t *testing.T) {
	for _, proto := range []pool.Protocol{pool.Line, pool.Framed} {
		t.Run(string(proto), func(t *testing.T) {
			inputs := []string{"a", "bye", "b", "c", "bye", "d", "e", "f"}
			cfg := config(proto, 1)
			if proto == pool.Framed {
				cfg.Env = workerEnvFor("framed-raw")
			}
			got, p := run(t, cfg, inputs...)
			for id, r := range got {
				if r.State != pool.Done || len(r.Attempts) != 1 {
					t.Errorf("task %d (%s) = %s %+v, want done once", id, inputs[id-1], r.State, r.Attempts)
				}
			}
			if s := p.Stats(); s.WorkersStarted < 3 {
				t.Errorf("WorkersStarted = %d, want at least 3", s.WorkersStarted)
			}
		})
	}
}

func TestRetryPolicy(t *testing.T) {
	for _, proto := range protocols {
		t.Run(string(proto), func(t *testing.T) {
			dir := t.TempDir()
			cfg := config(proto, 2)
			cfg.Retries = 2
			inputs := []string{"a", "once:" + filepath.Join(dir, "m1") + ":kill", "b", "kill", "c"}
			got, _ := run(t, cfg, inputs...)
			once, always := got[2], got[4]
			if once.State != pool.Done || len(once.Attempts) != 2 || once.Attempts[0].Cause != "signal:SIGKILL" || once.Attempts[1].Number != 2 {
				t.Errorf("killed-once task = %s %+v, want done on attempt 2", once.State, once.Attempts)
			}
			if always.State != pool.Failed || len(always.Attempts) != 3 {
				t.Errorf("always-killed task = %s with %d attempts, want failed after 3", always.State, len(always.Attempts))
			}
		})
	}
}

func TestTaskErrorRetries(t *testing.T) {
	dir := t.TempDir()
	cfg := config(pool.Framed, 1)
	cfg.TaskErrorRetries = 1
	got, _ := run(t, cfg, "once:"+filepath.Join(dir, "m")+":fail", "fail")
	if r := got[1]; r.State != pool.Done || len(r.Attempts) != 2 || r.Attempts[0].Cause != pool.CauseTaskError {
		t.Errorf("fail-once task = %s %+v, want done after a task error", r.State, r.Attempts)
	}
	if r := got[2]; r.State != pool.Failed || len(r.Attempts) != 2 {
		t.Errorf("always-failing task = %s %+v, want failed after 2 attempts", r.State, r.Attempts)
	}
}

func TestAbortPolicy(t *testing.T) {
	for _, proto := range protocols {
		t.Run(string(proto), func(t *testing.T) {
			cfg := config(proto, 2)
			cfg.OnWorkerDeath = pool.Abort
			var inputs []string
			for i := 0; i < 40; i++ {
				inputs = append(inputs, "sleep:20")
			}
			inputs[5] = "kill"
			got, p := run(t, cfg, inputs...)
			var ae *pool.AbortError
			if err := p.Err(); !errors.As(err, &ae) || ae.TaskID != 6 || !errors.Is(err, pool.ErrAborted) {
				t.Fatalf("Err() = %v, want an abort caused by task 6", err)
			}
			counts := map[pool.State]int{}
			for _, r := range got {
				counts[r.State]++
			}
			if got[6].State != pool.Failed || counts[pool.Failed] != 1 || counts[pool.Cancelled] == 0 || counts[pool.Done] == 0 {
				t.Errorf("states = %v (task 6 %s), want task 6 failed, some done, the rest cancelled", counts, got[6].State)
			}
			if len(got) != len(inputs) {
				t.Errorf("got %d results, want every one of %d", len(got), len(inputs))
			}
		})
	}
}

// TestAbortAfterRetries: under the Abort policy with Retries, a task
// killed once runs again and the pool goes on; a task killed on every
// attempt stops the pool once it has had 1+Retries of them, as GNU
// parallel's --retries with --halt now,fail=1.
func TestAbortAfterRetries(t *testing.T) {
	for _, proto := range protocols {
		t.Run(string(proto), func(t *testing.T) {
			dir := t.TempDir()
			cfg := config(proto, 1)
			cfg.OnWorkerDeath = pool.Abort
			cfg.Retries = 2
			inputs := []string{"a", "once:" + filepath.Join(dir, "m1") + ":kill", "b", "kill", "c", "d"}
			got, p := run(t, cfg, inputs...)
			once, always := got[2], got[4]
			if once.State != pool.Done || len(once.Attempts) != 2 || once.Attempts[0].Cause != "signal:SIGKILL" {
				t.Errorf("killed-once task = %s %+v, want done on attempt 2", once.State, once.Attempts)
			}
			if always.State != pool.Failed || len(always.Attempts) != 3 {
				t.Errorf("always-killed task = %s with %d attempts, want failed after 3", always.State, len(always.Attempts))
			}
			var ae *pool.AbortError
			if err := p.Err(); !errors.As(err, &ae) || ae.TaskID != 4 {
				t.Fatalf("Err() = %v, want an abort caused by task 4", err)
			}
			// The others ran while task 4 waited out its backoffs: done,
			// or cancelled by the abort.
			for id, r := range got {
				if id != 4 && r.State != pool.Done && r.State != pool.Cancelled {
					t.Errorf("task %d = %s, want done or cancelled", id, r.State)
				}
			}
			if len(got) != len(inputs) {
				t.Errorf("got %d results, want %d", len(got), len(inputs))
			}
		})
	}
}

// TestSkipWithRetries: Retries with the Skip policy, which retries
// nothing, is refused rather than ignored.
func TestSkipWithRetries(t *testing.T) {
	_, err := pool.New(pool.Config{Command: []string{"/bin/true"}, OnWorkerDeath: pool.Skip, Retries: 2})
	if err == nil || !strings.Contains(err.Error(), "OnWorkerDeath skip retries nothing") {
		t.Fatalf("New = %v, want Retries with Skip refused", err)
	}
}

// TestAbortStartsNothingMore: under the Abort policy, no task starts once
// a task has failed: a one-shot slot that ends a failed job starts no job
// after it, as GNU parallel's --halt now,fail=1 starts none. The tasks after
// the failed one end cancelled without an attempt.
func TestAbortStartsNothingMore(t *testing.T) {
	for _, workers := range []int{1, 2} {
		t.Run(fmt.Sprintf("%d workers", workers), func(t *testing.T) {
			for round := 0; round < 10; round++ {
				cfg := config(pool.OneShot, workers)
				cfg.OnWorkerDeath = pool.Abort
				inputs := []string{"exit:3"}
				if workers == 2 {
					inputs = []string{"sleep:2000", "exit:3"}
				}
				for i := 0; i < 6; i++ {
					inputs = append(inputs, "sleep:10")
				}
				got, _ := run(t, cfg, inputs...)
				for id := uint64(len(inputs) - 5); id <= uint64(len(inputs)); id++ {
					if r, ok := got[id]; ok && len(r.Attempts) > 0 {
						t.Fatalf("round %d: task %d (%s) started after task %d failed under the Abort policy: %s after %+v",
							round, id, inputs[id-1], len(inputs)-6, r.State, r.Attempts)
					}
				}
			}
		})
	}
}

// TestBoundedShutdown aborts a pool whose workers ignore SIGTERM and hang:
// it must end soon after the grace period.
func TestBoundedShutdown(t *testing.T) {
	for _, proto := range protocols {
		t.Run(string(proto), func(t *testing.T) {
			cfg := config(proto, 3)
			cfg.Grace = 300 * time.Millisecond
			pids := workerPIDs(&cfg)
			p, err := pool.New(cfg)
			if err != nil {
				t.Fatal(err)
			}
			for i := 0; i < 5; i++ {
				p.Submit(context.Background(), pool.Task{Input: []byte("hang")})
			}
			time.Sleep(300 * time.Millisecond)
			start := time.Now()
			p.Abort(errors.New("user abort"))
			n := 0
			for r := range p.Results() {
				n++
				if r.State != pool.Cancelled {
					t.Errorf("task %d = %s, want cancelled", r.ID, r.State)
				}
			}
			if n != 5 {
				t.Errorf("got %d results, want 5", n)
			}
			if d := time.Since(start); d > 10*time.Second {
				t.Errorf("abort took %v", d)
			}
			assertGone(t, pids())
		})
	}
}

// workerPIDs makes cfg record the pid of every worker it starts.
func workerPIDs(cfg *pool.Config) func() []int {
	var mu sync.Mutex
	var pids []int
	prev := cfg.Observer
	cfg.Observer = func(e pool.Event) {
		if e.Kind == pool.EventWorkerStarted {
			mu.Lock()
			pids = append(pids, e.WorkerPID)
			mu.Unlock()
		}
		if prev != nil {
			prev(e)
		}
	}
	return func() []int {
		mu.Lock()
		defer mu.Unlock()
		return append([]int(nil), pids...)
	}
}

// assertGone fails t if any of pids is still a live process (zombies of
// other parents aside, these are our children and were reaped).
func assertGone(t *testing.T, pids []int) {
	t.Helper()
	deadline := time.Now().Add(3 * time.Second)
	for _, pid := range pids {
		for alive(pid) {
			if time.Now().After(deadline) {
				t.Errorf("process %d is still running", pid)
				syscall.Kill(pid, syscall.SIGKILL)
				break
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
}

func alive(pid int) bool {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return false
	}
	// A zombie is dead; field 3 is the state.
	f := strings.Fields(string(b[strings.LastIndexByte(string(b), ')')+1:]))
	return len(f) > 0 && f[0] != "Z"
}

// TestGrandchildHoldsPipes: a worker dies while a grandchild it started keeps
// its pipes open. The death must be seen at once, and the grandchild must not
// survive the pool.
func TestGrandchildHoldsPipes(t *testing.T) {
	for _, proto := range protocols {
		t.Run(string(proto), func(t *testing.T) {
			file := filepath.Join(t.TempDir(), "pid")
			cfg := config(proto, 1)
			start := time.Now()
			got, _ := run(t, cfg, "grandchild:"+file, "a", "b")
			if d := time.Since(start); d > 5*time.Second {
				t.Errorf("pool took %v with a grandchild holding the pipes", d)
			}
			if r := got[1]; r.State != pool.Failed || r.Cause() != "signal:SIGKILL" {
				t.Errorf("grandchild task = %s %s, want failed signal:SIGKILL", r.State, r.Cause())
			}
			if got[2].State != pool.Done || got[3].State != pool.Done {
				t.Errorf("later tasks = %s %s, want done", got[2].State, got[3].State)
			}
			b, err := os.ReadFile(file)
			if err != nil {
				t.Fatal(err)
			}
			pid, _ := strconv.Atoi(string(b))
			assertGone(t, []int{pid})
		})
	}
}

func TestNoOrphansAfterClose(t *testing.T) {
	for _, proto := range []pool.Protocol{pool.Line, pool.Framed} {
		t.Run(string(proto), func(t *testing.T) {
			cfg := config(proto, 4)
			pids := workerPIDs(&cfg)
			run(t, cfg, "a", "b", "c", "d", "e")
			if len(pids()) != 4 {
				t.Errorf("started %d workers, want 4", len(pids()))
			}
			assertGone(t, pids())
		})
	}
}

// TestNoOrphansAfterSupervisorKilled SIGKILLs a supervisor process (this test
// binary in supervisor mode) while its workers run, and checks that the
// workers do not outlive it.
func TestNoOrphansAfterSupervisorKilled(t *testing.T) {
	for _, proto := range []pool.Protocol{pool.OneShot, pool.Line, pool.Framed} {
		t.Run(string(proto), func(t *testing.T) {
			cmd := testCommand("supervisor")
			cmd.Env = append(cmd.Env, "SUPERVISE_PROTOCOL="+string(proto))
			out, err := cmd.StdoutPipe()
			if err != nil {
				t.Fatal(err)
			}
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			defer cmd.Wait()
			var pids []int
			buf := make([]byte, 4096)
			var text string
			for len(pids) < 3 {
				n, err := out.Read(buf)
				if err != nil {
					cmd.Process.Kill()
					t.Fatalf("reading worker pids: %v (got %q)", err, text)
				}
				text += string(buf[:n])
				pids = nil
				for _, f := range strings.Fields(text) {
					if pid, err := strconv.Atoi(f); err == nil {
						pids = append(pids, pid)
					}
				}
			}
			cmd.Process.Kill()
			cmd.Wait()
			assertGone(t, pids)
		})
	}
}

func testCommand(mode string) *exec.Cmd {
	c := exec.Command(os.Args[0], "-test.run=^$")
	c.Env = append(os.Environ(), workerEnv+"="+mode)
	return c
}

// runSupervisor runs a pool of 3 workers that hang and ignore SIGTERM, prints
// their pids, and waits to be killed.
func runSupervisor() int {
	proto := pool.Protocol(os.Getenv("SUPERVISE_PROTOCOL"))
	// One task per worker, so that each of the three is busy.
	cfg := pool.Config{Command: workerCmd(string(proto)), Env: workerEnvFor(string(proto)), Protocol: proto, Workers: 3, Pipeline: 1}
	if proto == pool.OneShot {
		cfg.Command = append(cfg.Command, "{}")
	}
	cfg.Observer = func(e pool.Event) {
		if e.Kind == pool.EventAttemptStarted {
			fmt.Println(e.WorkerPID)
		}
	}
	p, err := pool.New(cfg)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	for i := 0; i < 3; i++ {
		p.Submit(context.Background(), pool.Task{Input: []byte("hang")})
	}
	select {}
}

func TestOOMScoreAdj(t *testing.T) {
	for _, proto := range protocols {
		t.Run(string(proto), func(t *testing.T) {
			got, _ := run(t, config(proto, 1), "oomscore")
			if out := strings.TrimSpace(string(got[1].Output)); out != "1000" {
				t.Errorf("worker oom_score_adj = %q, want 1000", out)
			}
		})
	}
}

func TestCommandNotFound(t *testing.T) {
	start := time.Now()
	_, err := pool.New(pool.Config{Command: []string{"/no/such/worker"}, Protocol: pool.Line})
	var se *pool.StartError
	if !errors.As(err, &se) {
		t.Fatalf("New() = %v, want a *StartError", err)
	}
	if d := time.Since(start); d > time.Second {
		t.Errorf("New took %v to fail", d)
	}
}

// TestDeadAtStartup: workers that die before doing any work abort the pool
// with a *StartError carrying their stderr, instead of retrying forever.
func TestDeadAtStartup(t *testing.T) {
	for _, proto := range []pool.Protocol{pool.Line, pool.Framed} {
		t.Run(string(proto), func(t *testing.T) {
			cfg := config(proto, 2)
			cfg.Env = workerEnvFor("dead-at-start")
			cfg.Stderr = io.Discard
			cfg.Retries = 5
			var inputs []string
			for i := 0; i < 100; i++ {
				inputs = append(inputs, "a")
			}
			got, p := run(t, cfg, inputs...)
			var se *pool.StartError
			if err := p.Err(); !errors.As(err, &se) || se.Cause != "exit:4" || !strings.Contains(se.Stderr, "cannot load model") {
				t.Fatalf("Err() = %v, want a *StartError with exit:4 and the worker's stderr", err)
			}
			if s := p.Stats(); len(got) != s.Submitted || s.Done != 0 {
				t.Errorf("got %d results (%d done) of %d submitted; want a result for each, none done", len(got), s.Done, s.Submitted)
			}
			t.Logf("Err() = %v", p.Err())
		})
	}
}

// TestStartupFailuresAfterWork: once a task has succeeded, workers that
// fail at start-up a few times in a row (a resource away for a moment) do
// not abort the pool: it waits longer between tries and goes on when they
// start again. They used to abort it after three, however much work was
// done. Failures in a row that last past the patience still abort it.
func TestStartupFailuresAfterWork(t *testing.T) {
	for _, c := range []struct {
		name     string
		fails    int
		patience time.Duration
		wantDone bool
	}{
		{"recovers", 5, time.Minute, true},
		{"gives up", 1000, time.Second, false},
	} {
		t.Run(c.name, func(t *testing.T) {
			defer pool.SetStartupPatience(c.patience)()
			cfg := config(pool.Line, 1)
			cfg.Env = append(workerEnvFor("flaky-start"), "FLAKY_STARTS="+filepath.Join(t.TempDir(), "starts"),
				"FLAKY_FAILS="+strconv.Itoa(c.fails))
			cfg.Stderr = io.Discard
			cfg.MaxTasksPerWorker = 2
			cfg.MaxBackoff = 200 * time.Millisecond
			inputs := []string{"a", "b", "c", "d", "e", "f"}
			start := time.Now()
			got, p := run(t, cfg, inputs...)
			done := 0
			for _, r := range got {
				if r.State == pool.Done {
					done++
				}
			}
			var se *pool.StartError
			if c.wantDone {
				if done != len(inputs) || p.Err() != nil {
					t.Errorf("%d of %d done, Err() = %v; want all done after %d failed starts", done, len(inputs), p.Err(), c.fails)
				}
			} else if !errors.As(p.Err(), &se) || !strings.Contains(se.Stderr, "license server") || done != 2 {
				t.Errorf("%d done, Err() = %v; want the 2 tasks of the first worker done, then a *StartError", done, p.Err())
			} else if d := time.Since(start); d < c.patience {
				t.Errorf("aborted after %v, before the patience of %v", d, c.patience)
			}
		})
	}
}

func TestMaxTasksPerWorker(t *testing.T) {
	for _, proto := range []pool.Protocol{pool.Line, pool.Framed} {
		t.Run(string(proto), func(t *testing.T) {
			cfg := config(proto, 1)
			cfg.MaxTasksPerWorker = 3
			got, _ := run(t, cfg, "pid", "pid", "pid", "pid", "pid", "pid", "pid")
			perPID := map[string]int{}
			for _, r := range got {
				perPID[string(r.Output)]++
			}
			if len(perPID) != 3 {
				t.Errorf("tasks per worker = %v, want 3 workers (3+3+1)", perPID)
			}
			for pid, n := range perPID {
				if n > 3 {
					t.Errorf("worker %s ran %d tasks, want at most 3", pid, n)
				}
			}
		})
	}
}

// TestNoReplacementAfterLastTask: a worker retired after its tasks
// (MaxTasksPerWorker, MaxRSS) while another still runs the last task of a
// closed pool is not replaced: nothing is left for a new one but to start
// and be retired, which used to hold the pool's end by a worker's start
// (a map worker that loads a model) or by Grace.
func TestNoReplacementAfterLastTask(t *testing.T) {
	for _, proto := range []pool.Protocol{pool.Line, pool.Framed} {
		t.Run(string(proto), func(t *testing.T) {
			t.Parallel()
			cfg := config(proto, 2)
			cfg.MaxTasksPerWorker = 1
			// The first worker ready takes the long task, and "x" can only
			// go to the other (the first has no room for a second task):
			// once "x" is done, nothing waits, unless the second worker took
			// longer than the long task to start.
			got, p := run(t, cfg, "sleep:5000", "x")
			for id, r := range got {
				if r.State != pool.Done {
					t.Errorf("task %d: %v (%v), want done", id, r.State, r.Err())
				}
			}
			if n := p.Stats().WorkersStarted; n != 2 {
				t.Errorf("WorkersStarted = %d, want 2: a worker was started after the last task was dispatched", n)
			}
		})
	}
}

// growWorker is a line worker whose memory is easy to predict (this test
// binary's is not under the race detector): "grow" keeps 60 MiB more, and
// every line is answered with the worker's pid.
const growWorker = `
import os, sys
keep = []
for line in sys.stdin:
    if line.strip() == "grow":
        keep.append(b"x" * (60 << 20))
    if line.startswith("read:"):
        with open(line.strip()[5:], "rb") as f:
            while f.read(1 << 20):
                pass
    print(os.getpid(), flush=True)
`

// TestMaxRSSNotPageCache: a worker that reads a file larger than MaxRSS
// holds little; its cgroup's page cache of that file does not make it
// bloated. It used to be replaced after every such task.
func TestMaxRSSNotPageCache(t *testing.T) {
	requireCgroups(t)
	py, err := exec.LookPath("python3")
	if err != nil {
		testenv.SkipOrFail(t, "python3 is not installed")
	}
	// 150 MiB on disk, not in the page cache: the worker's reading
	// brings it there, charged to the worker's cgroup.
	path := filepath.Join(t.TempDir(), "big")
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	chunk := bytes.Repeat([]byte("y"), 1<<20)
	for i := 0; i < 150; i++ {
		if _, err := f.Write(chunk); err != nil {
			t.Fatal(err)
		}
	}
	if err := f.Sync(); err != nil {
		t.Fatal(err)
	}
	if err := unix.Fadvise(int(f.Fd()), 0, 0, unix.FADV_DONTNEED); err != nil {
		t.Fatal(err)
	}
	f.Close()
	cfg := pool.Config{Command: []string{py, "-c", growWorker}, Protocol: pool.Line, Workers: 1, MaxRSS: 100 << 20}
	got, _ := run(t, cfg, "pid", "read:"+path, "pid")
	if p1, p3 := string(got[1].Output), string(got[3].Output); p1 != p3 {
		t.Errorf("worker pids = %s, %s: the worker was replaced after reading a file, want it kept", p1, p3)
	}
}

func TestMaxRSS(t *testing.T) {
	py, err := exec.LookPath("python3")
	if err != nil {
		testenv.SkipOrFail(t, "python3 is not installed")
	}
	var over []pool.Event
	cfg := pool.Config{Command: []string{py, "-c", growWorker}, Protocol: pool.Line, Workers: 1, MaxRSS: 100 << 20,
		Observer: func(ev pool.Event) {
			if ev.Kind == pool.EventWorkerOverMaxRSS {
				over = append(over, ev)
			}
		}}
	got, _ := run(t, cfg, "pid", "grow", "pid", "grow", "pid")
	p1, p2, p3 := string(got[1].Output), string(got[3].Output), string(got[5].Output)
	if p1 != p2 || p2 == p3 {
		t.Errorf("worker pids = %s %s %s, want the worker replaced only after it grew past 100 MiB", p1, p2, p3)
	}
	if len(over) != 0 {
		t.Errorf("%s events: %q, want none: the worker grew past MaxRSS over its tasks", pool.EventWorkerOverMaxRSS, over[0].Message)
	}
}

// TestMaxRSSBelowStart: with a MaxRSS below what a worker holds once
// started, every worker is replaced after each task, and each task waits
// for a start. That used to slow a batch down without a word; the pool
// now says so once.
func TestMaxRSSBelowStart(t *testing.T) {
	for _, proto := range []pool.Protocol{pool.Line, pool.Framed} {
		t.Run(string(proto), func(t *testing.T) {
			var over []pool.Event
			cfg := config(proto, 1)
			cfg.MaxRSS = 1 << 10 // every worker holds more
			cfg.Pipeline = 1     // one task to a worker
			cfg.Observer = func(ev pool.Event) {
				if ev.Kind == pool.EventWorkerOverMaxRSS {
					over = append(over, ev)
				}
			}
			got, p := run(t, cfg, "pid", "pid", "pid")
			pids := map[string]bool{}
			for _, r := range got {
				pids[string(r.Output)] = true
			}
			if len(pids) != 3 {
				t.Errorf("tasks ran on %d workers, want 3: one each", len(pids))
			}
			if n := p.Stats().WorkersStarted; n != 3 {
				t.Errorf("WorkersStarted = %d, want 3", n)
			}
			if len(over) != 1 {
				t.Fatalf("%d %s events, want 1", len(over), pool.EventWorkerOverMaxRSS)
			}
			if m := over[0].Message; !strings.Contains(m, "after its first task, over the max RSS of 1 KiB") {
				t.Errorf("message = %q, want it to say the worker is over the max RSS of 1 KiB after its first task", m)
			}
		})
	}
}

// TestRetiringAfterTaskError: a framed worker to be retired (over MaxRSS)
// whose last task in flight ends in a task error is retired then, and
// leaves its slot to a new worker for the tasks still queued.
func TestRetiringAfterTaskError(t *testing.T) {
	cfg := config(pool.Framed, 1)
	cfg.Pipeline, cfg.MaxRSS = 2, 1 // every worker is over 1 byte
	p, err := pool.New(cfg)
	if err != nil {
		t.Fatalf("New() = %v", err)
	}
	for _, in := range []string{"sleep:300", "fail", "x"} {
		if _, err := p.Submit(context.Background(), pool.Task{Input: []byte(in)}); err != nil {
			t.Fatalf("Submit(%q) = %v", in, err)
		}
	}
	p.Close()
	timeout := time.After(20 * time.Second)
	n := 0
	for {
		select {
		case _, ok := <-p.Results():
			if !ok {
				if n != 3 {
					t.Errorf("results = %d, want 3", n)
				}
				return
			}
			n++
		case <-timeout:
			p.Abort(errors.New("test timed out"))
			p.Abort(nil)
			for range p.Results() {
			}
			t.Fatalf("pool did not end within 20 s; %d results so far: the retiring worker kept its slot", n)
		}
	}
}

func TestBackpressure(t *testing.T) {
	cfg := config(pool.Line, 1)
	cfg.MaxPending = 5
	p, err := pool.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
		_, err := p.Submit(ctx, pool.Task{Input: []byte("x")})
		cancel()
		if err != nil {
			if !errors.Is(err, context.DeadlineExceeded) {
				t.Errorf("Submit() = %v, want a deadline error", err)
			}
			break
		}
		n++
		if n > 100 {
			t.Fatal("Submit never blocked")
		}
	}
	if n != 5 {
		t.Errorf("Submit accepted %d tasks before blocking, want MaxPending = 5", n)
	}
	p.Close()
	var ids []uint64
	for r := range p.Results() {
		ids = append(ids, r.ID)
	}
	sort.Slice(ids, func(i, j int) bool { return ids[i] < ids[j] })
	if fmt.Sprint(ids) != "[1 2 3 4 5]" {
		t.Errorf("delivered ids %v, want 1..5 with no gap", ids)
	}
	if _, err := p.Submit(context.Background(), pool.Task{}); !errors.Is(err, pool.ErrClosed) {
		t.Errorf("Submit after Close = %v, want ErrClosed", err)
	}
}

// requireCgroups skips (or, in CI, fails) a test that needs memory cgroups.
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

// TestChildOOMThenExit: the OOM killer takes a task's child, and the
// persistent worker answers the task and lives on; when it later exits 3
// during another task, that task fails with exit:3. It used to fail with
// oom: the group's OOM count was compared with its count at the worker's
// start, which the child's kill had raised.
func TestChildOOMThenExit(t *testing.T) {
	requireCgroups(t)
	cfg := config(pool.Line, 1)
	cfg.MemLimit = 100 << 20
	cfg.Pipeline = 1
	got, _ := run(t, cfg, "childhog", "a", "exit:3")
	if r := got[1]; r.State != pool.Done || !strings.Contains(string(r.Output), "signal: killed") {
		t.Errorf("task 1 = %s %q, want done with the child killed", r.State, r.Output)
	}
	if r := got[3]; r.State != pool.Failed || r.Cause() != pool.ExitCause(3) {
		t.Errorf("task 3 = %s %s, want failed exit:3", r.State, r.Cause())
	}
}

// TestRealOOMKill runs the seed scenario: 40 tasks on 4 workers, each worker
// in its own memory cgroup, task 7 allocating until the kernel OOM-kills it.
func TestRealOOMKill(t *testing.T) {
	requireCgroups(t)
	for _, proto := range protocols {
		t.Run(string(proto), func(t *testing.T) {
			cfg := config(proto, 4)
			cfg.MemLimit = 200 << 20
			var inputs []string
			for i := 1; i <= 40; i++ {
				inputs = append(inputs, "sleep:20")
			}
			inputs[6] = "hog"
			got, p := run(t, cfg, inputs...)
			if !strings.HasPrefix(p.MemoryMode(), "cgroup-") {
				t.Fatalf("MemoryMode() = %s (%s), want a cgroup per worker", p.MemoryMode(), p.MemoryModeReason())
			}
			done := 0
			for _, r := range got {
				if r.State == pool.Done {
					done++
				}
			}
			r := got[7]
			if done != 39 || r.State != pool.Failed || r.Cause() != pool.CauseOOM {
				t.Fatalf("done = %d, task 7 = %s %q, want 39 done and task 7 failed with oom", done, r.State, r.Cause())
			}
			if peak := r.Attempts[0].PeakRSS; peak < 150<<20 {
				t.Errorf("task 7 peak = %d, want near the 200 MiB limit", peak)
			}
		})
	}
}

// TestRealOOMRetry: the hog fails only on its first attempt; with retries all
// 40 tasks complete.
func TestRealOOMRetry(t *testing.T) {
	requireCgroups(t)
	cfg := config(pool.Line, 4)
	cfg.MemLimit = 200 << 20
	cfg.Retries = 1
	var inputs []string
	for i := 1; i <= 40; i++ {
		inputs = append(inputs, "sleep:20")
	}
	inputs[6] = "once:" + filepath.Join(t.TempDir(), "m") + ":hog"
	got, _ := run(t, cfg, inputs...)
	for id, r := range got {
		if r.State != pool.Done {
			t.Errorf("task %d = %s %s, want done", id, r.State, r.Cause())
		}
	}
	if r := got[7]; len(r.Attempts) != 2 || r.Attempts[0].Cause != pool.CauseOOM {
		t.Errorf("task 7 attempts = %+v, want an oom then a success", r.Attempts)
	}
}

// TestOOMBehindShell runs the seed scenario the way users meet it: the whole
// supervisor inside a 300 MiB memory cgroup (a container, a batch slot), no
// per-worker limit, and each worker behind "sh -c". The kernel kills the hog
// inside a worker; the worker's shell then exits 137. The cause must still be
// oom, read from the worker's own cgroup counter. The memory governor caps
// each worker at the budget within the 300 MiB, retries the hog alone, and
// marks it poison when it is killed again.
func TestOOMBehindShell(t *testing.T) {
	requireCgroups(t)
	m, err := memory.NewManager()
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	g, err := m.NewGroup("seed", 300<<20)
	if err != nil {
		t.Fatal(err)
	}
	text, err := superviseIn(t, g.Path(), false, workerEnv+"=seed")
	if err != nil {
		t.Fatalf("supervisor: %v; output:\n%s", err, text)
	}
	if !strings.Contains(text, "task 7 poison oom\n") || strings.Count(text, " done ") != 39 {
		t.Errorf("supervisor output:\n%s\nwant 39 tasks done and task 7 poison oom", text)
	}
	// On cgroup v1 the kill is counted in the victim's own cgroup only
	// (the worker's), so the enclosing group's counter is not checked.
	t.Logf("supervisor output ends: %s", text[strings.LastIndex(text, "task 40"):])
}

// runSeed is the supervisor of TestOOMBehindShell: 40 tasks on 4 line
// workers behind sh -c; task 7 hogs. It prints one line per task.
func runSeed() int {
	p, err := startSeed(func(*pool.Config) {})
	if err != nil {
		fmt.Println(err)
		return 1
	}
	for r := range p.Results() {
		fmt.Printf("task %d %s %s\n", r.ID, r.State, r.Cause())
	}
	fmt.Println("memory mode:", p.MemoryMode())
	return 0
}

// startSeed starts the seed scenario, changed by adjust: 40 tasks on 4 line
// workers behind sh -c, each sleeping 20 ms, except task 7, which
// allocates until it is killed.
func startSeed(adjust func(*pool.Config)) (*pool.Pool, error) {
	cfg := pool.Config{
		Command:  []string{"sh", "-c", `"$0" -test.run='^$'`, os.Args[0]},
		Env:      workerEnvFor("line"),
		Protocol: pool.Line,
		Workers:  4,
		Stderr:   io.Discard,
	}
	adjust(&cfg)
	p, err := pool.New(cfg)
	if err != nil {
		return nil, err
	}
	go func() {
		defer p.Close()
		for i := 1; i <= 40; i++ {
			in := "sleep:20"
			if i == 7 {
				in = "hog"
			}
			p.Submit(context.Background(), pool.Task{Input: []byte(in)})
		}
	}()
	return p, nil
}
