package memory

import (
	"errors"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// fakeCounter stands for a cgroup's oom_kill counter.
type fakeCounter struct {
	kills  atomic.Uint64
	broken atomic.Bool
}

func (c *fakeCounter) read() (uint64, error) {
	if c.broken.Load() {
		return 0, errors.New("unreadable")
	}
	return c.kills.Load(), nil
}

// settle is short in these tests; the pool waits longer.
const settle = 50 * time.Millisecond

func TestOOMWitness(t *testing.T) {
	for _, tc := range []struct {
		name string
		// kills is how much the counter rises before the deaths; deaths is
		// how many workers die at once, all in the same window.
		kills, deaths int
		want          bool
	}{
		{name: "one kill, one death", kills: 1, deaths: 1, want: true},
		{name: "no kill, one death", kills: 0, deaths: 1, want: false},
		{name: "two kills, two deaths", kills: 2, deaths: 2, want: true},
		{name: "one kill, two deaths", kills: 1, deaths: 2, want: false},
		{name: "two kills, one death", kills: 2, deaths: 1, want: false},
		{name: "three kills, three deaths", kills: 3, deaths: 3, want: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var c fakeCounter
			c.kills.Store(7) // kills before the window do not count
			w := newOOMWitness("memory.oom_control", c.read)
			marks := make([]OOMMark, tc.deaths)
			for i := range marks {
				marks[i] = w.Snapshot()
			}
			c.kills.Add(uint64(tc.kills))
			got := make([]bool, tc.deaths)
			var wg sync.WaitGroup
			for i := range marks {
				wg.Go(func() { got[i] = w.Confirm(marks[i], settle) })
			}
			wg.Wait()
			for i, g := range got {
				if g != tc.want {
					t.Errorf("Confirm of death %d = %v, want %v", i+1, g, tc.want)
				}
			}
		})
	}
}

// TestOOMWitnessLateDeath: a worker's death is confirmed by a kill only
// after the settling time, so that a second death reported soon after, for
// which the counter did not rise, makes both ambiguous.
func TestOOMWitnessLateDeath(t *testing.T) {
	var c fakeCounter
	w := newOOMWitness("f", c.read)
	a, b := w.Snapshot(), w.Snapshot()
	c.kills.Add(1)
	first := make(chan bool)
	go func() { first <- w.Confirm(a, time.Minute) }()
	time.Sleep(settle) // a is waiting for its window to settle
	if w.Confirm(b, time.Minute) {
		t.Errorf("Confirm(second death) = true, want false: one kill for two deaths")
	}
	select {
	case got := <-first:
		if got {
			t.Errorf("Confirm(first death) = true, want false: one kill for two deaths")
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Confirm(first death) did not answer when the second death made it ambiguous")
	}
}

// TestOOMWitnessWindows: deaths before a worker's window began do not count
// in it, and a death without a kill is answered at once.
func TestOOMWitnessWindows(t *testing.T) {
	var c fakeCounter
	w := newOOMWitness("f", c.read)
	old := w.Snapshot()
	if w.Confirm(old, time.Minute) { // killed by someone else: no kill counted
		t.Errorf("Confirm without a kill = true, want false")
	}
	mark := w.Snapshot()
	c.kills.Add(1)
	if !w.Confirm(mark, settle) {
		t.Errorf("Confirm with one kill in a window after an older death = false, want true")
	}

	start := time.Now()
	mark = w.Snapshot()
	if w.Confirm(mark, time.Minute) {
		t.Errorf("Confirm without a kill = true, want false")
	}
	if d := time.Since(start); d > 10*time.Second {
		t.Errorf("Confirm without a kill took %v, want an answer at once", d)
	}
}

func TestOOMWitnessUnreadable(t *testing.T) {
	var c fakeCounter
	w := newOOMWitness("f", c.read)
	c.broken.Store(true)
	mark := w.Snapshot()
	c.broken.Store(false)
	c.kills.Add(1)
	if w.Confirm(mark, settle) {
		t.Errorf("Confirm from a mark without a reading = true, want false")
	}
	mark = w.Snapshot()
	c.kills.Add(1)
	c.broken.Store(true)
	if w.Confirm(mark, settle) {
		t.Errorf("Confirm with an unreadable counter = true, want false")
	}
}

func TestMaybeOOMKilled(t *testing.T) {
	for _, tc := range []struct {
		sig  syscall.Signal
		code int
		want bool
	}{
		{syscall.SIGKILL, -1, true},
		{0, 137, true},
		{syscall.SIGTERM, -1, false},
		{syscall.SIGSEGV, -1, false},
		{0, 1, false},
		{0, 0, false},
		{0, 143, false},
	} {
		if got := MaybeOOMKilled(tc.sig, tc.code); got != tc.want {
			t.Errorf("MaybeOOMKilled(%v, %d) = %v, want %v", tc.sig, tc.code, got, tc.want)
		}
	}
}
