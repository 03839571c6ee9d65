package memory

import (
	"errors"
	"fmt"
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
	loc, err := locateIn(cgroups, mounts, readCgroupFile)
	if err == nil && isSelfLeaf(loc.dir) {
		loc.dir = filepath.Dir(loc.dir)
	}
	return loc, err
}

// locateIn is locate on parsed files; read reads a cgroup file.
func locateIn(cgroups []procfs.Cgroup, mounts []*procfs.MountInfo, read func(string) (string, error)) (location, error) {
	for _, cg := range cgroups {
		if cg.HierarchyID != 0 {
			continue
		}
		for _, m := range mounts {
			if m.FSType != "cgroup2" {
				continue
			}
			dir, ok := cgroupDir(m, cg.Path)
			if !ok {
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
		for _, m := range mounts {
			if _, ok := m.SuperOptions["memory"]; !ok || m.FSType != "cgroup" {
				continue
			}
			if dir, ok := cgroupDir(m, cg.Path); ok {
				return location{mode: ModeCgroupV1, mount: m.MountPoint, dir: dir}, nil
			}
		}
		return location{}, fmt.Errorf("cgroup v1 memory hierarchy for %s is not mounted here", cg.Path)
	}
	return location{}, errNoController
}

// cgroupDir returns the directory of cgroup path under mount m, which may
// show only a subtree (its Root) of the hierarchy.
func cgroupDir(m *procfs.MountInfo, path string) (string, bool) {
	root := m.Root
	if root == "/" {
		return filepath.Join(m.MountPoint, path), true
	}
	if path != root && !strings.HasPrefix(path, root+"/") {
		return "", false
	}
	return filepath.Join(m.MountPoint, strings.TrimPrefix(path, root)), true
}
