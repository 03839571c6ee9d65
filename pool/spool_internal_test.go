package pool

import (
	"bytes"
	"io"
	"runtime"
	"testing"
	"time"
)

// spill writes n bytes of b to a new stream of s and returns it.
func spill(t *testing.T, s *spooler, b byte, n int) *stream {
	t.Helper()
	st := s.newOutput().stdout
	st.Write(bytes.Repeat([]byte{b}, n))
	if st.err != nil || !st.spilled() {
		t.Fatalf("stream of %d bytes: err %v, spilled %v; want it spilled", n, st.err, st.spilled())
	}
	return st
}

func (s *spooler) liveBlocks() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.live
}

// TestSpoolerCollectsDropped: streams dropped without Release give their
// blocks back, because the spooler runs the garbage collector once enough
// blocks are in use.
func TestSpoolerCollectsDropped(t *testing.T) {
	s := &spooler{limit: 10, dir: t.TempDir(), users: 1, collectAt: 4}
	defer s.leave()
	for i := 0; i < 3; i++ {
		spill(t, s, 'a', 100) // dropped at once
	}
	keep := spill(t, s, 'b', 100) // the fourth block: the collector runs
	deadline := time.Now().Add(10 * time.Second)
	for s.liveBlocks() > 1 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if n := s.liveBlocks(); n != 1 {
		t.Errorf("%d blocks in use after the dropped streams were collected, want 1", n)
	}
	if b, err := io.ReadAll(&streamReader{st: keep}); err != nil || !bytes.Equal(b, bytes.Repeat([]byte{'b'}, 100)) {
		t.Errorf("the stream kept reads %q, %v", b, err)
	}
	keep.release()
	runtime.KeepAlive(keep)
}

// TestSpoolerReuse: given-back blocks are reused, a stream spans blocks,
// and the file is emptied when no block is in use.
func TestSpoolerReuse(t *testing.T) {
	s := &spooler{limit: 10, dir: t.TempDir(), users: 1, collectAt: 1 << 20}
	defer s.leave()
	a := spill(t, s, 'a', spillBlock+5) // blocks 0 and 1
	b := spill(t, s, 'b', 100)          // block 2
	a.release()
	c := spill(t, s, 'c', 2*spillBlock) // blocks 1 and 0 again
	if s.end != 3*spillBlock {
		t.Errorf("the file has %d blocks, want 3: given-back blocks are reused", s.end/spillBlock)
	}
	for _, st := range []struct {
		st   *stream
		b    byte
		size int
	}{{b, 'b', 100}, {c, 'c', 2 * spillBlock}} {
		got, err := io.ReadAll(&streamReader{st: st.st})
		if err != nil || !bytes.Equal(got, bytes.Repeat([]byte{st.b}, st.size)) {
			t.Errorf("stream %c reads %d bytes, %v; want %d of %c", st.b, len(got), err, st.size, st.b)
		}
	}
	if _, err := io.ReadAll(&streamReader{st: a}); err != errReleased {
		t.Errorf("reading a released stream: %v, want errReleased", err)
	}
	b.release()
	c.release()
	fi, err := s.f.Stat()
	if err != nil {
		t.Fatal(err)
	}
	if fi.Size() != 0 || s.end != 0 {
		t.Errorf("with no block in use the file is %d bytes, end %d; want it empty", fi.Size(), s.end)
	}
}
