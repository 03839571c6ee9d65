package memory

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"syscall"
)

// cgroupV1 is the v1 memory hierarchy's file conventions. It holds no
// state: every method takes the group's directory, so tests run it on a
// temp dir.
type cgroupV1 struct {
	// bash is the shell the shim uses to keep argv[0]; "" for none.
	bash string
}

func (cgroupV1) mode() Mode { return ModeCgroupV1 }

// delegate has nothing to do: v1 has no no-internal-process rule.
func (cgroupV1) delegate(own string) (leaf string, err error) { return "", nil }

// enable has nothing to do: in v1 every child has the memory controller.
func (cgroupV1) enable(parent string) error { return nil }

// create makes dir and sets its limit.
func (cgroupV1) create(dir string, limit int64) error {
	if err := os.Mkdir(dir, 0o755); err != nil {
		return err
	}
	if err := configureV1(dir, limit); err != nil {
		return errors.Join(err, syscall.Rmdir(dir))
	}
	return nil
}

// configureV1 sets the limit of a new group. When swap is accounted
// (memory.memsw.*), the same limit applies to memory plus swap, so that
// the limit is met by an OOM kill rather than by swapping. memsw must be
// set after limit_in_bytes, which it may never be below.
func configureV1(dir string, limit int64) error {
	if limit <= 0 {
		return nil
	}
	v := strconv.FormatInt(limit, 10)
	if err := writeCgroupFile(filepath.Join(dir, "memory.limit_in_bytes"), v); err != nil {
		return err
	}
	if memsw := filepath.Join(dir, "memory.memsw.limit_in_bytes"); exists(memsw) {
		return writeCgroupFile(memsw, v)
	}
	return nil
}

// oomKills reads the oom_kill line of memory.oom_control (Linux 4.13+),
// which containerd's cgroup1 package would also give, but only as part of
// a full Stat reading some twenty files.
func (cgroupV1) oomKills(dir string) (uint64, error) {
	return readOOMKill(filepath.Join(dir, "memory.oom_control"))
}

func (cgroupV1) usage(dir string) (int64, error) {
	return readInt(filepath.Join(dir, "memory.usage_in_bytes"))
}

func (cgroupV1) peak(dir string, _ *os.File) (int64, error) {
	return readInt(filepath.Join(dir, "memory.max_usage_in_bytes"))
}

func (cgroupV1) resetPeak(dir string) (*os.File, error) {
	return nil, writeCgroupFile(filepath.Join(dir, "memory.max_usage_in_bytes"), "0")
}

// prepare wraps cmd in the shim (shim.go), which also raises the worker's
// oom_score_adj.
func (c cgroupV1) prepare(dir string, cmd *exec.Cmd) (*os.File, error) {
	wrapInShim(cmd, shimSpec{procs: filepath.Join(dir, "cgroup.procs")}, c.bash)
	return nil, nil
}

// killFile is empty: v1 has no cgroup.kill.
func (cgroupV1) killFile() string { return "" }
