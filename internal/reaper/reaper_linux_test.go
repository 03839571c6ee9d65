package reaper

import (
	"errors"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/safepool/safepool/internal/memory"
	"github.com/safepool/safepool/internal/testenv"
)

// child is a process a test started, waited for by one goroutine.
type child struct {
	cmd  *exec.Cmd
	done chan struct{} // closed when Wait has returned
}

// sleeper starts "sleep 300" in a session of its own with env, ended when
// the test ends.
func sleeper(t testing.TB, env []string) *child {
	t.Helper()
	cmd := exec.Command("/bin/sleep", "300")
	cmd.Env = env
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	return start(t, cmd)
}

// start starts cmd, waits for it in a goroutine, and kills it when the
// test ends.
func start(t testing.TB, cmd *exec.Cmd) *child {
	t.Helper()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	c := &child{cmd: cmd, done: make(chan struct{})}
	go func() {
		cmd.Wait()
		close(c.done)
	}()
	t.Cleanup(func() {
		cmd.Process.Kill()
		<-c.done
	})
	return c
}

// dead reports whether process pid has exited (a zombie, or gone).
func dead(pid int) bool {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return true
	}
	f := strings.Fields(string(b[strings.LastIndexByte(string(b), ')')+1:]))
	return f[0] == "Z" || f[0] == "X"
}

// killedBySIGKILL waits, a bounded time, for c to end, and reports whether
// SIGKILL ended it.
func (c *child) killedBySIGKILL(t *testing.T) bool {
	t.Helper()
	select {
	case <-c.done:
	case <-time.After(30 * time.Second):
		t.Fatalf("process %d still runs", c.cmd.Process.Pid)
	}
	ws, ok := c.cmd.ProcessState.Sys().(syscall.WaitStatus)
	return ok && ws.Signaled() && ws.Signal() == syscall.SIGKILL
}

// noRaceSleep keeps the race detector's one-second pause at exit out of
// the guardians a test starts.
func noRaceSleep(t *testing.T) {
	if _, ok := os.LookupEnv("GORACE"); !ok {
		t.Setenv("GORACE", "atexit_sleep_ms=0")
	}
}

