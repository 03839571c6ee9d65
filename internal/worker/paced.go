package worker

import (
	"io"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"
)

// A paced pipe carries a stdout that is expected in megabytes
// (Spec.LargeStdout). A pipe read through the runtime's poller wakes the
// supervisor at every write the worker makes: 8 KiB at a time for Python's
// buffered stdout, ten thousand wakeups a second per worker at 80 MB/s,
// which cost the supervisor more CPU than the copying. A paced pipe is
// made as large as the system lets (up to 1 MiB), and its first bytes
// are read through the poller as any pipe's, so that a small output (the
// count of wc -l) costs no more. Past pacedAfter bytes the copier takes
// the pipe out of the poller and reads it in large pieces: after a read
// that found little, it sleeps a moment and lets the pipe fill (unless the
// worker ends meanwhile), and only when the pipe is empty does it
// wait for the next write (poll(2), which registers no lasting waiter as
// the poller does). A worker that writes fast fills half the pipe or more
// between reads; the copier then reads without sleeping, so that it does
// not hold the worker back. So does a pipe the system would not grow.

const (
	// pacedPipeSize is the largest size asked of a paced pipe (the
	// default /proc/sys/fs/pipe-max-size), and the default one
	// (Spec.StdoutPipe); where it is refused, the pipe keeps the system's
	// default and the copier sleeps less often.
	pacedPipeSize = 1 << 20
	// pacedPause is how long the copier lets a pipe of pacedPipeSize fill
	// after a read that found less than half of it: 400 KB at 80 MB/s. A
	// smaller pipe gets a shorter pause, in proportion. Shorter pauses cost
	// more wakeups (docs/benchmarks.md, streaming), and longer ones would
	// hold back a worker whose pipe fills sooner.
	pacedPause = 5 * time.Millisecond
	// minPacedPipe is the smallest pipe the copier sleeps on: a smaller one
	// (the system refused to grow it) fills too soon, and is read as any
	// other pipe, at every write.
	minPacedPipe = 256 << 10
	// pacedIdle bounds each wait for a write, so that the copier sees
	// CloseIO's stop while a descendant holds the pipe without writing.
	pacedIdle = 100 * time.Millisecond
	// pacedRead is the copier's buffer.
	pacedRead = 256 << 10
	// pacedAfter is how much the copier reads through the poller before
	// it paces the pipe.
	pacedAfter = 64 << 10
)

// pacedBufs holds the paced copiers' buffers.
var pacedBufs = sync.Pool{New: func() any { return new([pacedRead]byte) }}

// pacedPipe is the supervisor's end of a paced pipe. Its copier owns it
// and closes it as it ends; CloseIO asks it to stop.
type pacedPipe struct {
	mu   sync.Mutex // guards f and fd against unread and stopIO while the copier changes them
	f    *os.File   // the read end while it is read through the poller; nil after
	fd   int        // the read end once out of the poller (non-blocking); -1 before, and once closed
	size int        // the pipe's capacity
	stop atomic.Bool
}

// newPacedPipe returns a paced pipe's read end and the write end for the
// worker; the pipe is asked to hold size bytes (at most pacedPipeSize).
func newPacedPipe(size int) (*pacedPipe, *os.File, error) {
	r, w, err := outputPipe()
	if err != nil {
		return nil, nil, err
	}
	if size <= 0 || size > pacedPipeSize {
		size = pacedPipeSize
	}
	got := 64 << 10
	if rc, err := r.SyscallConn(); err == nil {
		rc.Control(func(fd uintptr) { got = growPipe(int(fd), size) })
	}
	return &pacedPipe{f: r, fd: -1, size: got}, w, nil
}

