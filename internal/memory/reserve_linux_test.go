package memory

import (
	"os"
	"testing"
	"time"
)

// TestReserveGivenBackOnRecord: a log that keeps a reserve gives its pages
// back to the kernel as soon as it reads a record, before it makes
// anything of it (the resident anonymous memory of this process drops by
// about the reserve), and touches them again once no record has come for
// reserveRefill.
func TestReserveGivenBackOnRecord(t *testing.T) {
	src := newFakeKmsg()
	l := newOOMLog(src, time.Now, nil)
	defer l.Close()
	l.KeepReserve()
	l.mu.Lock()
	r := l.reserve
	l.mu.Unlock()
	if r == nil || !r.holds() {
		t.Fatal("no reserve held after KeepReserve")
	}
	anon := func() int64 {
		t.Helper()
		st, err := readStatus(os.Getpid())
		if err != nil {
			t.Fatal(err)
		}
		return st.rssAnon
	}
	before := anon()
	src.add([]byte("6,10,11,-;eth0: link up\n"))
	deadline := time.Now().Add(10 * time.Second)
	for r.holds() && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
	if r.holds() {
		t.Fatal("the reserve was not given back after a record was read")
	}
	if after := anon(); before-after < reserveSize/2 {
		t.Errorf("resident anonymous memory went from %d to %d bytes as the reserve was given back, want a drop of about %d", before, after, reserveSize)
	}
	for !r.holds() && time.Now().Before(deadline.Add(reserveRefill)) {
		time.Sleep(10 * time.Millisecond)
	}
	if !r.holds() {
		t.Errorf("the reserve was not touched again %v after the last record", reserveRefill)
	}
}
