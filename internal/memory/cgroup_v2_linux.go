package memory

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
)

// cgroupV2 is the unified hierarchy's file conventions. Every method takes
// the group's directory, so tests run it on a temp dir.
type cgroupV2 struct {
	// write writes a control file for delegate and enable; nil means
	// writeCgroupFile. Tests put a fake kernel here.
	write func(path, value string) error
	// pid is the supervisor's pid, which delegate may move; 0 means this
	// process.
	pid int
}

func (cgroupV2) mode() Mode { return ModeCgroupV2 }

func (c cgroupV2) writeFile(path, value string) error {
	if c.write == nil {
		return writeCgroupFile(path, value)
	}
	return c.write(path, value)
}

// delegate makes own's children able to get the memory controller, which
// own must have (its parent enables it for own). Under the no-internal-
// process rule, a non-root cgroup with processes in it cannot enable
// controllers for its children: the write fails with EBUSY. When the only
// process in own is the supervisor, it moves itself into a leaf of its
// own, safepool-<pid>-0, and tries again; it returns that leaf.
func (c cgroupV2) delegate(own string) (leaf string, err error) {
	controllers, err := readCgroupFile(filepath.Join(own, "cgroup.controllers"))
	if err != nil {
		return "", err
	}
	if !hasWord(controllers, "memory") {
		return "", fmt.Errorf("memory controller not enabled for %s (its parent's cgroup.subtree_control lacks +memory)", own)
	}
	subtree := filepath.Join(own, "cgroup.subtree_control")
	enabled, err := readCgroupFile(subtree)
	if err != nil {
		return "", err
	}
	if hasWord(enabled, "memory") {
		return "", nil
	}
	err = c.writeFile(subtree, "+memory")
	if err == nil || !errors.Is(err, syscall.EBUSY) {
		return "", err
	}
	leaf, err = c.moveToLeaf(own)
	if err != nil {
		return "", fmt.Errorf("cannot enable memory for sub-cgroups of %s, which holds processes: %w", own, err)
	}
	if err := c.writeFile(subtree, "+memory"); err != nil {
		// Go back where we were, which is possible as long as own's
		// controllers are as they were.
		return "", errors.Join(err, c.writeFile(filepath.Join(own, "cgroup.procs"), strconv.Itoa(c.self())), rmdirCgroup(leaf))
	}
	takeLeaf(leaf)
	return leaf, nil
}

func (c cgroupV2) self() int {
	if c.pid == 0 {
		return os.Getpid()
	}
	return c.pid
}

// moveToLeaf moves the supervisor out of own into a new child, when it is
// the only process there: other processes are not the supervisor's to
// move.
func (c cgroupV2) moveToLeaf(own string) (string, error) {
	pids, err := readProcs(own)
	if err != nil {
		return "", err
	}
	self := c.self()
	var others int
	for _, p := range pids {
		if p != self {
			others++
		}
	}
	if others > 0 {
		return "", fmt.Errorf("%d processes besides the supervisor are in it (run the supervisor in a cgroup of its own)", others)
	}
	leaf := filepath.Join(own, fmt.Sprintf("safepool-%d-0", self))
	if err := os.Mkdir(leaf, 0o755); err != nil && !errors.Is(err, fs.ErrExist) {
		return "", err
	}
	if err := c.writeFile(filepath.Join(leaf, "cgroup.procs"), strconv.Itoa(self)); err != nil {
		return "", errors.Join(fmt.Errorf("move the supervisor into %s: %w", leaf, err), rmdirCgroup(leaf))
	}
	return leaf, nil
}

// enable turns the memory controller on for the children of the manager's
// parent directory, which holds no processes.
func (c cgroupV2) enable(parent string) error {
	return c.writeFile(filepath.Join(parent, "cgroup.subtree_control"), "+memory")
}

// create makes dir and sets its limit.
func (cgroupV2) create(dir string, limit int64) error {
	if err := os.Mkdir(dir, 0o755); err != nil {
		return err
	}
	if err := configureV2(dir, limit); err != nil {
		return errors.Join(err, syscall.Rmdir(dir))
	}
	return nil
}

