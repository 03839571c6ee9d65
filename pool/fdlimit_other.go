//go:build !linux

package pool

import "errors"

// openFiles is not implemented here: the number of workers is not capped.
func openFiles() (limit, inUse int64, err error) {
	return 0, 0, errors.ErrUnsupported
}
