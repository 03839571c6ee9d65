package memory

import (
	"errors"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/safepool/safepool/internal/testenv"
	"golang.org/x/sys/unix"
)

// TestScanOpensNoFile: the files the supervisor reads ten times a second
// (the scan of its cgroup for each worker's descendants, and the
// governor's samples of the host and of its cgroup) are opened once, not
// at each read: the kernel charges each open's memory to the supervisor's
// cgroup, which in enclosing-cgroup mode could make the kernel kill the
// supervisor just after a worker (kept_linux.go). Counted with strace in
// a helper process that scans 5 times and 45 times, within a cgroup
// (enclosing-cgroup mode) and in all of /proc (no-cgroup mode), there in
// a pid namespace of its own as in a container, where the processes are
// few enough to be kept: the 40 more scans must open (next to) nothing but
// the cgroup's cgroup.procs, which is read afresh (neverKept).
func TestScanOpensNoFile(t *testing.T) {
	m := requireCgroups(t)
	strace, err := exec.LookPath("strace")
	if err != nil {
		testenv.SkipOrFail(t, "strace is not installed (test.sh installs it)")
	}
	g, err := m.NewGroup("kept", 0)
	if err != nil {
		t.Fatal(err)
	}
	defer g.Remove()
	sleeper := helperCommand(t, "sleep")
	if err := g.Start(sleeper); err != nil {
		t.Fatal(err)
	}
	defer func() {
		sleeper.Process.Kill()
		sleeper.Wait()
	}()
	opens := func(dir string, n int) int {
		t.Helper()
		out := filepath.Join(t.TempDir(), "strace.txt")
		var cmd *exec.Cmd
		if dir != "" {
			scan := helperCommand(t, "scanloop", dir, strconv.Itoa(sleeper.Process.Pid), strconv.Itoa(n))
			cmd = exec.Command(strace, append([]string{"-f", "-qq", "-e", "trace=open,openat", "-o", out, "--"}, scan.Args...)...)
			cmd.Env = scan.Env
		} else {
			// In a pid namespace of its own, as in a container, so that
			// /proc holds a few processes, all of which can be kept.
			scan := helperCommand(t, "scanloop", dir, "self", strconv.Itoa(n))
			cmd = exec.Command("unshare", append([]string{"-p", "-f", "--mount-proc", "--", strace, "-f", "-qq", "-e", "trace=open,openat", "-o", out, "--"}, scan.Args...)...)
			cmd.Env = scan.Env
		}
		if b, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("scanloop %d: %v\n%s", n, err, b)
		}
		b, err := os.ReadFile(out)
		if err != nil {
			t.Fatal(err)
		}
		count := 0
		for _, line := range strings.Split(string(b), "\n") {
			// cgroup.procs is opened for each scan (neverKept).
			if strings.Contains(line, "open") && !strings.Contains(line, "ENOENT") && !strings.Contains(line, "/cgroup.procs") {
				count++
			}
		}
		return count
	}
	for _, tc := range []struct{ name, dir string }{
		{"within the cgroup", g.path}, // enclosing-cgroup mode
		{"all of /proc", ""},          // no-cgroup mode, in a pid namespace
	} {
		few, many := opens(tc.dir, 5), opens(tc.dir, 45)
		t.Logf("%s: opens: %d in 5 scans and samples, %d in 45", tc.name, few, many)
		if many-few > 4 {
			t.Errorf("%s: 40 more scans and samples opened %d files more, want at most 4: the files are not kept open", tc.name, many-few)
		}
	}
}

// TestKeptFileOfRemovedCgroup: a kept file of a cgroup that is removed
// reads as gone (ENODEV through the kept descriptor, then ENOENT), and
// one made again under the same name is read anew.
func TestKeptFileOfRemovedCgroup(t *testing.T) {
	m := requireCgroups(t)
	g, err := m.NewGroup("kept-removed", 0)
	if err != nil {
		t.Fatal(err)
	}
	path := g.path
	keepDir(path)
	file := filepath.Join(path, "memory.usage_in_bytes")
	if _, err := readInt(file); err != nil {
		t.Fatal(err)
	}
	kept.mu.Lock()
	_, open := kept.fds[file]
	kept.mu.Unlock()
	if !open {
		t.Fatalf("%s is not kept open after a read", file)
	}
	if err := g.Remove(); err != nil {
		t.Fatal(err)
	}
	if _, err := readInt(file); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("read of a removed cgroup's kept file = %v, want an error matching fs.ErrNotExist", err)
	}
	kept.mu.Lock()
	_, open = kept.fds[file]
	kept.mu.Unlock()
	if open {
		t.Errorf("the removed cgroup's file is still kept open")
	}
	if err := os.Mkdir(path, 0o755); err != nil {
		t.Fatal(err)
	}
	defer os.Remove(path)
	if v, err := readInt(file); err != nil || v != 0 {
		t.Errorf("read of the cgroup made again = %d, %v, want 0", v, err)
	}
}

