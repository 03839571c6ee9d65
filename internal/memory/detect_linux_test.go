package memory

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
)

// These tests run mode detection against fake cgroupfs trees: temp dirs laid
// out like /sys/fs/cgroup, with the /proc/self/cgroup and
// /proc/self/mountinfo that a process in them would see, and a fake kernel
// for the writes whose rules a plain directory does not enforce. This host
// has cgroup v1 only, so they are how cgroup v2 delegation is tested.

// fakeHost is a fake /proc and cgroupfs under one temp dir.
type fakeHost struct {
	t     *testing.T
	root  string // the temp dir
	proc  string // the fake /proc
	mount string // where the fake cgroup hierarchy is mounted
	pid   int    // the supervisor
	// deny makes the fake kernel refuse writes to these files.
	deny map[string]error
	// nsRoot reports whether the mount shows a cgroup namespace's root (a
	// container's cgroup), which is not the hierarchy's root: the no-
	// internal-process rule holds there too.
	nsRoot bool
}

// newFakeV2 lays out a cgroup v2 hierarchy with the memory controller,
// and a supervisor (this process's pid) in the cgroup at path.
func newFakeV2(t *testing.T, path string) *fakeHost {
	t.Helper()
	h := &fakeHost{t: t, root: t.TempDir(), pid: os.Getpid(), deny: map[string]error{}}
	h.proc = filepath.Join(h.root, "proc")
	h.mount = filepath.Join(h.root, "sys/fs/cgroup")
	h.writeProc(fmt.Sprintf("0::%s\n", path),
		fmt.Sprintf("35 24 0:30 / %s rw,nosuid,nodev,noexec,relatime shared:9 - cgroup2 cgroup2 rw,nsdelegate,memory_recursiveprot\n", h.mount))
	writeFiles(t, h.mount, map[string]string{
		"cgroup.controllers":     "cpuset cpu io memory pids\n",
		"cgroup.subtree_control": "cpu io memory pids\n",
	})
	return h
}

// writeProc writes the fake /proc/self: its cgroup and mountinfo files.
func (h *fakeHost) writeProc(cgroup, mountinfo string) {
	h.t.Helper()
	pid := strconv.Itoa(h.pid)
	writeFiles(h.t, h.proc, map[string]string{pid + "/cgroup": cgroup, pid + "/mountinfo": mountinfo})
	os.Remove(filepath.Join(h.proc, "self"))
	if err := os.Symlink(pid, filepath.Join(h.proc, "self")); err != nil {
		h.t.Fatal(err)
	}
}

// cgroup lays out a v2 cgroup at path with the given processes and control
// files, and returns its directory.
func (h *fakeHost) cgroup(path string, pids []int, files map[string]string) string {
	h.t.Helper()
	dir := filepath.Join(h.mount, path)
	var procs strings.Builder
	for _, p := range pids {
		fmt.Fprintln(&procs, p)
	}
	all := map[string]string{"cgroup.procs": procs.String(), "cgroup.subtree_control": ""}
	for k, v := range files {
		all[k] = v
	}
	writeFiles(h.t, dir, all)
	return dir
}

// write is the fake kernel's write to a control file. It enforces what
// the tests depend on: a non-root cgroup that holds processes cannot give
// its children controllers (EBUSY), a process written to cgroup.procs
// leaves the cgroup it was in, and the files in deny cannot be written.
func (h *fakeHost) write(path, value string) error {
	if err, ok := h.deny[path]; ok {
		return &fs.PathError{Op: "write", Path: path, Err: err}
	}
	dir, file := filepath.Split(path)
	dir = filepath.Clean(dir)
	switch file {
	case "cgroup.subtree_control":
		if pids, _ := readProcs(dir); len(pids) > 0 && (dir != h.mount || h.nsRoot) {
			return &fs.PathError{Op: "write", Path: path, Err: syscall.EBUSY}
		}
		old, _ := readCgroupFile(path)
		return writeCgroupFile(path, strings.TrimSpace(old+" "+strings.TrimPrefix(value, "+")))
	case "cgroup.procs":
		pid, err := strconv.Atoi(value)
		if err != nil {
			return &fs.PathError{Op: "write", Path: path, Err: syscall.EINVAL}
		}
		err = filepath.WalkDir(h.mount, func(p string, d fs.DirEntry, err error) error {
			if err != nil || d.Name() != "cgroup.procs" {
				return err
			}
			pids, err := readProcs(filepath.Dir(p))
			if err != nil || !slices.Contains(pids, pid) {
				return err
			}
			var rest strings.Builder
			for _, q := range pids {
				if q != pid {
					fmt.Fprintln(&rest, q)
				}
			}
			return os.WriteFile(p, []byte(rest.String()), 0o644)
		})
		if err != nil {
			return err
		}
		old, _ := os.ReadFile(path)
		return os.WriteFile(path, append(old, []byte(value+"\n")...), 0o644)
	}
	return writeCgroupFile(path, value)
}