// startGuard starts a Guard whose guardian is running and ready: it has
// set up its signals and renamed itself.
func startGuard(t *testing.T, cgroupDir string) *Guard {
	t.Helper()
	noRaceSleep(t)
	g := Start(cgroupDir)
	if err := g.GuardianErr(); err != nil {
		t.Fatalf("Start: %v", err)
	}
	t.Cleanup(func() { g.Close() })
	comm := "/proc/" + strconv.Itoa(g.guardian.Process.Pid) + "/comm"
	deadline := time.Now().Add(30 * time.Second)
	for {
		b, _ := os.ReadFile(comm)
		if strings.TrimSpace(string(b)) == guardianName {
			return g
		}
		if time.Now().After(deadline) {
			t.Fatalf("the guardian did not start: %s is %q", comm, b)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// waitGuardian waits, a bounded time, for the guardian to exit, and returns
// its exit code, or -1 when a signal ended it.
func waitGuardian(t *testing.T, g *Guard) int {
	t.Helper()
	done := make(chan error, 1)
	go func() { done <- g.guardian.Wait() }()
	select {
	case <-done:
	case <-time.After(30 * time.Second):
		g.guardian.Process.Kill()
		<-done
		t.Fatal("the guardian did not exit within 30 s of its supervisor")
	}
	return g.guardian.ProcessState.ExitCode()
}

func TestSweepKillsOnlyMarked(t *testing.T) {
	token := newToken()
	marked := []*child{
		sleeper(t, mark(nil, token)),
		sleeper(t, mark(mark(nil, "outer"), token)), // a pool inside another's task
		sleeper(t, mark(mark(nil, token), "inner")),
	}
	others := []*child{
		sleeper(t, mark(nil, newToken())),
		sleeper(t, nil),
		sleeper(t, append(os.Environ(), "OTHER="+token)),
	}
	if err := Sweep(token); err != nil {
		t.Fatalf("Sweep() = %v", err)
	}
	for _, c := range marked {
		// At once: Sweep returns when they have exited.
		if !dead(c.cmd.Process.Pid) {
			t.Errorf("marked process %d is alive after Sweep", c.cmd.Process.Pid)
		}
	}
	for _, c := range others {
		if dead(c.cmd.Process.Pid) {
			t.Errorf("unmarked process %d (%q) was killed", c.cmd.Process.Pid, c.cmd.Env)
		}
	}
}

func TestSweepInvalidToken(t *testing.T) {
	for _, token := range []string{"", "a:b", "a\x00b"} {
		if err := Sweep(token); err == nil {
			t.Errorf("Sweep(%q) = nil, want an error", token)
		}
	}
}

// TestSweepForkingShell sweeps a shell that keeps starting processes while
// it is swept.
func TestSweepForkingShell(t *testing.T) {
	token := newToken()
	cmd := exec.Command("/bin/sh", "-c", `i=0; while [ $i -lt 3000 ]; do /bin/sleep 300 & i=$((i+1)); done; wait`)
	cmd.Env = mark(nil, token)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	sh := start(t, cmd)
	t.Cleanup(func() { Sweep(token) })
	// Sweep while it forks.
	s := sweeper{tokens: map[string]struct{}{token: {}}}
	for deadline := time.Now().Add(30 * time.Second); countMarked(&s) < 50; time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the shell did not start 50 processes in 30 s")
		}
	}
	if err := Sweep(token); err != nil {
		t.Fatalf("Sweep() = %v", err)
	}
	if n := countMarked(&s); n != 0 {
		t.Errorf("%d marked processes alive after Sweep", n)
	}
	if !sh.killedBySIGKILL(t) {
		t.Errorf("the shell ended with %v, want SIGKILL", sh.cmd.ProcessState)
	}
}

// countMarked returns how many processes s's token marks.
func countMarked(s *sweeper) int {
	names, _ := os.ReadDir("/proc")
	n := 0
	for _, e := range names {
		if pid, err := strconv.Atoi(e.Name()); err == nil && s.marked(pid) {
			n++
		}
	}
	return n
}

func TestCloseEndsMarkedAndGuardian(t *testing.T) {
	g := startGuard(t, "")
	c := sleeper(t, g.Env(nil))
	if err := g.Close(); err != nil {
		t.Fatalf("Close() = %v", err)
	}
	if !dead(c.cmd.Process.Pid) {
		t.Errorf("marked process %d is alive after Close", c.cmd.Process.Pid)
	}
	if g.guardian.ProcessState == nil {
		t.Error("Close returned before the guardian was reaped")
	}
	if err := g.Close(); err != nil {
		t.Errorf("second Close() = %v", err)
	}
}

// TestGuardianSweepsWhenSupervisorGone closes the supervisor's end of the
// guardian's pipe, as the supervisor's death does.
func TestGuardianSweepsWhenSupervisorGone(t *testing.T) {
	g := startGuard(t, "")
	c := sleeper(t, g.Env(nil))
	other := sleeper(t, mark(nil, newToken()))
	g.pipe.Close()
	if code := waitGuardian(t, g); code != 0 {
		t.Errorf("guardian exit code = %d, want 0", code)
	}
	if !c.killedBySIGKILL(t) {
		t.Errorf("marked process ended with %v, want SIGKILL", c.cmd.ProcessState)
	}
	if dead(other.cmd.Process.Pid) {
		t.Error("the guardian killed a process of another pool")
	}
}

// TestGuardianDetached checks that the guardian has a session of its own
// and outlives what would end its supervisor: a hangup, Ctrl-C, a broken
// pipe.
func TestGuardianDetached(t *testing.T) {
	g := startGuard(t, "")
	pid := g.guardian.Process.Pid
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		t.Fatal(err)
	}
	f := strings.Fields(string(b[strings.LastIndexByte(string(b), ')')+1:]))
	if f[3] != strconv.Itoa(pid) {
		t.Errorf("guardian %d is in session %s, want its own", pid, f[3])
	}
	for _, sig := range []syscall.Signal{syscall.SIGHUP, syscall.SIGINT, syscall.SIGPIPE} {
		if err := syscall.Kill(pid, sig); err != nil {
			t.Fatal(err)
		}
	}
	// An ignored signal is dropped when it is sent, and a fatal one has
	// begun to kill the process by then: the exit code tells which.
	g.pipe.Close()
	if code := waitGuardian(t, g); code != 0 {
		t.Errorf("guardian ended with %v after SIGHUP, SIGINT and SIGPIPE, want exit code 0", g.guardian.ProcessState)
	}
}

