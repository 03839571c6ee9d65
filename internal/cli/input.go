package cli

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"
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

// lineReader reads items separated by sep from r. Items may be of any
// length and hold any byte but sep. A last item without a separator counts;
// an empty input has no items.
type lineReader struct {
	r   *bufio.Reader
	sep byte
}

func newLineReader(r io.Reader, sep byte) *lineReader {
	return &lineReader{r: bufio.NewReaderSize(r, 64<<10), sep: sep}
}

func (l *lineReader) next() ([]byte, error) {
	line, err := l.r.ReadBytes(l.sep)
	switch {
	case err == nil:
		return line[:len(line)-1], nil
	case err == io.EOF && len(line) > 0:
		return line, nil
	}
	return nil, err
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
	sep   byte
	cur   *lineReader
	i     int // index of the file cur reads
}

// openFiles opens every named file, or returns the first error.
func openFiles(names []string, stdin io.Reader, sep byte) (*fileSource, error) {
	fs := &fileSource{names: names, sep: sep}
	for _, name := range names {
		if name == "-" {
			fs.files = append(fs.files, io.NopCloser(stdin))
			continue
		}
		f, err := os.Open(name)
		if err != nil {
			fs.close()
			var pe *os.PathError
			if errors.As(err, &pe) {
				err = pe.Err
			}
			return nil, fmt.Errorf("cannot open input file %s: %w", name, err)
		}
		fs.files = append(fs.files, f)
	}
	return fs, nil
}

func (fs *fileSource) next() ([]byte, error) {
	for fs.i < len(fs.files) {
		if fs.cur == nil {
			fs.cur = newLineReader(fs.files[fs.i], fs.sep)
		}
		line, err := fs.cur.next()
		if err == nil {
			return line, nil
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

// newSource chooses the inputs: the ":::" arguments when given, else the -a
// files, else standard input.
func newSource(argsAfterColons []string, haveColons bool, files []string, stdin io.Reader, sep byte) (source, error) {
	switch {
	case haveColons:
		return &argSource{args: argsAfterColons}, nil
	case len(files) > 0:
		return openFiles(files, stdin, sep)
	default:
		return openFiles([]string{"-"}, stdin, sep)
	}
}
