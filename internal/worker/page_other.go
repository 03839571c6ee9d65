//go:build !linux

package worker

import (
	"errors"
	"os"
)

// newPage: the running-item page needs memfd_create; workers elsewhere
// send a start frame for each item instead.
func newPage() (*os.File, []byte, error) { return nil, nil, errors.New("no running-item page here") }

// freePage unmaps the supervisor's mapping of a page.
func freePage([]byte) {}
