package worker

import (
	"errors"
	"os"
)

// Activity is what a worker's process tree was doing at one moment, as the
// kernel shows it in /proc: how its threads are blocked, and how much CPU
// time it has used. The supervisor reads it to tell a worker that waits for
// input from one that works.
type Activity struct {
	// CPU is the CPU time the tree has used, in clock ticks, including the
	// time of children that its processes have reaped.
	CPU uint64
	// Readers counts threads blocked reading the worker's task pipe (stdin
	// for a line worker, fd 3 for a framed one), through any descriptor.
	Readers int
	// Pollers counts threads blocked in poll, select or epoll: waiting on
	// several descriptors, which may or may not include the task pipe.
	Pollers int
	// Parked counts threads blocked on a futex (a lock or a condition),
	// waiting for a child process to end, or in an epoll wait that only a
	// timeout or another thread of the same process can end (the idle
	// poller of a Go program with a pending timer).
	Parked int
	// Blocked counts threads blocked in anything else: a sleep, a read of
	// another file or socket, a page fault.
	Blocked int
	// Running counts threads running or runnable, or in uninterruptible
	// sleep (disk I/O), or stopped.
	Running int
	// Partial reports that Observe stopped at the first running thread it
	// found, which settles both questions below: the other counts and CPU
	// are incomplete.
	Partial bool
}

// WaitsForInput reports whether the tree looks idle and ready for a task:
// no thread works, and some thread reads the task pipe, or, when cpuSame
// says that no CPU time was used since an earlier look, every thread waits
// in poll or on a lock.
func (a Activity) WaitsForInput(cpuSame bool) bool {
	if a.Running > 0 {
		return false
	}
	return a.Readers > 0 || a.Pollers > 0 && a.Blocked == 0 && cpuSame
}

// StallsOnInput reports whether the tree waits for more input and for
// nothing else: some thread reads the task pipe, and every other thread is
// parked on a lock or waits for a child. A thread that sleeps, polls, or
// reads anything else may be doing the task's work, so it rules a stall out.
// A thread parked with a timeout is not ruled out: the Go runtime keeps one
// in epoll_wait for its timers, as C programs keep one on a timed condition.
// The caller checks, besides, that no CPU time was used.
func (a Activity) StallsOnInput() bool {
	return a.Readers > 0 && a.Pollers == 0 && a.Blocked == 0 && a.Running == 0
}

// ErrNoActivity is returned by Observe where the kernel does not say what
// a process is doing: not Linux, or no permission to read /proc.
var ErrNoActivity = errors.New("worker: activity unavailable")

// Backlog returns how many bytes wait unread in the pipe that f is one end
// of (FIONREAD, which Linux answers on either end).
func Backlog(f *os.File) (int, error) { return backlog(f) }

// ReaderGone reports whether f, the write end of a pipe, has no reader left:
// every process that could read the other end has closed it or exited.
func ReaderGone(f *os.File) bool { return readerGone(f) }

// WritersGone reports whether f, the read end of a pipe, has no writer
// left, so that reading it will reach EOF once what it holds is read.
// Where that cannot be told it reports false.
func WritersGone(f *os.File) bool { return writersGone(f) }
