package memory

import (
	"errors"
	"io/fs"
	"path/filepath"
	"strings"

	"github.com/prometheus/procfs"
)

// HostMemTotal returns the host's MemTotal in bytes.
func HostMemTotal() (int64, error) {
	mi, err := meminfo()
	if err != nil {
		return 0, err
	}
	if mi.MemTotalBytes == nil {
		return 0, errors.New("memory: no MemTotal in /proc/meminfo")
	}
	return int64(*mi.MemTotalBytes), nil
}

// HostMemAvailable returns the host's MemAvailable in bytes: the kernel's
// estimate of what can be allocated without swapping.
func HostMemAvailable() (int64, error) {
	mi, err := meminfo()
	if err != nil {
		return 0, err
	}
	if mi.MemAvailableBytes == nil {
		return 0, errors.New("memory: no MemAvailable in /proc/meminfo")
	}
	return int64(*mi.MemAvailableBytes), nil
}

func meminfo() (procfs.Meminfo, error) {
	fs, err := procfs.NewDefaultFS()
	if err != nil {
		return procfs.Meminfo{}, err
	}
	return fs.Meminfo()
}

// PressureFull returns the "full avg10" of /proc/pressure/memory: the
// percentage of the last ten seconds in which every non-idle task was
// stalled on memory. Kernels without PSI give an error.
func PressureFull() (avg10 float64, err error) {
	fs, err := procfs.NewDefaultFS()
	if err != nil {
		return 0, err
	}
	psi, err := fs.PSIStatsForResource("memory")
	if err != nil {
		return 0, err
	}
	if psi.Full == nil {
		return 0, errors.New("memory: no full line in /proc/pressure/memory")
	}
	return psi.Full.Avg10, nil
}

// OwnCgroupLimit returns the memory limit of the supervisor's own cgroup,
// such as a container's, and whether there is one. The limit is the
// smallest among its cgroup and the ancestors visible to it (v1
// hierarchical_memory_limit, v2 memory.max != "max"). Without a memory
// cgroup it returns 0, false, nil.
func OwnCgroupLimit() (int64, bool, error) {
	loc, err := locate()
	if errors.Is(err, errNoController) {
		return 0, false, nil
	}
	if err != nil {
		return 0, false, err
	}
	return ownLimit(loc)
}

// ownLimit reads the limit of loc.dir and its ancestors up to loc.mount.
func ownLimit(loc location) (int64, bool, error) {
	if loc.mode == ModeCgroupV1 {
		// hierarchical_memory_limit is already the smallest limit on the
		// way to the root.
		v, ok, err := readKey(filepath.Join(loc.dir, "memory.stat"), "hierarchical_memory_limit")
		if err != nil || !ok {
			return readLimit(filepath.Join(loc.dir, "memory.limit_in_bytes"))
		}
		if v >= unlimitedV1 {
			return 0, false, nil
		}
		return int64(v), true, nil
	}
	var limit int64
	found := false
	for dir := loc.dir; ; dir = filepath.Dir(dir) {
		v, ok, err := readLimit(filepath.Join(dir, "memory.max"))
		// The root cgroup, and cgroups without the memory controller,
		// have no memory.max.
		if err != nil && !errors.Is(err, fs.ErrNotExist) {
			return 0, false, err
		}
		if ok && (!found || v < limit) {
			limit, found = v, true
		}
		if dir == loc.mount || !strings.HasPrefix(dir, loc.mount+"/") {
			break
		}
	}
	return limit, found, nil
}
