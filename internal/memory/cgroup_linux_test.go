package memory

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"
)

// These tests use the host's real cgroups and the kernel's OOM killer.

func TestOOMKill(t *testing.T) {
	m := requireCgroups(t)
	oomLog := requireKernelLog(t)
	const limit = 64 * mib
	g, err := m.NewGroup("hog", limit)
	if err != nil {
		t.Fatal(err)
	}
	defer g.Remove()
	if n, err := g.OOMKills(); err != nil || n != 0 {
		t.Fatalf("OOMKills() before = %d, %v, want 0", n, err)
	}

	cmd := helperCommand(t, "hog")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := g.Prepare(cmd); err != nil {
		t.Fatal(err)
	}
	err = cmd.Start()
	g.Started()
	if err != nil {
		t.Fatal(err)
	}
	pid := cmd.Process.Pid
	if m.Mode() == ModeCgroupV2 {
		if err := SetOOMScoreAdj(pid, 1000); err != nil {
			t.Error(err)
		}
	}
	err = waitTimeout(t, cmd, time.Minute)
	died := time.Now()
	if sig := signalOf(err); sig != syscall.SIGKILL {
		t.Fatalf("hog ended with %v, want SIGKILL; stderr: %s", err, stderr.String())
	}

	n, err := g.OOMKills()
	if err != nil || n != 1 {
		t.Errorf("OOMKills() after = %d, %v, want 1", n, err)
	}
	peak, err := g.Peak()
	if err != nil || peak < limit*9/10 || peak > limit+mib {
		t.Errorf("Peak() = %d, %v, want near %d", peak, err, limit)
	}
	if !oomLog.Killed(pid, 2*time.Second) {
		t.Errorf("Killed(%d, 2s) = false, want true", pid)
	}
	t.Logf("pid %d OOM-killed in %s: oom_kill=%d, peak=%.1f MiB of %d MiB, kernel log confirmed %v after Wait",
		pid, g.Path(), n, float64(peak)/mib, limit/mib, time.Since(died).Round(time.Microsecond))
	if !oomLog.KilledSince(pid, died.Add(-time.Minute), 0) {
		t.Errorf("KilledSince(%d, a minute before its death, 0) = false, want true", pid)
	}
	if oomLog.KilledSince(pid, time.Now().Add(time.Second), 0) {
		t.Errorf("KilledSince(%d, the future, 0) = true, want false", pid)
	}

	if err := g.ResetPeak(); err != nil {
		t.Errorf("ResetPeak() = %v", err)
	} else if p, _ := g.Peak(); p >= peak {
		t.Errorf("Peak() after ResetPeak = %d, want < %d", p, peak)
	}
	if err := g.Remove(); err != nil {
		t.Errorf("Remove() = %v", err)
	}
	if _, err := os.Stat(g.Path()); !os.IsNotExist(err) {
		t.Errorf("group dir after Remove: %v, want not exist", err)
	}
}

func TestNormalExitIsNotOOM(t *testing.T) {
	m := requireCgroups(t)
	oomLog := requireKernelLog(t)
	g, err := m.NewGroup("exit", 64*mib)
	if err != nil {
		t.Fatal(err)
	}
	defer g.Remove()
	cmd := helperCommand(t, "exit")
	if err := g.Prepare(cmd); err != nil {
		t.Fatal(err)
	}
	err = cmd.Start()
	g.Started()
	if err != nil {
		t.Fatal(err)
	}
	if err := waitTimeout(t, cmd, time.Minute); err != nil {
		t.Fatalf("exit helper: %v", err)
	}
	if n, err := g.OOMKills(); err != nil || n != 0 {
		t.Errorf("OOMKills() = %d, %v, want 0", n, err)
	}
	if u, err := g.Usage(); err != nil || u < 0 {
		t.Errorf("Usage() = %d, %v", u, err)
	}
	if oomLog.Killed(cmd.Process.Pid, 300*time.Millisecond) {
		t.Errorf("Killed(%d) = true for a process that exited normally", cmd.Process.Pid)
	}
}

