package worker

import (
	"bytes"
	"io"
	"os"
	"sync"
)

// Stdin is what a one-shot task's processes read on their stdin, kept
// for all of the task's attempts: once, in a sealed memory file where the
// system makes them, else as the bytes themselves.
//
// A process reads the memory file as a regular file: it does not wake the
// supervisor for each piece it reads, nor wait to be woken for each piece
// the supervisor writes, as a pipe makes both do (bench/streaming/notes.md).
// The file's pages are charged to the supervisor, which writes them, as a
// pipe's buffers and the bytes themselves are.
type Stdin struct {
	mu    sync.Mutex
	f     *os.File // the memory file, or nil
	b     []byte   // the bytes, when there is no memory file
	given bool     // f itself was given to a process: later ones get a description of their own
}

// NewStdin keeps b for a task's processes. It fails only for want of file
// descriptors, an error ShortOfFiles knows, after which the caller may
// try again once some are given back; where the system makes no memory
// files, the processes get b through a pipe.
func NewStdin(b []byte) (*Stdin, error) {
	f, err := memoryFile(b)
	switch {
	case err == nil:
		return &Stdin{f: f}, nil
	case ShortOfFiles(err):
		return nil, err
	default:
		return &Stdin{b: b}, nil
	}
}

// Copied reports whether the bytes given to NewStdin were copied into a
// memory file, so that the caller may use them again.
func (s *Stdin) Copied() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.f != nil
}

// Close gives back the memory file. A process started with it reads on.
func (s *Stdin) Close() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.f != nil {
		s.f.Close()
		s.f = nil
	}
}

// forProcess returns the stdin of the next process: a file that reads
// from the start, which the caller closes once the process has it
// (owned), or else a reader for exec.Cmd to copy through a pipe. The
// first process gets the memory file itself; a later one gets a new
// description of it, whose offset is its own: a descendant of an earlier
// attempt that outlived it may still hold the first. Where that cannot
// be made (no /proc), the bytes are read back and go through a pipe.
func (s *Stdin) forProcess() (f *os.File, owned bool, r io.Reader, err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	switch {
	case s.f == nil && s.b == nil:
		return nil, false, nil, os.ErrClosed
	case s.f == nil:
		return nil, false, bytes.NewReader(s.b), nil
	case !s.given:
		s.given = true
		return s.f, false, nil, nil
	}
	if f, err := reopenReadOnly(s.f); err == nil {
		return f, true, nil, nil
	} else if ShortOfFiles(err) {
		return nil, false, nil, err
	}
	fi, err := s.f.Stat()
	if err != nil {
		return nil, false, nil, err
	}
	b := make([]byte, fi.Size())
	if _, err := s.f.ReadAt(b, 0); err != nil && err != io.EOF {
		return nil, false, nil, err
	}
	return nil, false, bytes.NewReader(b), nil
}
