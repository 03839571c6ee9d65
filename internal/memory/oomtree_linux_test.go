package memory

import (
	"bufio"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/safepool/safepool/internal/testenv"
)

// These tests OOM-kill real processes in a memory cgroup the test makes,
// and ask the kernel log, through a Watch's Tree, whether the victim was a
// process of a watched tree.

// watchedParent starts the "parent" helper, whose child runs the helper
// child with args, and a Watch on it. It returns the Watch, the child's
// pid, the helper's stdout (next comes its "ended" line) and a function
// that ends the helper.
func watchedParent(t *testing.T, child string, args ...string) (*Watch, int, *bufio.Reader, func()) {
	t.Helper()
	cmd := helperCommand(t, "parent", append([]string{child}, args...)...)
	cmd.Stderr = os.Stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	w := StartWatch(cmd.Process.Pid, 0)
	end := func() {
		stdin.Close()
		waitTimeout(t, cmd, 10*time.Second)
		w.Stop()
	}
	r := bufio.NewReader(out)
	line, err := r.ReadString('\n')
	var pid int
	if _, serr := fmt.Sscanf(line, "child %d", &pid); err != nil || serr != nil {
		end()
		t.Fatalf("parent helper said %q, %v; want its child's pid", line, err)
	}
	return w, pid, r, end
}

// readEnded reads the parent helper's "ended ..." line.
func readEnded(t *testing.T, r *bufio.Reader) string {
	t.Helper()
	line, err := r.ReadString('\n')
	if err != nil || !strings.HasPrefix(line, "ended ") {
		t.Fatalf("parent helper said %q, %v; want its child's end", line, err)
	}
	return strings.TrimSpace(strings.TrimPrefix(line, "ended "))
}

// helperComm is the name the kernel gives the test binary's processes.
func helperComm() string {
	name := filepath.Base(os.Args[0])
	return name[:min(len(name), 15)]
}

// TestKilledInTreeChild: the OOM killer takes the child of a watched
// process, in a cgroup the watch knows nothing of; the kernel log names it,
// and it is the tree's, by its ancestry: its parent leaves it unreaped for
// a while.
func TestKilledInTreeChild(t *testing.T) {
	l := requireKernelLog(t)
	g, err := requireCgroups(t).NewGroup("tree-hog", 64*mib)
	if err != nil {
		t.Fatal(err)
	}
	since := time.Now()
	w, child, out, end := watchedParent(t, "cghog", g.Path())
	defer end()
	if got := readEnded(t, out); got != "killed" {
		t.Fatalf("the child ended %q, want killed (SIGKILL)", got)
	}
	v, ok := l.KilledInTree(w.Tree(), since, 5*time.Second)
	if !ok || v.PID != child || v.Comm != helperComm() {
		t.Fatalf("KilledInTree() = %+v, %v; want the child %d (%s)", v, ok, child, helperComm())
	}
}

// TestKilledInTreeOutside: a process outside the watched tree, with the
// same name as the tree's child, is OOM-killed while the tree runs; that
// kill is not the tree's.
func TestKilledInTreeOutside(t *testing.T) {
	l := requireKernelLog(t)
	g, err := requireCgroups(t).NewGroup("outside-hog", 64*mib)
	if err != nil {
		t.Fatal(err)
	}
	since := time.Now()
	w, _, out, end := watchedParent(t, "nap", "3s")
	defer end()
	hog := helperCommand(t, "cghog", g.Path())
	if err := hog.Start(); err != nil {
		t.Fatal(err)
	}
	if sig := signalOf(waitTimeout(t, hog, time.Minute)); sig != syscall.SIGKILL {
		t.Fatalf("the outside hog ended by %v, want SIGKILL", sig)
	}
	if !l.Killed(hog.Process.Pid, 5*time.Second) {
		t.Fatalf("the kernel log does not name the outside hog %d", hog.Process.Pid)
	}
	if v, ok := l.KilledInTree(w.Tree(), since, 0); ok {
		t.Errorf("KilledInTree() = %+v, true for a process outside the tree, want false", v)
	}
	if got := readEnded(t, out); got != "0" {
		t.Errorf("the tree's child ended %q, want 0", got)
	}
}

