package memory

import (
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// A supervisor without a cgroup per worker shares its memory limit with
// its workers. When the kernel's OOM killer takes a worker there, the
// victim stops being a candidate as soon as it is exiting, while its
// memory is still being freed, and the next page charged to the cgroup in
// that moment makes the kernel kill again, and the supervisor is then the
// only candidate. The supervisor reads the kernel's report of the kill
// just then, and reading it touched new memory: a new stack page, a new
// span of the heap. Measured as root with the cgroup hierarchy hidden
// (no-cgroup mode) in a 1 GiB cgroup, the supervisor was killed this way
// in 21 of 69 runs once its sampling had stopped opening files, and in 7
// of 49 with this reserve (docs/memory.md).
//
// So such a supervisor holds a reserve: a few pages touched at the start,
// given back to the kernel (MADV_DONTNEED, which uncharges them at once)
// when a record of the kernel log is read, before the record is looked
// at. What the supervisor then touches fits in the room they leave. The
// reserve is touched again once no record has come for reserveRefill.

// reserveSize is the reserve's size, and reserveRefill how long after
// the last kernel log record it is touched again.
const (
	reserveSize   = 2 << 20
	reserveRefill = time.Second
)

// memReserve is memory held touched, to be given back at once. Its
// methods are safe for concurrent use; the nil *memReserve does nothing.
type memReserve struct {
	mu       sync.Mutex
	mem      []byte // the mapping; nil once freed
	released bool   // its pages were given back and not touched since
	// refill touches the pages again, reserveRefill after the last
	// release.
	refill *time.Timer
}

// newReserve maps size bytes and touches them; nil when it cannot map.
func newReserve(size int) *memReserve {
	mem, err := unix.Mmap(-1, 0, size, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
	if err != nil {
		return nil
	}
	r := &memReserve{mem: mem}
	touch(mem)
	r.refill = time.AfterFunc(time.Hour, r.touchAgain)
	r.refill.Stop()
	return r
}

// touch writes to each page of mem, so that each is in memory and charged.
func touch(mem []byte) {
	for i := 0; i < len(mem); i += 4096 {
		mem[i] = 1
	}
}

// release gives the reserve's pages back to the kernel, if they are held,
// and puts off touching them again to reserveRefill from now.
func (r *memReserve) release() {
	if r == nil {
		return
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.mem == nil {
		return
	}
	if !r.released {
		_ = unix.Madvise(r.mem, unix.MADV_DONTNEED)
		r.released = true
	}
	r.refill.Reset(reserveRefill)
}

// touchAgain touches the reserve's pages again after a release.
func (r *memReserve) touchAgain() {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.mem != nil && r.released {
		touch(r.mem)
		r.released = false
	}
}

// holds reports whether the reserve's pages are held (touched): for tests.
func (r *memReserve) holds() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.mem != nil && !r.released
}

// free unmaps the reserve.
func (r *memReserve) free() {
	if r == nil {
		return
	}
	r.refill.Stop()
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.mem != nil {
		_ = unix.Munmap(r.mem)
		r.mem = nil
	}
}

// KeepReserve makes the log hold a reserve of memory that it gives back to
// the kernel as it reads each record, before anything else, for a
// supervisor that shares its memory limit with its workers (a mode
// without a cgroup per worker): see reserve_linux.go. It costs 2 MiB of
// resident memory.
func (l *OOMLog) KeepReserve() {
	r := newReserve(reserveSize)
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.reserve != nil || l.ended {
		r.free()
		return
	}
	l.reserve = r
}
