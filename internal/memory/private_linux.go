package memory

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// A worker without a cgroup of its own is measured by what it alone holds:
// the anonymous memory of its processes, in RAM and in swap. Shared memory
// (shmem, /dev/shm, memfd, MAP_SHARED anonymous) and file pages are the
// kernel's to share and reclaim; counting them, as RSS does, would charge
// every reader of a shared block for the whole block.

// procStatus is what the supervisor reads from /proc/PID/status, in bytes.
type procStatus struct {
	rssAnon int64 // RssAnon: anonymous memory in RAM
	swap    int64 // VmSwap: anonymous memory in swap (shmem swap is not here)
	data    int64 // VmData: private writable mappings, what RLIMIT_DATA counts
	shared  int64 // RssFile + RssShmem: file pages and shared memory in RAM
	hwm     int64 // VmHWM: the process's peak resident memory since its exec
	hasMM   bool  // the process has memory: not a zombie or a kernel thread
}

// private is the process's private memory: anonymous, in RAM or swap.
func (s procStatus) private() int64 { return s.rssAnon + s.swap }

// parseStatus reads the fields of procStatus from /proc/PID/status text.
// A process without memory (a kernel thread, a zombie) has none of them:
// all zero.
func parseStatus(b []byte) (procStatus, error) {
	var s procStatus
	for len(b) > 0 {
		var line []byte
		line, b, _ = bytes.Cut(b, []byte("\n"))
		key, val, ok := bytes.Cut(line, []byte(":"))
		if !ok {
			continue
		}
		var dst *int64
		switch string(key) {
		case "RssAnon":
			dst = &s.rssAnon
		case "VmSwap":
			dst = &s.swap
		case "VmData":
			dst = &s.data
		case "VmHWM":
			dst = &s.hwm
		case "RssFile", "RssShmem":
			dst = &s.shared
		default:
			continue
		}
		num, unit, _ := bytes.Cut(bytes.TrimSpace(val), []byte(" "))
		v, err := strconv.ParseInt(string(num), 10, 64)
		if err != nil || string(unit) != "kB" {
			return procStatus{}, fmt.Errorf("memory: parse status %s: %q", key, val)
		}
		*dst += v * 1024
		s.hasMM = true
	}
	return s, nil
}

// readStatus reads /proc/pid/status. A process that is gone gives an error
// matching fs.ErrNotExist.
func readStatus(pid int) (procStatus, error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/status")
	if err != nil {
		if errors.Is(err, syscall.ESRCH) {
			err = fmt.Errorf("memory: process %d: %w", pid, fs.ErrNotExist)
		}
		return procStatus{}, err
	}
	return parseStatus(b)
}

// descendants returns pid and its descendants, pid first, from the parent
// pid of every process in /proc: the kernel's per-task children lists
// (CONFIG_PROC_CHILDREN) are not always there. One scan serves every
// caller within scanShare of it (see procScans); a pid that is not in the
// last scan, such as a worker started since, makes a new one. A pid that
// does not exist gives an error matching fs.ErrNotExist.
func descendants(pid int) ([]int, error) {
	tree, _, err := descendantsIn(pid)
	return tree, err
}

// descendantsIn is descendants, with the scan it read them from.
func descendantsIn(pid int) ([]int, *procScan, error) {
	scan, err := procScans.get(pid)
	if err != nil {
		return nil, nil, err
	}
	if _, ok := scan.procs[pid]; !ok {
		return nil, nil, fmt.Errorf("memory: process %d: %w", pid, fs.ErrNotExist)
	}
	tree := []int{pid}
	for i := 0; i < len(tree); i++ {
		tree = append(tree, scan.children[tree[i]]...)
	}
	return tree, scan, nil
}

// scanShare is how long one scan of /proc serves the callers of
// descendants. A scan reads the stat file of every process on the host,
// and each worker's watch looks for new descendants every scanEvery: one
// scan per watch took 60% of a CPU for 8 workers on a host of 2,100
// processes. Shared, the host is scanned about once per scanShare however
// many workers there are, and a new descendant is found at most
// scanEvery+scanShare after it started.
const scanShare = 50 * time.Millisecond

// procScans is the last scan of /proc, shared by every caller of
// descendants.
var procScans sharedScan

