package memory

import (
	"errors"
	"io"
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

// OOMLog remembers the pids that the kernel log says the OOM killer
// killed, from [WatchOOMKills] on. Its methods are safe for concurrent use.
// Close must be called to end the goroutine that reads the log.
//
// The kernel logs pids as seen from the initial pid namespace: a
// supervisor in another pid namespace cannot match them to its workers,
// and WatchOOMKills refuses to start there.
type OOMLog struct {
	src  io.ReadCloser    // one kernel log record per Read
	done chan struct{}    // closed when the reading goroutine returns
	now  func() time.Time // the clock records are stamped with
	// lineage returns a victim and its ancestors (see oomRecord), read
	// as its record is; nil where /proc cannot tell.
	lineage   func(pid int) []procID
	closeOnce sync.Once
	closeErr  error // set by closeOnce

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
}

// newOOMLog starts the goroutine that reads src. lineage, if not nil,
// reads a victim's ancestry from /proc.
func newOOMLog(src io.ReadCloser, now func() time.Time, lineage func(pid int) []procID) *OOMLog {
	l := &OOMLog{
		src:     src,
		done:    make(chan struct{}),
		now:     now,
		lineage: lineage,
		seen:    make(map[int]oomRecord),
		changed: make(chan struct{}),
	}
	go l.read()
	return l
}

// read parses records until src fails, which Close makes it do.
func (l *OOMLog) read() {
	defer close(l.done)
	defer l.end()
	buf := make([]byte, kmsgRecordMax)
	for {
		n, err := l.src.Read(buf)
		if errors.Is(err, syscall.EPIPE) {
			// Records were overwritten before we read them; the next
			// read returns the oldest one left.
			continue
		}
		if err != nil {
			return
		}
		if v, ok := parseOOMRecord(buf[:n]); ok {
			r := oomRecord{victim: v}
			if l.lineage != nil {
				// At once: the victim is dying, and once its parent has
				// reaped it, /proc no longer tells whose it was.
				r.lineage = l.lineage(v.PID)
			}
			r.at = l.now()
			l.record(r)
		}
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
// few minutes, waiting up to wait for the record to arrive. The kernel
// logs the kill before the victim dies, so a short wait (100ms) after
// Wait reports a SIGKILL suffices in practice.
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
// accepts, waiting up to wait for one to be read.
func (l *OOMLog) find(since time.Time, match func(oomRecord) bool, wait time.Duration) (oomRecord, bool) {
	var timeout <-chan time.Time
	if wait > 0 {
		t := time.NewTimer(wait)
		defer t.Stop()
		timeout = t.C
	}
	for {
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
			timeout = nil // one last look
		}
	}
}

// Close stops reading the kernel log and waits for the reading goroutine
// to return. Killed still answers from what was read.
func (l *OOMLog) Close() error {
	l.closeOnce.Do(func() {
		l.closeErr = l.src.Close()
		<-l.done
	})
	return l.closeErr
}
