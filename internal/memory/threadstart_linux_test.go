package memory

import (
	"bytes"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// requireThreadStart returns a cgroup v1 Manager whose workers start from a
// thread placed in their group; elsewhere the test is skipped (a cgroup v2
// host has no use for it).
func requireThreadStart(t *testing.T) *Manager {
	t.Helper()
	m := requireCgroups(t)
	if m.Mode() != ModeCgroupV1 {
		t.Skipf("thread start is for cgroup v1; this host: %s", m.Reason())
	}
	if err := m.Detection().ShimStart; err != nil {
		// Such as under a tracer (strace, a debugger) or a seccomp filter
		// that forbids ptrace.
		if os.Getenv("CI") == "true" {
			t.Fatalf("workers start through the shim here, and thread start is required under CI=true: %v", err)
		}
		t.Skipf("workers start through the shim here: %v", err)
	}
	return m
}

// threadCgroups returns the memory cgroup of each thread of this process.
func threadCgroups(t *testing.T) map[string]string {
	t.Helper()
	dirs, err := filepath.Glob("/proc/self/task/*/cgroup")
	if err != nil {
		t.Fatal(err)
	}
	got := make(map[string]string)
	for _, f := range dirs {
		b, err := os.ReadFile(f)
		if err != nil {
			continue // the thread ended
		}
		got[filepath.Base(filepath.Dir(f))] = cgroupLine(string(b), ModeCgroupV1)
	}
	return got
}

// TestStartFromThread: the worker's own program finds itself in its group,
// with oom_score_adj 1000, started with one exec (no shim), and every thread of the supervisor is
// back in the supervisor's cgroup afterwards.
func TestStartFromThread(t *testing.T) {
	m := requireThreadStart(t)
	own := cgroupLine(mustRead(t, "/proc/self/cgroup"), ModeCgroupV1)
	// The worker's score is written while it ends its exec: never while it
	// still shares the supervisor's memory, or the kernel would give the
	// supervisor the same score.
	score := mustRead(t, "/proc/self/oom_score_adj")
	defer func() {
		if got := mustRead(t, "/proc/self/oom_score_adj"); got != score {
			t.Errorf("supervisor oom_score_adj after the starts = %q, want %q as before", got, score)
		}
	}()
	for i := range 20 {
		g, err := m.NewGroup("thread", 64*mib)
		if err != nil {
			t.Fatal(err)
		}
		cmd := helperCommand(t, "report", trickyArgs...)
		want := cmd.Path
		cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
		var stdout, stderr bytes.Buffer
		cmd.Stdout, cmd.Stderr = &stdout, &stderr
		if err := g.Start(cmd); err != nil {
			t.Fatal(err)
		}
		if cmd.Path != want {
			t.Fatalf("Start ran %s, want %s itself (no shim)", cmd.Path, want)
		}
		if err := waitTimeout(t, cmd, time.Minute); err != nil {
			t.Fatalf("report helper: %v; stderr: %s", err, stderr.String())
		}
		var r report
		if err := json.Unmarshal(stdout.Bytes(), &r); err != nil {
			t.Fatalf("report %q: %v", stdout.String(), err)
		}
		if line := cgroupLine(r.Cgroup, ModeCgroupV1); line == "" || !strings.HasSuffix(g.Path(), line) {
			t.Fatalf("start %d: worker /proc/self/cgroup = %q, want %s", i, r.Cgroup, g.Path())
		}
		// Raised before the program's first instruction, so that nothing
		// it forks keeps the supervisor's.
		if r.OOMScoreAdj != "1000" {
			t.Fatalf("start %d: worker oom_score_adj at its start = %q, want 1000", i, r.OOMScoreAdj)
		}
		for tid, cg := range threadCgroups(t) {
			if cg != own {
				t.Fatalf("start %d: supervisor thread %s is in %s, want %s", i, tid, cg, own)
			}
		}
		if err := g.Remove(); err != nil {
			t.Fatal(err)
		}
	}
}

// TestStartThreadHomeBeforeWorkerRuns: by the time the worker's program
// may run, no thread of the supervisor is left in the worker's group,
// where the kernel would count it among the candidates of the group's OOM
// kill (scored by the supervisor's whole memory).
func TestStartThreadHomeBeforeWorkerRuns(t *testing.T) {
	m := requireThreadStart(t)
	g, err := m.NewGroup("home", 64*mib)
	if err != nil {
		t.Fatal(err)
	}
	defer g.Remove()
	var seen []string
	beforeRelease = func(dir string) {
		b, err := os.ReadFile(filepath.Join(dir, "tasks"))
		if err != nil {
			seen = append(seen, "error: "+err.Error())
			return
		}
		for _, tid := range strings.Fields(string(b)) {
			if _, err := os.Stat("/proc/self/task/" + tid); err == nil {
				seen = append(seen, tid)
			}
		}
	}
	defer func() { beforeRelease = nil }()
	for range 5 {
		cmd := exec.Command("/bin/true")
		cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
		if err := g.Start(cmd); err != nil {
			t.Fatal(err)
		}
		if err := waitTimeout(t, cmd, time.Minute); err != nil {
			t.Fatal(err)
		}
	}
	if len(seen) > 0 {
		t.Errorf("supervisor threads in the worker's group when its program could run: %v", seen)
	}
}

// TestKillSparesSupervisorThread: a slot's cleanup (Group.Kill) never
// signals the supervisor, even while one of its threads is in the group,
// and it kills the group's other processes.
func TestKillSparesSupervisorThread(t *testing.T) {
	m := requireThreadStart(t)
	g, err := m.NewGroup("spare", 64*mib)
	if err != nil {
		t.Fatal(err)
	}
	defer g.Remove()
	cmd := exec.Command("/bin/sleep", "60")
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true, Pdeathsig: syscall.SIGKILL}
	if err := g.Start(cmd); err != nil {
		t.Fatal(err)
	}
	waited := false
	defer func() {
		if !waited { // a failed check: end and reap the sleeper anyway
			cmd.Process.Kill()
			cmd.Wait()
		}
	}()
	errc := make(chan error, 1)
	// kill runs on a locked thread that is not the leader: a thread that
	// ends while locked takes nothing of the process with it.
	kill := func() {
		runtime.LockOSThread()
		if err := placeThreadIn(g.Path()); err != nil {
			runtime.UnlockOSThread()
			errc <- err
			return
		}
		kerr := g.Kill()
		if err := placeThreadIn(m.Detection().Own); err != nil {
			errc <- err
			return // ends the thread, which leaves the group with it
		}
		runtime.UnlockOSThread()
		errc <- kerr
	}
	go offLeader(kill)
	if err := <-errc; err != nil {
		t.Fatalf("Kill with a supervisor thread in the group = %v", err)
	}
	err = waitTimeout(t, cmd, time.Minute)
	waited = true
	if signalOf(err) != syscall.SIGKILL {
		t.Errorf("worker ended with %v, want SIGKILL", err)
	}
	// Still here: the supervisor was not signalled.
}