// sharedScan holds the last scan of /proc. Its methods are safe for
// concurrent use: callers that need a new scan at the same time wait for
// one.
type sharedScan struct {
	mu   sync.Mutex
	last *procScan // guarded by mu
	// scans counts the scans made, for tests; guarded by mu.
	scans int
	// cgroup, when not "", is a cgroup directory that holds every process
	// a scan looks for (within), and top that directory, kept open to be
	// listed again; guarded by mu.
	cgroup string
	top    *os.File
	// proc is /proc's descriptor, kept open to be listed again while
	// procOpen, dents the buffer it is listed into, and pids the list of
	// the last scan; guarded by mu.
	proc     int
	procOpen bool
	dents    []byte
	pids     []int
	// stats keeps the stat files of the processes scanned open from one
	// scan to the next (kept_linux.go); it guards itself.
	stats statFiles
}

// within makes later scans look only at the processes of the cgroup dir
// and the cgroups below it, listed in their cgroup.procs, rather than at
// every process in /proc, falling back to /proc when a list cannot be
// read. The supervisor calls it in ModeEnclosing, where the workers and
// their descendants stay in its own cgroup: in a batch job's or a user
// session's cgroup on a shared host, /proc holds every process of the
// host, and a scan opened the stat file of each (a thousand files a
// second with two workers), with kernel memory charged to the cgroup at
// each open. After the kernel's OOM killer took a worker, and while its
// memory was still being freed, such a charge made the kernel take the
// supervisor next (docs/memory.md).
//
// The cgroup's directory and cgroup.procs, and the stat file of each
// process, are kept open from one scan to the next (kept_linux.go), so
// that a scan opens no file.
func (s *sharedScan) within(dir string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.cgroup, s.last = dir, nil
	if s.top != nil {
		s.top.Close()
		s.top = nil
	}
	if dir != "" {
		keepDir(dir)
	}
}

// procScan is every process in /proc, and the children of each, at one
// moment.
type procScan struct {
	at       time.Time
	procs    map[int]procEntry
	children map[int][]int
}

// procEntry is what a scan read of one process in /proc/PID/stat.
type procEntry struct {
	ppid  int
	start uint64   // its start time (see procID)
	comm  [16]byte // its name, zero-padded: no allocation per process
}

// name returns e's comm as a string.
func (e *procEntry) name() string {
	n := bytes.IndexByte(e.comm[:], 0)
	if n < 0 {
		n = len(e.comm)
	}
	return string(e.comm[:n])
}

// get returns a scan that holds pid, or the newest one when pid is not in
// a fresh scan either: the last scan if it is younger than scanShare and
// holds pid, else a new one.
func (s *sharedScan) get(pid int) (*procScan, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if l := s.last; l != nil && time.Since(l.at) < scanShare {
		if _, ok := l.procs[pid]; ok {
			return l, nil
		}
	}
	var scan *procScan
	var err error
	if s.cgroup != "" {
		if s.top == nil {
			s.top, _ = os.Open(s.cgroup) // nil: listed the usual way
		}
		var pids []int
		if pids, err = cgroupTreeProcs(s.cgroup, s.top); err == nil {
			scan = scanPIDs(time.Now(), pids, &s.stats)
		} else if s.top != nil {
			s.top.Close()
			s.top = nil
		}
	}
	if scan == nil {
		if scan, err = s.scanProcs(); err != nil {
			return nil, err
		}
	}
	s.last = scan
	s.scans++
	return scan, nil
}

// scanProcs reads the parent of every process in /proc.
func scanProcs() (*procScan, error) {
	at := time.Now()
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return nil, err
	}
	pids := make([]int, 0, len(entries))
	for _, e := range entries {
		if p, err := strconv.Atoi(e.Name()); err == nil {
			pids = append(pids, p)
		}
	}
	return scanPIDs(at, pids, nil), nil
}

