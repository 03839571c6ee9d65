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
	"sync"
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
// stands for standard input. It holds at most one file open, the one it
// reads, and opens each as the reading reaches it: every -a file held
// open from the start took a file each from the open-file limit, and more
// files than the limit (ulimit -n) could not be read at all ("too many
// open files"), however few at a time were being read.
type fileSource struct {
	names []string
	// found is what checkInputs found at each name, and, for "-", what
	// standard input is when it is a file (nil otherwise): inputFileAt
	// tells the input files by it.
	found []os.FileInfo
	stdin io.Reader
	sep   byte
	max   int    // the longest input, 0 for any length (longInputError)
	why   string // what max stands for (longInputError.Why)
	cur   *lineReader
	i     int   // index of the file read, or to be opened next
	n     int64 // inputs read

	// mu guards what interruptReads, on another goroutine, sees of the
	// file being read.
	mu      sync.Mutex
	in      io.Reader // names[i] as read, nil until it is opened
	opened  *os.File  // in when safepool opened it, closed when done
	opening bool      // an open that may wait is under way (a named pipe's writer)
	stopped bool      // interruptReads was called, and no resumeReads since
	closed  bool      // close was called: nothing more is opened
}

// errReadsStopped is what a read returns once interruptReads stopped them.
var errReadsStopped = os.ErrDeadlineExceeded

// openFiles checks every named file, or returns the first error, and
// opens the first one. Inputs longer than max bytes (0: any length) stop
// the reading with a *longInputError that says why, the bound's reason.
func openFiles(names []string, stdin io.Reader, sep byte, max int, why string) (*fileSource, error) {
	found, err := checkInputs(names, stdin)
	if err != nil {
		return nil, err
	}
	fs := &fileSource{names: names, found: found, stdin: stdin, sep: sep, max: max, why: why}
	// The first file is opened now: a named pipe whose writer has not
	// come is waited for before the run starts, where Ctrl-C ends it at
	// once (openInterruptibly).
	if _, err := fs.reader(); err != nil && err != io.EOF {
		return nil, err
	}
	return fs, nil
}

// checkInputs says at once, before anything runs, that an input file
// cannot be read: missing, unreadable, a directory (which opens, and
// fails only at the first read), or standard input that is a directory.
// It returns what it found at each name. A regular file is opened and
// closed at once; anything else is only looked at, since opening it may
// wait or act (a named pipe waits for its writer, and a writer waiting
// for it would be let through, then find it closed).
func checkInputs(names []string, stdin io.Reader) ([]os.FileInfo, error) {
	found := make([]os.FileInfo, len(names))
	for i, name := range names {
		if name == "-" {
			if f, ok := stdin.(*os.File); ok {
				if st, err := f.Stat(); err == nil {
					if st.IsDir() {
						// As for -a DIR: said at once (exit 2),
						// rather than at the first read, once the run
						// has started (exit 3).
						return nil, errors.New("cannot read inputs from stdin: it is a directory")
					}
					found[i] = st
				}
			}
			continue
		}
		st, err := checkInput(name)
		if err != nil {
			return nil, err
		}
		found[i] = st
	}
	return found, nil
}

// checkInput checks that the input file name can be read (see
// checkInputs), and returns what is there.
func checkInput(name string) (os.FileInfo, error) {
	st, err := os.Stat(name)
	switch {
	case err != nil:
	case st.IsDir():
		err = syscall.EISDIR
	case st.Mode().IsRegular():
		var f *os.File
		if f, err = os.Open(name); err == nil {
			f.Close()
		}
	case st.Mode()&os.ModeSocket != 0:
		err = syscall.ENXIO // what opening it says
	default:
		err = unix.Faccessat(unix.AT_FDCWD, name, unix.R_OK, unix.AT_EACCESS)
	}
	if err != nil {
		return nil, inputFileError(name, err)
	}
	return st, nil
}

// inputFileError says that the input file name cannot be opened, and why.
func inputFileError(name string, err error) error {
	var pe *os.PathError
	if errors.As(err, &pe) {
		err = pe.Err
	}
	return fmt.Errorf("cannot open input file %s: %w", name, err)
}

