package memory

import (
	"os"
	"sync"
	"testing"
	"time"
)

// heldKmsg is /dev/kmsg whose await, the OOMLog's reading goroutine, is
// held back until run is closed, as on a machine too busy to run it.
type heldKmsg struct {
	*kmsgFile
	run    chan struct{}
	closed chan struct{}
	once   sync.Once
}

func (h *heldKmsg) await(try func() bool) error {
	select {
	case <-h.run:
	case <-h.closed:
		return os.ErrClosed
	}
	return h.kmsgFile.await(try)
}

func (h *heldKmsg) Close() error {
	h.once.Do(func() { close(h.closed) })
	return h.kmsgFile.Close()
}

// TestOOMLogCatchUpKernel: the OOM killer takes a process while the
// OOMLog's reading goroutine is held back; once its parent has seen it
// die, a lookup with no wait finds the kill, reading the record from the
// kernel log itself.
func TestOOMLogCatchUpKernel(t *testing.T) {
	requireKernelLog(t) // skips where /dev/kmsg cannot be read
	g, err := requireCgroups(t).NewGroup("held-hog", 64*mib)
	if err != nil {
		t.Fatal(err)
	}
	k, err := openKmsg()
	if err != nil {
		t.Fatal(err)
	}
	h := &heldKmsg{kmsgFile: k, run: make(chan struct{}), closed: make(chan struct{})}
	l := newOOMLog(h, time.Now, procLineage)
	defer l.Close()

	since := time.Now()
	_, child, out, end := watchedParent(t, "cghog", g.Path())
	defer end()
	if got := readEnded(t, out); got != "killed" {
		t.Fatalf("the child ended %q, want killed (SIGKILL)", got)
	}
	l.mu.Lock()
	read := len(l.seen)
	l.mu.Unlock()
	if read != 0 {
		t.Fatalf("the held reading goroutine recorded %d kills", read)
	}
	if !l.KilledSince(child, since, 0) {
		t.Errorf("KilledSince(%d, 0) = false for a kill logged before, want true", child)
	}
	close(h.run)
}
