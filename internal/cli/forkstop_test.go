package cli

import (
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestCtrlZWhileJobsStart: Ctrl-Z (SIGTSTP to safepool's process group) on
// a run that starts jobs all the time stops safepool, every time, so that
// its shell sees it stopped and fg continues it. A job still being started
// (before its exec) used to get the SIGTSTP too and stop there; the thread
// starting it waited for it for ever, safepool never stopped as a whole,
// and its shell waited for ever (with two such jobs on two CPUs, no
// goroutine of safepool ran at all). The guardian now continues such a
// child. The test is the shell: it stops and continues the run 40 times,
// and waits for each stop as a shell does.
func TestCtrlZWhileJobsStart(t *testing.T) {
	bin := buildSafepool(t)
	inputs := filepath.Join(t.TempDir(), "inputs")
	if err := os.WriteFile(inputs, []byte(strings.Repeat("x\n", 1_000_000)), 0o644); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, "run", "-j", "4", "--no-progress", "-a", inputs, "--", "true")
	// A process group of its own, as a shell with job control makes for
	// a job, whose parent (this test) is in another group of the session.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	pid := cmd.Process.Pid
	defer func() {
		_ = syscall.Kill(pid, syscall.SIGKILL)
		var ws syscall.WaitStatus
		_, _ = syscall.Wait4(pid, &ws, 0, nil)
	}()
	// wait reports how pid changed, as a shell's wait does, or false when
	// it did not within d.
	wait := func(d time.Duration) (syscall.WaitStatus, bool) {
		got := make(chan syscall.WaitStatus, 1)
		go func() { // ends when pid changes, or when the deferred kill ends it
			var ws syscall.WaitStatus
			if _, err := syscall.Wait4(pid, &ws, syscall.WUNTRACED, nil); err == nil {
				got <- ws
			}
		}()
		select {
		case ws := <-got:
			return ws, true
		case <-time.After(d):
			return 0, false
		}
	}
	time.Sleep(time.Second) // jobs starting
	for i := 0; i < 40; i++ {
		if err := syscall.Kill(-pid, syscall.SIGTSTP); err != nil {
			t.Fatal(err)
		}
		ws, ok := wait(30 * time.Second)
		if !ok {
			t.Fatalf("stop %d: safepool not stopped within 30s: state %q, threads %s", i+1, procState(pid), threadStates(pid))
		}
		if !ws.Stopped() {
			t.Fatalf("stop %d: safepool %v, want stopped", i+1, ws)
		}
		if err := syscall.Kill(-pid, syscall.SIGCONT); err != nil {
			t.Fatal(err)
		}
		time.Sleep(time.Duration(20+i%7*5) * time.Millisecond)
	}
}

// threadStates lists the states of pid's threads.
func threadStates(pid int) string {
	dir := filepath.Join("/proc", strconv.Itoa(pid), "task")
	ents, _ := os.ReadDir(dir)
	var s []string
	for _, e := range ents {
		tid, _ := strconv.Atoi(e.Name())
		s = append(s, procState(tid))
	}
	return strings.Join(s, " ")
}
