package worker

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"math"
	"os"
	"sync"
	"sync/atomic"

	"github.com/safepool/safepool/internal/bytesize"
	"github.com/safepool/safepool/internal/protocol"
	"golang.org/x/sys/unix"
)

// maxLinesPerEvent bounds how many frames, already buffered, the reader
// hands to the session at once.
const maxLinesPerEvent = 256

// Event is what a reader goroutine saw on a worker's result pipe.
type Event struct {
	// chunk holds whole answer lines of a line worker, each with its
	// newline, as one read completed them.
	chunk  []byte
	frames []protocol.Frame // framed protocol: the frames read at once
	err    error            // io.EOF, or what was wrong; the reader's last event
	// consumed is, for lines, no less than how much of its stdin the
	// worker had read when it wrote them (see taskPipe.readAtMost).
	consumed int64
}

// The goroutines that read and write a persistent worker's pipes, and what
// they share with its Session.

// taskPipe is the supervisor's end of a worker's task pipe. It counts the
// bytes written, so that the session can tell how much of what it sent the
// worker has read: what was written less what the pipe still holds.
//
// The count of what a write(2) took is made under mu, with the call, and
// readAtLeast reads the count and the pipe under mu too. Counted after the
// write returned, without it, the count lagged while the writer goroutine
// waited to be scheduled: a worker could read a line and die of it in that
// time, and its line was then taken for unread, given back uncharged, and
// run (and died of) once more.
type taskPipe struct {
	f         *os.File
	attempted atomic.Int64 // bytes handed to write(2), counted before the call
	// written is the bytes write(2) took. It changes only under mu; a
	// load without mu (see Session.idleOnInput) may miss the last write.
	written atomic.Int64
	// mu is held across each write(2) and its count. f is non-blocking (it
	// comes from os.Pipe): a write(2) never waits under mu; a full pipe is
	// waited for in the poller, with mu released.
	mu sync.Mutex
	// wrote, when set, is called after each write(2) has returned and
	// before what it took is counted: a test stands in it for a writer
	// goroutine that is scheduled late.
	wrote func()
}

func (tp *taskPipe) Write(p []byte) (int, error) {
	tp.attempted.Add(int64(len(p)))
	rc, err := tp.f.SyscallConn()
	if err != nil {
		return 0, err
	}
	n := 0
	var werr error
	err = rc.Write(func(fd uintptr) bool {
		for n < len(p) {
			k, err := tp.write(fd, p[n:])
			n += k
			switch err {
			case nil, unix.EINTR:
			case unix.EAGAIN:
				return false // the pipe is full: wait for room
			default:
				werr = err
				return true
			}
		}
		return true
	})
	if werr != nil {
		err = werr
	}
	if err != nil {
		return n, &os.PathError{Op: "write", Path: tp.f.Name(), Err: err}
	}
	return n, nil
}

// write makes one write(2) of p to fd, and counts what it took.
func (tp *taskPipe) write(fd uintptr, p []byte) (int, error) {
	tp.mu.Lock()
	defer tp.mu.Unlock()
	n, err := unix.Write(int(fd), p)
	n = max(n, 0)
	if tp.wrote != nil {
		tp.wrote()
	}
	tp.written.Add(int64(n))
	return n, err
}

// readAtMost returns a bound that the bytes the worker had read when it was
// called cannot exceed, or MaxInt64 when the pipe cannot be asked. A line
// that arrived before the call and claims to answer a line ending past the
// bound was written before the worker read that line.
func (tp *taskPipe) readAtMost() int64 {
	n, err := Backlog(tp.f) // first: attempted only grows
	if err != nil {
		return math.MaxInt64
	}
	return tp.attempted.Load() - int64(n)
}

// readAtLeast returns how much the worker has surely read, or -1 when the
// pipe cannot be asked (it was closed). It waits for a write(2) under way
// to be counted.
func (tp *taskPipe) readAtLeast() int64 {
	tp.mu.Lock()
	defer tp.mu.Unlock()
	n, err := Backlog(tp.f)
	if err != nil {
		return -1
	}
	return max(tp.written.Load()-int64(n), 0)
}

// resultReader reads a worker's result pipe and sends what it finds to
// events, ending with one event whose err is set. It returns early once gone
// is closed.
type resultReader struct {
	framed  bool
	r       io.Reader
	events  chan<- Event
	gone    <-chan struct{}
	begin   <-chan struct{} // it reads nothing before begin is closed
	maxLine int64           // line protocol: the longest line
	pipe    *taskPipe       // line protocol: to tell how much of its stdin the worker has read
}

// send hands ev to the session; it reports false when the session is gone.
func (rr *resultReader) send(ev Event) bool {
	select {
	case rr.events <- ev:
		return true
	case <-rr.gone:
		return false
	}
}

func (rr *resultReader) run() {
	select {
	case <-rr.begin:
	case <-rr.gone:
		return
	}
	if rr.framed {
		fr := protocol.NewReader(rr.r, protocol.DefaultMaxPayload)
		for {
			f, err := fr.ReadFrame()
			if err != nil {
				rr.send(Event{err: err})
				return
			}
			// Hand over, with it, the whole frames already buffered: a
			// batch's worker writes an item's answer and the next item's
			// start together.
			frames := []protocol.Frame{f}
			for len(frames) < maxLinesPerEvent && fr.Whole() {
				if f, err = fr.ReadFrame(); err != nil {
					break
				}
				frames = append(frames, f)
			}
			if !rr.send(Event{frames: frames}) {
				return
			}
			if err != nil {
				rr.send(Event{err: err})
				return
			}
		}
	}
	// After each read, note how much of its stdin the worker had read at
	// most: every line read so far was written before that.
	sr := &sampledReader{r: rr.r, sample: rr.pipe.readAtMost}
	rr.readLines(sr)
}

