package memory

import (
	"bufio"
	"errors"
	"io/fs"
	"os"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

func TestParseStatus(t *testing.T) {
	for _, tc := range []struct {
		name    string
		text    string
		want    procStatus
		wantErr bool
	}{
		{
			name: "process",
			text: "Name:\tpython3\nVmPeak:\t   13884 kB\nVmHWM:\t  418200 kB\nVmData:\t    4660 kB\nVmRSS:\t    8224 kB\nRssAnon:\t    2764 kB\nRssFile:\t    5460 kB\nRssShmem:\t  409600 kB\nVmSwap:\t      12 kB\nThreads:\t1\n",
			want: procStatus{rssAnon: 2764 * 1024, swap: 12 * 1024, data: 4660 * 1024, shared: (5460 + 409600) * 1024, hwm: 418200 * 1024, hasMM: true},
		},
		{name: "zombie", text: "Name:\tsh\nState:\tZ (zombie)\nThreads:\t1\n"},
		{name: "bad number", text: "RssAnon:\t12x kB\n", wantErr: true},
		{name: "bad unit", text: "RssAnon:\t12 MB\n", wantErr: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := parseStatus([]byte(tc.text))
			if got != tc.want || (err != nil) != tc.wantErr {
				t.Errorf("parseStatus = %+v, %v, want %+v, error %v", got, err, tc.want, tc.wantErr)
			}
		})
	}
}

// startHelper starts the helper mode with args in a process group of its
// own, waits for its "ready" line and returns the pids it printed after
// "ready", if any. The helper is killed when the test ends.
func startHelper(t *testing.T, mode string, args ...string) (pid int, said []string) {
	t.Helper()
	cmd := helperCommand(t, mode, args...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		stdin.Close()
		syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		cmd.Wait()
	})
	line, err := bufio.NewReader(stdout).ReadString('\n')
	if err != nil || !strings.HasPrefix(line, "ready") {
		t.Fatalf("%s helper said %q, %v", mode, line, err)
	}
	return cmd.Process.Pid, strings.Fields(line)[1:]
}

// sharedBlock writes a file of size bytes in /dev/shm and returns its path.
func sharedBlock(t *testing.T, size int) string {
	t.Helper()
	f, err := os.CreateTemp("/dev/shm", "safepool-test-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.Remove(f.Name()) })
	if _, err := f.Write([]byte(strings.Repeat("x", size))); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	return f.Name()
}

func TestTreePrivateMemory(t *testing.T) {
	const childMiB = 64
	parent, said := startHelper(t, "tree", strconv.Itoa(childMiB))
	child, err := strconv.Atoi(said[0])
	if err != nil {
		t.Fatalf("tree helper said %q", said)
	}
	own, err := TreePrivateMemory(child)
	if err != nil || own < childMiB*mib {
		t.Errorf("TreePrivateMemory(child) = %d, %v, want >= %d MiB", own, err, childMiB)
	}
	tree, err := TreePrivateMemory(parent)
	if err != nil || tree <= own {
		t.Errorf("TreePrivateMemory(parent) = %d, %v, want more than the child's %d", tree, err, own)
	}
	if _, err := TreePrivateMemory(1 << 30); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("TreePrivateMemory(no such pid) = %v, want ErrNotExist", err)
	}
	t.Logf("private memory: child %d MiB, tree %d MiB", own/mib, tree/mib)
}

// TestTreePrivateMemoryShared: a process that maps and reads 256 MiB of
// shared memory is resident over it, but holds none of it alone.
func TestTreePrivateMemoryShared(t *testing.T) {
	pid, _ := startHelper(t, "shm", sharedBlock(t, 256*mib))
	rss, err := ProcessRSS(pid)
	if err != nil || rss < 256*mib {
		t.Fatalf("ProcessRSS = %d, %v, want the shared block resident", rss, err)
	}
	private, err := TreePrivateMemory(pid)
	if err != nil || private <= 0 || private >= 64*mib {
		t.Errorf("TreePrivateMemory = %d, %v, want above 0 and far below the 256 MiB shared block", private, err)
	}
	t.Logf("RSS %d MiB, private %d MiB", rss/mib, private/mib)
}

