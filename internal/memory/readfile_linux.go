package memory

import (
	"io/fs"

	"golang.org/x/sys/unix"
)

// readSmall reads a small file, such as a cgroup control file, whole.
// Unlike os.ReadFile it leaves the runtime's poller alone: os.Open would
// register a cgroupfs file with epoll and take it out again, four system
// calls more on every read, and one-shot workers read two such files per
// start.
func readSmall(path string) ([]byte, error) { return readSmallAt(unix.AT_FDCWD, path, path) }

// readSmallAt is readSmall of the file name in the directory dir (a
// descriptor, or AT_FDCWD), called path in errors.
func readSmallAt(dir int, name, path string) ([]byte, error) {
	fd, err := unix.Openat(dir, name, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, &fs.PathError{Op: "open", Path: path, Err: err}
	}
	defer unix.Close(fd)
	buf := make([]byte, 0, 512)
	for {
		if len(buf) == cap(buf) {
			buf = append(buf, 0)[:len(buf)]
		}
		n, err := unix.Read(fd, buf[len(buf):cap(buf)])
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return nil, &fs.PathError{Op: "read", Path: path, Err: err}
		}
		if n == 0 {
			return buf, nil
		}
		buf = buf[:len(buf)+n]
	}
}
