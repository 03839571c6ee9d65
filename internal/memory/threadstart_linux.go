package memory

import (
	"errors"
	"fmt"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"

	"golang.org/x/sys/unix"
)

// Cgroup v1 has no CLONE_INTO_CGROUP, but it lets each thread of a process
// sit in a memory cgroup of its own (the tasks file takes thread ids), and
// a forked child starts in the cgroups of the thread that forked it. So
// startFromThread moves one locked thread of the supervisor into the
// worker's group, forks and execs the worker from it (Go forks on the
// calling thread), and moves the thread back: the worker is in its group
// from its first instruction, with one exec instead of the shim's two.
//
// The supervisor's memory stays charged where it was: v1 charges a
// process's pages to the memory cgroup of its mm's owner, the thread group
// leader, which never moves (the leader's thread is never the one used).
// Only kernel objects that the moved thread allocates while it is in the
// group, such as the child's task_struct, are charged to the group.

// placeThread moves the calling thread into the v1 cgroup dir.
func placeThread(dir string) error {
	path := filepath.Join(dir, "tasks")
	fd, err := unix.Open(path, unix.O_WRONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("open %s: %w", path, err)
	}
	_, err = unix.Write(fd, []byte(strconv.Itoa(unix.Gettid())))
	unix.Close(fd)
	if err != nil {
		return fmt.Errorf("write thread %d to %s: %w", unix.Gettid(), path, err)
	}
	return nil
}

// startFromThread starts cmd inside the v1 cgroup dir by forking it from a
// thread of the supervisor that sits in dir for the time of the fork, then
// goes back to home, the supervisor's own memory cgroup. When the thread
// cannot go back, it stays out of the runtime's use and ends once the
// child has ended (not before: the child's Pdeathsig is tied to the thread
// that forked it); back reports that, so that later starts use the shim.
func startFromThread(cmd *exec.Cmd, dir, home string) (back error, err error) {
	type result struct{ back, err error }
	done := make(chan result, 1)
	go func() {
		runtime.LockOSThread()
		if unix.Gettid() == unix.Getpid() {
			// The leader's cgroup decides where the supervisor's memory
			// is charged: never move it. While this goroutine holds it,
			// the nested call runs on another thread.
			back, err := startFromThread(cmd, dir, home)
			runtime.UnlockOSThread()
			done <- result{back, err}
			return
		}
		if err := placeThread(dir); err != nil {
			// Where the write failed the thread did not move.
			runtime.UnlockOSThread()
			done <- result{err: err}
			return
		}
		err := cmd.Start()
		back := placeThread(home)
		if back == nil {
			runtime.UnlockOSThread()
			done <- result{err: err}
			return
		}
		back = fmt.Errorf("thread %d stays in %s: %w", unix.Gettid(), dir, back)
		done <- result{back: back, err: err}
		if err == nil {
			waitGone(cmd.Process.Pid)
		}
		// Returning while locked ends the thread, and with it its place
		// in dir.
	}()
	r := <-done
	return r.back, r.err
}

// waitGone waits until process pid has ended (it may be a zombie still),
// through a pidfd, which becomes readable then.
func waitGone(pid int) {
	fd, err := unix.PidfdOpen(pid, 0)
	if err != nil {
		return
	}
	defer unix.Close(fd)
	fds := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
	for {
		if _, err := unix.Poll(fds, -1); !errors.Is(err, unix.EINTR) {
			return
		}
	}
}

// probeThreadStart reports whether a thread of the supervisor can move
// into the v1 cgroup dir and back to home, and if not, why.
func probeThreadStart(dir, home string) error {
	done := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		if unix.Gettid() == unix.Getpid() {
			done <- probeThreadStart(dir, home)
			runtime.UnlockOSThread()
			return
		}
		if err := placeThread(dir); err != nil {
			runtime.UnlockOSThread()
			done <- err
			return
		}
		if err := placeThread(home); err != nil {
			// Out of the runtime's use: the thread ends with this goroutine.
			done <- err
			return
		}
		runtime.UnlockOSThread()
		done <- nil
	}()
	return <-done
}
