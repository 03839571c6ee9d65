package memory

import (
	"errors"
	"io/fs"
	"os"
	"strconv"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// scanEvery is the least time between two looks for a watched worker's
// new descendants, which means reading every process in /proc; between
// them the known processes are sampled alone. What a new descendant
// allocates before it is found is bounded by the data size limit it
// inherits.
const scanEvery = 100 * time.Millisecond

// Watch samples the private memory of one worker's process tree (see
// [TreePrivateMemory]) while it runs, for a worker without a cgroup of its
// own: it keeps the peak and, with a limit, says when the memory goes over
// it. It samples 5 ms after the start, then every 100 ms while the worker
// is far from its limit (or has none), faster as it nears it, every 5 ms
// within a quarter of it, and twice as often as the last growth would
// take to reach it. Its methods are safe for concurrent use. Stop must be
// called once the worker is gone, to end the goroutine that samples.
type Watch struct {
	pid int
	// child says pid was this process's child when the watch started:
	// Current then asks the kernel whether it has ended.
	child bool
	limit int64
	over  chan struct{} // closed at the first sample over limit
	stop  chan struct{} // closed by Stop
	done  chan struct{} // closed when the sampling goroutine returns, or by Stop before it started
	once  sync.Once     // closes stop
	// first starts the sampling goroutine when the first sample is due: a
	// worker that ends before then (most one-shot jobs) costs no goroutine.
	first *time.Timer

	mu sync.Mutex
	// last is the latest sample and peak the highest since the start or
	// ResetPeak, in bytes; samples counts the samples taken; guarded by mu.
	last, peak int64
	samples    int
	// resident is what the latest sample read of the tree's resident
	// memory beside its private memory; guarded by mu.
	resident Resident
	// data is the largest data size (VmData) of a process of the tree at
	// the latest sample, in bytes; guarded by mu.
	data int64
	// tree holds the processes seen in the tree; guarded by mu, written
	// by the sampling goroutine.
	tree map[int]treeMember
}

// StartWatch starts sampling the process pid and its descendants. A limit
// > 0 is the private memory above which Over is closed; 0 means none.
func StartWatch(pid int, limit int64) *Watch {
	w := &Watch{
		pid:   pid,
		child: unix.Waitid(unix.P_PID, pid, new(unix.Siginfo), unix.WEXITED|unix.WNOWAIT|unix.WNOHANG, nil) == nil,
		limit: limit,
		over:  make(chan struct{}),
		stop:  make(chan struct{}),
		done:  make(chan struct{}),
		tree:  make(map[int]treeMember),
	}
	// The worker is the caller's child, not yet waited for: its pid is
	// its own until then. Read now, as it starts: a kill of it, or of a
	// descendant it forks at once, names it by pid and start time.
	var buf [512]byte
	if e, ok := readStat(pid, buf[:]); ok {
		w.tree[pid] = treeMember{start: e.start, comm: e.comm, seen: time.Now()}
	}
	w.first = time.AfterFunc(minSample, func() { w.run(newTreeSampler(pid, w)) })
	return w
}

// Tree returns the processes the watch has seen in the worker's tree:
// the worker, the descendants its scans found (every 100 ms or so), and
// those gone in the last seconds. A descendant that lived less than a
// scan's interval may not be in it.
func (w *Watch) Tree() Tree {
	w.mu.Lock()
	defer w.mu.Unlock()
	t := Tree{members: make(map[int]treeMember, len(w.tree))}
	for pid, m := range w.tree {
		t.members[pid] = m
	}
	return t
}

// scanned records the processes of the tree that scan found and the
// sampler follows (open holds their status files): a new one joins the
// tree, and one already in it may have a new name (after an exec). Should
// a pid have passed to another process since the scan, the tree holds the
// one the scan found, by its start time, not that one. A process the
// sampler no longer follows is gone, and one gone for longer than a kill
// of its may take to be read is forgotten.
func (w *Watch) scanned(pids []int, scan *procScan, open map[int]*os.File) {
	w.mu.Lock()
	defer w.mu.Unlock()
	for pid, m := range w.tree {
		if _, ok := open[pid]; !ok && m.gone.IsZero() {
			m.gone = scan.at
			w.tree[pid] = m
		}
		if !m.gone.IsZero() && scan.at.Sub(m.gone) > goneSlack {
			delete(w.tree, pid)
		}
	}
	for _, pid := range pids {
		e, ok := scan.procs[pid]
		if _, followed := open[pid]; !ok || !followed {
			continue
		}
		m, ok := w.tree[pid]
		if !ok || m.start != e.start {
			m = treeMember{start: e.start, seen: scan.at}
		}
		m.comm = e.comm
		w.tree[pid] = m
	}
}

// left records that the sampler found pid gone.
func (w *Watch) left(pid int, at time.Time) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if m, ok := w.tree[pid]; ok && m.gone.IsZero() {
		m.gone = at
		w.tree[pid] = m
	}
}

