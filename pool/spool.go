package pool

import (
	"errors"
	"fmt"
	"io"
	"os"
	"runtime"
	"sync"
	"sync/atomic"

	"github.com/safepool/safepool/internal/bytesize"
)

// One-shot attempts' stdout and stderr are kept in memory up to a bound per
// stream (Config.OutputInMemory); a stream that outgrows it goes on in the
// pool's spill file. That is one temporary file in $TMPDIR, unlinked as it
// is made (O_TMPFILE where the file system has it), so that nothing is left
// behind even when the supervisor is SIGKILLed. A stream takes blocks of the
// file as it grows; Result.Release, or the garbage collector once nothing
// refers to the stream any more, gives them back for reuse and punches
// them out of the file. One file for the whole pool rather than one per
// stream, so that the results waiting for delivery (up to MaxPending of
// them with KeepOrder) cost no file descriptors.

const (
	// spillBlock is the unit in which streams take room in the spill file.
	// Blocks are reused; a block's unwritten tail stays a hole.
	spillBlock = 1 << 20
	// outputMemory is, when Config.OutputInMemory is zero, the memory the
	// MaxPending results the pool may hold share for their two streams,
	// within [minStreamMemory, maxStreamMemory] each.
	outputMemory    = 64 << 20
	minStreamMemory = 4 << 10
	maxStreamMemory = 1 << 20
	// collectEvery is how many more blocks may be in use before the
	// spooler runs the garbage collector, whose cleanups give back the
	// blocks of results dropped without Release: the heap of a pool that
	// spills stays small, so the collector would otherwise run seldom.
	collectEvery = 1 << 30 / spillBlock
)

// errReleased is what reading a spilled stream returns after Result.Release.
var errReleased = errors.New("pool: output read after Result.Release")

// spooler keeps the output of a one-shot pool's attempts. It is shared by
// the runners, the results and the garbage collector's cleanups.
type spooler struct {
	limit int    // bytes of each stream kept in memory; more spills
	dir   string // where the spill file is made

	mu    sync.Mutex // guards what follows
	f     *os.File   // the spill file; nil until made, and after it is closed
	end   int64      // the file's blocks are [0, end)
	free  []int64    // offsets of blocks given back, to reuse
	live  int        // blocks in use
	users int        // runners that may still spill; with none and no live block, f is closed
	// collectAt is the number of blocks in use at which alloc runs the
	// garbage collector.
	collectAt int
}

// newSpooler returns the spooler of a one-shot pool with cfg, and makes its
// spill file now (while file descriptors are plentiful); when that fails,
// the first stream to spill tries again and reports why.
func newSpooler(cfg *Config) *spooler {
	limit := cfg.OutputInMemory
	if limit == 0 {
		limit = min(max(outputMemory/int64(2*cfg.MaxPending), minStreamMemory), maxStreamMemory)
	}
	s := &spooler{limit: int(min(limit, 1<<40)), dir: os.TempDir(), users: cfg.Workers, collectAt: collectEvery}
	s.mu.Lock()
	_ = s.openLocked()
	s.mu.Unlock()
	return s
}

func (s *spooler) openLocked() error {
	if s.f != nil {
		return nil
	}
	f, err := createSpillFile(s.dir)
	if err != nil {
		return fmt.Errorf("creating a temporary file in %s: %w", s.dir, err)
	}
	s.f = f
	return nil
}

// alloc adds a block of the spill file to b, making the file if need be.
func (s *spooler) alloc(b *spillBlocks) error {
	s.mu.Lock()
	if err := s.openLocked(); err != nil {
		s.mu.Unlock()
		return err
	}
	b.f = s.f
	if n := len(s.free); n > 0 {
		b.offs = append(b.offs, s.free[n-1])
		s.free = s.free[:n-1]
	} else {
		b.offs = append(b.offs, s.end)
		s.end += spillBlock
	}
	s.live++
	collect := s.live >= s.collectAt
	if collect {
		s.collectAt = s.live + collectEvery
	}
	s.mu.Unlock()
	if collect {
		runtime.GC()
	}
	return nil
}

// release gives b's blocks back, once.
func (s *spooler) release(b *spillBlocks) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if b.freed.Swap(true) || len(b.offs) == 0 {
		return
	}
	s.live -= len(b.offs)
	s.collectAt = min(s.collectAt, s.live+collectEvery)
	if s.live == 0 {
		// Nothing is in the file: start it afresh, empty.
		s.free, s.end = s.free[:0], 0
		if s.users == 0 {
			s.closeLocked()
		} else {
			_ = s.f.Truncate(0)
		}
		return
	}
	for _, off := range b.offs {
		punchHole(s.f, off, spillBlock)
		s.free = append(s.free, off)
	}
}

// leave says that a runner will spill no more. The last one to leave
// closes the spill file once every block has been given back.
func (s *spooler) leave() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.users--
	if s.users == 0 && s.live == 0 {
		s.closeLocked()
	}
}

func (s *spooler) closeLocked() {
	if s.f != nil {
		s.f.Close()
		s.f = nil
	}
}

// newOutput returns the streams for one attempt.
func (s *spooler) newOutput() *attemptOutput {
	o := &attemptOutput{lost: make(chan struct{})}
	o.stdout = &stream{sp: s, name: "stdout", lost: o.markLost}
	o.stderr = &stream{sp: s, name: "stderr", lost: o.markLost}
	return o
}

