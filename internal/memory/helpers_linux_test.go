package memory

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/procfs"
	"golang.org/x/sys/unix"
)

// requireCgroups returns a Manager with working cgroups, closed when the
// test ends. Without cgroups the test is skipped, or fails under CI=true.
func requireCgroups(t *testing.T) *Manager {
	t.Helper()
	m, err := NewManager()
	if err != nil {
		t.Fatalf("NewManager() = %v", err)
	}
	if !m.Mode().PerWorker() {
		if os.Getenv("CI") == "true" {
			t.Fatalf("cgroups are required under CI=true: %s", m.Reason())
		}
		t.Skipf("cgroups are not writable here: %s", m.Reason())
	}
	t.Cleanup(func() {
		if err := m.Close(); err != nil {
			t.Errorf("Manager.Close() = %v", err)
		}
	})
	t.Logf("manager: %s", m.Reason())
	return m
}

// requireKernelLog returns an OOMLog, closed when the test ends. Without
// /dev/kmsg the test is skipped, or fails under CI=true.
func requireKernelLog(t *testing.T) *OOMLog {
	t.Helper()
	l, err := WatchOOMKills()
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("the kernel log is required under CI=true: %v", err)
		}
		t.Skipf("the kernel log is not readable here: %v", err)
	}
	t.Cleanup(func() { l.Close() })
	return l
}

// helperCommand returns a command that runs this test binary as the helper
// mode, with argv {binary, args...}.
func helperCommand(t *testing.T, mode string, args ...string) *exec.Cmd {
	t.Helper()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(exe, args...)
	cmd.Env = append(os.Environ(), helperEnv+"="+mode)
	if _, ok := os.LookupEnv("GORACE"); !ok {
		// Under -race, a process sleeps a second at exit by default.
		cmd.Env = append(cmd.Env, "GORACE=atexit_sleep_ms=0")
	}
	return cmd
}

// waitTimeout waits for cmd, killing it if it outlives d.
func waitTimeout(t *testing.T, cmd *exec.Cmd, d time.Duration) error {
	t.Helper()
	timer := time.AfterFunc(d, func() { cmd.Process.Kill() })
	defer timer.Stop()
	return cmd.Wait()
}

// signalOf returns the signal that ended a process, or -1.
func signalOf(err error) syscall.Signal {
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		if ws, ok := ee.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
			return ws.Signal()
		}
	}
	return -1
}

// report is what the "report" helper prints.
type report struct {
	Args        []string
	Env         []string
	Cgroup      string
	OOMScoreAdj string
}

