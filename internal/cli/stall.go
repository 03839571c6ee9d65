package cli

import (
	"errors"
	"io"
	"sync"
	"time"
)

// errOutputStalled is the error of a write to stdout or stderr that
// safepool gave up once the run was stopping: the reader took nothing.
var errOutputStalled = errors.New("its reader stopped taking output after the interrupt: output given up")

// stallGuard lets a stopping run end even when the reader of its stdout or
// stderr has stopped reading (a pager left waiting, a stuck consumer): a
// write to a full pipe blocks until the reader reads, and neither a signal
// nor a close can interrupt it. So every write of a guardedWriter runs in a
// goroutine of its own, and the caller waits for it only while the run
// goes on: once it is stopping, a write that the reader has not taken
// within grace is given up, and within stallMoment when asked to stop now
// (a second Ctrl-C). The write given up stays blocked until the reader reads or goes
// away, or the process exits: nothing else can end it.
type stallGuard struct {
	grace    time.Duration
	stopping chan struct{} // closed when the run starts to stop
	now      chan struct{} // closed when writes are to be given up at once
	stopOnce sync.Once
	nowOnce  sync.Once
}

func newStallGuard(grace time.Duration) *stallGuard {
	return &stallGuard{grace: grace, stopping: make(chan struct{}), now: make(chan struct{})}
}

// stop says that the run is stopping: writes the reader does not take
// within grace are given up from now on.
func (g *stallGuard) stop() { g.stopOnce.Do(func() { close(g.stopping) }) }

// giveUp gives up every write the reader has not taken, at once.
func (g *stallGuard) giveUp() {
	g.stop()
	g.nowOnce.Do(func() { close(g.now) })
}

// guard returns w guarded by g.
func (g *stallGuard) guard(w io.Writer) *guardedWriter { return &guardedWriter{g: g, w: w} }

// guardedWriter writes to w under its stallGuard. Writes are serialized:
// one is under way at a time.
type guardedWriter struct {
	g  *stallGuard
	w  io.Writer
	mu sync.Mutex // held by the write under way
	// Guarded by mu: buf is the copy of the bytes the write goroutine
	// writes, reused once a write is over (a write given up keeps its own:
	// the caller may reuse its bytes as soon as Write returns); stalled
	// reports whether a write was given up, after which w is not written
	// again.
	buf     []byte
	stalled bool
}

type writeResult struct {
	n   int
	err error
}

// guardChunk is the most a guardedWriter copies for one write: a larger
// one (a block's whole output) is written in pieces of this size, so that
// the copy never costs more memory than this.
const guardChunk = 64 << 10

func (gw *guardedWriter) Write(p []byte) (int, error) {
	gw.mu.Lock()
	defer gw.mu.Unlock()
	n := 0
	for len(p) > 0 {
		m, err := gw.write(p[:min(len(p), guardChunk)])
		n += m
		if err == nil && m == 0 {
			err = io.ErrShortWrite
		}
		if err != nil {
			return n, err
		}
		p = p[m:]
	}
	return n, nil
}

// write writes p, at most guardChunk bytes; gw.mu is held.
func (gw *guardedWriter) write(p []byte) (int, error) {
	if gw.stalled {
		return 0, errOutputStalled
	}
	gw.buf = append(gw.buf[:0], p...)
	buf := gw.buf
	done := make(chan writeResult, 1)
	go func() { // ends when w's write returns, or with the process
		n, err := gw.w.Write(buf)
		done <- writeResult{n, err}
	}()
	select {
	case r := <-done:
		return r.n, r.err
	case <-gw.g.stopping:
	}
	// Asked to stop now, a write still gets a moment: one that a reader
	// takes (a file, a terminal, a pipe with room) is over by then.
	wait := gw.g.grace
	select {
	case <-gw.g.now:
		wait = min(wait, stallMoment)
	default:
	}
	t := time.NewTimer(wait)
	defer t.Stop()
	select {
	case r := <-done:
		return r.n, r.err
	case <-t.C:
	case <-gw.g.now:
		t.Reset(stallMoment)
		select {
		case r := <-done:
			return r.n, r.err
		case <-t.C:
		}
	}
	gw.stalled, gw.buf = true, nil
	return 0, errOutputStalled
}

// stallMoment is how long a write may take, once writes are to be given
// up at once, before it is.
const stallMoment = 100 * time.Millisecond
