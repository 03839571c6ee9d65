package worker

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/safepool/safepool/internal/memory"
	"github.com/safepool/safepool/internal/testenv"
)

// These tests give a Session no cgroup of its own, as where cgroups cannot
// be made or written (an unprivileged user, a container with cgroupfs
// read-only), so that only the kernel log names the OOM killer's victims.
// The kernel OOM-kills a process in a memory cgroup the test makes, of
// which the Session knows nothing.

// runTreeHelper runs the helpers of these tests: "cghog DIR" says "hog
// PID" on stderr, waits 300 ms (long enough to be seen in its worker's
// tree, should its kill be read after its parent reaped it), joins the
// cgroup directory DIR and allocates until killed (1 GiB at most); "nap
// DURATION" sleeps, then exits 0.
func runTreeHelper(mode string, args []string) int {
	switch mode {
	case "cghog":
		fmt.Fprintf(os.Stderr, "hog %d\n", os.Getpid())
		time.Sleep(300 * time.Millisecond)
		err := os.WriteFile(filepath.Join(args[0], "cgroup.procs"), []byte(strconv.Itoa(os.Getpid())), 0)
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		var chunks [][]byte
		for len(chunks) < 50 {
			b := make([]byte, 20<<20)
			for i := 0; i < len(b); i += 4096 {
				b[i] = 1
			}
			chunks = append(chunks, b)
			time.Sleep(time.Millisecond)
		}
		fmt.Fprintln(os.Stderr, "hog: not killed after 1 GiB")
		return 3
	case "nap":
		d, _ := time.ParseDuration(args[0])
		time.Sleep(d)
		return 0
	}
	return 2
}

// oomSetup returns the kernel log and a memory cgroup limited to 64 MiB,
// both ended with the test. It skips (fails under CI=true) where either is
// out of reach.
func oomSetup(t *testing.T) (*memory.OOMLog, string) {
	t.Helper()
	l, err := memory.WatchOOMKills()
	if err != nil {
		testenv.SkipOrFail(t, fmt.Sprintf("the kernel log is not readable here: %v", err))
	}
	t.Cleanup(func() { l.Close() })
	m, err := memory.NewManager()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := m.Close(); err != nil {
			t.Errorf("removing the test's cgroups: %v", err)
		}
	})
	g, err := m.NewGroup("hog", 64<<20)
	if err != nil {
		testenv.SkipOrFail(t, fmt.Sprintf("cannot make a memory cgroup: %v", err))
	}
	return l, g.Path()
}

// shellConfig is a Session's configuration for `sh -c script`, run with
// $0 the test binary and $1 the cgroup directory, without a cgroup of its
// own and with the kernel log l.
func shellConfig(l *memory.OOMLog, io IO, script, cgroup string) Config {
	cfg := helperConfig("", io)
	cfg.Spec.Args = []string{"/bin/sh", "-c", script, os.Args[0], cgroup}
	cfg.Spec.Env = append(os.Environ(), "GORACE=atexit_sleep_ms=0")
	cfg.OOMLog = l
	return cfg
}

// hogStart runs the "cghog" helper from the shell.
const hogStart = helperEnv + `=cghog "$0" -test.run='^$' -- "$1"`

// TestSessionOOMInTree: the OOM killer takes the worker's child, the
// program behind "sh -c". However the worker then ends, the cause is oom,
// and the message names the child; a one-shot worker that exits 0 has
// dealt with it, and succeeds.
func TestSessionOOMInTree(t *testing.T) {
	l, cgroup := oomSetup(t)
	tests := []struct {
		name   string
		io     IO
		script string
		cause  Cause
		exit   string // in the message
	}{
		{name: "one-shot shell exits 137", io: IONone, script: hogStart + `; exit $?`,
			cause: CauseOOM, exit: "the worker exited with 137"},
		{name: "one-shot shell exits 3", io: IONone, script: hogStart + ` || exit 3`,
			cause: CauseOOM, exit: "the worker exited with 3"},
		{name: "one-shot shell exits 0", io: IONone, script: hogStart + `; exit 0`},
		{name: "line worker exits 5", io: IOLine, script: `read line; ` + hogStart + `; exit 5`,
			cause: CauseOOM, exit: "the worker exited with 5"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := shellConfig(l, tt.io, tt.script, cgroup)
			_, d := drive(t, cfg, []string{"x"}, false, time.Minute)
			m := regexp.MustCompile(`hog (\d+)`).FindStringSubmatch(d.Stderr)
			if m == nil {
				t.Fatalf("the worker's stderr %q does not give the hog's pid", d.Stderr)
			}
			if tt.cause == "" {
				if d.Cause != "" || len(d.Flights) != 1 || d.Flights[0].Outcome.Cause != "" {
					t.Fatalf("Death = %+v, want a one-shot success", d)
				}
				return
			}
			if d.Cause != tt.cause || len(d.Flights) != 1 {
				t.Fatalf("Death = cause %q with %d flights, want %q with 1 (stderr %q)", d.Cause, len(d.Flights), tt.cause, d.Stderr)
			}
			msg := d.Flights[0].Outcome.Message
			name := filepath.Base(os.Args[0])
			child := fmt.Sprintf("process %s (%s)", m[1], name[:min(len(name), 15)])
			if !strings.Contains(msg, child) || !strings.Contains(msg, tt.exit) {
				t.Errorf("Outcome.Message = %q, want it to name the %s and say %q", msg, child, tt.exit)
			}
		})
	}
}

// TestSessionOOMOutsideTree: while the worker runs, the OOM killer takes
// a process that is not the worker's, of the same name as the worker's
// child, and the worker then exits 137 of its own accord: its cause is
// exit:137, not oom.
func TestSessionOOMOutsideTree(t *testing.T) {
	l, cgroup := oomSetup(t)
	script := helperEnv + `=nap "$0" -test.run='^$' -- 2s; exit 137`
	cfg := shellConfig(l, IONone, script, cgroup)
	hogDone := make(chan error, 1)
	go func() {
		hog := exec.Command(os.Args[0], "-test.run=^$", "--", cgroup)
		hog.Env = append(os.Environ(), helperEnv+"=cghog", "GORACE=atexit_sleep_ms=0")
		err := hog.Run()
		var ee *exec.ExitError
		switch {
		case !errors.As(err, &ee) || ee.Sys().(syscall.WaitStatus).Signal() != syscall.SIGKILL:
			err = fmt.Errorf("the outside hog ended with %v, want SIGKILL", err)
		case !l.Killed(hog.Process.Pid, 5*time.Second):
			err = fmt.Errorf("the kernel log does not name the outside hog %d", hog.Process.Pid)
		default:
			err = nil
		}
		hogDone <- err
	}()
	_, d := drive(t, cfg, []string{"x"}, false, time.Minute)
	if err := <-hogDone; err != nil {
		t.Fatal(err)
	}
	if d.Cause != ExitCause(137) {
		t.Errorf("Death.Cause = %q, want exit:137 (stderr %q)", d.Cause, d.Stderr)
	}
}
