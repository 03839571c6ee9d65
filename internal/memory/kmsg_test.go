package memory

import (
	"fmt"
	"os"
	"slices"
	"sync"
	"syscall"
	"testing"
	"time"
)

func TestParseOOMRecord(t *testing.T) {
	for _, tc := range []struct {
		name     string
		rec      string
		wantPid  int
		wantComm string
	}{
		{
			name:    "memcg kill",
			rec:     "3,419,8314717359,-;Memory cgroup out of memory: Killed process 5935 (python3) total-vm:78016kB, anon-rss:65280kB, file-rss:6620kB, shmem-rss:0kB, UID:0 pgtables:196kB oom_score_adj:0\n",
			wantPid: 5935, wantComm: "python3",
		},
		{
			name:    "global kill",
			rec:     "3,1,2,-;Out of memory: Killed process 1234 (my worker) total-vm:1kB\n",
			wantPid: 1234, wantComm: "my worker",
		},
		{
			name:    "summary line",
			rec:     "6,418,8314717347,-;oom-kill:constraint=CONSTRAINT_MEMCG,nodemask=(null),cpuset=/,mems_allowed=0,oom_memcg=/a,task_memcg=/a/b,task=python3,pid=5935,uid=0\n",
			wantPid: 5935, wantComm: "python3",
		},
		{
			name:    "summary with a task name that looks like fields",
			rec:     "6,1,2,-;oom-kill:constraint=CONSTRAINT_NONE,oom_memcg=/x,pid=7,uid=1,task_memcg=/,task=a,pid=9,uid=0,pid=42,uid=1000\n",
			wantPid: 42, wantComm: "a,pid=9,uid=0",
		},
		{
			name:    "before 4.19",
			rec:     "3,5,6,-;Killed process 77 (java) total-vm:10kB, anon-rss:1kB, file-rss:0kB\n",
			wantPid: 77, wantComm: "java",
		},
		{
			name:    "sharing memory, before 5.1",
			rec:     "6,5,6,-;Kill process 78 (java) sharing same memory\n",
			wantPid: 78, wantComm: "java",
		},
		{
			name:    "continuation lines",
			rec:     "3,7,8,-;Out of memory: Killed process 99 (x) total-vm:1kB\n SUBSYSTEM=memory\n DEVICE=+x:y\n",
			wantPid: 99, wantComm: "x",
		},
		{name: "old choice, not the kill", rec: "3,5,6,-;Out of memory: Kill process 76 (java) score 900 or sacrifice child\n"},
		{name: "invoked", rec: "4,341,8314716777,-;python3 invoked oom-killer: gfp_mask=0xcc0(GFP_KERNEL), order=0, oom_score_adj=0\n"},
		{name: "reaper", rec: "6,9,9,-;oom_reaper: reaped process 5935 (python3), now anon-rss:0kB\n"},
		{name: "user space", rec: "14,9,9,-;Out of memory: Killed process 1 (init) total-vm:1kB\n"},
		{name: "no prefix", rec: "Out of memory: Killed process 5 (x)\n"},
		{name: "unrelated", rec: "6,10,11,-;eth0: link up\n"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			v, ok := parseOOMRecord([]byte(tc.rec))
			if v.PID != tc.wantPid || v.Comm != tc.wantComm || ok != (tc.wantPid != 0) {
				t.Errorf("parseOOMRecord(%q) = %+v, %v, want %d (%s)", tc.rec, v, ok, tc.wantPid, tc.wantComm)
			}
		})
	}
}

// fakeKmsg serves records one per read, as /dev/kmsg does: what add logs
// stays there until it is read. A nil record reads as EPIPE.
type fakeKmsg struct {
	mu      sync.Mutex
	pending [][]byte // logged and not read yet; guarded by mu
	logged  chan struct{}
	closed  chan struct{}
	// run, when not nil, holds back await (the reading goroutine) until
	// it is closed, as a busy scheduler may.
	run  chan struct{}
	once sync.Once
}

func newFakeKmsg() *fakeKmsg {
	return &fakeKmsg{logged: make(chan struct{}, 1), closed: make(chan struct{})}
}

// add logs a record.
func (f *fakeKmsg) add(rec []byte) {
	f.mu.Lock()
	f.pending = append(f.pending, rec)
	f.mu.Unlock()
	select {
	case f.logged <- struct{}{}:
	default:
	}
}

