//go:build unix

package serve

import (
	"errors"
	"fmt"
	"os"
	"syscall"
)

// openFD returns fd as a file that programs the worker starts do not
// inherit. The descriptor is made non-blocking first, so that os.NewFile
// registers it with the runtime poller and SetReadDeadline works on it.
func openFD(fd int, name string) (*os.File, error) {
	if err := syscall.SetNonblock(fd, true); err != nil {
		return nil, fmt.Errorf("serve: %s (fd %d): %w", name, fd, err)
	}
	syscall.CloseOnExec(fd)
	return os.NewFile(uintptr(fd), name), nil
}

// isPipe returns nil if fd is an open pipe or socket, and otherwise says
// what it is.
func isPipe(fd int) error {
	var st syscall.Stat_t
	if err := syscall.Fstat(fd, &st); err != nil {
		return fmt.Errorf("is not open (%w)", err)
	}
	switch uint32(st.Mode) & syscall.S_IFMT {
	case syscall.S_IFIFO, syscall.S_IFSOCK:
		return nil
	}
	return errors.New("is not a pipe")
}
