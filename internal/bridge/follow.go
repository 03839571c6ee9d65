package bridge

import (
	"bytes"
	"errors"
	"os"
	"strconv"
	"syscall"
	"time"

	"github.com/safepool/safepool/pool"
)

// clientPoll is how often a session looks at whether its client is
// stopped. The kernel tells no other process when one stops (a stop can
// be waited for only by a parent or a tracer, and the client is the
// bridge's parent), so the bridge reads the client's state from /proc.
// Within 50 ms of a Ctrl-Z the workers stop too, which is as soon as a
// user looks; a read of /proc/PID/stat is some microseconds.
const clientPoll = 50 * time.Millisecond

// followClient pauses p while process pid is stopped, by a terminal's
// Ctrl-Z (SIGTSTP), SIGTTIN, SIGTTOU or SIGSTOP alike, and resumes it once
// the process is continued, until done is closed. It is the only caller of
// p's Pause and Resume, and calls them in the order the client's states
// were seen, each returning only once the pool is in that state: the
// workers are never continued while the client is still seen stopped, nor
// left stopped once it is seen running.
//
// Watching the client's state, rather than a SIGTSTP handler in the
// client that tells the bridge, catches every stop, SIGSTOP included,
// needs nothing from the client's main thread (where Python runs its
// signal handlers, only between bytecodes), and leaves the client's own
// signal handlers alone.
//
// A client that exits, or is seen neither stopped nor running (a zombie,
// or stopped by a tracer such as a debugger), leaves the pool as it is:
// the session ends when the client is gone, and a tracer's stops are a
// debugger's to make, which are often too short to be worth a pause.
func followClient(p *pool.Pool, pid int, done <-chan struct{}) {
	proc, err := os.FindProcess(pid)
	if err != nil {
		return
	}
	defer proc.Release()
	t := time.NewTicker(clientPoll)
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
			p.Pause()
		case isRunning(st) && paused:
			paused = false
			p.Resume()
		}
		select {
		case <-done:
			return
		case <-t.C:
		}
	}
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