// attemptOutput is the stdout and stderr of one one-shot attempt.
type attemptOutput struct {
	stdout, stderr *stream
	lost           chan struct{} // closed when a stream could not be kept
	lostOnce       sync.Once
}

func (o *attemptOutput) markLost() { o.lostOnce.Do(func() { close(o.lost) }) }

// lostMessage says which stream could not be kept, and why.
func (o *attemptOutput) lostMessage() string {
	for _, st := range []*stream{o.stdout, o.stderr} {
		if st.err != nil {
			return fmt.Sprintf("its %s (over %s) could not be kept: %v; the job was stopped",
				st.name, bytesize.Format(int64(st.sp.limit)), st.err)
		}
	}
	return ""
}

// release gives back what o holds in the spill file. It may be called more
// than once, and on nil.
func (o *attemptOutput) release() {
	if o == nil {
		return
	}
	o.stdout.release()
	o.stderr.release()
}

// stream is one output stream of one attempt. The worker's copier goroutine
// writes it until the process's CloseIO returns; it is only read after.
type stream struct {
	sp   *spooler
	name string // "stdout" or "stderr", for messages
	lost func()

	mem    []byte       // the stream while it fits in memory
	blocks *spillBlocks // the stream once it spilled, or nil
	size   int64        // bytes kept, in mem or in blocks
	err    error        // why the stream could not be kept; what came after is lost
}

// spillBlocks are the blocks of the spill file that one stream holds. The
// spooler's lock guards f and offs as blocks are added and given back;
// readers use them without it, once the stream is written.
type spillBlocks struct {
	sp    *spooler
	f     *os.File
	offs  []int64
	freed atomic.Bool // set once the blocks are given back
}

func (b *spillBlocks) release() { b.sp.release(b) }

// Write keeps p. It never fails: after an error the stream is lost, the
// attempt is told, and what comes after is discarded, so that the worker's
// pipe keeps draining until the worker is stopped.
func (st *stream) Write(p []byte) (int, error) {
	n := len(p)
	if st.err != nil {
		return n, nil
	}
	if st.blocks == nil {
		if len(st.mem)+len(p) <= st.sp.limit {
			st.mem = append(st.mem, p...)
			st.size += int64(n)
			return n, nil
		}
		// Into the spill file, from its start: the memory goes at once.
		st.blocks = &spillBlocks{sp: st.sp}
		runtime.AddCleanup(st, (*spillBlocks).release, st.blocks)
		mem := st.mem
		st.mem, st.size = nil, 0
		if err := st.spill(mem); err != nil {
			st.fail(err)
			return n, nil
		}
	}
	if err := st.spill(p); err != nil {
		st.fail(err)
	}
	return n, nil
}

func (st *stream) spill(p []byte) error {
	b := st.blocks
	for len(p) > 0 {
		at := st.size % spillBlock
		if at == 0 {
			if err := st.sp.alloc(b); err != nil {
				return err
			}
		}
		k := int(min(int64(len(p)), spillBlock-at))
		if _, err := b.f.WriteAt(p[:k], b.offs[len(b.offs)-1]+at); err != nil {
			return fmt.Errorf("writing a temporary file in %s: %w", st.sp.dir, unwrapPath(err))
		}
		st.size += int64(k)
		p = p[k:]
	}
	return nil
}

func (st *stream) fail(err error) {
	st.err = err
	st.mem = nil
	st.lost()
}

// spilled reports whether the stream went to the spill file.
func (st *stream) spilled() bool { return st != nil && st.blocks != nil }

// bytes returns the stream when it is in memory, and nil otherwise.
func (st *stream) bytes() []byte {
	if st.blocks != nil || st.err != nil {
		return nil
	}
	return st.mem
}

func (st *stream) release() {
	if st != nil && st.blocks != nil {
		st.blocks.release()
	}
}

// unwrapPath drops the unlinked file's name, which says nothing to a
// user, from an error about it.
func unwrapPath(err error) error {
	var pe *os.PathError
	if errors.As(err, &pe) {
		return pe.Err
	}
	return err
}

// streamReader reads a spilled stream.
type streamReader struct {
	st  *stream
	off int64
}

// Len returns how many bytes are left to read.
func (r *streamReader) Len() int { return int(r.st.size - r.off) }

func (r *streamReader) Read(p []byte) (int, error) {
	st := r.st
	if r.off >= st.size {
		return 0, io.EOF
	}
	if st.blocks.freed.Load() {
		return 0, errReleased
	}
	at := r.off % spillBlock
	k := int(min(int64(len(p)), spillBlock-at, st.size-r.off))
	n, err := st.blocks.f.ReadAt(p[:k], st.blocks.offs[r.off/spillBlock]+at)
	r.off += int64(n)
	if n == k {
		err = nil
	} else if err == nil || err == io.EOF {
		err = fmt.Errorf("pool: reading spilled output: %w", io.ErrUnexpectedEOF)
	}
	return n, err
}

// putOutput gives r the output of t's last one-shot attempt, if any.
func (t *task) putOutput(r *Result) {
	if t.out == nil {
		return
	}
	r.out = t.out
	r.Output, r.Stderr = t.out.stdout.bytes(), t.out.stderr.bytes()
}
