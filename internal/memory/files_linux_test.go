package memory

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"

	"github.com/safepool/safepool/internal/testenv"
)

// These tests run the cgroup file conventions against a temp dir, so they
// need no cgroups: a directory stands for a cgroup, regular files for its
// control files.

// writeFiles writes name → content files under dir.
func writeFiles(t *testing.T, dir string, files map[string]string) {
	t.Helper()
	for name, content := range files {
		p := filepath.Join(dir, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

// fileIs checks the content of a file.
func fileIs(t *testing.T, path, want string) {
	t.Helper()
	got, err := os.ReadFile(path)
	if err != nil || string(got) != want {
		t.Errorf("%s = %q, %v, want %q", path, got, err, want)
	}
}

func TestCgroupV2Files(t *testing.T) {
	own := filepath.Join(t.TempDir(), "supervisor")
	writeFiles(t, own, map[string]string{
		"cgroup.controllers":     "cpu io memory pids\n",
		"cgroup.subtree_control": "\n",
	})
	m, err := newManager(cgroupV2{}, own, os.RemoveAll)
	if err != nil || m.Mode() != ModeCgroupV2 {
		t.Fatalf("newManager(v2) = %v, want a Manager in %s", err, ModeCgroupV2)
	}
	defer m.Close()
	parent := filepath.Join(own, fmt.Sprintf("safepool-%d", os.Getpid()))
	if want := "cgroup v2: a memory cgroup per worker under " + parent; m.Reason() != want {
		t.Errorf("Reason() = %q, want %q", m.Reason(), want)
	}
	fileIs(t, filepath.Join(own, "cgroup.subtree_control"), "+memory")
	fileIs(t, filepath.Join(parent, "cgroup.subtree_control"), "+memory")

	g, err := m.NewGroup("w1", 64<<20)
	if err != nil {
		t.Fatal(err)
	}
	fileIs(t, filepath.Join(g.Path(), "memory.max"), "67108864")
	unlimited, err := m.NewGroup("w2", 0)
	if err != nil {
		t.Fatal(err)
	}
	fileIs(t, filepath.Join(unlimited.Path(), "memory.max"), "max")
	if _, err := m.NewGroup("w1", 1); err == nil {
		t.Errorf("NewGroup(w1) twice = nil error, want one")
	}
	for _, name := range []string{"", ".", "..", "a/b"} {
		if _, err := m.NewGroup(name, 1); err == nil {
			t.Errorf("NewGroup(%q) = nil error, want one", name)
		}
	}

	// Counters.
	writeFiles(t, g.Path(), map[string]string{
		"memory.events":  "low 0\nhigh 0\nmax 9\noom 1\noom_kill 1\noom_group_kill 1\n",
		"memory.current": "12345\n",
	})
	if n, err := g.OOMKills(); n != 1 || err != nil {
		t.Errorf("OOMKills() = %d, %v, want 1", n, err)
	}
	if u, err := g.Usage(); u != 12345 || err != nil {
		t.Errorf("Usage() = %d, %v, want 12345", u, err)
	}
	if p, err := g.Peak(); p != 0 || err != nil {
		t.Errorf("Peak() without memory.peak = %d, %v, want 0, nil", p, err)
	}
	if err := g.ResetPeak(); !errors.Is(err, errors.ErrUnsupported) {
		t.Errorf("ResetPeak() without memory.peak = %v, want ErrUnsupported", err)
	}
	writeFiles(t, g.Path(), map[string]string{"memory.peak": "67100000\n"})
	if p, err := g.Peak(); p != 67100000 || err != nil {
		t.Errorf("Peak() = %d, %v, want 67100000", p, err)
	}
	unresettablePeak(t, g)
	writeFiles(t, unlimited.Path(), map[string]string{"memory.events": "low 0\n"})
	if _, err := unlimited.OOMKills(); !errors.Is(err, errors.ErrUnsupported) {
		t.Errorf("OOMKills() without oom_kill = %v, want ErrUnsupported", err)
	}

	// Prepare opens the directory for clone3 and keeps other attributes.
	attr := &syscall.SysProcAttr{Setpgid: true}
	cmd := exec.Command("/bin/true")
	cmd.SysProcAttr = attr
	if err := g.Prepare(cmd); err != nil {
		t.Fatal(err)
	}
	if !cmd.SysProcAttr.UseCgroupFD || cmd.SysProcAttr.CgroupFD <= 2 || !cmd.SysProcAttr.Setpgid {
		t.Errorf("Prepare: SysProcAttr = %+v, want UseCgroupFD, a CgroupFD and Setpgid", cmd.SysProcAttr)
	}
	if attr.UseCgroupFD {
		t.Errorf("Prepare changed the caller's SysProcAttr")
	}
	if cmd.Path != "/bin/true" {
		t.Errorf("Prepare(v2) changed Path to %q", cmd.Path)
	}
	fd := cmd.SysProcAttr.CgroupFD
	g.Started()
	if err := syscall.Fstat(fd, &syscall.Stat_t{}); err == nil {
		t.Errorf("Started left fd %d open", fd)
	}
	nilAttr := exec.Command("/bin/true")
	if err := g.Prepare(nilAttr); err != nil || nilAttr.SysProcAttr == nil || !nilAttr.SysProcAttr.UseCgroupFD {
		t.Errorf("Prepare(no SysProcAttr) = %v, %+v, want UseCgroupFD", err, nilAttr.SysProcAttr)
	}
	g.Started()

	// Kill writes cgroup.kill when the kernel has it.
	writeFiles(t, g.Path(), map[string]string{"cgroup.kill": "", "cgroup.procs": ""})
	if err := g.Kill(); err != nil {
		t.Errorf("Kill() = %v", err)
	}
	fileIs(t, filepath.Join(g.Path(), "cgroup.kill"), "1")

	if err := g.Remove(); err != nil {
		t.Errorf("Remove() = %v", err)
	}
	if err := g.Remove(); err != nil {
		t.Errorf("second Remove() = %v", err)
	}
	if err := g.Prepare(exec.Command("/bin/true")); err == nil {
		t.Errorf("Prepare after Remove = nil error, want one")
	}
	if err := m.Close(); err != nil {
		t.Errorf("Close() = %v", err)
	}
	if _, err := os.Stat(parent); !os.IsNotExist(err) {
		t.Errorf("parent after Close: %v, want removed", err)
	}
	if _, err := m.NewGroup("late", 0); !errors.Is(err, ErrClosed) {
		t.Errorf("NewGroup after Close = %v, want ErrClosed", err)
	}
}

func TestConfigureV2(t *testing.T) {
	for _, tc := range []struct {
		name  string
		limit int64
		want  map[string]string
	}{
		{name: "limit", limit: 1 << 30, want: map[string]string{"memory.max": "1073741824", "memory.swap.max": "0", "memory.oom.group": "1"}},
		{name: "no limit", limit: 0, want: map[string]string{"memory.max": "max", "memory.swap.max": "keep", "memory.oom.group": "1"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			writeFiles(t, dir, map[string]string{"memory.max": "max", "memory.swap.max": "keep", "memory.oom.group": "0"})
			if err := configureV2(dir, tc.limit); err != nil {
				t.Fatal(err)
			}
			for f, want := range tc.want {
				fileIs(t, filepath.Join(dir, f), want)
			}
		})
	}
	// Without swap accounting or oom.group, only memory.max is written.
	dir := t.TempDir()
	if err := configureV2(dir, 4096); err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{"memory.swap.max", "memory.oom.group"} {
		if exists(filepath.Join(dir, f)) {
			t.Errorf("configureV2 made %s, which the kernel did not have", f)
		}
	}
}

func TestCgroupV2Fallback(t *testing.T) {
	for _, tc := range []struct {
		name  string
		files map[string]string
		want  string
	}{
		{
			name:  "no memory controller",
			files: map[string]string{"cgroup.controllers": "cpu io\n", "cgroup.subtree_control": ""},
			want:  "memory controller not enabled",
		},
		{
			name:  "cannot enable",
			files: map[string]string{"cgroup.controllers": "memory\n", "cgroup.subtree_control/x": ""},
			want:  "cgroup.subtree_control",
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			own := t.TempDir()
			writeFiles(t, own, tc.files)
			m, err := newManager(cgroupV2{}, own, os.RemoveAll)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				m.Close()
				t.Errorf("newManager = %v, want an error with %q", err, tc.want)
			}
			entries, _ := os.ReadDir(own)
			for _, e := range entries {
				if strings.HasPrefix(e.Name(), "safepool-") {
					t.Errorf("failed newManager left %s", e.Name())
				}
			}
		})
	}
	var zero Manager
	if zero.Mode() != ModeNone || zero.Close() != nil {
		t.Errorf("zero Manager: mode %s, want %s and a quiet Close", zero.Mode(), ModeNone)
	}
	if _, err := zero.NewGroup("w", 1); !errors.Is(err, ErrNoCgroups) {
		t.Errorf("NewGroup of the zero Manager = %v, want ErrNoCgroups", err)
	}
}

func TestCgroupV1Files(t *testing.T) {
	own := t.TempDir()
	m, err := newManager(cgroupV1{bash: bashPath()}, own, os.RemoveAll)
	if err != nil || m.Mode() != ModeCgroupV1 {
		t.Fatalf("newManager(v1) = %v, want a Manager in %s", err, ModeCgroupV1)
	}
	defer m.Close()
	g, err := m.NewGroup("w1", 64<<20)
	if err != nil {
		t.Fatal(err)
	}
	fileIs(t, filepath.Join(g.Path(), "memory.limit_in_bytes"), "67108864")
	writeFiles(t, g.Path(), map[string]string{
		"memory.oom_control":          "oom_kill_disable 0\nunder_oom 0\noom_kill 2\n",
		"memory.usage_in_bytes":       "4096\n",
		"memory.max_usage_in_bytes":   "67108864\n",
		"memory.memsw.limit_in_bytes": "9223372036854771712\n",
	})
	if n, err := g.OOMKills(); n != 2 || err != nil {
		t.Errorf("OOMKills() = %d, %v, want 2", n, err)
	}
	if u, err := g.Usage(); u != 4096 || err != nil {
		t.Errorf("Usage() = %d, %v, want 4096", u, err)
	}
	if p, err := g.Peak(); p != 64<<20 || err != nil {
		t.Errorf("Peak() = %d, %v, want %d", p, err, 64<<20)
	}
	if err := g.ResetPeak(); err != nil {
		t.Errorf("ResetPeak() = %v", err)
	}
	fileIs(t, filepath.Join(g.Path(), "memory.max_usage_in_bytes"), "0")
	if err := configureV1(g.Path(), 1<<30); err != nil {
		t.Fatal(err)
	}
	fileIs(t, filepath.Join(g.Path(), "memory.memsw.limit_in_bytes"), "1073741824")

	cmd := exec.Command("/bin/true")
	if err := g.Prepare(cmd); err != nil {
		t.Fatal(err)
	}
	g.Started()
	procs := filepath.Join(g.Path(), "cgroup.procs")
	if cmd.Path != "/bin/sh" || cmd.Args[1] != "-c" || cmd.Args[4] != procs {
		t.Errorf("Prepare(v1) = %s %q, want the /bin/sh shim writing %s", cmd.Path, cmd.Args, procs)
	}
	// Kill without cgroup.kill goes over cgroup.procs, empty here.
	if err := g.Kill(); err != nil {
		t.Errorf("Kill() = %v", err)
	}
}

func TestCleanLeftovers(t *testing.T) {
	own := t.TempDir()
	exited := exec.Command("/bin/true")
	if err := exited.Run(); err != nil {
		t.Fatal(err)
	}
	dead := exited.Process.Pid
	if alive(dead) {
		t.Skipf("pid %d was reused at once", dead)
	}
	keep := []string{
		"safepool-1",                          // init is alive
		"safepool-x", "other", "safepool-12a", // not ours
	}
	gone := []string{
		fmt.Sprintf("safepool-%d", dead),
		fmt.Sprintf("safepool-%d-3", dead),
		fmt.Sprintf("safepool-%d", os.Getpid()), // an earlier process with our pid
	}
	for _, d := range append(slices.Concat(keep, gone), fmt.Sprintf("safepool-%d/w1/deeper", dead)) {
		if err := os.MkdirAll(filepath.Join(own, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := cleanLeftovers(cgroupV1{}, own, os.RemoveAll); err != nil {
		t.Errorf("cleanLeftovers() = %v", err)
	}
	for _, d := range keep {
		if !exists(filepath.Join(own, d)) {
			t.Errorf("cleanLeftovers removed %s, want kept", d)
		}
	}
	for _, d := range gone {
		if exists(filepath.Join(own, d)) {
			t.Errorf("cleanLeftovers kept %s, want removed", d)
		}
	}

	// A live Manager's own directory is not a leftover.
	m, err := newManager(cgroupV1{}, own, os.RemoveAll)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	dir := m.Detection().Parent
	if err := cleanLeftovers(cgroupV1{}, own, os.RemoveAll); err != nil || !exists(dir) {
		t.Errorf("cleanLeftovers removed a live Manager's %s (%v)", dir, err)
	}
	second, err := newManager(cgroupV1{}, own, os.RemoveAll)
	if err != nil {
		t.Fatal(err)
	}
	defer second.Close()
	if got, want := second.Detection().Parent, dir+"-2"; got != want {
		t.Errorf("second Manager's dir = %s, want %s", got, want)
	}
}

func TestParseParentName(t *testing.T) {
	for _, tc := range []struct {
		name string
		pid  int
	}{
		{"safepool-123", 123},
		{"safepool-123-2", 123},
		{"safepool-0", 0},
		{"safepool-", 0},
		{"safepool-12a", 0},
		{"safepool-12-", 0},
		{"safepool-12-x", 0},
		{"safepool--12", 0},
		{"other-12", 0},
	} {
		pid, ok := parseParentName(tc.name)
		if pid != tc.pid || ok != (tc.pid != 0) {
			t.Errorf("parseParentName(%q) = %d, %v, want %d", tc.name, pid, ok, tc.pid)
		}
	}
}

// unresettablePeak checks g's peaks where memory.peak, 67100000 now, cannot
// be reset (v2 kernels 5.19 to 6.11, where it is read-only): after
// ResetPeak, Peak is unknown (0) until the lifetime peak rises, and then
// that peak. It stands in for the read-only file with an immutable one,
// which root cannot open for writing either.
func unresettablePeak(t *testing.T, g *Group) {
	t.Helper()
	peak := filepath.Join(g.Path(), "memory.peak")
	chattr, err := exec.LookPath("chattr")
	if err != nil {
		testenv.SkipOrFail(t, "chattr (e2fsprogs) is not installed")
		return
	}
	if out, err := exec.Command(chattr, "+i", peak).CombinedOutput(); err != nil {
		testenv.SkipOrFail(t, fmt.Sprintf("chattr +i on the test's directory: %v: %s", err, out))
		return
	}
	mutable := func() {
		if out, err := exec.Command(chattr, "-i", peak).CombinedOutput(); err != nil {
			t.Fatalf("chattr -i: %v: %s", err, out)
		}
	}
	defer mutable()
	if err := g.ResetPeak(); err != nil {
		t.Errorf("ResetPeak() with memory.peak not writable = %v, want nil", err)
	}
	if p, err := g.Peak(); p != 0 || err != nil {
		t.Errorf("Peak() after ResetPeak, memory.peak unchanged = %d, %v, want 0 (unknown)", p, err)
	}
	mutable()
	writeFiles(t, g.Path(), map[string]string{"memory.peak": "90000000\n"})
	if p, err := g.Peak(); p != 90000000 || err != nil {
		t.Errorf("Peak() after the lifetime peak rose = %d, %v, want 90000000", p, err)
	}
}