func (f *fakeKmsg) readNow(b []byte) (int, error) {
	select {
	case <-f.closed:
		return 0, os.ErrClosed
	default:
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(f.pending) == 0 {
		return 0, errNoRecord
	}
	r := f.pending[0]
	f.pending = f.pending[1:]
	if r == nil {
		return 0, syscall.EPIPE
	}
	return copy(b, r), nil
}

func (f *fakeKmsg) await(try func() bool) error {
	if f.run != nil {
		select {
		case <-f.run:
		case <-f.closed:
			return os.ErrClosed
		}
	}
	for !try() {
		select {
		case <-f.logged:
		case <-f.closed:
			return os.ErrClosed
		}
	}
	return nil
}

func (f *fakeKmsg) Close() error {
	f.once.Do(func() { close(f.closed) })
	return nil
}

func (f *fakeKmsg) kill(pid int) {
	f.add(fmt.Appendf(nil, "3,1,1,-;Out of memory: Killed process %d (w) total-vm:1kB\n", pid))
}

// fakeClock is a clock tests move by hand.
type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *fakeClock) now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *fakeClock) advance(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

func TestOOMLog(t *testing.T) {
	src := newFakeKmsg()
	clock := &fakeClock{t: time.Unix(1e9, 0)}
	l := newOOMLog(src, clock.now, nil)
	defer l.Close()

	src.add(nil) // overwritten records: reading goes on
	src.kill(100)
	if !l.Killed(100, 0) {
		t.Errorf("Killed(100) = false after its record, want true")
	}
	if l.Killed(101, 0) {
		t.Errorf("Killed(101, 0) = true, want false")
	}

	// A record that comes while Killed waits.
	got := make(chan bool)
	go func() { got <- l.Killed(200, 10*time.Second) }()
	src.kill(200)
	if !<-got {
		t.Errorf("Killed(200) = false for a record that came while waiting, want true")
	}

	// Records age out, so that a reused pid is not blamed.
	start := clock.now()
	clock.advance(oomRecordTTL + time.Second)
	if l.Killed(100, 0) {
		t.Errorf("Killed(100) = true after %v, want false", oomRecordTTL)
	}
	if !l.KilledSince(100, start, 0) {
		t.Errorf("KilledSince(100, before its record) = false, want true")
	}
	if l.KilledSince(100, clock.now(), 0) {
		t.Errorf("KilledSince(100, after its record) = true, want false")
	}
}

// TestOOMLogCatchUp: a lookup finds a kill logged before it began without
// a wait, though the reading goroutine has not run since (a loaded
// machine), and one logged while it waits by the end of its wait: it
// reads what the log holds itself. Each record is recorded once.
func TestOOMLogCatchUp(t *testing.T) {
	src := newFakeKmsg()
	src.run = make(chan struct{}) // the reading goroutine is held back
	l := newOOMLog(src, time.Now, nil)
	defer l.Close()
	since := time.Now()

	src.kill(300)
	src.add(nil) // overwritten records
	src.kill(301)
	if !l.KilledSince(300, since, 0) {
		t.Errorf("KilledSince(300, 0) = false for a record logged before, want true")
	}
	if !l.Killed(301, 0) {
		t.Errorf("Killed(301, 0) = false for a record logged before, want true")
	}
	if l.Killed(302, 0) {
		t.Errorf("Killed(302, 0) = true, want false")
	}

	got := make(chan bool)
	go func() { got <- l.Killed(303, 200*time.Millisecond) }()
	time.Sleep(20 * time.Millisecond)
	src.kill(303)
	if !<-got {
		t.Errorf("Killed(303, 200ms) = false for a record logged while it waited, want true")
	}

	close(src.run)
	src.kill(304)
	if !l.Killed(304, 10*time.Second) {
		t.Errorf("Killed(304) = false once the reading goroutine runs, want true")
	}
	l.mu.Lock()
	order := slices.Clone(l.order)
	l.mu.Unlock()
	if want := []int{300, 301, 303, 304}; !slices.Equal(order, want) {
		t.Errorf("OOMLog recorded %v, want %v", order, want)
	}
}

func TestOOMLogBounded(t *testing.T) {
	src := newFakeKmsg()
	l := newOOMLog(src, time.Now, nil)
	defer l.Close()
	for pid := 1; pid <= maxOOMRecords+1; pid++ {
		src.kill(pid)
	}
	src.kill(1) // a second kill of a forgotten pid brings it back
	if l.Killed(2, 0) {
		t.Errorf("Killed(2) = true after %d newer records, want false", maxOOMRecords)
	}
	if !l.Killed(3, 0) || !l.Killed(1, 0) || !l.Killed(maxOOMRecords+1, 0) {
		t.Errorf("Killed(3), Killed(1), Killed(%d) = false, want true", maxOOMRecords+1)
	}
	l.mu.Lock()
	n, m := len(l.seen), len(l.order)
	l.mu.Unlock()
	if n != maxOOMRecords || m != maxOOMRecords {
		t.Errorf("OOMLog holds %d pids in %d slots, want %d", n, m, maxOOMRecords)
	}
}

func TestOOMLogClose(t *testing.T) {
	src := newFakeKmsg()
	l := newOOMLog(src, time.Now, nil)
	got := make(chan bool)
	go func() { got <- l.Killed(7, time.Hour) }()
	if err := l.Close(); err != nil {
		t.Errorf("Close() = %v", err)
	}
	select {
	case k := <-got:
		if k {
			t.Errorf("Killed(7) = true, want false")
		}
	case <-time.After(10 * time.Second):
		t.Fatalf("Killed still waits after Close")
	}
	if err := l.Close(); err != nil {
		t.Errorf("second Close() = %v", err)
	}
}
