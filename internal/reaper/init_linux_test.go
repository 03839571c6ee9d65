package reaper_test

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/safepool/safepool/internal/reaper"
	"github.com/safepool/safepool/internal/testenv"
)

// initMain runs "init N STATUS" as a supervisor that may be process 1 of a
// pid namespace, as cmd/safepool's main does: under InitShim, it leaves N
// orphans that end at once (as the daemons of tasks do, and the processes
// a sweep kills), says "left", waits for end of file on stdin, and exits
// with STATUS.
func initMain(args []string) int {
	if code, ran := reaper.InitShim(); ran {
		return code
	}
	n, _ := strconv.Atoi(args[0])
	status, _ := strconv.Atoi(args[1])
	for range n {
		// The shell forks true and exits: true's parent is then
		// process 1.
		if err := exec.Command("sh", "-c", "true & exit 0").Run(); err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 2
		}
	}
	fmt.Println("left")
	bufio.NewReader(os.Stdin).ReadString('\n')
	return status
}

// TestInitReapsOrphans: a supervisor that is process 1 of its pid
// namespace (a container without an init) leaves no zombies behind the
// orphans of its tasks, and exits with its own status. As process 1 it
// inherited every orphan and never reaped them: 50 orphans left 50 zombies.
func TestInitReapsOrphans(t *testing.T) {
	const orphans = 50
	cmd := exec.Command(os.Args[0], "reapertest-init", strconv.Itoa(orphans), "7")
	cmd.SysProcAttr = &syscall.SysProcAttr{Cloneflags: syscall.CLONE_NEWPID}
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	in, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		if errors.Is(err, syscall.EPERM) || errors.Is(err, syscall.EINVAL) {
			testenv.SkipOrFail(t, fmt.Sprintf("cannot make a pid namespace: %v", err))
		}
		t.Fatal(err)
	}
	defer cmd.Process.Kill()
	line, err := bufio.NewReader(out).ReadString('\n')
	if line != "left\n" {
		t.Fatalf("read %q, %v; stderr:\n%s", line, err, stderr.String())
	}
	// The orphans have ended by now, or do soon; each is reaped, or is a
	// zombie, a child of process 1.
	var zombies int
	for deadline := time.Now().Add(2 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		zombies = zombieChildren(t, cmd.Process.Pid)
		if zombies == 0 || time.Now().After(deadline) {
			break
		}
	}
	if zombies > 0 {
		t.Errorf("process 1 of the namespace has %d zombie children, after %d orphans", zombies, orphans)
	}
	in.Close()
	err = cmd.Wait()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != 7 {
		t.Errorf("exit: %v, want status 7; stderr:\n%s", err, stderr.String())
	}
}

// zombieChildren counts the zombies whose parent is pid.
func zombieChildren(t *testing.T, pid int) int {
	t.Helper()
	names, err := os.ReadDir("/proc")
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, e := range names {
		if _, err := strconv.Atoi(e.Name()); err != nil {
			continue
		}
		b, err := os.ReadFile("/proc/" + e.Name() + "/stat")
		if err != nil {
			continue
		}
		// After the command's name in parentheses: state, ppid.
		f := strings.Fields(string(b[bytes.LastIndexByte(b, ')')+1:]))
		if len(f) > 1 && f[0] == "Z" && f[1] == strconv.Itoa(pid) {
			n++
		}
	}
	return n
}