// TestWatchesShareScans: eight watches, each on a worker with a child,
// look for new descendants every 100 ms, yet the host's processes are
// scanned about once per scanShare, not once per watch: each scan reads
// every process on the host. Each watch still sees its worker's child.
func TestWatchesShareScans(t *testing.T) {
	const workers, childMiB = 8, 16
	var ws []*Watch
	for range workers {
		pid, _ := startHelper(t, "tree", strconv.Itoa(childMiB))
		w := StartWatch(pid, 0)
		defer w.Stop()
		ws = append(ws, w)
	}
	for i, w := range ws {
		waitFor(t, "watch "+strconv.Itoa(i)+" to count its worker's child", func() bool { return w.Current() >= childMiB*mib })
	}
	count := func() int {
		procScans.mu.Lock()
		defer procScans.mu.Unlock()
		return procScans.scans
	}
	const span = time.Second
	before := count()
	time.Sleep(span)
	scans := count() - before
	// One watch alone scans span/scanEvery times; shared, the scans are
	// at most one per scanShare, and a scan may come late under load.
	if most := int(span/scanShare) + workers; scans > most {
		t.Errorf("%d scans of /proc in %v for %d watches, want at most %d (one per %v)", scans, span, workers, most, scanShare)
	}
	t.Logf("%d scans of /proc in %v for %d watches", scans, span, workers)
}

// waitFor polls cond until it holds or a minute has passed.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(time.Minute); !cond(); time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not after a minute", what)
		}
	}
}

func TestWatch(t *testing.T) {
	const childMiB = 64
	parent, _ := startHelper(t, "tree", strconv.Itoa(childMiB))

	// A child the watch finds on a later scan counts, and the limit trips.
	w := StartWatch(parent, 32*mib)
	defer w.Stop()
	select {
	case <-w.Over():
	case <-time.After(time.Minute):
		t.Fatalf("Over not closed with %d MiB in the tree over a 32 MiB limit (peak %d)", childMiB, w.Peak())
	}
	if p := w.Peak(); p < childMiB*mib {
		t.Errorf("Peak() = %d, want >= %d MiB", p, childMiB)
	}

	// Without a limit, only the peak; shared memory counts for nothing.
	shm, _ := startHelper(t, "shm", sharedBlock(t, 128*mib))
	unlimited := StartWatch(shm, 0)
	waitFor(t, "a sample", func() bool { return unlimited.Peak() > 0 })
	if p := unlimited.Peak(); p >= 64*mib {
		t.Errorf("Peak() of a reader of 128 MiB of shared memory = %d, want its private memory only", p)
	}
	// But it is resident, and the watch knows it, to tell a peak of
	// resident memory from one of private memory.
	if r := unlimited.LastResident(); r.Shared < 128*mib || r.HWM < 128*mib {
		t.Errorf("LastResident() of a reader of 128 MiB of shared memory = %+v, want Shared and HWM >= 128 MiB", r)
	}
	unlimited.ResetPeak()
	unlimited.Stop()
	unlimited.Stop()
	select {
	case <-unlimited.Over():
		t.Errorf("Over closed without a limit")
	default:
	}

	// A watch whose worker is gone ends by itself; Stop returns.
	exited := helperCommand(t, "exit")
	if err := exited.Run(); err != nil {
		t.Fatal(err)
	}
	gone := StartWatch(exited.Process.Pid, 1)
	time.Sleep(2 * minSample)
	gone.Stop()
	if p := gone.Peak(); p != 0 {
		t.Errorf("Peak() of a process that was gone = %d, want 0", p)
	}
}

