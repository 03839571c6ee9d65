package memory

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

const (
	// killTimeout bounds the wait for SIGKILLed processes to leave a group.
	killTimeout = 5 * time.Second
	// rmdirTimeout bounds the retries of rmdir while the kernel says EBUSY,
	// which it may briefly do after the last process left.
	rmdirTimeout = 2 * time.Second
	// pollMax caps the back-off between two looks at a group.
	pollMax = 50 * time.Millisecond
)

// killAll sends SIGKILL to every process in the cgroup dir and waits until
// none is left, or killTimeout. Zombies are not listed in cgroup.procs, so
// it does not wait for the processes' parents to reap them.
func killAll(c controller, dir string) error {
	return killAllFrom(c, dir, func() ([]int, error) { return readProcs(dir) })
}

// killAllFrom is killAll with the group's pids listed by procs.
func killAllFrom(c controller, dir string, procs func() ([]int, error)) error {
	if kf := c.killFile(); kf != "" {
		if p := filepath.Join(dir, kf); exists(p) {
			// On failure, the loop below signals each process instead.
			_ = writeCgroupFile(p, "1")
		}
	}
	deadline := time.Now().Add(killTimeout)
	delay := time.Millisecond
	for {
		pids, err := others(procs)
		if err != nil {
			return err
		}
		if len(pids) == 0 {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%w: %d in %s", ErrStillPopulated, len(pids), dir)
		}
		killListed(procs, pids)
		time.Sleep(delay)
		delay = min(2*delay, pollMax)
	}
}

// others lists the pids procs gives but the supervisor's own, which is
// listed while one of its threads forks a worker in the group
// (threadstart_linux.go) and must never be killed.
func others(procs func() ([]int, error)) ([]int, error) {
	pids, err := procs()
	return slices.DeleteFunc(pids, func(pid int) bool { return pid == supervisorPID }), err
}

// killListed sends SIGKILL to those of pids that procs still lists once
// a pidfd pins them, so that a pid reused by a process outside the group
// is never signalled.
func killListed(procs func() ([]int, error), pids []int) {
	fds := make(map[int]int, len(pids))
	for _, pid := range pids {
		fd, err := unix.PidfdOpen(pid, 0)
		switch {
		case err == nil:
			fds[pid] = fd
		case errors.Is(err, unix.ENOSYS):
			// Linux before 5.3 cannot pin a pid.
			_ = unix.Kill(pid, unix.SIGKILL)
		}
		// ESRCH: gone already.
	}
	if len(fds) == 0 {
		return
	}
	still, _ := others(procs)
	in := make(map[int]bool, len(still))
	for _, pid := range still {
		in[pid] = true
	}
	for pid, fd := range fds {
		if in[pid] {
			_ = unix.PidfdSendSignal(fd, unix.SIGKILL, nil, 0)
		}
		unix.Close(fd)
	}
}

// rmdirRetry removes the cgroup dir with rmdir, retrying while the kernel
// says EBUSY. A missing dir is not an error.
func rmdirRetry(dir string, rmdir func(string) error) error {
	deadline := time.Now().Add(rmdirTimeout)
	delay := time.Millisecond
	for {
		err := rmdir(dir)
		if err == nil || errors.Is(err, fs.ErrNotExist) {
			return nil
		}
		if !errors.Is(err, syscall.EBUSY) || time.Now().After(deadline) {
			return fmt.Errorf("memory: remove cgroup: %w", err)
		}
		time.Sleep(delay)
		delay = min(2*delay, pollMax)
	}
}

// removeTree kills every process in the cgroup dir and its descendants,
// and removes them, deepest first.
func removeTree(c controller, dir string, rmdir func(string) error) error {
	entries, err := os.ReadDir(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	var errs []error
	for _, e := range entries {
		if e.IsDir() {
			errs = append(errs, removeTree(c, filepath.Join(dir, e.Name()), rmdir))
		}
	}
	errs = append(errs, killAll(c, dir), rmdirRetry(dir, rmdir))
	return errors.Join(errs...)
}

// rmdirCgroup is the real removal of a cgroup directory: its control files
// vanish with it.
func rmdirCgroup(dir string) error {
	if err := unix.Rmdir(dir); err != nil {
		return &fs.PathError{Op: "rmdir", Path: dir, Err: err}
	}
	return nil
}
