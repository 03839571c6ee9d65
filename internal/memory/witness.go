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
// Snapshot taken as its attempt began until Confirm answers) is accounted for by
// exactly the deaths that could be OOM kills in that window, observed by
// every Confirm: if N of them happened and the counter rose by N, each of
// them is an OOM kill; if it rose by fewer, some were not and none can be
// told apart, so none is confirmed; if it rose by more (a process that is
// not a worker was killed), none is confirmed either. The kernel raises
// the counter before it sends SIGKILL, so a victim's kill is counted by
// the time its death is seen.
//
// Its methods are safe for concurrent use.
type OOMWitness struct {
	// read returns the counter.
	read func() (uint64, error)
	// file is what read reads, for messages.
	file string

	mu sync.Mutex
	// deaths counts the deaths passed to Confirm so far; guarded by mu.
	deaths uint64
	// changed is closed and replaced when deaths grows; guarded by mu.
	changed chan struct{}
}

// OOMMark is the state of an OOMWitness as a worker's attempt began: the
// counter, and how many deaths had been confirmed or refused. The zero
// OOMMark is a mark whose counter could not be read.
type OOMMark struct {
	kills  uint64
	deaths uint64
	ok     bool // kills was read
}

// newOOMWitness returns a witness of the counter that read returns, read
// from file.
func newOOMWitness(file string, read func() (uint64, error)) *OOMWitness {
	return &OOMWitness{read: read, file: file, changed: make(chan struct{})}
}

// File names the counter the witness reads, such as
// "/sys/fs/cgroup/memory/job/memory.oom_control".
func (w *OOMWitness) File() string { return w.file }

// Snapshot marks the start of a worker's window: call it as the worker
// starts, and again as an attempt starts on an idle worker.
func (w *OOMWitness) Snapshot() OOMMark {
	w.mu.Lock()
	deaths := w.deaths
	w.mu.Unlock()
	// The deaths are counted first: a death that comes in between is then
	// in the window, which can only make Confirm more careful.
	kills, err := w.read()
	return OOMMark{kills: kills, deaths: deaths, ok: err == nil}
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
// rise enough. A confirmation waits settle first, the time a victim's
// death may take to be reported, so that the workers killed at about the
// same time are all counted: one OOM kill and one other SIGKILL together
// confirm neither.
func (w *OOMWitness) Confirm(mark OOMMark, settle time.Duration) bool {
	w.mu.Lock()
	w.deaths++
	close(w.changed)
	w.changed = make(chan struct{})
	w.mu.Unlock()
	if !mark.ok {
		return false
	}
	deadline := time.NewTimer(settle)
	defer deadline.Stop()
	for last := false; ; {
		w.mu.Lock()
		deaths, changed := w.deaths-mark.deaths, w.changed
		w.mu.Unlock()
		kills, err := w.read()
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