// detect runs mode detection on the fake host as user euid. The Manager is
// closed when the test ends.
func (h *fakeHost) detect(euid int) *Manager {
	h.t.Helper()
	m := detect(system{proc: h.proc, euid: euid, pid: h.pid, write: h.write, rmdir: os.RemoveAll})
	h.t.Cleanup(func() { m.Close() })
	return m
}

// forgetLeaf undoes what a fake move into a leaf recorded for this process.
func forgetLeaf(t *testing.T) {
	t.Cleanup(func() {
		parents.Lock()
		delete(parents.inUse, parents.leaf)
		parents.leaf = ""
		parents.Unlock()
	})
}

const (
	serviceCgroup = "/user.slice/user-1000.slice/user@1000.service/app.slice/job.service"
	v2Events      = "low 0\nhigh 0\nmax 0\noom 0\noom_kill 0\noom_group_kill 0\n"
)

// TestDetectV2Delegated: an unprivileged supervisor alone in a delegated
// cgroup v2 service moves itself into a leaf, enables the memory controller
// for its cgroup's children and gives each worker a cgroup.
func TestDetectV2Delegated(t *testing.T) {
	forgetLeaf(t)
	h := newFakeV2(t, serviceCgroup)
	own := h.cgroup(serviceCgroup, []int{h.pid}, map[string]string{
		"cgroup.controllers":  "memory pids\n",
		"memory.events":       v2Events,
		"memory.events.local": v2Events,
	})
	m := h.detect(1000)
	d := m.Detection()
	leaf := filepath.Join(own, fmt.Sprintf("safepool-%d-0", h.pid))
	parent := filepath.Join(own, fmt.Sprintf("safepool-%d", h.pid))
	want := Detection{Mode: ModeCgroupV2, Version: 2, Own: own, Parent: parent, Delegated: true, Leaf: leaf}
	if d != want {
		t.Fatalf("Detection() = %+v (%s), want %+v", d, m.Reason(), want)
	}
	for _, s := range []string{"cgroup v2", parent, "delegated", leaf} {
		if !strings.Contains(m.Reason(), s) {
			t.Errorf("Reason() = %q, want it to say %q", m.Reason(), s)
		}
	}
	if m.OOMWitness() != nil {
		t.Errorf("OOMWitness() with a cgroup per worker = %s, want nil", m.OOMWitness().File())
	}
	fileIs(t, filepath.Join(own, "cgroup.procs"), "")
	fileIs(t, filepath.Join(leaf, "cgroup.procs"), fmt.Sprintln(h.pid))
	fileIs(t, filepath.Join(own, "cgroup.subtree_control"), "memory")
	fileIs(t, filepath.Join(parent, "cgroup.subtree_control"), "memory")
	g, err := m.NewGroup("w0", 64<<20)
	if err != nil {
		t.Fatal(err)
	}
	fileIs(t, filepath.Join(g.Path(), "memory.max"), "67108864")

	// The leaf is not the supervisor's cgroup: the service is, for the
	// budget, a second Manager and the leftovers of dead supervisors.
	h.writeProc(fmt.Sprintf("0::%s/safepool-%d-0\n", serviceCgroup, h.pid),
		fmt.Sprintf("35 24 0:30 / %s rw - cgroup2 cgroup2 rw\n", h.mount))
	if loc, err := locateAt(h.proc); err != nil || loc.dir != own {
		t.Errorf("locateAt after the move = %+v, %v, want the service's cgroup %s", loc, err, own)
	}
	second := h.detect(1000).Detection()
	if second.Mode != ModeCgroupV2 || second.Parent != parent+"-2" || second.Leaf != "" {
		t.Errorf("second Detection() = %+v, want cgroup v2 in %s-2 without a move", second, parent)
	}
	if err := cleanLeftovers(cgroupV2{}, own, os.RemoveAll); err != nil || !exists(leaf) {
		t.Errorf("cleanLeftovers removed the supervisor's own leaf (%v)", err)
	}
}

