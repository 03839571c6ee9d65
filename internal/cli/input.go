package cli

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
	"golang.org/x/term"
)

// source yields the inputs of a job, one at a time, with backpressure: it
// reads no further than the caller asks.
type source interface {
	// next returns the next input without its separator, or io.EOF.
	next() ([]byte, error)
	// total returns the number of inputs when it is known in advance, or -1.
	total() int64
	// close releases the files the source opened.
	close() error
}

// longInputError reports an input longer than the bound its command
// allows. Reading stops there: an input with no end in sight (a file with
// no newline in it, or find -print0 without -0) would otherwise be read
// whole into memory, however large.
type longInputError struct {
	Input int64  // the input's number, counting from 1
	Limit int    // the bound, in bytes
	Start []byte // the input's first bytes
	Sep   byte   // what ends inputs
	Why   string // what the bound stands for, or ""
}

func (e *longInputError) Error() string {
	// Start is given as it is: whoever shows the message quotes it
	// (quoteMessage), and once only.
	s := fmt.Sprintf("input %d is longer than %s (it starts '%s…')", e.Input, formatSizeFlag(int64(e.Limit)), e.Start)
	if e.Why != "" {
		s += ": " + e.Why
	}
	if e.Sep == '\n' && bytes.IndexByte(e.Start, 0) >= 0 {
		s += "; it holds NUL bytes: for inputs that end with NUL, such as find -print0's, use -0"
	}
	return s
}

// longInputStart is how much of a long input its error shows.
const longInputStart = 24

// lineReader reads items separated by sep from r. Items hold any byte but
// sep, and are at most max bytes long (0: any length). A last item without
// a separator counts; an empty input has no items.
type lineReader struct {
	r   *bufio.Reader
	sep byte
	max int
}

func newLineReader(r io.Reader, sep byte, max int) *lineReader {
	return &lineReader{r: bufio.NewReaderSize(r, 64<<10), sep: sep, max: max}
}

// next returns the next item, or a *longInputError (Input not set) for one
// longer than max, which it does not read further. The item has room for
// one more byte, the newline that map adds to a last line without it.
func (l *lineReader) next() ([]byte, error) {
	var long pieces // the item so far, when it came in more than one read
	for {
		frag, err := l.r.ReadSlice(l.sep)
		ended := err == nil
		if ended {
			frag = frag[:len(frag)-1]
		}
		if l.max > 0 && long.n+len(frag) > l.max {
			start := append(long.start(longInputStart), frag[:min(len(frag), longInputStart)]...)
			return nil, &longInputError{Limit: l.max, Start: start[:min(len(start), longInputStart)], Sep: l.sep}
		}
		switch {
		case ended || (err == io.EOF && long.n+len(frag) > 0):
			if long.n == 0 {
				// The whole item in one read, as most are.
				return append(make([]byte, 0, len(frag)+1), frag...), nil
			}
			long.add(frag)
			return long.join(1), nil
		case err == bufio.ErrBufferFull:
			long.add(frag)
		default:
			return nil, err
		}
	}
}

// pieces holds a long item as it is read, in pieces that double in size up
// to maxPiece, and join copies it out once whole. Grown by append as one
// slice, a line was copied at every growth, by a quarter at a time, and
// each copy kept until the garbage collector ran: reading a 200 MB line
// took the supervisor to 866 MB (map's GOGC=300), and refusing one past
// the 64 MiB bound to 241-364 MB. In pieces, an item costs itself while it
// is read, and twice itself for the moment join copies it.
type pieces struct {
	ps [][]byte
	n  int // the bytes held
}

// maxPiece bounds the size of one piece of a long item.
const maxPiece = 16 << 20

func (p *pieces) add(b []byte) {
	for len(b) > 0 {
		if len(p.ps) == 0 || len(p.ps[len(p.ps)-1]) == cap(p.ps[len(p.ps)-1]) {
			size := 64 << 10
			if len(p.ps) > 0 {
				size = min(2*cap(p.ps[len(p.ps)-1]), maxPiece)
			}
			p.ps = append(p.ps, make([]byte, 0, size))
		}
		last := &p.ps[len(p.ps)-1]
		k := min(len(b), cap(*last)-len(*last))
		*last = append(*last, b[:k]...)
		b = b[k:]
		p.n += k
	}
}

// start returns up to k first bytes held.
func (p *pieces) start(k int) []byte {
	var b []byte
	for _, q := range p.ps {
		if len(b) >= k {
			break
		}
		b = append(b, q[:min(len(q), k-len(b))]...)
	}
	return b
}