// scanProcs is scanProcs of a shared scan: /proc kept open and listed
// into a buffer of its own, each process's stat file kept open
// (kept_linux.go), so that a scan opens no file and makes little garbage.
// Called with s.mu held.
func (s *sharedScan) scanProcs() (*procScan, error) {
	at := time.Now()
	if !s.procOpen {
		fd, err := unix.Open("/proc", unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
		if err != nil {
			return nil, &fs.PathError{Op: "open", Path: "/proc", Err: err}
		}
		s.proc, s.procOpen = fd, true
	}
	pids, dents, err := ListPIDs(s.proc, s.pids[:0], s.dents)
	s.dents = dents
	if err != nil {
		unix.Close(s.proc)
		s.procOpen = false
		return nil, &fs.PathError{Op: "readdirent", Path: "/proc", Err: err}
	}
	s.pids = pids
	return scanPIDs(at, pids, &s.stats), nil
}

// ListPIDs appends to pids the numeric names in the directory dir, an open
// descriptor of /proc or of a /proc/PID/task, read from its start, reading
// its entries into buf (made when nil) and returning it for the next call:
// a list of the processes or threads that allocates nothing once pids and
// buf are big enough.
func ListPIDs(dir int, pids []int, buf []byte) ([]int, []byte, error) {
	if buf == nil {
		buf = make([]byte, 32<<10)
	}
	if _, err := unix.Seek(dir, 0, io.SeekStart); err != nil {
		return pids, buf, err
	}
	for {
		n, err := unix.Getdents(dir, buf)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return pids, buf, err
		}
		if n <= 0 {
			return pids, buf, nil
		}
		// Each entry: inode (8), offset (8), record length (2), type
		// (1), then the name, ended by a zero byte.
		for b := buf[:n]; len(b) >= 19; {
			reclen := int(binary.NativeEndian.Uint16(b[16:18]))
			if reclen < 19 || reclen > len(b) {
				return pids, buf, fmt.Errorf("bad directory entry of %d bytes", reclen)
			}
			name := b[19:reclen]
			if i := bytes.IndexByte(name, 0); i >= 0 {
				name = name[:i]
			}
			if v, ok := parseDecimal(name); ok && v > 0 && v < 1<<31 {
				pids = append(pids, int(v))
			}
			b = b[reclen:]
		}
	}
}

// scanPIDs reads the parent of each of pids, as a scan made at at, through
// the stat files kept in stats when it is not nil.
func scanPIDs(at time.Time, pids []int, stats *statFiles) *procScan {
	scan := &procScan{at: at, procs: make(map[int]procEntry, len(pids)), children: make(map[int][]int)}
	var buf [512]byte
	for _, p := range pids {
		var e procEntry
		var ok bool
		if stats != nil {
			var n int
			if n, ok = stats.read(p, buf[:]); ok {
				e, ok = parseStat(buf[:n])
			}
		} else {
			e, ok = readStat(p, buf[:])
		}
		if !ok {
			continue // gone since the listing
		}
		scan.procs[p] = e
		scan.children[e.ppid] = append(scan.children[e.ppid], p)
	}
	if stats != nil {
		stats.endScan()
	}
	return scan
}

// EnclosedPIDs lists the processes of the supervisor's memory cgroup and
// of the cgroups below it, in ModeEnclosing, where the workers and every
// process they start stay there; in other modes it fails. It reads the
// lists through files kept open where it can (kept_linux.go).
func (m *Manager) EnclosedPIDs() ([]int, error) {
	if m.det.Mode != ModeEnclosing || m.det.Own == "" {
		return nil, fmt.Errorf("memory: no enclosing cgroup (mode %s)", m.det.Mode)
	}
	return cgroupTreeProcs(m.det.Own, nil)
}

// maxScanCgroups bounds how many cgroups cgroupTreeProcs lists.
const maxScanCgroups = 1000

// cgroupTreeProcs lists the processes of the cgroup dir and of the cgroups
// below it, from their cgroup.procs. top, when not nil, is dir open, to
// be listed from its start again.
func cgroupTreeProcs(dir string, top *os.File) ([]int, error) {
	var pids []int
	dirs := []string{dir}
	for i := 0; i < len(dirs); i++ {
		if i == maxScanCgroups {
			return nil, fmt.Errorf("memory: more than %d cgroups below %s", maxScanCgroups, dir)
		}
		b, err := readSmall(filepath.Join(dirs[i], "cgroup.procs"))
		if err != nil {
			return nil, err
		}
		for len(b) > 0 {
			var line []byte
			line, b, _ = bytes.Cut(b, []byte{'\n'})
			if p, err := strconv.Atoi(string(line)); err == nil {
				pids = append(pids, p)
			}
		}
		var entries []os.DirEntry
		if i == 0 && top != nil {
			if _, err = top.Seek(0, io.SeekStart); err == nil {
				entries, err = top.ReadDir(-1)
			}
		} else {
			entries, err = os.ReadDir(dirs[i])
		}
		if err != nil {
			return nil, err
		}
		for _, e := range entries {
			if e.IsDir() {
				dirs = append(dirs, filepath.Join(dirs[i], e.Name()))
			}
		}
	}
	return pids, nil
}