// runHelper runs a helper process mode and returns its exit code.
func runHelper(mode string, args []string) int {
	switch mode {
	case "exit":
		return 0
	case "sleep":
		time.Sleep(time.Hour)
		return 0
	case "report":
		cg, _ := os.ReadFile("/proc/self/cgroup")
		adj, _ := os.ReadFile("/proc/self/oom_score_adj")
		json.NewEncoder(os.Stdout).Encode(report{
			Args:        os.Args,
			Env:         os.Environ(),
			Cgroup:      string(cg),
			OOMScoreAdj: strings.TrimSpace(string(adj)),
		})
		return 0
	case "cghog":
		// Join the cgroup directory args[0], then hog.
		err := os.WriteFile(filepath.Join(args[0], "cgroup.procs"), []byte(strconv.Itoa(os.Getpid())), 0)
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		return runHelper("hog", nil)
	case "parent":
		// Run the helper args[0] with args[1:] as a child, print "child
		// PID", and "ended SIGNAL" or "ended CODE" when it has ended and
		// has been left unreaped for half a second (its kill, if any, is
		// read while it is still there); exit when stdin closes.
		exe, _ := os.Executable()
		child := exec.Command(exe, args[1:]...)
		child.Env = append(os.Environ(), helperEnv+"="+args[0])
		child.Stderr = os.Stderr
		child.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
		if err := child.Start(); err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		fmt.Printf("child %d\n", child.Process.Pid)
		var info unix.Siginfo
		unix.Waitid(unix.P_PID, child.Process.Pid, &info, unix.WEXITED|unix.WNOWAIT, nil)
		time.Sleep(500 * time.Millisecond)
		err := child.Wait()
		if sig := signalOf(err); sig > 0 {
			fmt.Printf("ended %s\n", sig)
		} else {
			fmt.Printf("ended %d\n", child.ProcessState.ExitCode())
		}
		io.Copy(io.Discard, os.Stdin)
		return 0
	case "watchlog":
		// Start reading the kernel log, and say how that went.
		l, err := WatchOOMKills()
		if err != nil {
			fmt.Println(err)
			return 0
		}
		l.Close()
		fmt.Println("watching")
		return 0
	case "nap":
		// Sleep args[0] (a duration), then exit.
		d, _ := time.ParseDuration(args[0])
		time.Sleep(d)
		return 0
	case "hog":
		// Allocate and touch 20 MiB at a time. Stop at 1 GiB, so that a
		// limit that does not hold fails the test rather than the host.
		var chunks [][]byte
		for len(chunks) < 50 {
			b := make([]byte, 20*mib)
			for i := 0; i < len(b); i += 4096 {
				b[i] = 1
			}
			chunks = append(chunks, b)
			time.Sleep(time.Millisecond)
		}
		fmt.Fprintln(os.Stderr, "hog: not killed after 1 GiB")
		return 3
	case "alloc":
		// Hold n MiB of touched memory until killed.
		n, _ := strconv.Atoi(args[0])
		b := make([]byte, n*mib)
		for i := 0; i < len(b); i += 4096 {
			b[i] = 1
		}
		fmt.Println("ready")
		time.Sleep(time.Hour)
		b[0] = 2
		return 0
	case "shm":
		// Map the file args[0] shared, read every page, and hold it until
		// killed.
		f, err := os.Open(args[0])
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		st, _ := f.Stat()
		b, err := syscall.Mmap(int(f.Fd()), 0, int(st.Size()), syscall.PROT_READ, syscall.MAP_SHARED)
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		var sum byte
		for i := 0; i < len(b); i += 4096 {
			sum += b[i]
		}
		fmt.Println("ready", sum)
		time.Sleep(time.Hour)
		return 0
	case "scanloop":
		// Scan for the descendants of the pid args[1] ("self": this
		// process) within the cgroup dir args[0] ("": in all of /proc),
		// and sample the memory as the governor does, args[2]
		// times, each scan a new one.
		pid, _ := strconv.Atoi(args[1])
		if args[1] == "self" {
			pid = os.Getpid()
		}
		n, _ := strconv.Atoi(args[2])
		procScans.within(args[0])
		sensor := NewSensor()
		for i := 0; i < n; i++ {
			procScans.mu.Lock()
			procScans.last = nil
			procScans.mu.Unlock()
			if tree, _, err := descendantsIn(pid); err != nil || len(tree) != 1 {
				fmt.Fprintf(os.Stderr, "scan %d: descendants(%d) = %v, %v\n", i, pid, tree, err)
				return 1
			}
			if _, err := sensor.CgroupUsed(); err != nil {
				fmt.Fprintln(os.Stderr, err)
				return 1
			}
			if _, err := sensor.HostUsed(); err != nil {
				fmt.Fprintln(os.Stderr, err)
				return 1
			}
			sensor.Pressure() // PSI may be missing
		}
		return 0
	case "tree":
		// Start an "alloc" child, report its pid, and kill it when stdin
		// closes.
		exe, _ := os.Executable()
		child := exec.Command(exe, args...)
		child.Env = append(os.Environ(), helperEnv+"=alloc")
		child.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
		out, _ := child.StdoutPipe()
		if err := child.Start(); err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		bufio.NewReader(out).ReadString('\n')
		fmt.Printf("ready %d\n", child.Process.Pid)
		io.Copy(io.Discard, os.Stdin)
		child.Process.Kill()
		child.Wait()
		return 0
	}
	if code, ok := runCgroupHelper(mode, args); ok {
		return code
	}
	fmt.Fprintf(os.Stderr, "unknown helper %q\n", mode)
	return 2
}

// afterTests reports cgroups or child processes that the tests left.
func afterTests() error {
	var errs []error
	if loc, err := locate(); err == nil {
		entries, _ := os.ReadDir(loc.dir)
		for _, e := range entries {
			if pid, ok := parseParentName(e.Name()); ok && pid == os.Getpid() {
				errs = append(errs, fmt.Errorf("cgroup %s", filepath.Join(loc.dir, e.Name())))
			}
		}
	}
	procs, err := procfs.AllProcs()
	if err != nil {
		return err
	}
	for _, p := range procs {
		if st, err := p.Stat(); err == nil && st.PPID == os.Getpid() {
			errs = append(errs, fmt.Errorf("child process %d (%s, state %s)", p.PID, st.Comm, st.State))
		}
	}
	return errors.Join(errs...)
}