// trickyArgs are arguments a shell would mangle if it ever saw them as
// code.
var trickyArgs = []string{"", "a b", `"q"`, `'s'`, "$HOME", "`id`", "*", `\`, "-c", "--", "x\ny", "é ü", " "}

func TestPrepareRunsInGroup(t *testing.T) {
	m := requireCgroups(t)
	for _, tc := range []struct {
		name  string
		argv0 string // "" keeps the binary's path
	}{
		{name: "argv0 is path"},
		{name: "argv0 differs", argv0: "my worker"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			g, err := m.NewGroup(strings.ReplaceAll(tc.name, " ", "-"), 256*mib)
			if err != nil {
				t.Fatal(err)
			}
			defer g.Remove()
			cmd := helperCommand(t, "report", trickyArgs...)
			if tc.argv0 != "" {
				cmd.Args[0] = tc.argv0
			}
			want := slices.Clone(cmd.Args)
			cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
			var stdout, stderr bytes.Buffer
			cmd.Stdout, cmd.Stderr = &stdout, &stderr
			if err := g.Prepare(cmd); err != nil {
				t.Fatal(err)
			}
			if !cmd.SysProcAttr.Setpgid {
				t.Errorf("Prepare dropped SysProcAttr.Setpgid")
			}
			err = cmd.Start()
			g.Started()
			if err != nil {
				t.Fatal(err)
			}
			if m.Mode() == ModeCgroupV2 {
				SetOOMScoreAdj(cmd.Process.Pid, 1000)
			}
			if err := waitTimeout(t, cmd, time.Minute); err != nil {
				t.Fatalf("report helper: %v; stderr: %s", err, stderr.String())
			}
			var r report
			if err := json.Unmarshal(stdout.Bytes(), &r); err != nil {
				t.Fatalf("report %q: %v", stdout.String(), err)
			}
			if !slices.Equal(r.Args, want) {
				t.Errorf("worker argv = %q, want %q", r.Args, want)
			}
			if line := cgroupLine(r.Cgroup, m.Mode()); !strings.HasSuffix(g.Path(), line) || line == "" {
				t.Errorf("worker /proc/self/cgroup = %q, want %s in it", r.Cgroup, g.Path())
			}
			if r.OOMScoreAdj != "1000" && m.Mode() == ModeCgroupV1 {
				t.Errorf("worker oom_score_adj = %q, want 1000", r.OOMScoreAdj)
			}
		})
	}
}

// cgroupLine returns the path of the memory cgroup in a /proc/<pid>/cgroup
// text.
func cgroupLine(text string, mode Mode) string {
	for _, line := range strings.Split(strings.TrimSpace(text), "\n") {
		parts := strings.SplitN(line, ":", 3)
		if len(parts) != 3 {
			continue
		}
		if mode == ModeCgroupV2 && parts[0] == "0" || mode == ModeCgroupV1 && slices.Contains(strings.Split(parts[1], ","), "memory") {
			return parts[2]
		}
	}
	return ""
}

func TestKillEmptiesGroup(t *testing.T) {
	m := requireCgroups(t)
	g, err := m.NewGroup("sleepers", 0)
	if err != nil {
		t.Fatal(err)
	}
	defer g.Remove()
	var cmds []*os.Process
	for range 3 {
		cmd := helperCommand(t, "sleep")
		if err := g.Prepare(cmd); err != nil {
			t.Fatal(err)
		}
		err := cmd.Start()
		g.Started()
		if err != nil {
			t.Fatal(err)
		}
		cmds = append(cmds, cmd.Process)
		defer waitTimeout(t, cmd, 10*time.Second)
	}
	// Each shim moves itself in soon after Start.
	deadline := time.Now().Add(10 * time.Second)
	for {
		pids, _ := readProcs(g.Path())
		if len(pids) == len(cmds) || time.Now().After(deadline) {
			break
		}
		time.Sleep(5 * time.Millisecond)
	}
	if err := g.Kill(); err != nil {
		t.Fatalf("Kill() = %v", err)
	}
	if pids, err := readProcs(g.Path()); err != nil || len(pids) != 0 {
		t.Errorf("cgroup.procs after Kill = %v, %v, want empty", pids, err)
	}
	for _, p := range cmds {
		st, err := p.Wait()
		if err != nil || st.Sys().(syscall.WaitStatus).Signal() != syscall.SIGKILL {
			t.Errorf("sleeper %d: %v, %v, want killed by SIGKILL", p.Pid, st, err)
		}
	}
}

// TestLeftoversRemoved checks that NewManager removes what a dead
// supervisor left (and kills the processes in it), and keeps what a live
// one has.
func TestLeftoversRemoved(t *testing.T) {
	requireCgroups(t)
	loc, err := locate()
	if err != nil {
		t.Fatal(err)
	}
	var c controller = cgroupV1{}
	if loc.mode == ModeCgroupV2 {
		c = cgroupV2{}
	}

	// A supervisor pid that is dead now.
	exited := helperCommand(t, "exit")
	if err := exited.Run(); err != nil {
		t.Fatal(err)
	}
	deadPid := exited.Process.Pid
	if alive(deadPid) {
		t.Skipf("pid %d was reused at once", deadPid)
	}
	dead := filepath.Join(loc.dir, fmt.Sprintf("safepool-%d", deadPid))
	worker := filepath.Join(dead, "w1")
	for _, d := range []string{dead, worker} {
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	t.Cleanup(func() { removeTree(c, dead, rmdirCgroup) })

	sleeper := helperCommand(t, "sleep")
	if err := sleeper.Start(); err != nil {
		t.Fatal(err)
	}
	defer sleeper.Process.Kill()
	if err := writeCgroupFile(filepath.Join(worker, "cgroup.procs"), fmt.Sprint(sleeper.Process.Pid)); err != nil {
		t.Fatal(err)
	}

	// A live supervisor's directory: the sleeper's pid is alive.
	live := filepath.Join(loc.dir, fmt.Sprintf("safepool-%d", sleeper.Process.Pid))
	if err := os.Mkdir(live, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { removeTree(c, live, rmdirCgroup) })

	m, err := NewManager()
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	if _, err := os.Stat(dead); !os.IsNotExist(err) {
		t.Errorf("dead supervisor's %s after NewManager: %v, want removed", dead, err)
	}
	if _, err := os.Stat(live); err != nil {
		t.Errorf("live supervisor's %s after NewManager: %v, want kept", live, err)
	}
	if err := waitTimeout(t, sleeper, 10*time.Second); signalOf(err) != syscall.SIGKILL {
		t.Errorf("process in the leftover group: %v, want killed by SIGKILL", err)
	}
}

// TestCgroupV2Kernel runs a worker through UseCgroupFD on a real v2
// memory controller. The file formats are covered without one by
// TestCgroupV2Files.
func TestCgroupV2Kernel(t *testing.T) {
	m := requireCgroups(t)
	if m.Mode() != ModeCgroupV2 {
		t.Skipf("host has no cgroup v2 memory controller (%s)", m.Reason())
	}
	g, err := m.NewGroup("v2", 128*mib)
	if err != nil {
		t.Fatal(err)
	}
	defer g.Remove()
	cmd := helperCommand(t, "report")
	var stdout bytes.Buffer
	cmd.Stdout = &stdout
	if err := g.Prepare(cmd); err != nil {
		t.Fatal(err)
	}
	err = cmd.Start()
	g.Started()
	if err != nil {
		t.Fatal(err)
	}
	if err := waitTimeout(t, cmd, time.Minute); err != nil {
		t.Fatal(err)
	}
	var r report
	if err := json.Unmarshal(stdout.Bytes(), &r); err != nil {
		t.Fatal(err)
	}
	if line := cgroupLine(r.Cgroup, ModeCgroupV2); line == "" || !strings.HasSuffix(g.Path(), line) {
		t.Errorf("worker cgroup = %q, want %s", r.Cgroup, g.Path())
	}
	if max, _ := readCgroupFile(filepath.Join(g.Path(), "memory.max")); max != fmt.Sprint(128*mib) {
		t.Errorf("memory.max = %q, want %d", max, 128*mib)
	}
}

// TestGroupFilesKeptAcrossJobs runs one group the way a one-shot slot does,
// job after job: processes start in it, its OOM counter and process list
// are read, it is killed empty. Under cgroup v1 the group keeps
// memory.oom_control (TestOOMKill checks that a read through it sees a
// new kill), tasks (each job's processes must still start in the group)
// and its directory open between jobs, and never cgroup.procs, which v1 would
// serve stale to a kept file: each job's list must be its own. Remove
// closes what was kept.
func TestGroupFilesKeptAcrossJobs(t *testing.T) {
	m := requireCgroups(t)
	g, err := m.NewGroup("slot", 0)
	if err != nil {
		t.Fatal(err)
	}
	defer g.Remove()
	for job := range 3 {
		if n, err := g.OOMKills(); err != nil || n != 0 {
			t.Fatalf("job %d: OOMKills() = %d, %v, want 0", job, n, err)
		}
		var cmds []*exec.Cmd
		for range 2 {
			cmd := helperCommand(t, "sleep")
			if err := g.Start(cmd); err != nil {
				t.Fatal(err)
			}
			cmds = append(cmds, cmd)
		}
		pids, err := g.procs()
		slices.Sort(pids)
		want := []int{cmds[0].Process.Pid, cmds[1].Process.Pid}
		slices.Sort(want)
		if err != nil || !slices.Equal(pids, want) {
			t.Errorf("job %d: procs() = %v, %v, want %v", job, pids, err, want)
		}
		if err := g.Kill(); err != nil {
			t.Fatalf("job %d: Kill() = %v", job, err)
		}
		for _, cmd := range cmds {
			if err := waitTimeout(t, cmd, 10*time.Second); signalOf(err) != syscall.SIGKILL {
				t.Errorf("job %d: sleeper %d: %v, want killed by SIGKILL", job, cmd.Process.Pid, err)
			}
		}
		if pids, err := g.procs(); err != nil || len(pids) != 0 {
			t.Errorf("job %d: procs() after Kill = %v, %v, want empty", job, pids, err)
		}
	}
	if m.Mode() == ModeCgroupV1 {
		for _, name := range []string{"memory.oom_control", "tasks", "."} {
			if n := openCount(t, filepath.Join(g.Path(), name)); n != 1 {
				t.Errorf("%s open %d times after three jobs, want once, kept", name, n)
			}
		}
		if n := openCount(t, filepath.Join(g.Path(), "cgroup.procs")); n != 0 {
			t.Errorf("cgroup.procs open %d times between jobs, want 0", n)
		}
	}
	if err := g.Remove(); err != nil {
		t.Fatalf("Remove() = %v", err)
	}
	for _, name := range []string{"memory.oom_control", "tasks", "memory.max_usage_in_bytes", "."} {
		if n := openCount(t, filepath.Join(g.Path(), name)); n != 0 {
			t.Errorf("%s open %d times after Remove, want 0", name, n)
		}
	}
}

// openCount returns how many of this process's descriptors are open on
// path.
func openCount(t *testing.T, path string) int {
	t.Helper()
	entries, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, e := range entries {
		if target, err := os.Readlink(filepath.Join("/proc/self/fd", e.Name())); err == nil && strings.TrimSuffix(target, " (deleted)") == path {
			n++
		}
	}
	return n
}

// TestPeakLeavesOutEarlierCache: the page cache that an earlier process
// of a group left (the file it wrote) is no part of the peak of the next
// one, started after ResetPeak: a persistent worker's tasks, or a
// one-shot slot's jobs, that write files were each charged the cache of
// all the ones before, a peak that grew by the size of a file each time.
// The writer's own peak keeps what it wrote.
func TestPeakLeavesOutEarlierCache(t *testing.T) {
	m := requireCgroups(t)
	g, err := m.NewGroup("cache", 0)
	if err != nil {
		t.Fatal(err)
	}
	defer g.Remove()
	run := func(script string) {
		t.Helper()
		cmd := exec.Command("sh", "-c", script)
		if err := g.Prepare(cmd); err != nil {
			t.Fatal(err)
		}
		err := cmd.Start()
		g.Started()
		if err != nil {
			t.Fatal(err)
		}
		if err := waitTimeout(t, cmd, time.Minute); err != nil {
			t.Fatalf("%s: %v", script, err)
		}
	}
	file := filepath.Join(t.TempDir(), "out")
	const size = 40 * mib
	run(fmt.Sprintf("head -c %d /dev/zero > %s", size, file))
	if p, err := g.Peak(); err != nil || p < size*9/10 {
		t.Fatalf("the writer's Peak() = %d, %v; want at least %d, its file's cache", p, err, size*9/10)
	}
	if err := g.ResetPeak(); err != nil {
		t.Fatal(err)
	}
	run("true")
	if p, err := g.Peak(); err != nil || p >= size/2 {
		t.Errorf("the next process's Peak() = %d, %v; want below %d: the cache the writer left is not its", p, err, size/2)
	}
}
