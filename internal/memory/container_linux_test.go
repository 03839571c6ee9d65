package memory

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/procfs"
)

// A process in a cgroup namespace of its own (unshare -C, a container with
// private cgroups) that sees a cgroupfs mounted outside it (the host's
// /sys/fs/cgroup bind-mounted in, or a mount made before the namespace)
// reads its cgroup as "/" in /proc/self/cgroup, and the mount's root as
// "/.." repeated in mountinfo.

// TestLocateOutsideNamespace runs locateIn on fake trees where the
// supervisor's cgroup namespace root lies two levels below the mount's
// root: it must find its cgroup by the pid in cgroup.procs, not give up,
// which took the host for the walls and missed the container's limit.
func TestLocateOutsideNamespace(t *testing.T) {
	const pid = 4242
	for _, tc := range []struct {
		name    string
		v2      bool
		path    string // in /proc/self/cgroup
		root    string // the mount's root in mountinfo
		want    string // under the mount; "" for an error
		procsAt string // where pid is
	}{
		{name: "v1, namespace root", path: "/", root: "/../..", procsAt: "kubepods/pod1", want: "kubepods/pod1"},
		{name: "v1, below the namespace root", path: "/job", root: "/../..", procsAt: "kubepods/pod1/job", want: "kubepods/pod1/job"},
		{name: "v2, namespace root", v2: true, path: "/", root: "/..", procsAt: "docker-abc.scope", want: "docker-abc.scope"},
		{name: "v1, not there", path: "/", root: "/../..", procsAt: "kubepods", want: ""},
		{name: "v1, a sibling subtree", path: "/", root: "/../other", procsAt: "kubepods/pod1", want: ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			mount := t.TempDir()
			files := map[string]string{
				"cgroup.controllers":             "cpu io memory pids\n",
				"kubepods/cgroup.procs":          "1\n",
				"kubepods/pod0/cgroup.procs":     "7\n8\n",
				"kubepods/pod1/cgroup.procs":     "9\n",
				"kubepods/pod1/job/cgroup.procs": "",
				"docker-abc.scope/cgroup.procs":  "",
				"docker-def.scope/cgroup.procs":  "5\n",
			}
			files[filepath.Join(tc.procsAt, "cgroup.procs")] = "3\n" + strconv.Itoa(pid) + "\n"
			writeFiles(t, mount, files)
			cg := procfs.Cgroup{HierarchyID: 4, Controllers: []string{"memory"}, Path: tc.path}
			m := &procfs.MountInfo{Root: tc.root, MountPoint: mount, FSType: "cgroup", SuperOptions: map[string]string{"rw": "", "memory": ""}}
			mode := ModeCgroupV1
			if tc.v2 {
				cg = procfs.Cgroup{HierarchyID: 0, Path: tc.path}
				m = &procfs.MountInfo{Root: tc.root, MountPoint: mount, FSType: "cgroup2"}
				mode = ModeCgroupV2
			}
			got, err := locateIn([]procfs.Cgroup{cg}, []*procfs.MountInfo{m}, readCgroupFile, pid)
			if tc.want == "" {
				if err == nil {
					t.Errorf("locateIn = %+v, want an error", got)
				}
				return
			}
			want := location{mode: mode, mount: mount, dir: filepath.Join(mount, tc.want)}
			if got != want || err != nil {
				t.Errorf("locateIn = %+v, %v, want %+v", got, err, want)
			}
		})
	}
}

// TestLevelsUp checks which mountinfo roots are ancestors of the cgroup
// namespace's root.
func TestLevelsUp(t *testing.T) {
	for _, tc := range []struct {
		root string
		want int
	}{
		{"/", 0}, {"/..", 1}, {"/../../..", 3}, {"/../x", 0}, {"/docker/abc", 0}, {"/..x", 0},
	} {
		if got := levelsUp(tc.root); got != tc.want {
			t.Errorf("levelsUp(%q) = %d, want %d", tc.root, got, tc.want)
		}
	}
}

