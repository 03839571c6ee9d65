package cli

import (
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// TestJobReadingTheTerminal: a job that reads the terminal is stopped by
// the kernel (its process group is in the terminal's background), and the
// run waits for it; safepool says so, naming the process, within a few
// seconds. The run used to wait without a word, as if hung.
func TestJobReadingTheTerminal(t *testing.T) {
	ptmx, err := os.OpenFile("/dev/ptmx", os.O_RDWR|syscall.O_NOCTTY, 0)
	if err != nil {
		t.Skipf("no terminal to run under: %v", err)
	}
	defer ptmx.Close()
	if err := unix.IoctlSetPointerInt(int(ptmx.Fd()), unix.TIOCSPTLCK, 0); err != nil {
		t.Skipf("unlockpt: %v", err)
	}
	n, err := unix.IoctlGetInt(int(ptmx.Fd()), unix.TIOCGPTN)
	if err != nil {
		t.Skipf("ptsname: %v", err)
	}
	pts, err := os.OpenFile("/dev/pts/"+strconv.Itoa(n), os.O_RDWR|syscall.O_NOCTTY, 0)
	if err != nil {
		t.Skipf("open the terminal: %v", err)
	}
	defer pts.Close()
	go func() { // ends when ptmx is closed
		b := make([]byte, 4096)
		for {
			if _, err := ptmx.Read(b); err != nil {
				return
			}
		}
	}()

	bin := buildSafepool(t)
	cmd := exec.Command(bin, "run", "--no-progress", "--timeout", "60s", "--timeout-grace", "0s", "--",
		"sh", "-c", `read x </dev/tty; echo "read $x"`, "{}", ":::", "a")
	// A session of its own, whose controlling terminal is pts, as a login
	// shell's: safepool's stdin.
	cmd.Stdin = pts
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true, Setctty: true, Ctty: 0}
	var stderr syncBuffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Process.Kill()
	deadline := time.Now().Add(20 * time.Second)
	for !strings.Contains(stderr.String(), "of a job is stopped, most likely by the terminal") {
		if time.Now().After(deadline) {
			t.Fatalf("no word within 20s of the job stopped reading the terminal; stderr:\n%s", stderr.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	err = cmd.Wait()
	if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != exitAborted {
		t.Errorf("safepool run: %v, want exit status %d; stderr:\n%s", err, exitAborted, stderr.String())
	}
	if c := strings.Count(stderr.String(), "most likely by the terminal"); c != 1 {
		t.Errorf("the stopped process is told of %d times, want once; stderr:\n%s", c, stderr.String())
	}
}
