package memory

import (
	"sync"
	"syscall"
	"time"
)

// OOMWitness confirms OOM kills of workers that share one cgroup with the
// supervisor, such as a container's, from that cgroup's oom_kill counter,
// which an unprivileged process can read (v1 memory.oom_control, v2
// memory.events.local or memory.events). The counter is the cgroup's, not
// the worker's: it also counts kills of other processes. So a death is
// confirmed only when the counter's rise over the worker's window (from a
// Snapshot taken as its attempt began until Confirm answers) is accounted
// for by exactly the deaths that could be OOM kills in that window,
// observed by every Confirm: if N of them happened and the counter rose by
// N, each of them is an OOM kill; if it rose by fewer, some were not and
// none can be told apart, so none is confirmed; if it rose by more (a
// process that is not a worker was killed), none is confirmed either. The
// kernel raises the counter before it sends SIGKILL, so a victim's kill is
// counted by the time its death is seen.
//
// A window must not start between a kill and the report of its victim's
// death, or it would count the death without the kill. So a window starts
// only where the counter has not moved for a settling time (longer than a
// death takes to be reported); Snapshot taken sooner after a kill returns
// the last such point, and the window is wider.
//
// Its methods are safe for concurrent use.
type OOMWitness struct {
	read   func() (uint64, error) // returns the counter
	file   string                 // what read reads, for messages
	settle time.Duration          // how long a victim's death may take to be reported
	now    func() time.Time

	mu sync.Mutex
	// deaths counts the deaths passed to Confirm so far; guarded by mu.
	deaths uint64
	// changed is closed and replaced when deaths grows; guarded by mu.
	changed chan struct{}
	// kills is the counter as last read, and sameSince when a reading
	// first showed it; guarded by mu.
	kills     uint64
	sameSince time.Time
	// quiet is the latest mark taken where the counter had not moved for
	// settle; guarded by mu.
	quiet OOMMark
}

// OOMMark is the start of a worker's window: the counter, and how many
// deaths had been passed to Confirm. The zero OOMMark is a mark whose
// counter could not be read.
type OOMMark struct {
	kills  uint64
	deaths uint64
	ok     bool // kills was read
}

// oomSettle is how long after a kill the victim's death may take to reach
// Confirm: its exit, the reaping, and the draining of its pipes.
const oomSettle = 200 * time.Millisecond

// newOOMWitness returns a witness of the counter that read returns, read
// from file. The counter must be readable now: no worker has died yet, so
// this is the first quiet point.
func newOOMWitness(file string, read func() (uint64, error), settle time.Duration, now func() time.Time) (*OOMWitness, error) {
	kills, err := read()
	if err != nil {
		return nil, err
	}
	return &OOMWitness{
		read:      read,
		file:      file,
		settle:    settle,
		now:       now,
		changed:   make(chan struct{}),
		kills:     kills,
		sameSince: now(),
		quiet:     OOMMark{kills: kills, ok: true},
	}, nil
}

// File names the counter the witness reads, such as
// "/sys/fs/cgroup/memory/job/memory.oom_control".
func (w *OOMWitness) File() string { return w.file }

// readLocked reads the counter and notes when it changed. w.mu must be
// held.
func (w *OOMWitness) readLocked() (uint64, error) {
	kills, err := w.read()
	if err != nil {
		return 0, err
	}
	if kills != w.kills {
		w.kills, w.sameSince = kills, w.now()
	}
	return kills, nil
}

// Snapshot marks the start of a worker's window: call it before the worker
// starts, and again as an attempt starts on an idle worker. Where the
// counter moved within the settling time, it returns an earlier mark.
func (w *OOMWitness) Snapshot() OOMMark {
	w.mu.Lock()
	defer w.mu.Unlock()
	kills, err := w.readLocked()
	if err != nil {
		return OOMMark{}
	}
	if w.now().Sub(w.sameSince) >= w.settle {
		w.quiet = OOMMark{kills: kills, deaths: w.deaths, ok: true}
	}
	return w.quiet
}

// Confirm is told of a worker's death that may be an OOM kill (the worker
// died of SIGKILL that the supervisor did not send, or a shell in front of
// it exited with 137, 128+SIGKILL) and reports whether the counter
// confirms it, by the rule of the type's comment. mark is the Snapshot of
// the worker's window. Every such death must be passed to Confirm, even
// when something else confirms it, because it counts in the windows of
// other workers.
//
// A death that is not an OOM kill is answered at once: the counter did not
// rise enough. A confirmation waits the settling time first, so that the
// workers killed at about the same time are all counted: one OOM kill and
// one other SIGKILL together confirm neither.
func (w *OOMWitness) Confirm(mark OOMMark) bool {
	w.mu.Lock()
	w.deaths++
	close(w.changed)
	w.changed = make(chan struct{})
	w.mu.Unlock()
	if !mark.ok {
		return false
	}
	deadline := time.NewTimer(w.settle)
	defer deadline.Stop()
	for last := false; ; {
		w.mu.Lock()
		deaths, changed := w.deaths-mark.deaths, w.changed
		kills, err := w.readLocked()
		w.mu.Unlock()
		if err != nil || kills < mark.kills {
			return false // unreadable now, or reset
		}
		// The counter only rises, before each victim's death: fewer kills
		// than deaths now stays so.
		rose := kills - mark.kills
		if rose < deaths {
			return false
		}
		if last {
			return rose == deaths
		}
		select {
		case <-changed:
		case <-deadline.C:
			last = true
		}
	}
}

// MaybeOOMKilled reports whether a worker that ended with signal sig (0
// for none) and exit code may have been killed by the OOM killer: it died
// of SIGKILL, or exited with 137 (128+SIGKILL) as a shell does whose
// command was SIGKILLed. Such deaths go to [OOMWitness.Confirm].
func MaybeOOMKilled(sig syscall.Signal, code int) bool {
	return sig == syscall.SIGKILL || sig == 0 && code == 128+int(syscall.SIGKILL)
}