func TestDetectV2(t *testing.T) {
	for _, tc := range []struct {
		name  string
		path  string
		euid  int
		pids  []int // in the supervisor's cgroup, besides it
		files map[string]string
		deny  []string // control files of the supervisor's cgroup it may not write
		want  Detection
		// reason holds what Reason must say; OWN stands for the
		// supervisor's cgroup directory.
		reason []string
	}{
		{
			name:   "root in the root cgroup",
			path:   "/",
			files:  map[string]string{},
			want:   Detection{Mode: ModeCgroupV2, Version: 2, Own: "OWN", Parent: "OWN/safepool-PID"},
			reason: []string{"cgroup v2: a memory cgroup per worker under OWN/safepool-PID"},
		},
		{
			name:   "memory already enabled below",
			path:   serviceCgroup,
			euid:   1000,
			files:  map[string]string{"cgroup.controllers": "memory\n", "cgroup.subtree_control": "memory\n", "memory.events": v2Events},
			want:   Detection{Mode: ModeCgroupV2, Version: 2, Own: "OWN", Parent: "OWN/safepool-PID", Delegated: true},
			reason: []string{"delegated"},
		},
		{
			name:   "other processes beside the supervisor",
			path:   serviceCgroup,
			euid:   1000,
			pids:   []int{1, 77},
			files:  map[string]string{"cgroup.controllers": "memory\n", "memory.events": v2Events, "memory.events.local": v2Events},
			want:   Detection{Mode: ModeEnclosing, Version: 2, Own: "OWN", OOMCounter: "OWN/memory.events.local"},
			reason: []string{"enclosing cgroup", "OWN, whose memory.events.local confirms", "2 processes besides the supervisor", "cgroup of its own"},
		},
		{
			name:   "not delegated",
			path:   "/system.slice/job.service",
			euid:   1000,
			files:  map[string]string{"cgroup.controllers": "memory\n", "memory.events": v2Events},
			deny:   []string{"cgroup.subtree_control"},
			want:   Detection{Mode: ModeEnclosing, Version: 2, Own: "OWN", OOMCounter: "OWN/memory.events"},
			reason: []string{"enclosing cgroup", "permission denied"},
		},
		{
			name:   "no memory controller for the supervisor's cgroup",
			path:   "/system.slice/job.service",
			euid:   1000,
			files:  map[string]string{"cgroup.controllers": "pids\n"},
			want:   Detection{Mode: ModeNone, Version: 2, Own: "OWN"},
			reason: []string{"no cgroup", "memory controller not enabled", "no readable oom_kill counter"},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			forgetLeaf(t)
			h := newFakeV2(t, tc.path)
			own := h.cgroup(tc.path, append([]int{h.pid}, tc.pids...), tc.files)
			for _, f := range tc.deny {
				h.deny[filepath.Join(own, f)] = syscall.EACCES
			}
			m := h.detect(tc.euid)
			got := m.Detection()
			sub := strings.NewReplacer("OWN", own, "PID", strconv.Itoa(h.pid))
			want := tc.want
			want.Own, want.Parent, want.OOMCounter = sub.Replace(want.Own), sub.Replace(want.Parent), sub.Replace(want.OOMCounter)
			if got.NoCgroups == nil != want.Mode.PerWorker() {
				t.Errorf("Detection().NoCgroups = %v in %s", got.NoCgroups, got.Mode)
			}
			got.NoCgroups = nil
			if got != want {
				t.Errorf("Detection() = %+v, want %+v (%s)", got, want, m.Reason())
			}
			for _, s := range tc.reason {
				if s = sub.Replace(s); !strings.Contains(m.Reason(), s) {
					t.Errorf("Reason() = %q, want it to say %q", m.Reason(), s)
				}
			}
			if w := m.OOMWitness(); (w != nil) != (got.Mode == ModeEnclosing) || w != nil && w.File() != want.OOMCounter {
				t.Errorf("OOMWitness() = %v in %s, want one of %q", w, got.Mode, want.OOMCounter)
			}
			if _, err := m.NewGroup("w0", 1<<20); (err == nil) != got.Mode.PerWorker() || err != nil && !errors.Is(err, ErrNoCgroups) {
				t.Errorf("NewGroup in %s = %v", got.Mode, err)
			}
			if !got.Mode.PerWorker() {
				entries, _ := os.ReadDir(own)
				for _, e := range entries {
					if strings.HasPrefix(e.Name(), "safepool-") {
						t.Errorf("detection left %s", e.Name())
					}
				}
				if pids, _ := readProcs(own); !slices.Contains(pids, h.pid) {
					t.Errorf("the supervisor left its cgroup: cgroup.procs = %v", pids)
				}
			}
		})
	}
}