// TestKilledInTreeReusedPid: a child of the watched tree ends; its pid is
// then given (through ns_last_pid) to a process outside the tree, which
// the OOM killer takes while the tree runs. The start time tells them
// apart.
func TestKilledInTreeReusedPid(t *testing.T) {
	l := requireKernelLog(t)
	g, err := requireCgroups(t).NewGroup("reuse-hog", 64*mib)
	if err != nil {
		t.Fatal(err)
	}
	// Another process may take the pid first, on a busy machine: then
	// the tree starts again.
	for try := 0; try < 10; try++ {
		if reusedPid(t, l, g.Path()) {
			return
		}
	}
	t.Fatalf("could not give a pid the tree had used to another process")
}

// reusedPid runs TestKilledInTreeReusedPid once, and reports false if the
// pid went to another process first.
func reusedPid(t *testing.T, l *OOMLog, cgroup string) bool {
	since := time.Now()
	w, child, out, end := watchedParent(t, "nap", "300ms")
	defer end()
	if got := readEnded(t, out); got != "0" {
		t.Fatalf("the tree's child ended %q, want 0", got)
	}
	if _, ok := w.Tree().members[child]; !ok {
		t.Fatalf("Tree() = %+v does not hold the child %d, which lived 300 ms", w.Tree(), child)
	}
	hog := startWithPid(t, child, "cghog", cgroup)
	if hog == nil {
		return false
	}
	var info unix.Siginfo
	// Waited for without being reaped: its pid stays its own.
	if err := unix.Waitid(unix.P_PID, hog.Pid, &info, unix.WEXITED|unix.WNOWAIT, nil); err != nil {
		t.Fatal(err)
	}
	if !l.Killed(child, 5*time.Second) {
		t.Fatalf("the kernel log does not name the outside hog %d", child)
	}
	if v, ok := l.KilledInTree(w.Tree(), since, 0); ok {
		t.Errorf("KilledInTree() = %+v, true for a process that took a pid the tree had used, want false", v)
	}
	if _, err := hog.Wait(); err != nil {
		t.Error(err)
	}
	return true
}

// startWithPid starts the helper mode with args as process pid, by setting
// the pid namespace's last pid just before the fork (root only), or
// returns nil if another process took pid first.
func startWithPid(t *testing.T, pid int, mode string, args ...string) *os.Process {
	t.Helper()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	attr := &os.ProcAttr{Env: append(os.Environ(), helperEnv+"="+mode, "GORACE=atexit_sleep_ms=0"),
		Files: []*os.File{nil, os.Stdout, os.Stderr}}
	for try := 0; try < 20; try++ {
		if _, err := os.Stat("/proc/" + strconv.Itoa(pid)); err == nil {
			return nil // taken
		}
		if err := os.WriteFile("/proc/sys/kernel/ns_last_pid", []byte(strconv.Itoa(pid-1)), 0); err != nil {
			testenv.SkipOrFail(t, fmt.Sprintf("cannot choose a pid: %v", err))
		}
		p, err := os.StartProcess(exe, append([]string{exe}, args...), attr)
		if err != nil {
			t.Fatal(err)
		}
		if p.Pid == pid {
			return p
		}
		p.Kill()
		p.Wait()
	}
	return nil
}

// TestWatchOOMKillsPidNamespace: in a pid namespace of its own, the kernel
// log's pids are not the supervisor's, and it does not read the log.
func TestWatchOOMKillsPidNamespace(t *testing.T) {
	requireKernelLog(t)
	if _, err := exec.LookPath("unshare"); err != nil {
		testenv.SkipOrFail(t, "unshare (util-linux) is not installed")
	}
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("unshare", "--pid", "--fork", "--mount-proc", exe)
	cmd.Env = append(os.Environ(), helperEnv+"=watchlog")
	out, err := cmd.CombinedOutput()
	if err != nil {
		testenv.SkipOrFail(t, fmt.Sprintf("cannot make a pid namespace: %v: %s", err, out))
	}
	if !strings.Contains(string(out), errPidNS.Error()) {
		t.Errorf("WatchOOMKills() in a pid namespace of its own said %q, want %q", out, errPidNS)
	}
}
