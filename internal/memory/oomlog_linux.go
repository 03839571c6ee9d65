package memory

import (
	"errors"
	"fmt"
	"io"
	"os"
	"syscall"
)

// kmsgFile is /dev/kmsg opened without blocking, as an oomSource. The
// runtime's poller waits for it to be readable (await), and a read finds
// it empty with EAGAIN (readNow), so that a lookup can read what it holds
// without waiting for the next record.
type kmsgFile struct {
	f  *os.File
	rc syscall.RawConn
}

// openKmsg opens /dev/kmsg at its end: only records logged from now on are
// read.
func openKmsg() (*kmsgFile, error) {
	f, err := os.OpenFile("/dev/kmsg", os.O_RDONLY|syscall.O_NONBLOCK, 0)
	if err != nil {
		return nil, err
	}
	k := &kmsgFile{f: f}
	if _, err = f.Seek(0, io.SeekEnd); err == nil {
		k.rc, err = f.SyscallConn()
	}
	if err != nil {
		f.Close()
		return nil, err
	}
	return k, nil
}

// readNow reads the next record. Control holds the file open, so the
// descriptor is not closed under the read; it is non-blocking, so the
// read does not wait.
func (k *kmsgFile) readNow(b []byte) (int, error) {
	var n int
	var err error
	if cerr := k.rc.Control(func(fd uintptr) {
		for {
			n, err = syscall.Read(int(fd), b)
			if err != syscall.EINTR {
				return
			}
		}
	}); cerr != nil {
		return 0, cerr
	}
	switch {
	case errors.Is(err, syscall.EAGAIN):
		return 0, errNoRecord
	case err != nil:
		return 0, err
	case n == 0:
		return 0, fmt.Errorf("%s: %w", k.f.Name(), io.EOF)
	}
	return n, nil
}

// await calls try, and waits in the runtime's poller while it returns
// false; Close wakes it with an error.
func (k *kmsgFile) await(try func() bool) error {
	return k.rc.Read(func(uintptr) bool { return try() })
}

// Close closes the file.
func (k *kmsgFile) Close() error { return k.f.Close() }