// located is what the "locate" helper prints.
type located struct {
	Cgroup string // this process's /proc/self/cgroup
	Dir    string // locate's dir, or ""
	Err    string // locate's error, or ""
	Limit  int64  // OwnCgroupLimit
}

// TestLocateInCgroupNamespace starts a process in a limited cgroup, in a
// cgroup namespace of its own, that keeps this host's cgroupfs mount (as a
// container that bind-mounts the host's /sys/fs/cgroup does): it must
// find its own cgroup and its limit. It needs root and cgroups.
func TestLocateInCgroupNamespace(t *testing.T) {
	m := requireCgroups(t)
	g, err := m.NewGroup("ns", 300*mib)
	if err != nil {
		t.Fatal(err)
	}
	defer g.Remove()
	cmd := helperCommand(t, "cgnsexec", g.Path())
	var out strings.Builder
	cmd.Stdout = &out
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	if err := waitTimeout(t, cmd, time.Minute); err != nil {
		t.Fatalf("helper: %v", err)
	}
	var got located
	if err := json.Unmarshal([]byte(out.String()), &got); err != nil {
		t.Fatalf("helper printed %q: %v", out.String(), err)
	}
	if path := cgroupLine(got.Cgroup, m.Mode()); path != "/" {
		t.Fatalf("the helper is not at its cgroup namespace's root: %q", got.Cgroup)
	}
	// The limit is the group's, unless the test's own cgroup has a lower.
	want := int64(300 * mib)
	if own, ok, err := OwnCgroupLimit(); err == nil && ok && own < want {
		want = own
	}
	if got.Dir != g.Path() || got.Limit != want {
		t.Errorf("in a cgroup namespace, locate() = %q (%s), OwnCgroupLimit() = %d, want %q, %d", got.Dir, got.Err, got.Limit, g.Path(), want)
	}
}

// runCgroupHelper runs the helper modes of this file.
func runCgroupHelper(mode string, args []string) (int, bool) {
	switch mode {
	case "cgnsexec":
		// Join the cgroup directory args[0], then run the "locate" helper
		// in a new cgroup namespace, rooted there.
		if err := os.WriteFile(filepath.Join(args[0], "cgroup.procs"), []byte(strconv.Itoa(os.Getpid())), 0); err != nil {
			os.Stderr.WriteString(err.Error() + "\n")
			return 1, true
		}
		exe, _ := os.Executable()
		child := exec.Command(exe)
		child.Env = append(os.Environ(), helperEnv+"=locate")
		child.Stdout, child.Stderr = os.Stdout, os.Stderr
		child.SysProcAttr = &syscall.SysProcAttr{Cloneflags: syscall.CLONE_NEWCGROUP, Pdeathsig: syscall.SIGKILL}
		if err := child.Run(); err != nil {
			os.Stderr.WriteString(err.Error() + "\n")
			return 1, true
		}
		return 0, true
	case "locate":
		var r located
		cg, _ := os.ReadFile("/proc/self/cgroup")
		r.Cgroup = string(cg)
		if loc, err := locate(); err != nil {
			r.Err = err.Error()
		} else {
			r.Dir = loc.dir
		}
		r.Limit, _, _ = OwnCgroupLimit()
		json.NewEncoder(os.Stdout).Encode(r)
		return 0, true
	}
	return 0, false
}

