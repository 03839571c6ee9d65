package memory

import (
	"errors"
	"fmt"
	"io/fs"
	"path/filepath"

	"golang.org/x/sys/unix"
)

// Dir returns the Manager's parent directory, such as
// /sys/fs/cgroup/memory/x/safepool-123, or "" in the modes without a cgroup
// per worker.
func (m *Manager) Dir() string {
	if !m.det.Mode.PerWorker() {
		return ""
	}
	return m.det.Parent
}

// RemoveAbandoned kills every process in dir, the parent directory of a
// Manager whose process is gone ([Manager.Dir]), and in its groups, and
// removes them, deepest first. A pool's guardian process calls it when the
// supervisor died without closing its Manager; the next NewManager would
// otherwise find the directory only then. A missing dir is not an error. To
// guard against a wrong path, dir must be a cgroup directory named as
// Manager names its parent directories (safepool-<pid>[-<n>]).
func RemoveAbandoned(dir string) error {
	if _, ok := parseParentName(filepath.Base(dir)); !ok {
		return fmt.Errorf("memory: %s is not a safepool cgroup directory", dir)
	}
	var st unix.Statfs_t
	if err := unix.Statfs(dir, &st); err != nil {
		if errors.Is(err, unix.ENOENT) {
			return nil
		}
		return &fs.PathError{Op: "statfs", Path: dir, Err: err}
	}
	var c controller
	switch st.Type {
	case unix.CGROUP2_SUPER_MAGIC:
		c = cgroupV2{}
	case unix.CGROUP_SUPER_MAGIC:
		c = cgroupV1{}
	default:
		return fmt.Errorf("memory: %s is not in a cgroup file system", dir)
	}
	return removeTree(c, dir, rmdirCgroup)
}
