package memory

import (
	"errors"
	"slices"
	"sync"
	"syscall"
	"time"
)

const (
	// maxOOMRecords bounds how many killed pids an OOMLog remembers.
	maxOOMRecords = 4096
	// oomRecordTTL is how long Killed trusts a record. pids are reused
	// (pid_max may be 32768), and a kill read long ago is about another
	// process by now.
	oomRecordTTL = 5 * time.Minute
	// kmsgRecordMax is the largest record /dev/kmsg returns in one read.
	kmsgRecordMax = 8192
)

// errNoRecord is what an oomSource's readNow returns when it holds no
// record to read now.
var errNoRecord = errors.New("no record to read now")

// oomSource is the kernel log as an OOMLog reads it, one record per read:
// /dev/kmsg (kmsgFile), or a fake in tests.
type oomSource interface {
	// readNow reads the next record into b without waiting: errNoRecord
	// when there is none to read yet, syscall.EPIPE when records were
	// overwritten before they were read (the next read returns the
	// oldest one left), any other error once the source is closed or
	// broken.
	readNow(b []byte) (int, error)
	// await calls try until it returns true, waiting between the calls
	// that return false until a record may be there to read. It fails,
	// without calling try again, once the source is closed.
	await(try func() bool) error
	// Close ends the source and wakes a pending await.
	Close() error
}

// OOMLog remembers the pids that the kernel log says the OOM killer
// killed, from [WatchOOMKills] on. Its methods are safe for concurrent use.
// Close must be called to end the goroutine that reads the log.
//
// A goroutine reads the log as records come, so that a victim's ancestry
// is read from /proc while it is still there. A lookup does not rely on it
// alone: on a loaded machine that goroutine may not have run since a
// record came, so each lookup first reads, itself, every record that the
// log holds (catchUp). What was logged before a lookup began is recorded
// before it answers.
//
// The kernel logs pids as seen from the initial pid namespace: a
// supervisor in another pid namespace cannot match them to its workers,
// and WatchOOMKills refuses to start there.
type OOMLog struct {
	src  oomSource
	done chan struct{}    // closed when the reading goroutine returns
	now  func() time.Time // the clock records are stamped with
	// lineage returns a victim and its ancestors (see oomRecord), read
	// as its record is; nil where /proc cannot tell.
	lineage   func(pid int) []procID
	closeOnce sync.Once
	closeErr  error // set by closeOnce

	// readMu is held to read one record from src and record it, by the
	// reading goroutine or by a lookup's catchUp, so that once a catchUp
	// holds it, every record read before is recorded, and records are
	// recorded in the log's order.
	readMu sync.Mutex
	// buf is the record read; guarded by readMu.
	buf []byte

	mu sync.Mutex
	// seen maps a killed pid to its latest record; guarded by mu.
	seen map[int]oomRecord
	// order holds the pids of seen, oldest first; guarded by mu.
	order []int
	// changed is closed and replaced when a kill is recorded or the log
	// ends, waking Killed; guarded by mu.
	changed chan struct{}
	// ended is set when the reading goroutine stops; guarded by mu.
	ended bool
	// reserve is the memory given back as each record is read
	// (KeepReserve), or nil; guarded by mu.
	reserve *memReserve
}

// newOOMLog starts the goroutine that reads src. lineage, if not nil,
// reads a victim's ancestry from /proc.
func newOOMLog(src oomSource, now func() time.Time, lineage func(pid int) []procID) *OOMLog {
	l := &OOMLog{
		src:     src,
		done:    make(chan struct{}),
		now:     now,
		lineage: lineage,
		buf:     make([]byte, kmsgRecordMax),
		seen:    make(map[int]oomRecord),
		changed: make(chan struct{}),
	}
	// Touched now, not when the first kill is read into it: a page
	// faulted in then, with the cgroup at its limit and the victim not
	// yet gone, made the kernel take the supervisor next.
	for i := range l.buf {
		l.buf[i] = 1
	}
	go l.read()
	return l
}

// read records what src holds whenever it may hold something, until it
// fails, which Close makes it do.
func (l *OOMLog) read() {
	defer close(l.done)
	defer l.end()
	var failed error
	for failed == nil {
		err := l.src.await(func() bool {
			ok, err := l.next()
			failed = err
			return ok || err != nil
		})
		if err != nil {
			return
		}
	}
}

// catchUp records every record that src holds now, which includes every
// record logged before it was called. It does not wait for any: with
// nothing to read, it costs a read that fails at once.
func (l *OOMLog) catchUp() {
	for {
		if ok, _ := l.next(); !ok {
			return
		}
	}
}