// TestGuardianOutlivesSIGTERM: SIGTERM, and the other signals that
// pkill -f safepool, kill -TERM -1 or a service manager send before SIGKILL,
// do not end the guardian. They used to: the supervisor, SIGKILLed next as
// the usual escalation goes, then left every daemon of its tasks, and as an
// unprivileged user the jobs themselves, running.
func TestGuardianOutlivesSIGTERM(t *testing.T) {
	g := startGuard(t, "")
	c := sleeper(t, g.Env(nil))
	pid := g.guardian.Process.Pid
	for _, sig := range []syscall.Signal{syscall.SIGTERM, syscall.SIGQUIT, syscall.SIGUSR1, syscall.SIGUSR2, syscall.SIGALRM} {
		if err := syscall.Kill(pid, sig); err != nil {
			t.Fatal(err)
		}
	}
	// A fatal signal has begun to kill the process by the time kill
	// returns: the exit code tells which it was.
	g.pipe.Close()
	if code := waitGuardian(t, g); code != 0 {
		t.Errorf("guardian ended with %v after SIGTERM, SIGQUIT, SIGUSR1, SIGUSR2 and SIGALRM, want exit code 0", g.guardian.ProcessState)
	}
	if !c.killedBySIGKILL(t) {
		t.Errorf("marked process ended with %v, want SIGKILL by the guardian", c.cmd.ProcessState)
	}
}

// TestGuardianRemovesCgroups kills a process that cleared its environment
// through the pool's cgroups, and removes them.
func TestGuardianRemovesCgroups(t *testing.T) {
	m, err := memory.NewManager()
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	if !m.Mode().PerWorker() {
		testenv.SkipOrFail(t, "cannot make cgroups: "+m.Reason())
	}
	grp, err := m.NewGroup("w0", 0)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("/bin/sleep", "300")
	cmd.Env = []string{}
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := grp.Prepare(cmd); err != nil {
		t.Fatal(err)
	}
	c := start(t, cmd)
	grp.Started()
	// The v1 shim joins the group before it execs sleep.
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(time.Millisecond) {
		procs, _ := os.ReadFile(grp.Path() + "/cgroup.procs")
		if strings.TrimSpace(string(procs)) == strconv.Itoa(cmd.Process.Pid) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("process %d did not join %s", cmd.Process.Pid, grp.Path())
		}
	}

	g := startGuard(t, m.Dir())
	g.pipe.Close()
	if code := waitGuardian(t, g); code != 0 {
		t.Errorf("guardian exit code = %d, want 0", code)
	}
	if !c.killedBySIGKILL(t) {
		t.Errorf("the process in the cgroup ended with %v, want SIGKILL", c.cmd.ProcessState)
	}
	if _, err := os.Stat(m.Dir()); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the guardian left %s: %v", m.Dir(), err)
	}
	if err := m.Close(); err != nil {
		t.Errorf("Manager.Close() after the guardian = %v", err)
	}
}

// TestGuardianVariableWithoutPipe runs a program that has SAFEPOOL_GUARDIAN
// in its environment but was not started as a guardian: it runs as usual.
func TestGuardianVariableWithoutPipe(t *testing.T) {
	noRaceSleep(t)
	cmd := exec.Command(os.Args[0], "-test.run=^TestUnmark$")
	cmd.Env = append(os.Environ(), envGuardian+"="+newToken())
	out, err := cmd.CombinedOutput()
	if err != nil || !strings.Contains(string(out), "PASS") {
		t.Errorf("test binary with %s set and no pipe: %v, output:\n%s", envGuardian, err, out)
	}
}

// BenchmarkSweep200 sweeps 200 marked processes.
func BenchmarkSweep200(b *testing.B) {
	token := newToken()
	for b.Loop() {
		b.StopTimer()
		for range 200 {
			sleeper(b, mark(nil, token))
		}
		b.StartTimer()
		if err := Sweep(token); err != nil {
			b.Fatal(err)
		}
	}
}
