package worker

import (
	"encoding/binary"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/safepool/safepool/internal/protocol"
)

// TestPagePaused: the time paused that the supervisor adds to a page is
// what the worker reads in its own mapping, in all, and leaves the
// running-item mark alone.
func TestPagePaused(t *testing.T) {
	f, m, err := newPage()
	if err != nil {
		t.Skipf("no running-item page here: %v", err)
	}
	defer f.Close()
	defer freePage(m)
	// The worker's mapping, as it makes it from the descriptor it gets.
	w, err := unix.Mmap(int(f.Fd()), 0, protocol.PageSize, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Munmap(w)
	binary.NativeEndian.PutUint64(w[protocol.PageIDOff:], 7)
	binary.NativeEndian.PutUint32(w[protocol.PagePosOff:], 3)
	addPaused(m, 1500*time.Millisecond)
	addPaused(m, 0)
	addPaused(m, 250*time.Millisecond)
	if got, want := binary.NativeEndian.Uint64(w[protocol.PagePausedOff:]), uint64(1750*time.Millisecond); got != want {
		t.Errorf("time paused = %d ns, want %d", got, want)
	}
	if mark, ok := readPage(m); !ok || mark != (pageMark{id: 7, pos: 3}) {
		t.Errorf("readPage = %+v, %v, want {7 3}, true", mark, ok)
	}
}
