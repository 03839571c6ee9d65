//go:build unix

package serve

import (
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
