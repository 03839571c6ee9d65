package pool

import (
	"sync"
	"time"

	"github.com/safepool/safepool/internal/reaper"
)

// leftoverEvery is the least time between two sweeps of what ended
// one-shot attempts left behind: a daemon outlives its job by at most about
// this much, and a pool of short jobs looks at /proc once per interval,
// not once per job.
const leftoverEvery = time.Second

// leftovers ends what one-shot attempts leave behind where no cgroup of
// their own holds them. A worker cgroup is emptied when its attempt ends
// (endShot); without one, a daemon that a job started (setsid, a double
// fork) would outlive its job until the pool's end, one more with every
// job of a long run. So each such attempt carries a token of its own in
// its marker (reaper.Mark), and once attempts have ended, their tokens are
// swept together. The pool's own sweep at its end (Pool.reap) still ends
// whatever is left, and reports what survives.
type leftovers struct {
	mu     sync.Mutex
	tokens []string // of attempts ended since the last sweep; guarded by mu
	wake   chan struct{}
	quit   <-chan struct{} // the pool's: closed when it shuts down
	done   chan struct{}   // closed when run returns
	// among, when not nil, lists the processes a sweep looks at: those
	// of the enclosing cgroup, rather than every process in /proc.
	among func() ([]int, error)
}

func newLeftovers(quit <-chan struct{}, among func() ([]int, error)) *leftovers {
	return &leftovers{wake: make(chan struct{}, 1), quit: quit, done: make(chan struct{}), among: among}
}

// mark returns env with a token of its own for an attempt, and the token.
func (l *leftovers) mark(env []string) ([]string, string) { return reaper.Mark(env) }

// ended notes that the attempt marked with token has ended: what it left
// is swept soon.
func (l *leftovers) ended(token string) {
	l.mu.Lock()
	l.tokens = append(l.tokens, token)
	l.mu.Unlock()
	select {
	case l.wake <- struct{}{}:
	default:
	}
}

// run sweeps the tokens of ended attempts, at most every leftoverEvery,
// until quit is closed. Pool.shutdown waits for it (done) before its own
// sweep.
func (l *leftovers) run() {
	defer close(l.done)
	for {
		select {
		case <-l.wake:
		case <-l.quit:
			return
		}
		l.mu.Lock()
		tokens := l.tokens
		l.tokens = nil
		l.mu.Unlock()
		// A process that survives SIGKILL here is found again, and
		// reported, by the pool's sweep at its end.
		if l.among != nil {
			_ = reaper.SweepAnyAmong(tokens, l.among)
		} else {
			_ = reaper.SweepAny(tokens)
		}
		t := time.NewTimer(leftoverEvery)
		select {
		case <-t.C:
		case <-l.quit:
			t.Stop()
			return
		}
	}
}
