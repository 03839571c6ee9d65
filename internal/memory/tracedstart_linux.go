package memory

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"

	"golang.org/x/sys/unix"
)

// A worker without a cgroup of its own (ModeEnclosing, ModeNone: a
// container, a batch job, a laptop without root) still needs oom_score_adj
// 1000, and with a memory limit its RLIMIT_DATA, before any of its code
// runs, so that what it forks at once (sh -c) inherits both. The shim does
// that in a shell that then execs the worker: two execs per worker.
// startTraced does it with one, as the cgroup v1 start from a thread does:
// the worker is forked traced (PTRACE_TRACEME), so it stops at its exec,
// before its program's first instruction, and the thread that forked it,
// its tracer, sets the score and the limit and lets it go on
// (releaseTraced). When either cannot be set the worker is killed there,
// before its program ran, as the shim's shell exits 125.
//
// A program that gains privileges at its exec (set-user-ID or
// set-group-ID, or with file capabilities) would run traced without them:
// the kernel grants them to a traced exec only when the tracer has
// CAP_SYS_PTRACE, which a supervisor without root lacks. Such a program
// still starts through the shim (gainsPrivileges).

// startTraced starts cmd with start, traced to its exec, sets its
// oom_score_adj to 1000 and calls atStop (if not nil) before its program
// runs, and returns the process's id. On an error no program of cmd ran,
// and nothing is left to reap.
func startTraced(cmd *exec.Cmd, start Spawner, atStop func(pid int) error) (int, error) {
	traced(cmd)
	// The thread that forks is the child's tracer: the release must come
	// from it.
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	pid, err := start(cmd)
	if err != nil {
		return 0, err
	}
	if err := releaseTraced(pid, atStop); err != nil {
		// Still stopped at its exec: its program never ran.
		_ = unix.Kill(pid, unix.SIGKILL)
		var ws unix.WaitStatus
		for {
			if _, werr := unix.Wait4(pid, &ws, unix.WALL, nil); werr != unix.EINTR {
				break
			}
		}
		return 0, fmt.Errorf("memory: ready %s at its exec: %w", cmd.Path, err)
	}
	return pid, nil
}

// dataLimiter returns what sets a stopped process's RLIMIT_DATA, soft and
// hard, to kib KiB; nil for no limit (kib 0).
func dataLimiter(kib int64) func(pid int) error {
	if kib <= 0 {
		return nil
	}
	return func(pid int) error {
		b := uint64(kib) * 1024
		if err := unix.Prlimit(pid, unix.RLIMIT_DATA, &unix.Rlimit{Cur: b, Max: b}, nil); err != nil {
			return fmt.Errorf("limit the data size of process %d to %d KiB: %w", pid, kib, err)
		}
		return nil
	}
}

// gainsPrivileges reports whether running cmd's program would give it
// privileges its caller lacks: a set-user-ID or set-group-ID file, or one
// with file capabilities (security.capability). A file that cannot be
// looked at counts as not: its exec will say what is wrong.
func gainsPrivileges(cmd *exec.Cmd) bool {
	path := cmd.Path
	if !filepath.IsAbs(path) && cmd.Dir != "" {
		path = filepath.Join(cmd.Dir, path) // exec resolves it in the child's directory
	}
	fi, err := os.Stat(path)
	if err != nil {
		return false
	}
	if fi.Mode()&(os.ModeSetuid|os.ModeSetgid) != 0 {
		return true
	}
	n, err := unix.Getxattr(path, "security.capability", nil)
	return err == nil && n > 0
}

// probeTracedStart reports whether workers can start traced to their exec
// here, and if not, why: it starts /bin/true that way. A seccomp filter,
// Yama's ptrace_scope 2 or 3, or a tracer of the supervisor (strace -f, a
// debugger) forbids it.
func probeTracedStart() error {
	cmd := exec.Command("/bin/true")
	if _, err := startTraced(cmd, startProbe, nil); err != nil {
		if cmd.Process != nil {
			cmd.Process.Release() // startTraced reaped it
		}
		return err
	}
	return cmd.Wait()
}