// Over returns a channel that is closed once a sample finds the worker's
// private memory above the limit. Without a limit it is never closed.
func (w *Watch) Over() <-chan struct{} { return w.over }

// Peak returns the highest private memory sampled since the start or the
// last ResetPeak, in bytes; 0 before the first sample.
func (w *Watch) Peak() int64 {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.peak
}

// Samples returns how many samples the watch has taken. The first is
// taken 5 ms after the start and the next 100 ms later: a worker sampled
// once may have grown far past its peak before it ended.
func (w *Watch) Samples() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.samples
}

// LastResident returns what the latest sample read of the worker's
// resident memory beside its private memory; the zero Resident before the
// first sample. With the worker's maxrss, taken as it ended, it tells what
// the worker grew to after its last sample (see [Resident.LatePrivate]).
func (w *Watch) LastResident() Resident {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.resident
}

// Last returns the latest sample of the worker's private memory, in bytes;
// 0 before the first.
func (w *Watch) Last() int64 {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.last
}

// LastData returns the largest data size (VmData: private writable
// mappings, what RLIMIT_DATA counts) of a process of the worker's tree at
// the latest sample, in bytes; 0 before the first. The data size limit is
// per process: the largest tells how near to it the tree came.
func (w *Watch) LastData() int64 {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.data
}

// Current returns the latest sample while the watch still samples, and 0
// once it has stopped (after Stop, or once the worker is gone) or, for a
// worker that is this process's child, once it has ended. It is what the
// worker holds now, to within a sampling interval, where Last keeps what it
// held last.
//
// The kernel frees a worker's memory as it exits, up to a sampling interval
// before the watch would see it gone; until then, what its enclosing
// cgroup holds less what the watches say would fall by its last sample, as
// if others had freed that much.
func (w *Watch) Current() int64 {
	select {
	case <-w.done:
		return 0
	default:
	}
	if w.child && ended(w.pid) {
		return 0
	}
	return w.Last()
}

// ended reports whether the child pid has exited: it waits to be reaped,
// which this does not do, or has been (ECHILD).
func ended(pid int) bool {
	var info unix.Siginfo // Signo stays 0 while the process lives
	err := unix.Waitid(unix.P_PID, pid, &info, unix.WEXITED|unix.WNOWAIT|unix.WNOHANG, nil)
	return err == unix.ECHILD || err == nil && info.Signo == int32(unix.SIGCHLD)
}

// ResetPeak starts a new peak from the latest sample, such as when an
// idle persistent worker takes a task.
func (w *Watch) ResetPeak() {
	w.mu.Lock()
	w.peak = w.last
	w.mu.Unlock()
}

// Stop ends the sampling and waits for it to end. Peak still answers.
// Calling Stop again does nothing.
func (w *Watch) Stop() {
	w.once.Do(func() {
		close(w.stop)
		if w.first.Stop() {
			close(w.done) // the sampling goroutine never started
		}
	})
	<-w.done
}

