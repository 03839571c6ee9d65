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

// manualClock is a clock that moves only when told.
type manualClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *manualClock) now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *manualClock) advance(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

// newTestWitness returns a witness of c, on clk, whose counter starts at 7:
// kills before the witness do not count.
func newTestWitness(t *testing.T, c *fakeCounter, clk *manualClock) *OOMWitness {
	t.Helper()
	c.kills.Store(7)
	w, err := newOOMWitness("memory.oom_control", c.read, settle, clk.now)
	if err != nil {
		t.Fatal(err)
	}
	return w
}

// confirmAll passes each mark's death to Confirm at once and returns the
// answers.
func confirmAll(w *OOMWitness, marks ...OOMMark) []bool {
	got := make([]bool, len(marks))
	var wg sync.WaitGroup
	for i := range marks {
		wg.Go(func() { got[i] = w.Confirm(marks[i]) })
	}
	wg.Wait()
	return got
}

func TestOOMWitness(t *testing.T) {
	for _, tc := range []struct {
		name string
		// kills is how much the counter rises; deaths is how many workers
		// die at once, all in the same window.
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
			clk := &manualClock{t: time.Unix(1000, 0)}
			w := newTestWitness(t, &c, clk)
			marks := make([]OOMMark, tc.deaths)
			for i := range marks {
				marks[i] = w.Snapshot()
			}
			c.kills.Add(uint64(tc.kills))
			for i, got := range confirmAll(w, marks...) {
				if got != tc.want {
					t.Errorf("Confirm of death %d = %v, want %v", i+1, got, tc.want)
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
	clk := &manualClock{t: time.Unix(1000, 0)}
	c.kills.Store(7)
	w, err := newOOMWitness("f", c.read, time.Minute, clk.now)
	if err != nil {
		t.Fatal(err)
	}
	a, b := w.Snapshot(), w.Snapshot()
	c.kills.Add(1)
	first := make(chan bool)
	go func() { first <- w.Confirm(a) }()
	if w.Confirm(b) {
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

// TestOOMWitnessStraddle: a window that would start between a kill and the
// report of its victim's death starts before the kill instead, so that a
// second victim killed at about the same time is confirmed too.
func TestOOMWitnessStraddle(t *testing.T) {
	var c fakeCounter
	clk := &manualClock{t: time.Unix(1000, 0)}
	w := newTestWitness(t, &c, clk)
	clk.advance(time.Hour)
	a := w.Snapshot()
	clk.advance(time.Hour)
	c.kills.Add(1) // a is killed...
	clk.advance(time.Millisecond)
	b := w.Snapshot() // ...as b takes a task, before a's death is reported
	c.kills.Add(1)    // b is killed too
	if got := confirmAll(w, a, b); !got[0] || !got[1] {
		t.Errorf("Confirm(a, b) = %v, want both: two kills, two deaths", got)
	}

	// Once the counter has been still for the settling time, windows
	// start afresh: a death without a kill before them does not count.
	clk.advance(time.Millisecond)
	d := w.Snapshot()
	if w.Confirm(d) {
		t.Errorf("Confirm without a kill = true, want false")
	}
	clk.advance(settle)
	e := w.Snapshot()
	c.kills.Add(1)
	if !w.Confirm(e) {
		t.Errorf("Confirm of a kill in a window after a death without one = false, want true")
	}
}

// TestOOMWitnessAnswersAtOnce: a death without a kill is answered without
// waiting for the settling time.
func TestOOMWitnessAnswersAtOnce(t *testing.T) {
	var c fakeCounter
	clk := &manualClock{t: time.Unix(1000, 0)}
	c.kills.Store(7)
	w, err := newOOMWitness("f", c.read, time.Hour, clk.now)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan bool)
	go func() { done <- w.Confirm(w.Snapshot()) }()
	select {
	case got := <-done:
		if got {
			t.Errorf("Confirm without a kill = true, want false")
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Confirm without a kill waited")
	}
}

func TestOOMWitnessUnreadable(t *testing.T) {
	var c fakeCounter
	clk := &manualClock{t: time.Unix(1000, 0)}
	w := newTestWitness(t, &c, clk)
	c.broken.Store(true)
	mark := w.Snapshot()
	c.broken.Store(false)
	c.kills.Add(1)
	if w.Confirm(mark) {
		t.Errorf("Confirm from a mark without a reading = true, want false")
	}
	mark = w.Snapshot()
	c.kills.Add(1)
	c.broken.Store(true)
	if w.Confirm(mark) {
		t.Errorf("Confirm with an unreadable counter = true, want false")
	}
	if _, err := newOOMWitness("f", c.read, settle, clk.now); err == nil {
		t.Errorf("newOOMWitness of an unreadable counter = nil error, want one")
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
