//go:build !unix

package serve

import (
	"errors"
	"fmt"
	"os"
)

// openFD fails: safepool starts workers with inherited pipes on Unix only.
func openFD(fd int, name string) (*os.File, error) {
	return nil, fmt.Errorf("serve: %s (fd %d): %w", name, fd, errors.ErrUnsupported)
}

// isPipe accepts fd: openFD fails instead.
func isPipe(fd int) error { return nil }