// join returns the bytes held in one slice with room for extra more, and
// lets go of the pieces.
func (p *pieces) join(extra int) []byte {
	b := make([]byte, 0, p.n+extra)
	for _, q := range p.ps {
		b = append(b, q...)
	}
	p.ps, p.n = nil, 0
	return b
}

// argSource yields the arguments given after ":::".
type argSource struct{ args []string }

func (a *argSource) next() ([]byte, error) {
	if len(a.args) == 0 {
		return nil, io.EOF
	}
	s := a.args[0]
	a.args = a.args[1:]
	return []byte(s), nil
}

func (a *argSource) total() int64 { return int64(len(a.args)) }
func (a *argSource) close() error { return nil }

// fileSource reads the items of several files one after the other. "-"
// stands for standard input.
type fileSource struct {
	names []string
	files []io.ReadCloser // opened up front, so a missing file fails fast
	ins   []io.Reader     // files as opened, standard input as given (interruptReads)
	sep   byte
	max   int    // the longest input, 0 for any length (longInputError)
	why   string // what max stands for (longInputError.Why)
	cur   *lineReader
	i     int   // index of the file cur reads
	n     int64 // inputs read
}

// openFiles opens every named file, or returns the first error. Inputs
// longer than max bytes (0: any length) stop the reading with a
// *longInputError that says why, the bound's reason.
func openFiles(names []string, stdin io.Reader, sep byte, max int, why string) (*fileSource, error) {
	fs := &fileSource{names: names, sep: sep, max: max, why: why}
	for _, name := range names {
		if name == "-" {
			if f, ok := stdin.(*os.File); ok {
				// As for -a DIR: said at once (exit 2), rather than at
				// the first read, once the run has started (exit 3).
				if st, err := f.Stat(); err == nil && st.IsDir() {
					fs.close()
					return nil, errors.New("cannot read inputs from stdin: it is a directory")
				}
			}
			fs.files = append(fs.files, io.NopCloser(stdin))
			fs.ins = append(fs.ins, stdin)
			continue
		}
		f, err := os.Open(name)
		if err == nil {
			// A directory opens, and fails only at the first read, once
			// the run has started.
			if st, serr := f.Stat(); serr == nil && st.IsDir() {
				f.Close()
				err = &os.PathError{Op: "open", Path: name, Err: syscall.EISDIR}
			}
		}
		if err != nil {
			fs.close()
			var pe *os.PathError
			if errors.As(err, &pe) {
				err = pe.Err
			}
			return nil, fmt.Errorf("cannot open input file %s: %w", name, err)
		}
		fs.files = append(fs.files, f)
		fs.ins = append(fs.ins, f)
	}
	return fs, nil
}

func (fs *fileSource) next() ([]byte, error) {
	for fs.i < len(fs.files) {
		if fs.cur == nil {
			fs.cur = newLineReader(fs.files[fs.i], fs.sep, fs.max)
		}
		line, err := fs.cur.next()
		if err == nil {
			fs.n++
			return line, nil
		}
		var le *longInputError
		if errors.As(err, &le) {
			le.Input, le.Why = fs.n+1, fs.why
			return nil, err
		}
		if err != io.EOF {
			return nil, fmt.Errorf("reading %s: %w", fs.names[fs.i], err)
		}
		fs.cur = nil
		fs.i++
	}
	return nil, io.EOF
}

func (fs *fileSource) total() int64 { return -1 }

func (fs *fileSource) close() error {
	var first error
	for _, f := range fs.files {
		if err := f.Close(); err != nil && first == nil {
			first = err
		}
	}
	return first
}

// readInterrupter is a source whose reads can be made to return at once,
// from another goroutine than the one reading.
type readInterrupter interface {
	// interruptReads makes the read under way, and later ones, return an
	// error at once where the input allows it, and reports whether every
	// read now ends of itself: interrupted, or of an input that never
	// blocks for long (a regular file, the ::: arguments).
	interruptReads() bool
	// resumeReads undoes interruptReads.
	resumeReads()
}

func (a *argSource) interruptReads() bool { return true }
func (a *argSource) resumeReads()         {}

// deadliner is an input whose reads take a deadline: an *os.File of a pipe
// or socket the runtime polls.
type deadliner interface{ SetReadDeadline(time.Time) error }

