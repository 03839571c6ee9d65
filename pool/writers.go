package pool

import (
	"io"
	"os"
	"sync"
)

// syncWriters returns stdout and stderr, Config.Stdout and Config.Stderr,
// made safe for the pool's use: every persistent worker copies its own
// streams into them on goroutines of its own, so a writer such as a
// bytes.Buffer would be written from many at once. Writes to either go
// through one lock, so that the two may be the same writer (as with
// exec.Cmd). Files, which workers are given as they are, and io.Discard
// are left alone: the kernel and io.Discard take concurrent writes.
func syncWriters(stdout, stderr io.Writer) (io.Writer, io.Writer) {
	mu := new(sync.Mutex)
	wrap := func(w io.Writer) io.Writer {
		switch w.(type) {
		case nil, *os.File:
			return w
		}
		if w == io.Discard {
			return w
		}
		return &syncWriter{mu: mu, w: w}
	}
	return wrap(stdout), wrap(stderr)
}

// syncWriter serialises the writes to w. It has no ReadFrom, which would
// hold the lock while a worker's whole stream is copied.
type syncWriter struct {
	mu *sync.Mutex // shared by a pool's Stdout and Stderr; guards w
	w  io.Writer
}

func (s *syncWriter) Write(b []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.w.Write(b)
}
