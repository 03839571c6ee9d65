package pool

import (
	"errors"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"
)

// createSpillFile makes an unnamed temporary file in dir: with O_TMPFILE
// it never has a name, and elsewhere its name is removed at once.
func createSpillFile(dir string) (*os.File, error) {
	fd, err := unix.Open(dir, unix.O_TMPFILE|unix.O_RDWR|unix.O_CLOEXEC, 0o600)
	if err == nil {
		return os.NewFile(uintptr(fd), filepath.Join(dir, "safepool-spill")), nil
	}
	if !errors.Is(err, unix.EOPNOTSUPP) && !errors.Is(err, unix.EISDIR) && !errors.Is(err, unix.EINVAL) {
		return nil, err
	}
	f, err := os.CreateTemp(dir, "safepool-spill-*")
	if err != nil {
		return nil, unwrapPath(err)
	}
	if err := os.Remove(f.Name()); err != nil {
		f.Close()
		return nil, unwrapPath(err)
	}
	return f, nil
}

// punchHole frees the disk space (or, on tmpfs, the memory) of n bytes of
// f at off. Where the file system cannot, the block stays allocated until
// it is reused or the file is emptied.
func punchHole(f *os.File, off, n int64) {
	_ = unix.Fallocate(int(f.Fd()), unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, off, n)
}