// readStat reads the parent pid, the start time (clock ticks after boot)
// and the name of pid from /proc/pid/stat, into buf.
// It uses the system calls alone (no os.File, whose open adds an fstat
// and a finalizer): a scan reads every process's, and each start of a
// worker without a cgroup its own.
func readStat(pid int, buf []byte) (e procEntry, ok bool) {
	fd, err := unix.Open("/proc/"+strconv.Itoa(pid)+"/stat", unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return e, false
	}
	n, err := unix.Read(fd, buf)
	for err == unix.EINTR {
		n, err = unix.Read(fd, buf)
	}
	unix.Close(fd)
	if err != nil {
		return e, false
	}
	return parseStat(buf[:n])
}

// parseStat picks the parent pid, the start time and the name out of the
// text of a /proc/pid/stat file.
func parseStat(buf []byte) (e procEntry, ok bool) {
	n := len(buf)
	// "pid (comm) state ppid ...": comm may hold spaces and parentheses,
	// so the fields start after the last ')'. The start time is field 22,
	// the 20th after it.
	open := bytes.IndexByte(buf[:n], '(')
	i := bytes.LastIndexByte(buf[:n], ')')
	if open < 0 || i < open {
		return e, false
	}
	copy(e.comm[:], buf[open+1:i])
	// Walked in place rather than split (bytes.Fields): a scan reads
	// every process, ten times a second.
	rest := buf[i+1 : n]
	var ppid, start uint64
	var okPPID, okStart bool
	for k := 0; k <= 19; k++ {
		var field []byte
		field, rest = nextField(rest)
		if field == nil {
			return e, false
		}
		switch k {
		case 1:
			ppid, okPPID = parseDecimal(field)
		case 19:
			start, okStart = parseDecimal(field)
		}
	}
	if !okPPID || !okStart || ppid > 1<<31 {
		return e, false
	}
	e.ppid, e.start = int(ppid), start
	return e, true
}

// nextField returns the first field of b separated by white space, and
// what follows it; nil when there is none.
func nextField(b []byte) (field, rest []byte) {
	i := 0
	for i < len(b) && (b[i] == ' ' || b[i] == '\n' || b[i] == '\t') {
		i++
	}
	j := i
	for j < len(b) && b[j] != ' ' && b[j] != '\n' && b[j] != '\t' {
		j++
	}
	if i == j {
		return nil, nil
	}
	return b[i:j], b[j:]
}

// parseDecimal parses b, digits only, without allocating.
func parseDecimal(b []byte) (uint64, bool) {
	if len(b) == 0 || len(b) > 19 {
		return 0, false
	}
	var v uint64
	for _, c := range b {
		if c < '0' || c > '9' {
			return 0, false
		}
		v = v*10 + uint64(c-'0')
	}
	return v, true
}

// procLineage returns pid and its ancestors, pid first, with their start
// times, as /proc shows them now; nil when pid is gone. It stops at the
// first ancestor gone since its child was read, and at process 1 (or a
// parent outside the pid namespace, 0).
//
// It is read as the kernel's OOM killer reports a kill, when the cgroup
// may be at its limit, so it reads through the stat files the scans keep
// open where they have the process (a worker and its descendants, and the
// supervisor, in a scan's cgroup or /proc): an open would charge the
// cgroup then (kept_linux.go).
func procLineage(pid int) []procID {
	var line []procID
	var buf [512]byte
	for pid > 0 && len(line) < maxLineage {
		e, ok := procScans.stats.readKept(pid, buf[:])
		if !ok {
			e, ok = readStat(pid, buf[:])
		}
		if !ok {
			break
		}
		line = append(line, procID{pid: pid, start: e.start})
		pid = e.ppid
	}
	return line
}

// maxLineage bounds how many ancestors procLineage reads.
const maxLineage = 256

// TreePrivateMemory returns what pid and its descendants alone hold, in
// bytes: their anonymous memory in RAM and in swap (RssAnon and VmSwap of
// /proc/PID/status). Shared memory (/dev/shm, memfd, shared anonymous
// mappings) and file pages, mapped or cached, are not counted. Anonymous
// pages that processes of the tree still share copy-on-write after a fork
// count once per process, so it errs on the high side. It finds the tree
// in a scan of every process in /proc (at most scanShare old, see
// descendants). A pid that does not exist gives an error matching
// fs.ErrNotExist.
func TreePrivateMemory(pid int) (int64, error) {
	tree, err := descendants(pid)
	if err != nil {
		return 0, err
	}
	var total int64
	for _, p := range tree {
		s, err := readStatus(p)
		if err != nil {
			continue // exited since the listing
		}
		total += s.private()
	}
	return total, nil
}
