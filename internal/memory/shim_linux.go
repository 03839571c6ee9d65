package memory

import (
	"errors"
	"os/exec"

	"golang.org/x/sys/unix"
)

// Shim readies a worker that has no cgroup of its own before any of its
// code runs: it runs the worker through a shell that raises its
// oom_score_adj to 1000 and, with DataLimit, sets its RLIMIT_DATA, then
// execs the worker under the same pid. What the worker forks inherits
// both, from its first instruction on: a child of "sh -c" that grows is
// then still the OOM killer's first choice, before the workers beside it.
// When the shell cannot set them it exits with status 125 and a message on
// stderr, and the worker does not run. argv and the environment are kept
// as for [Group.Prepare] under cgroup v1.
//
// Shim has the methods of the worker package's Cgroup hook.
type Shim struct {
	// DataLimit is the worker's RLIMIT_DATA in bytes, soft and hard,
	// rounded up to a KiB, and never above the supervisor's own hard
	// limit, which it could not raise; zero means none. See DataLimitFor.
	DataLimit int64
}

// Prepare rewrites cmd to start through the shim. It must be called
// before cmd.Start.
func (s Shim) Prepare(cmd *exec.Cmd) error {
	if cmd.Process != nil {
		return errors.New("memory: Prepare after Start")
	}
	if cmd.Err != nil {
		return cmd.Err
	}
	var own unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_DATA, &own); err != nil {
		own.Max = unix.RLIM_INFINITY
	}
	wrapInShim(cmd, shimSpec{dataKiB: dataKiB(s.DataLimit, own.Max)}, bashPath())
	return nil
}

// dataKiB is a data size limit of limit bytes in KiB for ulimit -d,
// rounded up, but within hard, the supervisor's own hard limit, which no
// child of it may raise.
func dataKiB(limit int64, hard uint64) int64 {
	kib := (limit + 1023) / 1024
	if kib > 0 && hard != unix.RLIM_INFINITY && uint64(kib) > hard/1024 {
		kib = int64(hard / 1024)
	}
	return kib
}

// Started does nothing: the shim holds nothing open.
func (Shim) Started() {}
