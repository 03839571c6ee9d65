package memory

import (
	"bytes"
	"errors"
	"fmt"
	"path/filepath"
	"strconv"
	"strings"
)

// Sensor reads the memory walls around the supervisor and how close it is
// to them: the host (MemTotal, MemAvailable), the supervisor's own memory
// cgroup (its limit and working set) and memory pressure (PSI). Its
// methods are safe for concurrent use; the zero Sensor sees the host only.
type Sensor struct {
	loc   location // the supervisor's memory cgroup, when found
	hasCg bool
	// walls are the cgroups above loc.dir that have a memory limit of
	// their own and count loc.dir's memory in theirs, nearest first; found
	// once. Their usage holds processes beside the supervisor's cgroup.
	walls []string
}

// NewSensor finds the supervisor's memory cgroup, and the limited cgroups
// above it, once. Without one (no memory controller, not Linux) the Sensor
// still reads the host.
func NewSensor() *Sensor {
	loc, err := locate()
	if err != nil {
		return &Sensor{}
	}
	walls := wallsAbove(loc)
	// Read ten times a second for the pool's life: kept open.
	keepDir(loc.dir)
	for _, dir := range walls {
		keepDir(dir)
	}
	return &Sensor{loc: loc, hasCg: true, walls: walls}
}

// wallsAbove lists the cgroups above loc.dir, up to loc.mount, that have a
// memory limit of their own and count loc.dir's memory in theirs, nearest
// first. Under cgroup v1 an ancestor whose memory.use_hierarchy is 0 does
// not count its children's memory, nor limit it: the walk stops there.
func wallsAbove(loc location) []string {
	limitFile := "memory.max"
	if loc.mode == ModeCgroupV1 {
		limitFile = "memory.limit_in_bytes"
	}
	var walls []string
	for dir := loc.dir; dir != loc.mount && strings.HasPrefix(dir, loc.mount+"/"); {
		dir = filepath.Dir(dir)
		if loc.mode == ModeCgroupV1 {
			if h, err := readCgroupFile(filepath.Join(dir, "memory.use_hierarchy")); err == nil && h == "0" {
				break
			}
		}
		if _, ok, err := readLimit(filepath.Join(dir, limitFile)); err == nil && ok {
			walls = append(walls, dir)
		}
	}
	return walls
}

// HostTotal returns the host's MemTotal in bytes.
func (s *Sensor) HostTotal() (int64, error) { return HostMemTotal() }

// HostUsed returns the host's memory in use in bytes: MemTotal less
// MemAvailable, so reclaimable page cache does not count.
func (s *Sensor) HostUsed() (int64, error) {
	total, avail, err := meminfo()
	if err != nil {
		return 0, err
	}
	return total - avail, nil
}

// CgroupLimit returns the memory limit of the supervisor's cgroup and its
// ancestors, as [OwnCgroupLimit] does, and whether there is one.
func (s *Sensor) CgroupLimit() (int64, bool, error) {
	if !s.hasCg {
		return 0, false, nil
	}
	return ownLimit(s.loc)
}

// CgroupUsed returns how much of the limit that CgroupLimit returns is in
// use, in bytes: the working set of the supervisor's own cgroup (its usage,
// workers included, as they live below it, less its inactive page cache,
// which the kernel reclaims before it OOM-kills). Where a cgroup above it
// has a limit of its own, as when the program that started the supervisor
// runs in a cgroup beside it, or a pod holds several containers, that
// cgroup's working set holds what the processes beside the supervisor's
// cgroup use: then the figure is the limit less the least room any of them
// leaves (its limit less its working set), so that what is left under the
// limit is what the tightest of them leaves. Without a memory cgroup it
// returns an error matching errors.ErrUnsupported.
func (s *Sensor) CgroupUsed() (int64, error) {
	if !s.hasCg {
		return 0, fmt.Errorf("memory: no memory cgroup: %w", errors.ErrUnsupported)
	}
	own, err := workingSet(s.loc.mode, s.loc.dir)
	if err != nil || len(s.walls) == 0 {
		return own, err
	}
	limit, ok, err := ownLimit(s.loc)
	if err != nil || !ok {
		return own, err
	}
	room := limit - own
	limitFile := "memory.max"
	if s.loc.mode == ModeCgroupV1 {
		limitFile = "memory.limit_in_bytes"
	}
	for _, dir := range s.walls {
		l, ok, err := readLimit(filepath.Join(dir, limitFile))
		if err != nil || !ok {
			continue // removed, or its limit lifted, since NewSensor
		}
		ws, err := workingSet(s.loc.mode, dir)
		if err != nil {
			continue
		}
		room = min(room, l-ws)
	}
	return max(own, limit-room), nil
}

// workingSet returns the usage of the cgroup dir less its inactive page
// cache, in bytes.
func workingSet(mode Mode, dir string) (int64, error) {
	usageFile, inactiveKey := "memory.current", "inactive_file"
	if mode == ModeCgroupV1 {
		usageFile, inactiveKey = "memory.usage_in_bytes", "total_inactive_file"
	}
	usage, err := readInt(filepath.Join(dir, usageFile))
	if err != nil {
		return 0, err
	}
	inactive, ok, err := readKey(filepath.Join(dir, "memory.stat"), inactiveKey)
	if err != nil || !ok {
		return usage, nil // a missing statistic only makes the figure cautious
	}
	return max(0, usage-int64(inactive)), nil
}

// Pressure returns the "full avg10" memory pressure in percent: of the
// supervisor's own cgroup under cgroup v2 (memory.pressure), otherwise of
// the host (/proc/pressure/memory). Kernels without PSI give an error.
func (s *Sensor) Pressure() (float64, error) {
	if s.hasCg && s.loc.mode == ModeCgroupV2 {
		if v, err := withScratch(filepath.Join(s.loc.dir, "memory.pressure"), parseFullAvg10); err == nil {
			return v, nil
		}
	}
	return PressureFull()
}

// parseFullAvg10 reads avg10 from the "full" line of a PSI file
// ("full avg10=0.00 avg60=0.00 avg300=0.00 total=0").
func parseFullAvg10(b []byte) (float64, error) {
	for len(b) > 0 {
		var line []byte
		line, b, _ = bytes.Cut(b, []byte{'\n'})
		rest, ok := bytes.CutPrefix(line, []byte("full "))
		if !ok {
			continue
		}
		for len(rest) > 0 {
			var f []byte
			f, rest, _ = bytes.Cut(bytes.TrimLeft(rest, " "), []byte{' '})
			if v, ok := bytes.CutPrefix(f, []byte("avg10=")); ok {
				return strconv.ParseFloat(string(v), 64)
			}
		}
	}
	return 0, errors.New("memory: no full avg10 in PSI file")
}

// WorkingSet returns the group's memory use in bytes less its inactive page
// cache, which the kernel reclaims before it OOM-kills: what the worker
// really holds, and what an exited worker's cache does not inflate.
func (g *Group) WorkingSet() (int64, error) {
	usage, err := g.Usage()
	if err != nil {
		return 0, err
	}
	key := "inactive_file"
	if g.ctrl.mode() == ModeCgroupV1 {
		key = "total_inactive_file"
	}
	inactive, ok, err := readKey(filepath.Join(g.path, "memory.stat"), key)
	if err != nil || !ok {
		return usage, nil
	}
	return max(0, usage-int64(inactive)), nil
}
