package memory

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// This file holds the cgroup file formats shared by v1 and v2. Every
// function takes a full path, so tests run them against a temp dir.

// readCgroupFile reads a small cgroup control file.
func readCgroupFile(path string) (string, error) {
	b, err := readSmall(path)
	if err != nil {
		return "", err
	}
	return strings.TrimSpace(string(b)), nil
}

// writeCgroupFile writes value to a cgroup control file in a single write,
// as the kernel expects. O_CREATE only matters outside cgroupfs (tests):
// there every control file already exists.
func writeCgroupFile(path, value string) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o644)
	if err != nil {
		return err
	}
	_, werr := f.WriteString(value)
	cerr := f.Close()
	if werr != nil {
		return fmt.Errorf("write %s: %w", path, werr)
	}
	return cerr
}

// exists reports whether path exists.
func exists(path string) bool {
	_, err := os.Stat(path)
	return err == nil
}

// readInt reads a file holding one integer, such as memory.current.
func readInt(path string) (int64, error) {
	s, err := readCgroupFile(path)
	if err != nil {
		return 0, err
	}
	v, err := strconv.ParseInt(s, 10, 64)
	if err != nil {
		return 0, fmt.Errorf("memory: parse %s: %w", path, err)
	}
	return v, nil
}

// readOOMKill reads the oom_kill counter of a keyed file (v1
// memory.oom_control, v2 memory.events). A kernel without the counter gives
// an error matching errors.ErrUnsupported.
func readOOMKill(p string) (uint64, error) {
	v, ok, err := readKey(p, "oom_kill")
	if err != nil {
		return 0, err
	}
	if !ok {
		return 0, fmt.Errorf("memory: no oom_kill in %s: %w", p, errors.ErrUnsupported)
	}
	return v, nil
}

// readLimit reads a limit file: v2 writes "max" for no limit, v1 a number
// near 2^63 (rounded down to a page). ok is false when there is no limit.
func readLimit(path string) (limit int64, ok bool, err error) {
	s, err := readCgroupFile(path)
	if err != nil {
		return 0, false, err
	}
	return parseLimit(s)
}

// unlimitedV1 is the smallest value treated as "no limit" in v1 files,
// which report PAGE_COUNTER_MAX (close to 2^63) rounded down to a page.
const unlimitedV1 = 1 << 62

func parseLimit(s string) (limit int64, ok bool, err error) {
	if s == "max" {
		return 0, false, nil
	}
	v, err := strconv.ParseUint(s, 10, 64)
	if err != nil {
		return 0, false, fmt.Errorf("memory: parse limit %q: %w", s, err)
	}
	if v >= unlimitedV1 {
		return 0, false, nil
	}
	return int64(v), true, nil
}

// readKey reads one value of a flat keyed file ("key value" lines), such
// as memory.events, memory.stat or v1 memory.oom_control. ok is false when
// the key is absent.
func readKey(path, key string) (v uint64, ok bool, err error) {
	type found struct {
		v  uint64
		ok bool
	}
	f, err := withScratch(path, func(b []byte) (found, error) {
		v, ok, err := parseKey(b, key)
		return found{v, ok}, err
	})
	return f.v, f.ok, err
}

func parseKey(b []byte, key string) (v uint64, ok bool, err error) {
	for len(b) > 0 {
		var line []byte
		line, b, _ = bytes.Cut(b, []byte{'\n'})
		k, val, found := bytes.Cut(line, []byte{' '})
		if !found || string(k) != key {
			continue
		}
		v, err := strconv.ParseUint(string(bytes.TrimSpace(val)), 10, 64)
		if err != nil {
			return 0, false, fmt.Errorf("memory: parse %s %q: %w", key, val, err)
		}
		return v, true, nil
	}
	return 0, false, nil
}

// readProcs lists the pids in a cgroup's cgroup.procs. A missing group
// reads as empty.
func readProcs(dir string) ([]int, error) {
	b, err := readSmall(filepath.Join(dir, "cgroup.procs"))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	return parseProcs(b)
}

func parseProcs(b []byte) ([]int, error) {
	var pids []int
	for _, f := range strings.Fields(string(b)) {
		pid, err := strconv.Atoi(f)
		if err != nil {
			return nil, fmt.Errorf("memory: parse cgroup.procs: %w", err)
		}
		pids = append(pids, pid)
	}
	return pids, nil
}

// hasWord reports whether the space-separated list s holds w, as in
// cgroup.controllers.
func hasWord(s, w string) bool {
	for _, f := range strings.Fields(s) {
		if f == w {
			return true
		}
	}
	return false
}
