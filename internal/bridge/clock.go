package bridge

import (
	"fmt"
	"os"
	"sync/atomic"
	"unsafe"

	"golang.org/x/sys/unix"
)

// The pool clock: a clock that runs while the session's pool runs and
// stands still while it is paused for a stopped client (followClient). The
// client's wait_timeout counts on it, so that the time a Ctrl-Z kept the
// program stopped is no time waited. The client makes the clock's file (a
// memory file of at least ClockSize bytes, named by Hello.Clock) and its
// workers map it too; the bridge alone writes it, in one 8-byte word
// stored whole, in the machine's byte order:
//
//	bit 63 clear: the pool runs; the word is the nanoseconds it has been
//	              paused, and the clock reads CLOCK_MONOTONIC minus it.
//	bit 63 set:   the pool is paused; bits 0-62 are the clock's reading,
//	              which stands still until the pool goes on.
//
// A word of 0 (the file as made) is a pool never paused: the clock is
// CLOCK_MONOTONIC. A reader reads CLOCK_MONOTONIC first and the word
// second: a reader stopped between the two then reads at worst an earlier
// time of the clock, never a later one (docs/protocol.md).
const (
	// ClockSize is the least size of the pool clock's file.
	ClockSize = 8
	// ClockPaused is the bit of the pool clock's word that says the pool
	// is paused.
	ClockPaused = uint64(1) << 63
)

// poolClock is the bridge's side of the pool clock. Its methods are called
// by one goroutine (followClient); a nil *poolClock does nothing.
type poolClock struct {
	m      []byte // the file's first ClockSize bytes, mapped shared
	paused int64  // nanoseconds paused before the current pause
	since  int64  // CLOCK_MONOTONIC when the current pause began; 0: running
}

// openClock maps the pool clock's file at path, which the client made.
func openClock(path string) (*poolClock, error) {
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		return nil, err
	}
	defer f.Close() // the mapping keeps the file
	st, err := f.Stat()
	if err != nil {
		return nil, err
	}
	if st.Size() < ClockSize {
		return nil, fmt.Errorf("bridge: the pool clock %s has %d bytes, want %d", path, st.Size(), ClockSize)
	}
	m, err := unix.Mmap(int(f.Fd()), 0, ClockSize, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		return nil, os.NewSyscallError("mmap", err)
	}
	return &poolClock{m: m}, nil
}

// monotonic is CLOCK_MONOTONIC in nanoseconds, the clock every process of
// the machine reads alike (Python's time.monotonic_ns).
func monotonic() int64 {
	var ts unix.Timespec
	_ = unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts) // fails only for a clock id the kernel lacks
	return ts.Nano()
}

// store writes the clock's word whole.
func (c *poolClock) store(w uint64) {
	atomic.StoreUint64((*uint64)(unsafe.Pointer(&c.m[0])), w)
}

// pause stops the clock at now (CLOCK_MONOTONIC), when the client was seen
// stopped. It is called before the pool's workers are paused.
func (c *poolClock) pause(now int64) {
	if c == nil || c.since != 0 {
		return
	}
	c.since = now
	c.store(ClockPaused | uint64(now-c.paused))
}

// resume lets the clock run on from now (CLOCK_MONOTONIC), when the client
// was seen running again, at the reading where pause stopped it. It is
// called before the workers are continued, so that they find the clock
// running when they run.
func (c *poolClock) resume(now int64) {
	if c == nil || c.since == 0 {
		return
	}
	c.paused += max(now-c.since, 0)
	c.since = 0
	c.store(uint64(c.paused))
}

// close unmaps the clock.
func (c *poolClock) close() {
	if c != nil {
		_ = unix.Munmap(c.m)
		c.m = nil
	}
}

// clockReading is the pool clock's reading, in nanoseconds, that a reader
// gets from word w and now, CLOCK_MONOTONIC read before w.
func clockReading(w uint64, now int64) int64 {
	if w&ClockPaused != 0 {
		return int64(w &^ ClockPaused)
	}
	return now - int64(w)
}
