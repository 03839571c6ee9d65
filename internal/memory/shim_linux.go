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
// Shim has the methods of the worker package's Cgroup and Starter hooks.
// A Shim from [Manager.Shim] starts workers through Spawn with one exec
// where the host allows it (tracedstart_linux.go).
type Shim struct {
	// DataLimit is the worker's RLIMIT_DATA in bytes, soft and hard,
	// rounded up to a KiB, and never above the supervisor's own hard
	// limit, which it could not raise; zero means none. See DataLimitFor.
	DataLimit int64
	// traced lets Spawn start workers traced to their exec, setting the
	// score and the limit there, in place of the shell.
	traced bool
}

// Spawn starts cmd through start (which must fork on the calling thread)
// with its oom_score_adj and data size limit set before its program runs,
// and returns its process's id. Where the host allows it, and the program
// gains no privileges at its exec, the worker is started traced to its
// exec and readied there, with one exec; otherwise it starts through the
// shim, as Prepare readies it.
func (s Shim) Spawn(cmd *exec.Cmd, start Spawner) (int, error) {
	if cmd.Process != nil {
		return 0, errors.New("memory: Spawn after Start")
	}
	if cmd.Err != nil {
		return 0, cmd.Err
	}
	if s.traced && !gainsPrivileges(cmd) {
		return startTraced(cmd, start, dataLimiter(s.dataKiB()))
	}
	if err := s.Prepare(cmd); err != nil {
		return 0, err
	}
	return start(cmd)
}

// dataKiB is DataLimit in KiB for the worker, within the supervisor's own
// hard limit.
func (s Shim) dataKiB() int64 {
	var own unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_DATA, &own); err != nil {
		own.Max = unix.RLIM_INFINITY
	}
	return dataKiB(s.DataLimit, own.Max)
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
	wrapInShim(cmd, shimSpec{dataKiB: s.dataKiB()}, bashPath())
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