// configureV2 sets the limit of a new group. With a limit, swap is
// disabled (memory.swap.max 0) so that the limit is met by an OOM kill
// rather than by swapping, and memory.oom.group makes the kernel kill the
// whole worker (its children too), leaving no half-dead process tree.
func configureV2(dir string, limit int64) error {
	max := "max"
	if limit > 0 {
		max = strconv.FormatInt(limit, 10)
	}
	settings := []struct {
		file, value string
		optional    bool // skip when the kernel does not have the file
		limited     bool // only with a limit
	}{
		{"memory.max", max, false, false},
		{"memory.swap.max", "0", true, true},
		{"memory.oom.group", "1", true, false},
	}
	for _, s := range settings {
		if s.limited && limit <= 0 {
			continue
		}
		p := filepath.Join(dir, s.file)
		if s.optional && !exists(p) {
			continue
		}
		if err := writeCgroupFile(p, s.value); err != nil {
			return err
		}
	}
	return nil
}

func (cgroupV2) oomKills(dir string) (uint64, error) {
	return readOOMKill(filepath.Join(dir, "memory.events"))
}

func (cgroupV2) usage(dir string) (int64, error) {
	return readInt(filepath.Join(dir, "memory.current"))
}

// peak reads memory.peak, through peakFD when ResetPeak opened one: since
// Linux 6.12 a reset only applies to reads through the file descriptor
// that wrote it. Kernels before 5.19 have no memory.peak: 0, nil.
func (cgroupV2) peak(dir string, peakFD *os.File) (int64, error) {
	if peakFD != nil {
		buf := make([]byte, 32)
		n, err := peakFD.ReadAt(buf, 0)
		if n == 0 && err != nil {
			return 0, err
		}
		v, err := strconv.ParseInt(strings.TrimSpace(string(buf[:n])), 10, 64)
		if err != nil {
			return 0, fmt.Errorf("memory: parse %s: %w", peakFD.Name(), err)
		}
		return v, nil
	}
	v, err := readInt(filepath.Join(dir, "memory.peak"))
	if errors.Is(err, fs.ErrNotExist) {
		return 0, nil
	}
	return v, err
}

// resetPeak returns the file descriptor that later peak reads must use.
// Kernels before 6.12 cannot reset memory.peak: errors.ErrUnsupported.
func (cgroupV2) resetPeak(dir string) (*os.File, error) {
	p := filepath.Join(dir, "memory.peak")
	f, err := os.OpenFile(p, os.O_RDWR, 0)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) || errors.Is(err, fs.ErrPermission) {
			return nil, fmt.Errorf("memory: reset %s: %w: %w", p, errors.ErrUnsupported, err)
		}
		return nil, err
	}
	if _, err := f.WriteString("reset\n"); err != nil {
		f.Close()
		if errors.Is(err, syscall.EINVAL) || errors.Is(err, syscall.EACCES) || errors.Is(err, syscall.EPERM) {
			return nil, fmt.Errorf("memory: reset %s: %w: %w", p, errors.ErrUnsupported, err)
		}
		return nil, err
	}
	return f, nil
}

// prepare makes cmd start directly inside dir (clone3 CLONE_INTO_CGROUP,
// Linux 5.7+), so the worker never runs a single instruction outside it.
// The returned directory must stay open until cmd.Start returns.
func (cgroupV2) prepare(dir string, cmd *exec.Cmd) (*os.File, error) {
	f, err := os.OpenFile(dir, os.O_RDONLY|syscall.O_DIRECTORY|syscall.O_CLOEXEC, 0)
	if err != nil {
		return nil, err
	}
	if cmd.SysProcAttr == nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{}
	}
	cmd.SysProcAttr.UseCgroupFD = true
	cmd.SysProcAttr.CgroupFD = int(f.Fd())
	return f, nil
}

// killFile is v2's one-write kill of a whole subtree (Linux 5.14+).
func (cgroupV2) killFile() string { return "cgroup.kill" }
