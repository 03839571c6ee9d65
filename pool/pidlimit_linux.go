package pool

import (
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	"github.com/prometheus/procfs"
)

// pidsRoom finds the pids cgroup, among this process's and those above it
// (v1 and v2), that leaves the least room for more processes and threads,
// and returns its pids.max, its pids.current and its directory. ok is
// false when no pids limit applies or none can be read.
func pidsRoom() (limit, inUse int64, dir string, ok bool) {
	fs, err := procfs.NewFS("/proc")
	if err != nil {
		return 0, 0, "", false
	}
	self, err := fs.Self()
	if err != nil {
		return 0, 0, "", false
	}
	cgroups, err := self.Cgroups()
	if err != nil {
		return 0, 0, "", false
	}
	mounts, err := self.MountInfo()
	if err != nil {
		return 0, 0, "", false
	}
	room := int64(-1)
	for _, cg := range cgroups {
		for _, m := range mounts {
			v2 := cg.HierarchyID == 0 && m.FSType == "cgroup2"
			_, pids := m.SuperOptions["pids"]
			v1 := cg.HierarchyID != 0 && m.FSType == "cgroup" && pids && slices.Contains(cg.Controllers, "pids")
			if !v1 && !v2 {
				continue
			}
			d, found := mountedDir(m, cg.Path)
			if !found {
				continue
			}
			// From the cgroup up to the mount, the lowest room wins: a
			// parent's limit holds its children's processes too.
			for {
				if l, u, has := readPids(d); has && (room < 0 || l-u < room) {
					room, limit, inUse, dir, ok = l-u, l, u, d, true
				}
				if d == m.MountPoint || !strings.HasPrefix(d, m.MountPoint+"/") {
					break
				}
				d = filepath.Dir(d)
			}
		}
	}
	return limit, inUse, dir, ok
}

// mountedDir returns the directory of cgroup path under mount m, when m
// shows it: m shows its hierarchy from m.Root down.
func mountedDir(m *procfs.MountInfo, path string) (string, bool) {
	switch {
	case m.Root == "/":
		return filepath.Join(m.MountPoint, path), true
	case path == m.Root || strings.HasPrefix(path, m.Root+"/"):
		return filepath.Join(m.MountPoint, strings.TrimPrefix(path, m.Root)), true
	}
	return "", false
}

// readPids reads pids.max and pids.current in cgroup directory dir; has is
// false when it has no limit ("max") or they cannot be read.
func readPids(dir string) (limit, inUse int64, has bool) {
	b, err := os.ReadFile(filepath.Join(dir, "pids.max"))
	if err != nil {
		return 0, 0, false
	}
	limit, err = strconv.ParseInt(strings.TrimSpace(string(b)), 10, 64)
	if err != nil {
		return 0, 0, false // "max"
	}
	b, err = os.ReadFile(filepath.Join(dir, "pids.current"))
	if err != nil {
		return 0, 0, false
	}
	inUse, err = strconv.ParseInt(strings.TrimSpace(string(b)), 10, 64)
	if err != nil {
		return 0, 0, false
	}
	return limit, inUse, true
}
