package pool

import (
	"bytes"
	"io"
)

// OutputReader returns a reader of the task's whole output: Output, or for
// a one-shot task whose stdout went beyond Config.OutputInMemory, the
// stdout kept in the pool's temporary file. It works in both cases, so
// code that may meet large outputs reads them through it. It must not be
// used after Release.
func (r *Result) OutputReader() io.Reader {
	if r.out != nil && r.out.stdout.spilled() {
		return &streamReader{st: r.out.stdout}
	}
	return bytes.NewReader(r.Output)
}

// StderrReader returns a reader of the task's whole captured stderr:
// Stderr, or the stderr kept in the pool's temporary file when it went
// beyond Config.OutputInMemory. It must not be used after Release.
func (r *Result) StderrReader() io.Reader {
	if r.out != nil && r.out.stderr.spilled() {
		return &streamReader{st: r.out.stderr}
	}
	return bytes.NewReader(r.Stderr)
}

// Release gives back the room the task's output takes in the pool's
// temporary file; readers of that output fail afterwards, while Output and
// Stderr, in memory, stay as they are. Call it once the output is
// consumed. A Result dropped without Release gives its room back only
// when the garbage collector finds it unreachable. Release may be called
// more than once, and on copies of the Result.
func (r *Result) Release() {
	r.out.release()
}