// TestDetectV2Container runs mode detection in cgroup v2 containers as
// Docker and Kubernetes lay them out: a cgroup namespace of their own,
// whose root, the container's cgroup, is mounted at /sys/fs/cgroup
// ("0::/" in /proc/self/cgroup, root "/" in mountinfo). Unlike the
// hierarchy's root, that cgroup has memory.max and memory.events, and
// cannot give its children controllers while it holds processes.
func TestDetectV2Container(t *testing.T) {
	const limit = "536870912\n"
	for _, tc := range []struct {
		name   string
		euid   int
		pids   []int // in the container's cgroup, besides the supervisor
		deny   error // refuses writes to cgroup.subtree_control
		want   Detection
		reason []string
	}{
		{
			name: "root, privileged, the supervisor alone (its PID 1)",
			want: Detection{Mode: ModeCgroupV2, Version: 2, Own: "OWN", Parent: "OWN/safepool-PID", Leaf: "OWN/safepool-PID-0"},
		},
		{
			name:   "root, privileged, beside an init",
			pids:   []int{1},
			want:   Detection{Mode: ModeEnclosing, Version: 2, Own: "OWN", OOMCounter: "OWN/memory.events.local"},
			reason: []string{"1 processes besides the supervisor"},
		},
		{
			name:   "root, cgroupfs read-only (Docker's default)",
			deny:   syscall.EROFS,
			want:   Detection{Mode: ModeEnclosing, Version: 2, Own: "OWN", OOMCounter: "OWN/memory.events.local"},
			reason: []string{"read-only file system"},
		},
		{
			name:   "a user, files owned by root",
			euid:   1000,
			deny:   syscall.EACCES,
			want:   Detection{Mode: ModeEnclosing, Version: 2, Own: "OWN", OOMCounter: "OWN/memory.events.local"},
			reason: []string{"permission denied"},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			forgetLeaf(t)
			h := newFakeV2(t, "/")
			h.nsRoot = true
			writeFiles(t, h.mount, map[string]string{
				"cgroup.procs":           "",
				"cgroup.subtree_control": "",
				"cgroup.controllers":     "cpuset cpu io memory hugetlb pids rdma misc\n",
				"memory.max":             limit,
				"memory.events":          v2Events,
				"memory.events.local":    v2Events,
			})
			own := h.cgroup("/", append([]int{h.pid}, tc.pids...), nil)
			if tc.deny != nil {
				h.deny[filepath.Join(own, "cgroup.subtree_control")] = tc.deny
			}
			m := h.detect(tc.euid)
			got := m.Detection()
			sub := strings.NewReplacer("OWN", own, "PID", strconv.Itoa(h.pid))
			want := tc.want
			want.Own, want.Parent, want.Leaf, want.OOMCounter = sub.Replace(want.Own), sub.Replace(want.Parent), sub.Replace(want.Leaf), sub.Replace(want.OOMCounter)
			got.NoCgroups = nil
			if got != want {
				t.Fatalf("Detection() = %+v, want %+v (%s)", got, want, m.Reason())
			}
			for _, s := range tc.reason {
				if !strings.Contains(m.Reason(), s) {
					t.Errorf("Reason() = %q, want it to say %q", m.Reason(), s)
				}
			}
			// After a move into a leaf, /proc/self/cgroup names the leaf;
			// the container's cgroup is still the supervisor's own, and
			// its limit the budget's.
			if got.Leaf != "" {
				h.writeProc(fmt.Sprintf("0::/safepool-%d-0\n", h.pid),
					fmt.Sprintf("35 24 0:30 / %s rw - cgroup2 cgroup2 rw\n", h.mount))
			}
			loc, err := locateAt(h.proc)
			if err != nil || loc.dir != own {
				t.Fatalf("locateAt = %+v, %v, want the container's cgroup %s", loc, err, own)
			}
			if l, ok, err := ownLimit(loc); l != 512<<20 || !ok || err != nil {
				t.Errorf("ownLimit = %d, %v, %v, want the container's 512 MiB", l, ok, err)
			}
			if w := m.OOMWitness(); got.Mode == ModeEnclosing {
				writeFiles(t, own, map[string]string{"memory.events.local": strings.Replace(v2Events, "oom_kill 0", "oom_kill 1", 1)})
				if k, err := w.read(); k != 1 || err != nil {
					t.Errorf("witness reads %d, %v, want oom_kill 1 of memory.events.local", k, err)
				}
			}
		})
	}
}