// readLines reads answer lines from sr and hands them to the session in
// chunks: after each read, the whole lines it completed, copied at once,
// with how much of its stdin the worker had read at most then. A line longer
// than maxLine is an error as soon as maxLine+1 bytes of it have been read;
// a last line without a newline is not an answer (the worker died writing
// it).
func (rr *resultReader) readLines(sr *sampledReader) {
	// Reads of at most 16 KiB keep each chunk, which the answers it holds
	// keep alive until they are delivered, among the Go heap's small
	// objects.
	buf := make([]byte, 16<<10)
	var part []byte // the start of a line whose newline has not come yet
	for {
		n, err := sr.Read(buf)
		data := buf[:n]
		if i := bytes.LastIndexByte(data, '\n'); i >= 0 {
			whole := data[:i+1]
			var chunk []byte
			if len(part) > len(buf) {
				// A long line ends: it goes as it is, without a copy,
				// which would double what the supervisor holds of it.
				chunk = appendUpTo(part, whole, int(rr.maxLine)+len(buf)+1)
				part = append([]byte(nil), data[i+1:]...)
			} else {
				chunk = make([]byte, len(part)+len(whole))
				copy(chunk[copy(chunk, part):], whole)
				part = append(part[:0], data[i+1:]...)
			}
			if int64(len(chunk)) > rr.maxLine+1 {
				if at := firstLongLine(chunk, rr.maxLine); at >= 0 {
					// The whole lines before the long one, read with it,
					// are answers: only the line it answers is at fault.
					if at > 0 && !rr.send(Event{chunk: chunk[:at], consumed: sr.last}) {
						return
					}
					rr.send(Event{err: &LineTooLongError{Max: rr.maxLine}})
					return
				}
			}
			if !rr.send(Event{chunk: chunk, consumed: sr.last}) {
				return
			}
		} else {
			part = appendUpTo(part, data, int(rr.maxLine)+len(buf)+1)
		}
		if int64(len(part)) > rr.maxLine {
			rr.send(Event{err: &LineTooLongError{Max: rr.maxLine}})
			return
		}
		if err != nil {
			if err == io.ErrUnexpectedEOF {
				err = io.EOF
			}
			rr.send(Event{err: err})
			return
		}
	}
}

// appendUpTo appends data to b as append does, but doubles b's capacity
// when it grows, up to limit when that holds the result: a line read in
// 16 KiB pieces up to the bound grows in a few copies to about the bound.
// append grows a large slice by a quarter at a time, a copy each time, and
// the garbage of a 60 MB line took the supervisor's memory 300 MB up.
func appendUpTo(b, data []byte, limit int) []byte {
	n := len(b) + len(data)
	if n <= cap(b) {
		return append(b, data...)
	}
	c := max(2*cap(b), n)
	if c > limit {
		c = max(limit, n)
	}
	nb := make([]byte, len(b), c)
	copy(nb, b)
	return append(nb, data...)
}

// firstLongLine is the offset in chunk of its first line longer than limit
// bytes without its newline, or -1 when there is none.
func firstLongLine(chunk []byte, limit int64) int {
	for at := 0; at < len(chunk); {
		i := bytes.IndexByte(chunk[at:], '\n')
		if i < 0 {
			i = len(chunk) - at
		}
		if int64(i) > limit {
			return at
		}
		at += i + 1
	}
	return -1
}

// sampledReader calls sample after every read that returned data, and
// keeps the last value.
type sampledReader struct {
	r      io.Reader
	sample func() int64
	last   int64
}

func (s *sampledReader) Read(p []byte) (int, error) {
	n, err := s.r.Read(p)
	if n > 0 {
		s.last = s.sample()
	}
	return n, err
}

// LineTooLongError is the protocol error of a line worker whose answer line
// is longer than pool.Config.MaxLine.
type LineTooLongError struct {
	// Max is the bound, in bytes without the newline.
	Max int64
}

func (e *LineTooLongError) Error() string {
	return fmt.Sprintf("the worker wrote an answer line longer than the limit of %s", bytesize.Format(e.Max))
}

// writeTasks writes each message to the worker's task pipe, batching what is
// queued into one write. It returns when msgs is closed. Its first write
// error goes to errc (which must have room for it); after that it keeps
// draining msgs so that the session never blocks on it.
func writeTasks(w io.Writer, msgs <-chan []byte, errc chan<- error) {
	bw := bufio.NewWriterSize(w, 64<<10)
	var failed bool
	fail := func(err error) {
		failed = true
		errc <- err
	}
	for m := range msgs {
		if failed {
			continue
		}
		if _, err := bw.Write(m); err != nil {
			fail(err)
			continue
		}
		if len(msgs) == 0 {
			if err := bw.Flush(); err != nil {
				fail(err)
			}
		}
	}
}