// copyTo copies the pipe to dst until EOF or a stop, and closes the pipe;
// exited is closed when the worker has ended.
func (pp *pacedPipe) copyTo(dst io.Writer, exited <-chan struct{}) {
	buf := pacedBufs.Get().(*[pacedRead]byte)
	defer pacedBufs.Put(buf)
	defer pp.close()
	write := func(p []byte) {
		if _, err := dst.Write(p); err != nil {
			dst = io.Discard // keep draining, as io.Copy's caller would not
		}
	}
	for read := 0; read < pacedAfter; {
		n, err := pp.f.Read(buf[:])
		read += n
		write(buf[:n])
		if err != nil {
			return // EOF, or CloseIO closed it
		}
	}
	if !pp.leavePoller() {
		if pp.stop.Load() {
			return
		}
		// No descriptor to spare for the duplicate: read on through the
		// poller, as any pipe, rather than lose the rest.
		for {
			n, err := pp.f.Read(buf[:])
			write(buf[:n])
			if err != nil {
				return
			}
		}
	}
	round := 0 // bytes read since the pipe was last found empty
	var pause *time.Timer
	wait := time.Duration(int64(pacedPause) * int64(pp.size) / pacedPipeSize)
	ended := false // exited is closed
	for !pp.stop.Load() {
		n, err := unix.Read(pp.fd, buf[:])
		switch {
		case n > 0:
			round += n
			write(buf[:n])
		case err == unix.EINTR:
		case err == unix.EAGAIN:
			if round > 0 && round < pp.size/2 && pp.size >= minPacedPipe && !ended {
				// The worker writes slowly: let the pipe fill, unless it
				// ends meanwhile (then what it wrote last is read at
				// once, and the pipe no longer paced).
				round = 0
				if pause == nil {
					pause = time.NewTimer(wait)
					defer pause.Stop()
				} else {
					pause.Reset(wait)
				}
				select {
				case <-pause.C:
				case <-exited:
					ended = true
				}
				continue
			}
			round = 0
			fds := []unix.PollFd{{Fd: int32(pp.fd), Events: unix.POLLIN}}
			_, _ = unix.Poll(fds, int(pacedIdle/time.Millisecond))
		default:
			// EOF: every writer closed the pipe; or an error no read
			// would get past.
			return
		}
	}
}

// leavePoller takes the read end out of the runtime's poller: a
// duplicate of it is kept, and the poller's file closed. It reports false
// when CloseIO stopped the copier first (stop is set), or the duplicate
// could not be made (the poller's file is kept).
func (pp *pacedPipe) leavePoller() bool {
	pp.mu.Lock()
	defer pp.mu.Unlock()
	if pp.stop.Load() {
		return false
	}
	rc, err := pp.f.SyscallConn()
	if err != nil {
		return false
	}
	fd := -1
	if rc.Control(func(old uintptr) { fd, err = dupFD(old) }) != nil || err != nil {
		return false
	}
	pp.f.Close()
	pp.f, pp.fd = nil, fd
	return true
}

// dupFD duplicates a descriptor, close-on-exec; a variable for tests.
var dupFD = func(fd uintptr) (int, error) { return unix.FcntlInt(fd, unix.F_DUPFD_CLOEXEC, 0) }

// stopIO asks the copier to stop, and unblocks it when it reads through
// the poller.
func (pp *pacedPipe) stopIO() {
	pp.mu.Lock()
	defer pp.mu.Unlock()
	pp.stop.Store(true)
	if pp.f != nil {
		pp.f.Close()
	}
}

// unread reports whether the pipe holds bytes not read yet.
func (pp *pacedPipe) unread() bool {
	pp.mu.Lock()
	defer pp.mu.Unlock()
	switch {
	case pp.f != nil:
		return pipeHolds(pp.f)
	case pp.fd >= 0:
		return pipeBytes(pp.fd) > 0
	}
	return false
}

func (pp *pacedPipe) close() {
	pp.mu.Lock()
	defer pp.mu.Unlock()
	if pp.f != nil {
		pp.f.Close()
		pp.f = nil
	}
	if pp.fd >= 0 {
		unix.Close(pp.fd)
		pp.fd = -1
	}
}
