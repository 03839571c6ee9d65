package memory

import (
	"io/fs"
	"sync"

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
	return readInto(make([]byte, 0, 512), dir, name, path)
}

// scratch holds buffers for the files that are read only to pick a few
// numbers out of them (/proc/meminfo, PSI, memory.stat), which the
// governor's sampler reads ten times a second: read into a buffer of
// their own each time, with the procfs library's line-by-line parsing,
// they were most of the supervisor's garbage (some 17 KB a sample), and
// its heap grew on it.
var scratch = sync.Pool{New: func() any { b := make([]byte, 0, 8<<10); return &b }}

// withScratch reads the file path whole into a buffer of scratch and calls
// parse with it; parse must not keep it.
func withScratch[T any](path string, parse func([]byte) (T, error)) (T, error) {
	bp := scratch.Get().(*[]byte)
	b, err := readInto((*bp)[:0], unix.AT_FDCWD, path, path)
	var v T
	if err == nil {
		v, err = parse(b)
	}
	*bp = b[:0]
	scratch.Put(bp)
	return v, err
}

// readInto is readSmallAt that reads into buf, growing it as needed.
func readInto(buf []byte, dir int, name, path string) ([]byte, error) {
	if dir == unix.AT_FDCWD {
		if b, ok, err := kept.read(buf, path); ok {
			return b, err
		}
	}
	fd, err := unix.Openat(dir, name, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, &fs.PathError{Op: "open", Path: path, Err: err}
	}
	defer unix.Close(fd)
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
