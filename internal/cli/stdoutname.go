package cli

import (
	"errors"
	"io"
	"io/fs"
	"os"
	"strconv"
	"syscall"
)

// nameStdout returns err, an error writing to w, with the name of the file
// that w, safepool's standard output, was redirected to in place of
// /dev/stdout ("write out.txt: no space left on device" says which disk
// is full), when w is a regular file; err as it is otherwise (a pipe, a
// terminal, /dev/full). The name is read when the error happens: the file
// may have been renamed since it was opened.
func nameStdout(w io.Writer, err error) error {
	f, ok := w.(*os.File)
	var pe *fs.PathError
	if !ok || !errors.As(err, &pe) || pe.Path != f.Name() {
		return err
	}
	rc, cerr := f.SyscallConn()
	if cerr != nil {
		return err
	}
	var name string
	cerr = rc.Control(func(fd uintptr) {
		var st syscall.Stat_t
		if syscall.Fstat(int(fd), &st) != nil || st.Mode&syscall.S_IFMT != syscall.S_IFREG {
			return
		}
		name, _ = os.Readlink("/proc/self/fd/" + strconv.Itoa(int(fd)))
	})
	if cerr != nil || name == "" || name == pe.Path {
		return err
	}
	return &fs.PathError{Op: pe.Op, Path: name, Err: pe.Err}
}
