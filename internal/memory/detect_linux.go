package memory

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/prometheus/procfs"
)

// errNoController says that no hierarchy holds the memory controller.
var errNoController = errors.New("no cgroup memory controller mounted")

// location is this process's cgroup in the hierarchy that holds the memory
// controller.
type location struct {
	mode  Mode   // ModeCgroupV1 or ModeCgroupV2
	mount string // where the hierarchy is mounted
	dir   string // this process's cgroup directory
}

// version is the cgroup version of loc's hierarchy.
func (loc location) version() int {
	if loc.mode == ModeCgroupV1 {
		return 1
	}
	return 2
}

// locate finds this process's memory cgroup; see locateAt.
func locate() (location, error) { return locateAt("/proc") }

// locateAt finds this process's memory cgroup from self/cgroup and
// self/mountinfo under proc, where procfs is mounted: in the unified (v2)
// hierarchy when that holds the memory controller, else in the v1 memory
// hierarchy. Mountinfo rather than fixed paths, because containers mount
// cgroupfs in many ways. The leaf the supervisor may have moved itself
// into (Detection.Leaf) is not its cgroup: the one enclosing it is.
func locateAt(proc string) (location, error) {
	fs, err := procfs.NewFS(proc)
	if err != nil {
		return location{}, err
	}
	self, err := fs.Self()
	if err != nil {
		return location{}, err
	}
	cgroups, err := self.Cgroups()
	if err != nil {
		return location{}, err
	}
	mounts, err := self.MountInfo()
	if err != nil {
		return location{}, err
	}
	loc, err := locateIn(cgroups, mounts, readCgroupFile, self.PID)
	if err == nil && isSelfLeaf(loc.dir) {
		loc.dir = filepath.Dir(loc.dir)
	}
	return loc, err
}

// locateIn is locate on parsed files; read reads a cgroup file, and pid
// is this process's pid, which cgroup.procs files show (see findBelow).
func locateIn(cgroups []procfs.Cgroup, mounts []*procfs.MountInfo, read func(string) (string, error), pid int) (location, error) {
	var outside error // a v2 mount whose root is above the namespace's, where this process was not found
	for _, cg := range cgroups {
		if cg.HierarchyID != 0 {
			continue
		}
		for _, m := range mounts {
			if m.FSType != "cgroup2" {
				continue
			}
			dir, ok := cgroupDir(m, cg.Path, pid)
			if !ok {
				if up := levelsUp(m.Root); up > 0 {
					outside = fmt.Errorf("cgroup v2 hierarchy: %s shows it from %d levels above this process's cgroup namespace, and no cgroup %d levels below it holds this process (pid %d) at %s", m.MountPoint, up, up, pid, cg.Path)
				}
				continue
			}
			// The memory controller belongs to v2 when the hierarchy's
			// root lists it, even if our cgroup did not get it.
			controllers, err := read(filepath.Join(m.MountPoint, "cgroup.controllers"))
			if err == nil && hasWord(controllers, "memory") {
				return location{mode: ModeCgroupV2, mount: m.MountPoint, dir: dir}, nil
			}
		}
	}
	for _, cg := range cgroups {
		if !slices.Contains(cg.Controllers, "memory") {
			continue
		}
		err := fmt.Errorf("cgroup v1 memory hierarchy for %s is not mounted here", cg.Path)
		for _, m := range mounts {
			if _, ok := m.SuperOptions["memory"]; !ok || m.FSType != "cgroup" {
				continue
			}
			if dir, ok := cgroupDir(m, cg.Path, pid); ok {
				return location{mode: ModeCgroupV1, mount: m.MountPoint, dir: dir}, nil
			}
			if up := levelsUp(m.Root); up > 0 {
				err = fmt.Errorf("cgroup v1 memory hierarchy: %s shows it from %d levels above this process's cgroup namespace, and no cgroup %d levels below it holds this process (pid %d) at %s", m.MountPoint, up, up, pid, cg.Path)
			}
		}
		return location{}, err
	}
	if outside != nil {
		return location{}, outside
	}
	return location{}, errNoController
}

// cgroupDir returns the directory of cgroup path under mount m, which may
// show only a subtree (its Root) of the hierarchy, or more of it than this
// process's cgroup namespace, in which path is: see findBelow.
func cgroupDir(m *procfs.MountInfo, path string, pid int) (string, bool) {
	root := m.Root
	if root == "/" {
		return filepath.Join(m.MountPoint, path), true
	}
	if up := levelsUp(root); up > 0 {
		return findBelow(m.MountPoint, up, path, pid)
	}
	if path != root && !strings.HasPrefix(path, root+"/") {
		return "", false
	}
	return filepath.Join(m.MountPoint, strings.TrimPrefix(path, root)), true
}

// levelsUp returns how many levels above this process's cgroup namespace
// root a mount's root is, when it is an ancestor of it: mountinfo shows
// such a root as "/.." repeated ("/../../.." for three levels), which is
// how a process that entered a cgroup namespace (unshare -C, a container
// with its own) sees a cgroupfs mounted outside it (the host's, bind-
// mounted in). It returns 0 for any other root.
func levelsUp(root string) int {
	up := 0
	for _, e := range strings.Split(strings.TrimPrefix(root, "/"), "/") {
		if e != ".." {
			return 0
		}
		up++
	}
	return up
}

// maxFindBelow bounds how many cgroups findBelow looks at on one level, so
// that a host with very many cgroups does not slow the start down.
const maxFindBelow = 10000

// findBelow finds the directory of cgroup path, relative to this process's
// cgroup namespace, under a mount whose root is up levels above the
// namespace's root: mountinfo does not say which cgroups lie in between,
// so it looks for the cgroup at that depth below mountPoint whose path
// holds pid in its cgroup.procs (which lists the pids of the reader's pid
// namespace). Without it, the supervisor would take the host for its walls
// and miss its container's limit and oom_kill counter.
func findBelow(mountPoint string, up int, path string, pid int) (string, bool) {
	level := []string{mountPoint}
	for d := 0; d < up; d++ {
		var next []string
		for _, dir := range level {
			entries, err := os.ReadDir(dir)
			if err != nil {
				continue
			}
			for _, e := range entries {
				if e.IsDir() {
					next = append(next, filepath.Join(dir, e.Name()))
				}
			}
			if len(next) > maxFindBelow {
				return "", false
			}
		}
		level = next
	}
	for _, dir := range level {
		dir = filepath.Join(dir, path)
		if pids, err := readProcs(dir); err == nil && slices.Contains(pids, pid) {
			return dir, true
		}
	}
	return "", false
}
