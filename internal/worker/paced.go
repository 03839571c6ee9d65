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
// kept out of the poller, made as large as the system lets (up to 1 MiB),
// and read in large pieces: after a read that found little, the copier
// sleeps a moment and lets the pipe fill, and only when the pipe is empty
// does it wait for the next write (poll(2), which registers no lasting
// waiter as the poller does). A worker that writes fast fills half the pipe
// or more between reads; the copier then reads without sleeping, so that
// it does not hold the worker back. So does a pipe the system would not
// grow.

const (
	// pacedPipeSize is the size asked of a paced pipe (the default
	// /proc/sys/fs/pipe-max-size); where it is refused, the pipe keeps the
	// system's default and the copier sleeps less often.
	pacedPipeSize = 1 << 20
	// pacedPause is how long the copier lets the pipe fill after a read
	// that found less than half of it: 400 KB at 80 MB/s. Shorter pauses
	// cost more wakeups (docs/benchmarks.md, streaming), and longer ones
	// would hold back a worker whose pipe fills sooner.
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
)

// pacedBufs holds the paced copiers' buffers.
var pacedBufs = sync.Pool{New: func() any { return new([pacedRead]byte) }}

// pacedPipe is the supervisor's end of a paced pipe. Its copier owns the
// descriptor and closes it as it ends; CloseIO asks it to stop.
type pacedPipe struct {
	mu   sync.Mutex // guards fd against unread while the copier closes it
	fd   int        // non-blocking, not in the poller; -1 once closed
	size int        // the pipe's capacity
	stop atomic.Bool
}

// newPacedPipe returns a paced pipe's read end and the write end for the
// worker.
func newPacedPipe() (*pacedPipe, *os.File, error) {
	var fds [2]int
	if err := unix.Pipe2(fds[:], unix.O_CLOEXEC|unix.O_NONBLOCK); err != nil {
		return nil, nil, os.NewSyscallError("pipe2", err)
	}
	// The worker's end blocks, as any pipe a program is given does.
	if err := unix.SetNonblock(fds[1], false); err != nil {
		unix.Close(fds[0])
		unix.Close(fds[1])
		return nil, nil, os.NewSyscallError("fcntl", err)
	}
	// A blocking descriptor stays out of the poller.
	return &pacedPipe{fd: fds[0], size: growPipe(fds[0], pacedPipeSize)}, os.NewFile(uintptr(fds[1]), "|1"), nil
}

// copyTo copies the pipe to dst until EOF or a stop, and closes the pipe.
func (pp *pacedPipe) copyTo(dst io.Writer) {
	buf := pacedBufs.Get().(*[pacedRead]byte)
	defer pacedBufs.Put(buf)
	defer pp.close()
	round := 0 // bytes read since the pipe was last found empty
	for !pp.stop.Load() {
		n, err := unix.Read(pp.fd, buf[:])
		switch {
		case n > 0:
			round += n
			if _, werr := dst.Write(buf[:n]); werr != nil {
				dst = io.Discard // keep draining, as io.Copy's caller would not
			}
		case err == unix.EINTR:
		case err == unix.EAGAIN:
			if round > 0 && round < pp.size/2 && pp.size >= minPacedPipe {
				// The worker writes slowly: let the pipe fill.
				round = 0
				time.Sleep(pacedPause)
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

// unread reports whether the pipe holds bytes not read yet.
func (pp *pacedPipe) unread() bool {
	pp.mu.Lock()
	defer pp.mu.Unlock()
	if pp.fd < 0 {
		return false
	}
	n, _ := unix.IoctlGetInt(pp.fd, unix.TIOCINQ)
	return n > 0
}

func (pp *pacedPipe) close() {
	pp.mu.Lock()
	defer pp.mu.Unlock()
	unix.Close(pp.fd)
	pp.fd = -1
}