// TestWatchCurrent: Current is the latest sample while the watch samples,
// and 0 once the worker is gone, has exited, or Stop was called, where
// Last keeps the last sample.
func TestWatchCurrent(t *testing.T) {
	const childMiB = 64
	parent, _ := startHelper(t, "tree", strconv.Itoa(childMiB))
	w := StartWatch(parent, 0)
	defer w.Stop()
	waitFor(t, "a sample of the whole tree", func() bool { return w.Current() >= childMiB*mib })
	if err := syscall.Kill(-parent, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "Current to fall to 0 once the worker is gone", func() bool { return w.Current() == 0 })
	if l := w.Last(); l < childMiB*mib {
		t.Errorf("Last() = %d after the worker died, want its last sample, >= %d MiB", l, childMiB)
	}

	// A worker that is this process's child counts for nothing once it
	// has exited, before the watch's next sample would see it gone: the
	// kernel freed its memory as it exited.
	child, _ := startHelper(t, "alloc", "64")
	at := StartWatch(child, 0) // no limit: a sample every 100 ms
	defer at.Stop()
	waitFor(t, "a sample", func() bool { return at.Current() >= 64*mib })
	if err := syscall.Kill(child, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	var info unix.Siginfo
	if err := unix.Waitid(unix.P_PID, child, &info, unix.WEXITED|unix.WNOWAIT, nil); err != nil {
		t.Fatal(err)
	}
	if c := at.Current(); c != 0 {
		t.Errorf("Current() of a child that has exited = %d, want 0", c)
	}

	other, _ := startHelper(t, "tree", "8")
	stopped := StartWatch(other, 0)
	waitFor(t, "a sample", func() bool { return stopped.Current() > 0 })
	stopped.Stop()
	if c := stopped.Current(); c != 0 {
		t.Errorf("Current() after Stop = %d, want 0", c)
	}
}

// TestWatchStoppedBeforeFirstSample: a watch whose worker ends before the
// first sample is due (most one-shot jobs) starts no sampling at all, yet
// Stop returns, and its tree holds the worker, by pid and start time, as
// read at StartWatch: a kill of it or of a child it forked at once is still
// the tree's.
func TestWatchStoppedBeforeFirstSample(t *testing.T) {
	pid, _ := startHelper(t, "tree", "1")
	var buf [512]byte
	want, ok := readStat(pid, buf[:])
	if !ok {
		t.Fatalf("readStat(%d) failed", pid)
	}
	w := StartWatch(pid, 1)
	w.Stop()
	w.Stop()
	if n := w.Samples(); n != 0 {
		t.Errorf("Samples() = %d after a Stop at once, want 0: the first sample is due %v after the start", n, minSample)
	}
	if c := w.Current(); c != 0 {
		t.Errorf("Current() after Stop = %d, want 0", c)
	}
	select {
	case <-w.Over():
		t.Errorf("Over closed without a sample")
	default:
	}
	tree := w.Tree()
	m, ok := tree.members[pid]
	if !ok || m.start != want.start {
		t.Fatalf("Tree() = %+v, want the worker %d with start time %d", tree.members, pid, want.start)
	}
	killed := oomRecord{victim: Victim{PID: pid + 1}, at: time.Now(), lineage: []procID{{pid + 1, 1}, {pid, want.start}}}
	if !tree.holds(killed, m.seen) {
		t.Errorf("the tree does not hold a kill of a child of its worker")
	}
}

// TestScanWithinCgroup: in ModeEnclosing a scan for a worker's descendants
// looks only at the processes of the supervisor's cgroup (procScans.within),
// not at every process of the host, whose stat files it opened ten times a
// second; it finds the same tree, and falls back to /proc where the cgroup
// cannot be listed.
func TestScanWithinCgroup(t *testing.T) {
	m := requireCgroups(t)
	g, err := m.NewGroup("scan", 0)
	if err != nil {
		t.Fatal(err)
	}
	defer g.Remove()
	cmd := helperCommand(t, "tree", "1")
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := g.Prepare(cmd); err != nil {
		t.Fatal(err)
	}
	err = cmd.Start()
	g.Started()
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		stdin.Close()
		syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		cmd.Wait()
	}()
	line, err := bufio.NewReader(stdout).ReadString('\n')
	if err != nil || !strings.HasPrefix(line, "ready ") {
		t.Fatalf("tree helper said %q, %v", line, err)
	}
	parent := cmd.Process.Pid
	child, err := strconv.Atoi(strings.TrimSpace(strings.TrimPrefix(line, "ready ")))
	if err != nil {
		t.Fatalf("tree helper said %q", line)
	}

	procScans.mu.Lock()
	saved := procScans.cgroup
	procScans.mu.Unlock()
	defer procScans.within(saved)
	look := func(dir string) (tree []int, scanned int) {
		t.Helper()
		procScans.within(dir)
		tree, scan, err := descendantsIn(parent)
		if err != nil {
			t.Fatalf("within %q: descendants(%d) = %v", dir, parent, err)
		}
		if len(tree) != 2 || tree[0] != parent || tree[1] != child {
			t.Errorf("within %q: descendants(%d) = %v, want [%d %d]", dir, parent, tree, parent, child)
		}
		return tree, len(scan.procs)
	}
	_, all := look("")
	_, in := look(g.path)
	if in != 2 {
		t.Errorf("a scan within the group read %d processes, want its 2 (the host has %d)", in, all)
	}
	if _, n := look(t.TempDir()); n != all && n < 3 {
		t.Errorf("a scan within a directory that is no cgroup read %d processes, want every process in /proc", n)
	}
	t.Logf("processes read by a scan: %d in /proc, %d within the group", all, in)
}
