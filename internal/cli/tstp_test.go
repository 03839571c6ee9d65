package cli

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestCtrlZStopsTheRun: Ctrl-Z (SIGTSTP to safepool's process group, as a
// terminal sends it) stops the jobs as well as safepool, as it stops every
// process of a foreground pipeline; fg (SIGCONT) lets them go on, and the
// time stopped counts against no --timeout. The jobs, each in a process
// group of its own, used to run on while safepool was stopped.
func TestCtrlZStopsTheRun(t *testing.T) {
	bin := buildSafepool(t)
	dir := t.TempDir()
	a, b := filepath.Join(dir, "a"), filepath.Join(dir, "b")
	cmd := exec.Command(bin, "run", "-j", "2", "--timeout", "3s", "--", "sh", "-c",
		`for i in 1 2 3 4 5 6 7 8 9 10; do echo $i >> "$0.ticks"; sleep 0.1; done`, "{}", ":::", a, b)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	// A process group of its own, as a shell with job control makes for
	// a job, whose parent (this test) is in another group of the session.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Process.Kill()
	ticks := func(job string) int {
		b, _ := os.ReadFile(job + ".ticks")
		return bytes.Count(b, []byte("\n"))
	}
	waitFor := func(what string, cond func() bool) {
		t.Helper()
		for deadline := time.Now().Add(10 * time.Second); !cond(); time.Sleep(10 * time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatalf("%s: not within 10s; stderr:\n%s", what, stderr.String())
			}
		}
	}
	waitFor("both jobs ticking", func() bool { return ticks(a) >= 2 && ticks(b) >= 2 })
	if err := cmd.Process.Signal(syscall.SIGTSTP); err != nil {
		t.Fatal(err)
	}
	waitFor("safepool stopped", func() bool { return procState(cmd.Process.Pid) == "T" })
	time.Sleep(200 * time.Millisecond) // a tick under way lands
	na, nb := ticks(a), ticks(b)
	time.Sleep(3500 * time.Millisecond)
	if ga, gb := ticks(a), ticks(b); ga != na || gb != nb {
		t.Errorf("while safepool was stopped, the jobs ticked on: %d and %d ticks, then %d and %d 3.5s later", na, nb, ga, gb)
	}
	if err := cmd.Process.Signal(syscall.SIGCONT); err != nil {
		t.Fatal(err)
	}
	if err := cmd.Wait(); err != nil {
		t.Fatalf("safepool run: %v; stderr:\n%s", err, stderr.String())
	}
	if !strings.Contains(stderr.String(), "safepool: 2 tasks done in ") || ticks(a) != 10 || ticks(b) != 10 {
		t.Errorf("ticks %d and %d, want 10 each, and both tasks done (no timeout); stderr:\n%s", ticks(a), ticks(b), stderr.String())
	}
}

// procState returns the state letter of process pid ("R", "S", "T"...).
func procState(pid int) string {
	b, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "stat"))
	if err != nil {
		return ""
	}
	i := bytes.LastIndexByte(b, ')')
	if i < 0 || i+2 >= len(b) {
		return ""
	}
	return string(b[i+2])
}