// reader returns the file being read, opening names[i] when the reading
// reaches it, or io.EOF after the last one. A file that can no longer be
// opened (deleted since the run started) is an error, as a failed read is.
func (fs *fileSource) reader() (io.Reader, error) {
	fs.mu.Lock()
	defer fs.mu.Unlock()
	if fs.in != nil {
		return fs.in, nil
	}
	if fs.i >= len(fs.names) {
		return nil, io.EOF
	}
	if fs.closed {
		return nil, os.ErrClosed
	}
	if fs.stopped {
		return nil, errReadsStopped
	}
	name := fs.names[fs.i]
	if name == "-" {
		fs.in = fs.stdin
		return fs.in, nil
	}
	// The open is done without the lock: one that may wait (a named
	// pipe's, for its writer) is marked, so that interruptReads can tell
	// that it cannot end it.
	fs.opening = fs.i >= len(fs.found) || fs.found[fs.i] == nil || !fs.found[fs.i].Mode().IsRegular()
	fs.mu.Unlock()
	f, err := os.Open(name)
	if err == nil {
		if st, serr := f.Stat(); serr == nil && st.IsDir() {
			f.Close()
			err = syscall.EISDIR
		}
	}
	fs.mu.Lock()
	fs.opening = false
	if err != nil {
		return nil, inputFileError(name, err)
	}
	if fs.closed {
		f.Close()
		return nil, os.ErrClosed
	}
	fs.in, fs.opened = f, f
	if fs.stopped {
		return nil, errReadsStopped
	}
	return fs.in, nil
}

// nextFile closes the file read, which has ended, and goes on to the next.
func (fs *fileSource) nextFile() {
	fs.mu.Lock()
	defer fs.mu.Unlock()
	if fs.opened != nil && !fs.closed {
		fs.opened.Close()
	}
	fs.in, fs.opened, fs.cur = nil, nil, nil
	fs.i++
}

// name is the name of the file read, for messages.
func (fs *fileSource) name() string {
	if fs.i < len(fs.names) {
		return fs.names[fs.i]
	}
	return ""
}

func (fs *fileSource) next() ([]byte, error) {
	for {
		r, err := fs.reader()
		if err == io.EOF {
			return nil, io.EOF
		}
		if err != nil {
			return nil, err
		}
		if fs.cur == nil {
			fs.cur = newLineReader(r, fs.sep, fs.max)
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
			return nil, fmt.Errorf("reading %s: %w", fs.name(), err)
		}
		fs.nextFile()
	}
}

func (fs *fileSource) total() int64 { return -1 }

func (fs *fileSource) close() error {
	fs.mu.Lock()
	defer fs.mu.Unlock()
	fs.closed = true
	if fs.opened == nil {
		return nil
	}
	// A read under way on another goroutine returns an error.
	return fs.opened.Close()
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
	fs.mu.Lock()
	defer fs.mu.Unlock()
	// No file is opened from now on: only the file being read, or being
	// opened, may keep a read from ending.
	fs.stopped = true
	if fs.opening {
		return false // an open that waits for a named pipe's writer
	}
	in := fs.in
	if in == nil {
		return true
	}
	f, isFile := in.(*os.File)
	if isFile {
		if st, err := f.Stat(); err == nil && st.Mode().IsRegular() {
			return true
		}
	}
	d, ok := in.(deadliner)
	if ok && isFile {
		// A file accepts a deadline once the runtime polls it, but
		// heeds it only while it is in non-blocking mode, which f.Fd
		// ends.
		ok = nonBlocking(f)
	}
	// A pipe or terminal read in blocking mode, or a reader of unknown
	// kind, is not interrupted.
	return ok && d.SetReadDeadline(time.Unix(1, 0)) == nil
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
	fs.mu.Lock()
	defer fs.mu.Unlock()
	fs.stopped = false
	if d, ok := fs.in.(deadliner); ok {
		d.SetReadDeadline(time.Time{})
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

// errNotOpened is openInterruptibly's error when ctx was done (Ctrl-C,
// SIGTERM, SIGHUP) before the input opened. The caller runs on with an
// unopened source in its place, so that the run ends as one stopped before
// it read anything: exit 3, with its job log, JSON summary and summary.
var errNotOpened = errors.New("stopped before the input was opened")

// unopened stands for an input that a signal kept from being opened: it
// gives no input, and a read of it waits until it is closed, as a read of
// an idle stdin would; the run, stopped already, does not wait for it.
type unopened struct {
	closed chan struct{}
	once   sync.Once
}

func newUnopened() *unopened { return &unopened{closed: make(chan struct{})} }

func (u *unopened) next() ([]byte, error) {
	<-u.closed
	return nil, io.EOF
}

func (u *unopened) total() int64 { return -1 }

func (u *unopened) close() error {
	u.once.Do(func() { close(u.closed) })
	return nil
}

// openInterruptibly returns what open returns, or, as soon as ctx is done
// (Ctrl-C, SIGTERM, SIGHUP), errNotOpened. Opening an input file may
// block: a named pipe waits for its writer, and nothing else would heed
// the signal meanwhile. What open returns after that is closed when it
// does, or with the process.
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
		return zero, errNotOpened
	}
}