// run samples until Stop or until the worker is gone, from minSample
// after the start, when first starts it.
func (w *Watch) run(s *treeSampler) {
	defer close(w.done)
	defer s.close()
	var t *time.Timer // nil until the first sample is taken
	defer func() {
		if t != nil {
			t.Stop()
		}
	}()
	overClosed := false
	var prev int64       // the previous sample
	var prevAt time.Time // when it was taken
	for {
		if t == nil {
			select {
			case <-w.stop:
				return
			default:
			}
		} else {
			select {
			case <-w.stop:
				return
			case <-t.C:
			}
		}
		v, res, data, err := s.sample()
		if err != nil {
			return // the worker is gone
		}
		now := time.Now()
		w.mu.Lock()
		w.last, w.peak, w.resident, w.data = v, max(w.peak, v), res, data
		w.samples++
		w.mu.Unlock()
		if w.limit > 0 && v > w.limit && !overClosed {
			close(w.over)
			overClosed = true
		}
		var elapsed time.Duration
		if !prevAt.IsZero() {
			elapsed = now.Sub(prevAt)
		}
		if next := nextSample(v, prev, elapsed, w.limit); t == nil {
			t = time.NewTimer(next)
		} else {
			t.Reset(next)
		}
		prev, prevAt = v, now
	}
}

// treeSampler reads the private memory of a process tree, keeping each
// known process's status file open, so that a sample is one pread per
// process; only every scanEvery does it look for new descendants. It is
// used by one goroutine.
type treeSampler struct {
	root   int
	files  map[int]*os.File // open /proc/PID/status of the known processes
	buf    []byte
	scanAt time.Time // when descendants were last looked for
	w      *Watch    // told of the processes that join and leave the tree
}

func newTreeSampler(root int, w *Watch) *treeSampler {
	return &treeSampler{root: root, files: make(map[int]*os.File), buf: make([]byte, 4096), w: w}
}

// sample returns the tree's private memory, what it read of the tree's
// resident memory beside it, and the largest data size of a process of
// the tree. It fails once the root is gone.
func (s *treeSampler) sample() (int64, Resident, int64, error) {
	if err := s.refresh(); err != nil {
		return 0, Resident{}, 0, err
	}
	var total, data int64
	var res Resident
	for pid, f := range s.files {
		st, err := s.read(f)
		if err == nil && !st.hasMM && pid == s.root {
			err = fs.ErrNotExist // a zombie: the worker has ended
		}
		if err != nil {
			f.Close()
			delete(s.files, pid)
			s.w.left(pid, time.Now())
			if pid == s.root {
				return 0, Resident{}, 0, err
			}
			continue // a descendant exited
		}
		total += st.private()
		res.HWM, res.Shared = max(res.HWM, st.hwm), max(res.Shared, st.shared)
		data = max(data, st.data)
	}
	return total, res, data, nil
}

// refresh opens the status files of the root and, every scanEvery, of the
// descendants found since.
func (s *treeSampler) refresh() error {
	pids := []int{s.root}
	var scan *procScan
	// The first sample looks at the root alone, which has hardly started.
	if len(s.files) > 0 && time.Since(s.scanAt) >= scanEvery {
		tree, sc, err := descendantsIn(s.root)
		if err != nil {
			return err
		}
		pids, scan, s.scanAt = tree, sc, time.Now()
	}
	for _, pid := range pids {
		if _, ok := s.files[pid]; ok {
			continue
		}
		f, err := os.Open("/proc/" + strconv.Itoa(pid) + "/status")
		if err != nil {
			if pid == s.root {
				return err
			}
			continue
		}
		s.files[pid] = f
	}
	if scan != nil {
		s.w.scanned(pids, scan, s.files)
	}
	return nil
}

// read reads a status file from its start.
func (s *treeSampler) read(f *os.File) (procStatus, error) {
	for {
		n, err := f.ReadAt(s.buf, 0)
		if n == len(s.buf) {
			s.buf = make([]byte, 2*len(s.buf))
			continue
		}
		if n == 0 && err != nil {
			if errors.Is(err, syscall.ESRCH) {
				err = fs.ErrNotExist
			}
			return procStatus{}, err
		}
		return parseStatus(s.buf[:n])
	}
}

func (s *treeSampler) close() {
	for _, f := range s.files {
		f.Close()
	}
}