// TestDetectV1 finds the v1 memory hierarchy beside a unified one without
// the memory controller (systemd's hybrid layout), mounted as a subtree as
// in a container.
func TestDetectV1(t *testing.T) {
	h := &fakeHost{t: t, root: t.TempDir(), pid: os.Getpid()}
	h.proc = filepath.Join(h.root, "proc")
	h.mount = filepath.Join(h.root, "sys/fs/cgroup/memory")
	unified := filepath.Join(h.root, "sys/fs/cgroup/unified")
	h.writeProc("12:pids:/docker/abc\n4:memory:/docker/abc\n0::/\n", fmt.Sprintf(
		"30 24 0:26 / %s rw,nosuid,nodev,noexec,relatime shared:5 - cgroup2 cgroup2 rw,nsdelegate\n"+
			"40 24 0:35 /docker/abc %s rw,nosuid,nodev,noexec,relatime shared:20 - cgroup cgroup rw,memory\n",
		unified, h.mount))
	writeFiles(t, unified, map[string]string{"cgroup.controllers": ""})
	writeFiles(t, h.mount, map[string]string{"memory.oom_control": "oom_kill_disable 0\nunder_oom 0\noom_kill 0\n"})
	m := h.detect(0)
	want := Detection{Mode: ModeCgroupV1, Version: 1, Own: h.mount, Parent: filepath.Join(h.mount, fmt.Sprintf("safepool-%d", h.pid))}
	got := m.Detection()
	// A plain directory has no tasks file to move a thread into: workers
	// start through the shim.
	if got.ShimStart == nil || !strings.Contains(m.Reason(), "shell shim") {
		t.Errorf("Detection().ShimStart = nil (%s), want why a thread cannot start workers here", m.Reason())
	}
	got.ShimStart = nil
	if got != want {
		t.Errorf("Detection() = %+v (%s), want %+v", got, m.Reason(), want)
	}
}

func TestDetectNoController(t *testing.T) {
	h := newFakeV2(t, "/")
	writeFiles(t, h.mount, map[string]string{"cgroup.controllers": "cpu pids\n"})
	m := h.detect(1000)
	got := m.Detection()
	if got.Mode != ModeNone || got.Own != "" || !errors.Is(got.NoCgroups, errNoController) {
		t.Errorf("Detection() = %+v, want no-cgroup for want of a memory controller", got)
	}
	for _, s := range []string{"no cgroup", "no cgroup memory controller mounted", "kernel log"} {
		if !strings.Contains(m.Reason(), s) {
			t.Errorf("Reason() = %q, want it to say %q", m.Reason(), s)
		}
	}
}

func TestModeString(t *testing.T) {
	for _, tc := range []struct {
		mode      Mode
		name      string
		perWorker bool
	}{
		{ModeNone, "no-cgroup", false},
		{ModeEnclosing, "enclosing-cgroup", false},
		{ModeCgroupV1, "cgroup-v1", true},
		{ModeCgroupV2, "cgroup-v2", true},
		{Mode(9), "Mode(9)", false},
	} {
		if got := tc.mode.String(); got != tc.name {
			t.Errorf("Mode(%d).String() = %q, want %q", int(tc.mode), got, tc.name)
		}
		if got := tc.mode.PerWorker(); got != tc.perWorker {
			t.Errorf("%s.PerWorker() = %v, want %v", tc.mode, got, tc.perWorker)
		}
	}
}
