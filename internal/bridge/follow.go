package bridge

import (
	"bytes"
	"errors"
	"os"
	"strconv"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/safepool/safepool/pool"
)

// clientPoll is how often a session looks at whether its client is
// stopped while its pool has work. The kernel tells no other process when
// one stops (a stop can be waited for only by a parent or a tracer, and
// the client is the bridge's parent), so the bridge reads the client's
// state from /proc. Within 50 ms of a Ctrl-Z the workers stop too, which
// is as soon as a user looks; a look is some microseconds.
const clientPoll = 50 * time.Millisecond

// idlePoll is how often a session looks while its pool is idle.
const idlePoll = time.Second

// followClient pauses p while process pid is stopped, by a terminal's
// Ctrl-Z (SIGTSTP), SIGTTIN, SIGTTOU or SIGSTOP alike, and resumes it once
// the process is continued, until done is closed. It is the only caller of
// p's Pause and Resume, and calls them in the order the client's states
// were seen, each once the one before has returned: the workers are never
// continued while the client is still seen stopped, nor left stopped once
// it is seen running.
//
// It looks every clientPoll while p has tasks that have not ended, or is
// paused. An idle pool has nothing to stop, and a stopped client submits
// nothing: it then looks every idlePoll, and at once when sent says that
// the session submitted a task. So a pool open and idle in a program that
// does other things costs a look a second.
//
// Watching the client's state, rather than a SIGTSTP handler in the
// client that tells the bridge, catches every stop, SIGSTOP included,
// needs nothing from the client's main thread (where Python runs its
// signal handlers, only between bytecodes), and leaves the client's own
// signal handlers alone.
//
// The pool clock c (nil: none) stands still while p is paused: it is
// stopped before p is paused and goes on before p is resumed, so that a
// worker continued finds it running.
//
// A client that exits, or is seen neither stopped nor running (a zombie,
// or stopped by a tracer such as a debugger), leaves the pool as it is:
// the session ends when the client is gone, and a tracer's stops are a
// debugger's to make, which are often too short to be worth a pause.
func followClient(p *pool.Pool, pid int, done <-chan struct{}, sent *submissions, c *poolClock) {
	proc, err := os.FindProcess(pid)
	if err != nil {
		return
	}
	defer proc.Release()
	t := time.NewTimer(clientPoll)
	defer t.Stop()
	paused := false
	for {
		st := procState(pid)
		// The state read is pid's own only if pid was still that process
		// after the read: a process id can be reused once its process is
		// gone. proc holds a pidfd, which names the process, not the id.
		if err := proc.Signal(syscall.Signal(0)); errors.Is(err, os.ErrProcessDone) {
			return
		}
		switch {
		case st == 'T' && !paused:
			paused = true
			c.pause(monotonic())
			p.Pause()
		case isRunning(st) && paused:
			paused = false
			c.resume(monotonic())
			p.Resume()
		}
		// Busy, it ignores the tasks submitted: a look per task would
		// cost a map of many small tasks.
		wait, kick := clientPoll, (<-chan struct{})(nil)
		if !paused && idle(p.Stats(), sent.n.Load()) {
			wait, kick = idlePoll, sent.kick
		}
		t.Reset(wait)
		select {
		case <-done:
			return
		case <-kick:
		case <-t.C:
		}
	}
}

// submissions counts the items the session submitted to its pool, and
// tells the follower (followClient) of each task.
type submissions struct {
	n    atomic.Int64
	kick chan struct{} // holds one value
}

func newSubmissions() *submissions { return &submissions{kick: make(chan struct{}, 1)} }

// add counts the items of task t, which Submit accepted, and wakes the
// follower if it waits. A nil s counts nothing.
func (s *submissions) add(t pool.Task) {
	if s == nil {
		return
	}
	s.n.Add(int64(max(t.Items, 1)))
	select {
	case s.kick <- struct{}{}:
	default: // one is pending
	}
}

// idle reports whether a pool whose Stats are st has ended every one of
// the sent items submitted to it. The pool counts an item in its Stats
// some time after Submit has returned: until it has counted all sent, it
// is not idle.
func idle(st pool.Stats, sent int64) bool {
	return int64(st.Submitted) >= sent && st.Submitted == st.Done+st.Failed+st.Cancelled+st.Poison
}

// isRunning reports whether a process in state st (the letter of
// /proc/PID/stat) is running as far as job control goes: on a processor,
// waiting for one, or sleeping.
func isRunning(st byte) bool {
	switch st {
	case 'R', 'S', 'D', 'I', 'W', 'P':
		return true
	}
	return false
}

// procState returns the state letter of process pid from /proc/PID/stat
// ('T' stopped, 't' stopped by a tracer, 'Z' zombie...), or 0 if it
// cannot be read.
func procState(pid int) byte {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0
	}
	// The command name, in parentheses, may itself hold spaces and
	// parentheses: the state follows the last ')'.
	i := bytes.LastIndexByte(b, ')')
	if i < 0 || i+2 >= len(b) {
		return 0
	}
	return b[i+2]
}