func (fs *fileSource) interruptReads() bool {
	ends := true
	for _, in := range fs.ins {
		f, isFile := in.(*os.File)
		if isFile {
			if st, err := f.Stat(); err == nil && st.Mode().IsRegular() {
				continue
			}
		}
		d, ok := in.(deadliner)
		if ok && isFile {
			// A file accepts a deadline once the runtime polls it, but
			// heeds it only while it is in non-blocking mode, which
			// f.Fd ends.
			ok = nonBlocking(f)
		}
		if !ok || d.SetReadDeadline(time.Unix(1, 0)) != nil {
			ends = false // a pipe or terminal read in blocking mode, or a reader of unknown kind
		}
	}
	return ends
}

// nonBlocking reports whether f's reads go through the runtime's poller,
// whose deadlines interrupt them: f is in non-blocking mode.
func nonBlocking(f *os.File) bool {
	rc, err := f.SyscallConn()
	if err != nil {
		return false
	}
	nb := false
	rc.Control(func(fd uintptr) {
		flags, err := unix.FcntlInt(fd, unix.F_GETFL, 0)
		nb = err == nil && flags&unix.O_NONBLOCK != 0
	})
	return nb
}

func (fs *fileSource) resumeReads() {
	for _, in := range fs.ins {
		if d, ok := in.(deadliner); ok {
			d.SetReadDeadline(time.Time{})
		}
	}
}

// stopReading ends the goroutine that reads src once its sends are given
// up (it closes done as it returns): it interrupts the read under way and
// waits for the goroutine. A read that cannot be interrupted (a standard
// input that the runtime does not poll, as a pipe in blocking mode) is
// left to end when it returns, at its input's next line or end, or with
// the process: nothing else would end it.
func stopReading(src source, done <-chan struct{}) {
	select {
	case <-done:
		return
	default:
	}
	ri, ok := src.(readInterrupter)
	if !ok || !ri.interruptReads() {
		return
	}
	<-done
	ri.resumeReads()
}

// newSource chooses the inputs: the ":::" arguments when given, else the -a
// files, else standard input. Inputs read from files or standard input are
// at most max bytes long (see openFiles).
func newSource(argsAfterColons []string, haveColons bool, files []string, stdin io.Reader, sep byte, max int, why string) (source, error) {
	switch {
	case haveColons:
		return &argSource{args: argsAfterColons}, nil
	case len(files) > 0:
		return openFiles(files, stdin, sep, max, why)
	default:
		return openFiles([]string{"-"}, stdin, sep, max, why)
	}
}

// terminalNotice says on stderr that what (the inputs, the input) is read
// from the terminal, with hint on how else to give it, when it is: stdin is read (no -a, or -a -) and is a
// terminal. A command line that forgot its ::: or -a, or the pipe into
// safepool, would otherwise wait without a word; GNU parallel warns too.
// It reports whether the inputs are read from the terminal.
func terminalNotice(e *env, files []string, what, hint string) bool {
	if len(files) > 0 && !slices.Contains(files, "-") {
		return false
	}
	if f, ok := e.stdin.(*os.File); !ok || !fileIsTerminal(f) {
		return false
	}
	fmt.Fprintf(e.stderr, "safepool: reading %s from the terminal until Ctrl-D (%s)\n", what, hint)
	return true
}

// fileIsTerminal reports whether f is a terminal. Unlike f.Fd, it leaves
// f in the runtime's poller: a read of f can still be interrupted
// (stopReading).
func fileIsTerminal(f *os.File) bool {
	rc, err := f.SyscallConn()
	if err != nil {
		return false
	}
	is := false
	rc.Control(func(fd uintptr) { is = term.IsTerminal(int(fd)) })
	return is
}

// openInterruptibly returns what open returns, or, as soon as ctx is done
// (Ctrl-C, SIGTERM, SIGHUP), an error that stops the command with exit 3.
// Opening an input file may block: a named pipe waits for its writer, and
// nothing else would heed the signal meanwhile. What open returns after
// that is closed when it does, or with the process.
func openInterruptibly[S interface{ close() error }](ctx context.Context, open func() (S, error)) (S, error) {
	type opened struct {
		src S
		err error
	}
	ch := make(chan opened, 1)
	go func() { // ends when open returns
		src, err := open()
		ch <- opened{src, err}
	}()
	select {
	case o := <-ch:
		return o.src, o.err
	case <-ctx.Done():
		go func() { // ends when open returns
			if o := <-ch; o.err == nil {
				o.src.close()
			}
		}()
		var zero S
		err := error(errInterrupted)
		if s := interruptedBy(ctx); s != nil {
			err = &SignalError{Signal: s}
		}
		return zero, &statusError{status: exitAborted, err: err}
	}
}
