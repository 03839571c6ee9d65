package memory

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"path/filepath"
	"strings"
)

// HostMemTotal returns the host's MemTotal in bytes.
func HostMemTotal() (int64, error) {
	total, _, err := meminfo()
	return total, err
}

// HostMemAvailable returns the host's MemAvailable in bytes: the kernel's
// estimate of what can be allocated without swapping.
func HostMemAvailable() (int64, error) {
	_, avail, err := meminfo()
	return avail, err
}

// meminfo returns MemTotal and MemAvailable of /proc/meminfo, in bytes.
func meminfo() (total, avail int64, err error) {
	type both struct{ total, avail int64 }
	v, err := withScratch("/proc/meminfo", func(b []byte) (both, error) {
		t, avail, err := parseMeminfo(b)
		return both{t, avail}, err
	})
	if err != nil {
		return 0, 0, fmt.Errorf("memory: reading /proc/meminfo: %w", err)
	}
	return v.total, v.avail, nil
}

// parseMeminfo picks MemTotal and MemAvailable out of /proc/meminfo's
// text, in bytes, without making a string of any line.
func parseMeminfo(b []byte) (total, avail int64, err error) {
	haveTotal, haveAvail := false, false
	for len(b) > 0 && !(haveTotal && haveAvail) {
		var line []byte
		line, b, _ = bytes.Cut(b, []byte{'\n'})
		var dst *int64
		var have *bool
		var rest []byte
		var ok bool
		if rest, ok = bytes.CutPrefix(line, []byte("MemTotal:")); ok {
			dst, have = &total, &haveTotal
		} else if rest, ok = bytes.CutPrefix(line, []byte("MemAvailable:")); ok {
			dst, have = &avail, &haveAvail
		} else {
			continue
		}
		kb, ok := kibibytes(rest)
		if !ok {
			return 0, 0, fmt.Errorf("memory: unexpected line %q in /proc/meminfo", line)
		}
		*dst, *have = kb<<10, true
	}
	if !haveTotal || !haveAvail {
		return 0, 0, errors.New("memory: no MemTotal or MemAvailable in /proc/meminfo")
	}
	return total, avail, nil
}

// kibibytes parses " 16314228 kB", the value of a /proc/meminfo line.
func kibibytes(b []byte) (int64, bool) {
	b = bytes.TrimSpace(b)
	b, ok := bytes.CutSuffix(b, []byte(" kB"))
	if !ok || len(b) > 18 {
		return 0, false
	}
	n, ok := parseDecimal(b)
	return int64(n), ok
}

// PressureFull returns the "full avg10" of /proc/pressure/memory: the
// percentage of the last ten seconds in which every non-idle task was
// stalled on memory. Kernels without PSI give an error.
func PressureFull() (avg10 float64, err error) {
	return withScratch("/proc/pressure/memory", parseFullAvg10)
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
