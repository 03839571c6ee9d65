package worker

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
)

// The system calls a thread can be blocked in, by what they mean for
// Activity. The numbers differ between architectures; unix has each one's.
var (
	readCalls = []uint64{unix.SYS_READ, unix.SYS_READV, unix.SYS_PREAD64, unix.SYS_PREADV, unix.SYS_PREADV2}
	pollCalls = append([]uint64{unix.SYS_PPOLL, unix.SYS_PSELECT6, unix.SYS_EPOLL_PWAIT, unix.SYS_EPOLL_PWAIT2},
		archPollCalls...)
	parkCalls = []uint64{unix.SYS_FUTEX, unix.SYS_FUTEX_WAITV, unix.SYS_WAIT4, unix.SYS_WAITID}
	// epollCalls are the poll calls whose first argument is an epoll
	// descriptor, whose interest list /proc shows.
	epollCalls = append([]uint64{unix.SYS_EPOLL_PWAIT, unix.SYS_EPOLL_PWAIT2}, archEpollCalls...)
)

// Observe returns what the worker's process tree (the worker and every
// descendant that /proc lists as its child) is doing now. It stops at the
// first running thread (Activity.Partial): a busy worker, with many threads,
// costs one look. It returns an error wrapping ErrNoActivity when /proc
// cannot say, for example without the right to read a thread's system call.
func (p *Process) Observe() (Activity, error) {
	if p.taskPipe == nil {
		return Activity{}, fmt.Errorf("%w: no task pipe", ErrNoActivity)
	}
	o := observer{pipe: p.taskPipe}
	seen := map[int]bool{}
	for queue := []int{p.Pid}; len(queue) > 0; queue = queue[1:] {
		pid := queue[0]
		if seen[pid] {
			continue
		}
		seen[pid] = true
		kids, err := o.process(pid)
		switch {
		case o.a.Running > 0:
			o.a.Partial = true
			return o.a, nil
		case err == nil:
			queue = append(queue, kids...)
		case pid != p.Pid && gone(err):
			// A descendant that ended since its parent was read.
		default:
			return Activity{}, fmt.Errorf("%w: %w", ErrNoActivity, err)
		}
	}
	return o.a, nil
}

// gone reports whether err says that a process or thread read under /proc
// has ended since it was listed: its directory is gone (ENOENT), or a file
// of it answers ESRCH, as a thread's stat does while the thread is reaped.
func gone(err error) bool {
	return os.IsNotExist(err) || errors.Is(err, syscall.ESRCH)
}

// observer adds up the Activity of the processes it is shown.
type observer struct {
	pipe *syscall.Stat_t // the task pipe, to recognise it behind any descriptor
	a    Activity
}

// process adds one process's threads and CPU time and returns its children.
func (o *observer) process(pid int) ([]int, error) {
	dir := "/proc/" + strconv.Itoa(pid)
	st, err := os.ReadFile(dir + "/stat")
	if err != nil {
		return nil, err
	}
	f := statFields(st)
	if len(f) < 15 {
		return nil, fmt.Errorf("%s/stat: too short", dir)
	}
	for _, i := range []int{11, 12, 13, 14} { // utime, stime, cutime, cstime
		n, _ := strconv.ParseUint(f[i], 10, 64)
		o.a.CPU += n
	}
	if f[0] == "Z" || f[0] == "X" {
		return nil, nil // a zombie has no threads left and no children to read
	}
	tids, err := os.ReadDir(dir + "/task")
	if err != nil {
		return nil, err
	}
	var kids []int
	for _, t := range tids {
		tdir := dir + "/task/" + t.Name()
		k, err := o.thread(pid, tdir)
		if gone(err) {
			continue // the thread ended
		}
		if err != nil || o.a.Running > 0 {
			return nil, err
		}
		kids = append(kids, k...)
	}
	return kids, nil
}

// thread classifies one thread and returns the processes it started.
func (o *observer) thread(pid int, tdir string) ([]int, error) {
	st, err := os.ReadFile(tdir + "/stat")
	if err != nil {
		return nil, err
	}
	f := statFields(st)
	if len(f) == 0 {
		return nil, fmt.Errorf("%s/stat: empty", tdir)
	}
	switch f[0] {
	case "Z", "X":
		return nil, nil
	case "S", "I":
		sc, err := os.ReadFile(tdir + "/syscall")
		if err != nil {
			return nil, err
		}
		o.classify(pid, strings.Fields(string(sc)))
	default: // R, D, T, t, W...
		o.a.Running++
		return nil, nil
	}
	kids, err := os.ReadFile(tdir + "/children")
	if err != nil {
		return nil, err
	}
	var pids []int
	for _, s := range strings.Fields(string(kids)) {
		if n, err := strconv.Atoi(s); err == nil {
			pids = append(pids, n)
		}
	}
	return pids, nil
}

