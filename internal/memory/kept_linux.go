package memory

import (
	"io/fs"
	"path/filepath"
	"strconv"
	"sync"

	"golang.org/x/sys/unix"
)

// The supervisor reads some files ten or more times a second for as long
// as it runs: /proc/meminfo and the memory pressure for the governor, the
// usage and statistics of its own cgroup, and in enclosing-cgroup mode the
// cgroup.procs of that cgroup and the stat file of each process in it, to
// find each worker's descendants. Opened afresh at each read, that was a
// hundred opens a second with two workers, and the kernel charges what an
// open allocates (the file, the seq_file and its buffer) to the
// supervisor's memory cgroup. In a batch job's or a container's cgroup,
// which the workers share, a charge made just after the kernel's OOM
// killer took a worker, while the worker's memory is still being freed and
// the worker is no longer a candidate, makes the kernel kill the
// supervisor next (docs/memory.md). So those files are opened once and
// read again from their start (pread at 0, which makes a seq_file
// generate its text anew, into the buffer it kept): no allocation per read
// in the kernel. All but cgroup.procs (neverKept), which is opened for
// each scan: ten opens a second with two workers, from a hundred.
//
// Only files that stay what they are for the supervisor's life are kept
// this way: the host's files and those of the cgroups the supervisor lives
// in. A worker's own cgroup is not: it is removed and made again, and a
// descriptor kept open would hold a removed cgroup's file.

// neverKept names the files of a kept directory that are opened for each
// read all the same: cgroup v1 caches the list of a cgroup.procs or tasks
// file that is open, and reads it again from its start out of that cache
// for as long as it is read again within a second, so a list read through
// a kept descriptor ten times a second would never change.
var neverKept = map[string]bool{"cgroup.procs": true, "tasks": true}

// maxKept bounds how many descriptors keptFiles holds, and maxKeptStats how
// many stat files of processes a scan keeps open.
const (
	maxKept      = 32
	maxKeptStats = 128
)

// keptFiles holds the descriptors of the files read again and again. Its
// methods are safe for concurrent use.
type keptFiles struct {
	mu sync.Mutex
	// dirs are the directories whose files are kept; files the single
	// files; fds the descriptors open, by path. Guarded by mu.
	dirs  map[string]bool
	files map[string]bool
	fds   map[string]int
}

// kept holds the files read again and again: the host's below, the
// cgroups' as they are found (keepDir).
var kept = keptFiles{
	dirs:  map[string]bool{},
	files: map[string]bool{"/proc/meminfo": true, "/proc/pressure/memory": true},
	fds:   map[string]int{},
}

// keepDir makes the files of the directory dir, a cgroup the supervisor
// lives in or below, kept open once read.
func keepDir(dir string) {
	kept.mu.Lock()
	defer kept.mu.Unlock()
	kept.dirs[filepath.Clean(dir)] = true
}

// read reads path whole into buf through its kept descriptor; ok is false
// when path is not one to keep (or there is no room), and the caller then
// reads it the usual way. A read that fails through the kept descriptor
// (a removed cgroup's file reads ENODEV) is tried once more on a new one.
// Reads are made one at a time: a seq_file read from two threads at once
// could mix two versions of its text.
func (k *keptFiles) read(buf []byte, path string) (b []byte, ok bool, err error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	if !k.files[path] && !k.dirs[filepath.Dir(path)] || neverKept[filepath.Base(path)] {
		return nil, false, nil
	}
	for try := 0; ; try++ {
		fd, open := k.fds[path]
		if !open {
			if len(k.fds) >= maxKept {
				return nil, false, nil
			}
			if fd, err = unix.Open(path, unix.O_RDONLY|unix.O_CLOEXEC, 0); err != nil {
				return nil, true, &fs.PathError{Op: "open", Path: path, Err: err}
			}
			k.fds[path] = fd
		}
		if b, err = preadAllInto(buf[:0], fd); err == nil {
			return b, true, nil
		}
		delete(k.fds, path)
		unix.Close(fd)
		if try == 1 || !open {
			return nil, true, &fs.PathError{Op: "read", Path: path, Err: err}
		}
	}
}

// preadAllInto reads the file fd from its start into buf, growing it as
// needed.
func preadAllInto(buf []byte, fd int) ([]byte, error) {
	for {
		if len(buf) == cap(buf) {
			buf = append(buf, 0)[:len(buf)]
		}
		n, err := unix.Pread(fd, buf[len(buf):cap(buf)], int64(len(buf)))
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return nil, err
		}
		if n == 0 {
			return buf, nil
		}
		buf = buf[:len(buf)+n]
	}
}

// statFiles keeps the /proc/PID/stat files of the processes a scan read,
// open from one scan to the next. It is used by one scan at a time, and
// read (readKept) by the kernel log's reader beside it; each read holds mu
// alone, so that that reader never waits for a whole scan.
type statFiles struct {
	mu  sync.Mutex
	fds map[int]int // pid -> descriptor; guarded by mu
	// seen marks the pids read by the scan under way; guarded by mu.
	seen map[int]bool
}

// read reads /proc/pid/stat into buf, through the descriptor kept for pid
// or a new one, kept if there is room. A descriptor names the process,
// not its number: once the process is gone it reads ESRCH, and a process
// that took its number since is opened anew.
func (s *statFiles) read(pid int, buf []byte) (n int, ok bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.fds == nil {
		s.fds, s.seen = map[int]int{}, map[int]bool{}
	}
	s.seen[pid] = true
	if fd, kept := s.fds[pid]; kept {
		n, err := unix.Pread(fd, buf, 0)
		if err == nil && n > 0 {
			return n, true
		}
		delete(s.fds, pid)
		unix.Close(fd)
	}
	fd, err := unix.Open("/proc/"+strconv.Itoa(pid)+"/stat", unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return 0, false
	}
	n, err = unix.Pread(fd, buf, 0)
	if len(s.fds) < maxKeptStats && err == nil {
		s.fds[pid] = fd
	} else {
		unix.Close(fd)
	}
	return n, err == nil
}

// readKept reads and parses /proc/pid/stat through the descriptor kept
// for pid, if there is one, without opening any file; ok is false when
// there is none or the process is gone.
func (s *statFiles) readKept(pid int, buf []byte) (e procEntry, ok bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	fd, kept := s.fds[pid]
	if !kept {
		return e, false
	}
	n, err := unix.Pread(fd, buf, 0)
	if err != nil || n <= 0 {
		return e, false
	}
	return parseStat(buf[:n])
}

// endScan closes the descriptors of the processes the scan that ends did
// not read: gone, or no longer in the cgroup.
func (s *statFiles) endScan() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for pid, fd := range s.fds {
		if !s.seen[pid] {
			delete(s.fds, pid)
			unix.Close(fd)
		}
	}
	clear(s.seen)
}