// TestParseStat: the fields of /proc/PID/stat after a name that holds
// spaces and parentheses, and text that is not a stat line.
func TestParseStat(t *testing.T) {
	line := "4242 (a) b (c)) S 17 4242 4242 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 987654 1000 100 18446744073709551615\n"
	e, ok := parseStat([]byte(line))
	if !ok || e.ppid != 17 || e.start != 987654 || e.name() != "a) b (c)" {
		t.Errorf("parseStat(%q) = ppid %d, start %d, name %q, %v; want 17, 987654, %q, true", line, e.ppid, e.start, e.name(), ok, "a) b (c)")
	}
	for _, bad := range []string{"", "4242 (x) S 17", "4242 x S 17 1 1 0 -1 0 0 0 0 0 0 0 0 0 20 0 1 0 5", "4242 (x) S -3 4242 4242 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 987654"} {
		if e, ok := parseStat([]byte(bad)); ok {
			t.Errorf("parseStat(%q) = %+v, true; want false", bad, e)
		}
	}
}

// TestListPIDs: /proc listed through its kept descriptor, into a buffer
// too small for one read, holds this process and the same processes as
// os.ReadDir, read again from the start.
func TestListPIDs(t *testing.T) {
	fd, err := unix.Open("/proc", unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	buf := make([]byte, 512)
	for round := 0; round < 2; round++ {
		pids, _, err := ListPIDs(fd, nil, buf)
		if err != nil {
			t.Fatal(err)
		}
		if !slices.Contains(pids, os.Getpid()) {
			t.Errorf("round %d: /proc listed %d processes, not this one (%d)", round, len(pids), os.Getpid())
		}
		if len(pids) < 3 {
			t.Errorf("round %d: /proc listed %d processes: %v", round, len(pids), pids)
		}
		for _, p := range pids {
			if p <= 0 {
				t.Errorf("round %d: pid %d listed", round, p)
			}
		}
	}
}

// TestScanWithinSeesNewProcess: a scan within a cgroup finds a process
// that joined the cgroup since the last scan. Cgroup v1 serves a
// cgroup.procs read again through the same descriptor from a cache that
// a reader coming back within a second keeps alive, so the list is read
// through a new descriptor each time (neverKept).
func TestScanWithinSeesNewProcess(t *testing.T) {
	m := requireCgroups(t)
	g, err := m.NewGroup("scan-new", 0)
	if err != nil {
		t.Fatal(err)
	}
	defer g.Remove()
	procScans.mu.Lock()
	saved := procScans.cgroup
	procScans.mu.Unlock()
	defer procScans.within(saved)
	procScans.within(g.path)
	scan := func() *procScan {
		t.Helper()
		procScans.mu.Lock()
		procScans.last = nil
		procScans.mu.Unlock()
		s, err := procScans.get(1 << 30) // a pid that is never there: a new scan
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	var started []*exec.Cmd
	defer func() {
		for _, c := range started {
			c.Process.Kill()
			c.Wait()
		}
	}()
	for i := 0; i < 3; i++ {
		cmd := helperCommand(t, "sleep")
		if err := g.Start(cmd); err != nil {
			t.Fatal(err)
		}
		started = append(started, cmd)
		// Scans ten times a second, as the watches make them, for a
		// while before the next process joins.
		var s *procScan
		for k := 0; k < 5; k++ {
			s = scan()
			time.Sleep(100 * time.Millisecond)
		}
		if _, ok := s.procs[cmd.Process.Pid]; !ok {
			t.Fatalf("process %d, started in the group before the last 5 scans, is not in the scan (%d processes)", cmd.Process.Pid, len(s.procs))
		}
	}
}