// classify counts a sleeping thread by the system call it is blocked in,
// as /proc/PID/task/TID/syscall shows it: the call's number and arguments,
// "running", or -1 when it is blocked outside a system call.
func (o *observer) classify(pid int, sc []string) {
	if len(sc) == 0 || sc[0] == "running" {
		o.a.Running++
		return
	}
	nr, err := strconv.ParseUint(sc[0], 10, 64)
	switch {
	case err != nil: // "-1": blocked, but not in a system call
		o.a.Blocked++
	case slices.Contains(readCalls, nr):
		if len(sc) > 1 && o.isTaskPipe(pid, sc[1]) {
			o.a.Readers++
		} else {
			o.a.Blocked++
		}
	case slices.Contains(pollCalls, nr):
		if len(sc) > 1 && slices.Contains(epollCalls, nr) && o.waitsOnTimer(pid, sc[1]) {
			o.a.Parked++
		} else {
			o.a.Pollers++
		}
	case slices.Contains(parkCalls, nr):
		o.a.Parked++
	default:
		o.a.Blocked++
	}
}

// waitsOnTimer reports whether epoll descriptor epfd (in hex) of process
// pid watches nothing but eventfds: a thread blocked on it waits for its
// timeout or for another thread of its own process, like a lock with a
// timeout, and nothing outside can end the wait. That is the Go runtime's
// idle network poller in any Go program with a pending timer (a ticker, a
// context deadline): it must not rule out a stall, or a Go worker that
// holds its answers in a buffer would never be caught. An epoll set that
// watches a pipe, a socket, a file or a timerfd may be the task's work.
func (o *observer) waitsOnTimer(pid int, epfd string) bool {
	n, err := strconv.ParseUint(strings.TrimPrefix(epfd, "0x"), 16, 32)
	if err != nil {
		return false
	}
	proc := "/proc/" + strconv.Itoa(pid)
	info, err := os.ReadFile(proc + "/fdinfo/" + strconv.FormatUint(n, 10))
	if err != nil {
		return false
	}
	for _, line := range strings.Split(string(info), "\n") {
		f := strings.Fields(line)
		if len(f) < 2 || f[0] != "tfd:" {
			continue
		}
		if target, err := os.Readlink(proc + "/fd/" + f[1]); err != nil || target != "anon_inode:[eventfd]" {
			return false
		}
	}
	return true
}

// isTaskPipe reports whether descriptor fd (in hex, as /proc shows system
// call arguments) of process pid is the worker's task pipe.
func (o *observer) isTaskPipe(pid int, fd string) bool {
	n, err := strconv.ParseUint(strings.TrimPrefix(fd, "0x"), 16, 32)
	if err != nil {
		return false
	}
	fi, err := os.Stat("/proc/" + strconv.Itoa(pid) + "/fd/" + strconv.FormatUint(n, 10))
	if err != nil {
		return false
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	return ok && st.Ino == o.pipe.Ino && st.Dev == o.pipe.Dev
}

// statFields returns the fields of a /proc stat file after the command
// name, which may itself hold spaces and parentheses: the state first.
func statFields(b []byte) []string {
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return nil
	}
	return strings.Fields(string(b[i+1:]))
}

// pipeStat returns the identity of the pipe f is an end of.
func pipeStat(f *os.File) *syscall.Stat_t {
	fi, err := f.Stat()
	if err != nil {
		return nil
	}
	st, _ := fi.Sys().(*syscall.Stat_t)
	return st
}

// backlog asks with TIOCINQ, which is FIONREAD under the name that unix
// defines on every Linux architecture.
func backlog(f *os.File) (int, error) {
	rc, err := f.SyscallConn()
	if err != nil {
		return 0, err
	}
	var n int
	var ierr error
	if err := rc.Control(func(fd uintptr) { n, ierr = unix.IoctlGetInt(int(fd), unix.TIOCINQ) }); err != nil {
		return 0, err
	}
	return n, ierr
}

// writersGone: a pipe's read end polls POLLHUP once no writer is left,
// whatever it still holds.
func writersGone(f *os.File) bool { return pollNow(f, unix.POLLIN, unix.POLLHUP) }

// readerGone: a pipe's write end polls POLLERR once no reader is left.
func readerGone(f *os.File) bool { return pollNow(f, unix.POLLOUT, unix.POLLERR) }

// pollNow polls f for events without waiting, and reports whether the
// answer has any of the bits of want.
func pollNow(f *os.File, events, want int16) bool {
	rc, err := f.SyscallConn()
	if err != nil {
		return false
	}
	got := false
	_ = rc.Control(func(fd uintptr) {
		fds := []unix.PollFd{{Fd: int32(fd), Events: events}}
		if n, err := unix.Poll(fds, 0); err == nil && n > 0 {
			got = fds[0].Revents&want != 0
		}
	})
	return got
}
