package reaper

import (
	"bytes"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/safepool/safepool/internal/memory"
	"golang.org/x/sys/unix"
)

// startingEvery is how often the guardian looks for the supervisor's
// children stopped before their exec.
const startingEvery = 250 * time.Millisecond

// continueStarting continues, every startingEvery until the process
// ends, the children of the supervisor sup that a stop signal stopped
// before their exec (continueStartingOnce).
//
// A child can be stuck so only while a thread of the supervisor waits for
// it, uninterruptible (D), and the stop leaves the other threads stopped
// (T) or, when the supervisor handles the signal itself, waiting for a
// scheduler that the stuck starts hold. So each look first reads the
// states of the supervisor's threads, through files kept open and read
// again from their start (threadWatch), and looks at the children only
// when a thread is D or T: the guardian shares the supervisor's memory
// cgroup when the workers have none of their own, and opening the files
// of every thread and child four times a second charged it with kernel
// memory all the time (internal/memory/kept_linux.go says why that
// matters).
func continueStarting(sup int) {
	w := newThreadWatch(sup)
	go func() { // ends with the guardian
		t := time.NewTicker(startingEvery)
		for range t.C {
			if w.stuck() {
				continueStartingOnce(sup)
			}
		}
	}()
}

// threadWatch reads the states of a process's threads through their stat
// files, kept open from one look to the next, and its task directory,
// kept open and listed again.
type threadWatch struct {
	pid   int
	dir   int // /proc/PID/task, or -1
	dents []byte
	tids  []int
	fds   map[int]int // thread id -> its stat file
	seen  map[int]bool
	buf   [512]byte
}

func newThreadWatch(pid int) *threadWatch {
	w := &threadWatch{pid: pid, fds: map[int]int{}, seen: map[int]bool{}}
	dir, err := unix.Open("/proc/"+strconv.Itoa(pid)+"/task", unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		dir = -1
	}
	w.dir = dir
	return w
}

// stuck reports whether a thread of the process is stopped or in an
// uninterruptible wait; true when it cannot tell.
func (w *threadWatch) stuck() bool {
	if w.dir < 0 {
		return true
	}
	tids, dents, err := memory.ListPIDs(w.dir, w.tids[:0], w.dents)
	w.dents = dents
	if err != nil {
		return true
	}
	w.tids = tids
	clear(w.seen)
	found := false
	for _, tid := range tids {
		w.seen[tid] = true
		fd, ok := w.fds[tid]
		if !ok {
			fd, err = unix.Open("/proc/"+strconv.Itoa(w.pid)+"/task/"+strconv.Itoa(tid)+"/stat", unix.O_RDONLY|unix.O_CLOEXEC, 0)
			if err != nil {
				continue
			}
			w.fds[tid] = fd
		}
		n, err := unix.Pread(fd, w.buf[:], 0)
		if err != nil || n <= 0 {
			continue // ended since the listing
		}
		if i := bytes.LastIndexByte(w.buf[:n], ')'); i >= 0 && i+2 < n {
			switch w.buf[i+2] {
			case 'T', 't', 'D':
				found = true
			}
		}
	}
	for tid, fd := range w.fds {
		if !w.seen[tid] {
			unix.Close(fd)
			delete(w.fds, tid)
		}
	}
	return found
}

// continueStartingOnce sends SIGCONT to the children of sup that are
// stopped before their exec: they still share sup's memory, and /proc
// shows the same code and stack addresses for them as for sup.
//
// Go starts a process with vfork: the thread that starts it waits in the
// kernel until the child calls exec, holding its share of the Go
// scheduler, and no stop reaches it there. A stop signal sent to the
// supervisor's process group in that moment (Ctrl-Z, a write to a terminal
// set to `stty tostop` from the background) reaches the child too, which
// the process group still held, and stops it before its exec. The
// supervisor then never stops as a whole, its shell never hears of a stop
// and never continues it; with as many children stuck as CPUs, no
// goroutine of the supervisor runs. Only another process can continue the
// child: the guardian. Its exec then ends the start, the supervisor's
// thread comes back, and the stop takes hold as it should.
func continueStartingOnce(sup int) {
	layout, ok := procLayout(sup)
	if !ok {
		return
	}
	tasks, _ := filepath.Glob("/proc/" + strconv.Itoa(sup) + "/task/*/children")
	for _, f := range tasks {
		b, err := os.ReadFile(f)
		if err != nil {
			continue
		}
		for _, c := range strings.Fields(string(b)) {
			pid, err := strconv.Atoi(c)
			if err != nil {
				continue
			}
			if state, ppid, l, ok := procStopped(pid); ok && state == "T" && ppid == sup && l == layout {
				_ = unix.Kill(pid, unix.SIGCONT)
			}
		}
	}
}

// procLayout returns the start and end of the code and the start of the
// stack of pid, from /proc/PID/stat; false when /proc hides them (zeros).
func procLayout(pid int) (string, bool) {
	_, _, l, ok := procStopped(pid)
	return l, ok && l != "0 0 0"
}

// procStopped reads the state, parent and layout (as procLayout) of pid.
func procStopped(pid int) (state string, ppid int, layout string, ok bool) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return "", 0, "", false
	}
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return "", 0, "", false
	}
	// f[0] is field 3 of proc(5), the state; the parent is field 4;
	// startcode, endcode and startstack are fields 26 to 28.
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 26 {
		return "", 0, "", false
	}
	ppid, err = strconv.Atoi(f[1])
	if err != nil {
		return "", 0, "", false
	}
	return f[0], ppid, f[23] + " " + f[24] + " " + f[25], true
}