// next reads one record from src, if there is one to read now, and records
// it if it is a kill. It reports whether it read one; err is src's failure.
func (l *OOMLog) next() (bool, error) {
	l.readMu.Lock()
	defer l.readMu.Unlock()
	for {
		n, err := l.src.readNow(l.buf)
		switch {
		case errors.Is(err, syscall.EPIPE):
			// Records were overwritten before we read them; the next
			// read returns the oldest one left.
			continue
		case errors.Is(err, errNoRecord):
			return false, nil
		case err != nil:
			return false, err
		}
		// Before anything is made of the record: it may be the report of
		// a kill whose victim's memory is not yet freed.
		l.mu.Lock()
		reserve := l.reserve
		l.mu.Unlock()
		reserve.release()
		if v, ok := parseOOMRecord(l.buf[:n]); ok {
			r := oomRecord{victim: v}
			if l.lineage != nil {
				// At once: the victim is dying, and once its parent has
				// reaped it, /proc no longer tells whose it was.
				r.lineage = l.lineage(v.PID)
			}
			r.at = l.now()
			l.record(r)
		}
		return true, nil
	}
}

func (l *OOMLog) record(r oomRecord) {
	l.mu.Lock()
	defer l.mu.Unlock()
	pid := r.victim.PID
	if old, ok := l.seen[pid]; ok {
		l.order = slices.DeleteFunc(l.order, func(p int) bool { return p == pid })
		// One kill is logged in two records (Linux 4.19+: the summary,
		// then "Killed process"); the victim may be gone by the second.
		if len(r.lineage) == 0 && r.at.Sub(old.at) < goneSlack {
			r.lineage = old.lineage
		}
		if r.victim.Comm == "" {
			r.victim.Comm = old.victim.Comm
		}
	}
	l.seen[pid] = r
	l.order = append(l.order, pid)
	if len(l.order) > maxOOMRecords {
		delete(l.seen, l.order[0])
		l.order = l.order[1:]
	}
	close(l.changed)
	l.changed = make(chan struct{})
}

func (l *OOMLog) end() {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.ended = true
	close(l.changed)
	l.changed = make(chan struct{})
}

// Killed reports whether the kernel logged an OOM kill of pid in the last
// few minutes, waiting up to wait for the record to arrive. A record
// logged before the call is found without a wait, however late the
// reading goroutine is. The kernel logs the kill as it sends the SIGKILL,
// so the record may come just after Wait reports the victim's death: a
// short wait (100ms) then suffices in practice.
func (l *OOMLog) Killed(pid int, wait time.Duration) bool {
	return l.KilledSince(pid, l.now().Add(-oomRecordTTL), wait)
}

// KilledSince is Killed counting only records read at or after since,
// such as the worker's start, which rules out kills of an earlier
// process with the same pid.
func (l *OOMLog) KilledSince(pid int, since time.Time, wait time.Duration) bool {
	_, ok := l.find(since, func(r oomRecord) bool { return r.victim.PID == pid }, wait)
	return ok
}

// KilledInTree returns a process of t that the kernel log says the OOM
// killer killed, in a record read at or after since, waiting up to wait for
// one to be read. See [Tree] for what makes a victim the tree's.
func (l *OOMLog) KilledInTree(t Tree, since time.Time, wait time.Duration) (Victim, bool) {
	if len(t.members) == 0 {
		return Victim{}, false
	}
	r, ok := l.find(since, func(r oomRecord) bool { return t.holds(r, since) }, wait)
	return r.victim, ok
}

// find returns the newest record read at or after since that match
// accepts, waiting up to wait for one to be read. It reads what the log
// holds first, and again for its last look after a wait: a record logged
// before either is never missed.
func (l *OOMLog) find(since time.Time, match func(oomRecord) bool, wait time.Duration) (oomRecord, bool) {
	var timeout <-chan time.Time
	if wait > 0 {
		t := time.NewTimer(wait)
		defer t.Stop()
		timeout = t.C
	}
	for look := true; ; {
		if look {
			l.catchUp()
			look = false
		}
		l.mu.Lock()
		var found oomRecord
		ok := false
		// order is oldest first, by when the records were read.
		for i := len(l.order) - 1; i >= 0 && !ok; i-- {
			found = l.seen[l.order[i]]
			if found.at.Before(since) {
				break
			}
			ok = match(found)
		}
		changed, ended := l.changed, l.ended
		l.mu.Unlock()
		if ok {
			return found, true
		}
		if ended || timeout == nil {
			return oomRecord{}, false
		}
		select {
		case <-changed:
		case <-timeout:
			timeout, look = nil, true // one last look
		}
	}
}

// Close stops reading the kernel log and waits for the reading goroutine
// to return. Killed still answers from what was read.
func (l *OOMLog) Close() error {
	l.closeOnce.Do(func() {
		l.closeErr = l.src.Close()
		<-l.done
		l.mu.Lock()
		reserve := l.reserve
		l.reserve = nil
		l.mu.Unlock()
		reserve.free()
	})
	return l.closeErr
}