// TestStartFromThreadOOM: a worker started from a thread is OOM-killed in
// its group, which counts the kill, as under the shim.
func TestStartFromThreadOOM(t *testing.T) {
	m := requireThreadStart(t)
	const limit = 64 * mib
	g, err := m.NewGroup("hog", limit)
	if err != nil {
		t.Fatal(err)
	}
	defer g.Remove()
	cmd := helperCommand(t, "hog")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := g.Start(cmd); err != nil {
		t.Fatal(err)
	}
	err = waitTimeout(t, cmd, time.Minute)
	if sig := signalOf(err); sig != syscall.SIGKILL {
		t.Fatalf("hog ended with %v, want SIGKILL; stderr: %s", err, stderr.String())
	}
	if n, err := g.OOMKills(); err != nil || n != 1 {
		t.Errorf("OOMKills() = %d, %v, want 1", n, err)
	}
}

// TestThreadChargeStaysWithLeader checks what thread start relies on:
// under cgroup v1, memory that a thread of the supervisor touches while it
// sits in another memory cgroup is charged to the cgroup of the process's
// leader, not to the thread's.
func TestThreadChargeStaysWithLeader(t *testing.T) {
	m := requireThreadStart(t)
	g, err := m.NewGroup("charge", 0)
	if err != nil {
		t.Fatal(err)
	}
	defer g.Remove()
	home := m.Detection().Own
	type result struct {
		usage int64
		err   error
	}
	done := make(chan result, 1)
	go offLeader(func() {
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		if err := placeThreadIn(g.Path()); err != nil {
			done <- result{err: err}
			return
		}
		b := make([]byte, 64*mib)
		for i := 0; i < len(b); i += 4096 {
			b[i] = 1
		}
		u, err := g.Usage()
		runtime.KeepAlive(b)
		if berr := placeThreadIn(home); berr != nil {
			panic(berr) // no thread may stay behind in the group
		}
		done <- result{u, err}
	})
	r := <-done
	if r.err != nil {
		t.Fatal(r.err)
	}
	if r.usage > 16*mib {
		t.Errorf("group usage after a thread in it touched 64 MiB = %d, want the pages charged to the leader's cgroup (under 16 MiB)", r.usage)
	}
}

// offLeader runs f on a goroutine whose thread is not the process's
// leader, which must never move between cgroups: if the calling goroutine
// runs on the leader, it holds that thread while f runs on another one.
// f locks its own thread as it needs.
func offLeader(f func()) {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	if unix.Gettid() != unix.Getpid() {
		f()
		return
	}
	done := make(chan struct{})
	go func() { defer close(done); f() }()
	<-done
}

// placeThreadIn moves the calling thread into the v1 cgroup dir.
func placeThreadIn(dir string) error {
	tasks, err := unix.Open(filepath.Join(dir, "tasks"), unix.O_WRONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer unix.Close(tasks)
	return placeThread(tasks, dir)
}

func mustRead(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// TestStartFallsBackToShim: where a thread cannot start workers (the probe
// failed, or a thread could not leave a group), Start runs the worker
// through the shim, still inside its group.
func TestStartFallsBackToShim(t *testing.T) {
	m := requireThreadStart(t)
	m.threadStart.Store(false)
	defer m.threadStart.Store(true)
	g, err := m.NewGroup("shim", 64*mib)
	if err != nil {
		t.Fatal(err)
	}
	defer g.Remove()
	cmd := helperCommand(t, "report")
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := g.Start(cmd); err != nil {
		t.Fatal(err)
	}
	if base := filepath.Base(cmd.Path); base != "sh" && base != "bash" {
		t.Errorf("Start ran %s, want the shim's shell", cmd.Path)
	}
	if err := waitTimeout(t, cmd, time.Minute); err != nil {
		t.Fatalf("report helper: %v; stderr: %s", err, stderr.String())
	}
	var r report
	if err := json.Unmarshal(stdout.Bytes(), &r); err != nil {
		t.Fatalf("report %q: %v", stdout.String(), err)
	}
	if line := cgroupLine(r.Cgroup, ModeCgroupV1); line == "" || !strings.HasSuffix(g.Path(), line) {
		t.Errorf("worker /proc/self/cgroup = %q, want %s", r.Cgroup, g.Path())
	}
	if r.OOMScoreAdj != "1000" {
		t.Errorf("worker oom_score_adj = %q, want 1000", r.OOMScoreAdj)
	}
}
