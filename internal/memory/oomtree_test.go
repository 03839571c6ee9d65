package memory

import (
	"testing"
	"time"
)

func TestTreeHolds(t *testing.T) {
	t0 := time.Unix(1e9, 0)
	at := func(d time.Duration) time.Time { return t0.Add(d) }
	// The worker 10 (started at tick 500), its child 11 (tick 510), and
	// 12 (tick 520), seen gone a second after t0.
	var x [16]byte
	copy(x[:], "x")
	tree := Tree{members: map[int]treeMember{
		10: {start: 500, seen: t0},
		11: {start: 510, comm: x, seen: at(100 * time.Millisecond)},
		12: {start: 520, comm: x, seen: at(100 * time.Millisecond), gone: at(time.Second)},
		13: {start: 530, seen: at(100 * time.Millisecond)},
	}}
	kill := func(pid int, read time.Duration, lineage ...procID) oomRecord {
		return oomRecord{victim: Victim{PID: pid, Comm: "x"}, at: at(read), lineage: lineage}
	}
	outside := procID{pid: 1, start: 1}
	tests := []struct {
		name  string
		tree  Tree
		r     oomRecord
		since time.Duration
		want  bool
	}{
		{name: "the worker", tree: tree, r: kill(10, time.Second, procID{10, 500}, outside), want: true},
		{name: "its child", tree: tree, r: kill(11, time.Second, procID{11, 510}, procID{10, 500}, outside), want: true},
		{name: "a grandchild no scan saw", tree: tree,
			r: kill(40, time.Second, procID{40, 900}, procID{11, 510}, procID{10, 500}, outside), want: true},
		{name: "an escaped process seen in the tree", tree: tree,
			r: kill(11, time.Second, procID{11, 510}, outside), want: true},
		{name: "another process", tree: tree, r: kill(50, time.Second, procID{50, 900}, outside)},
		{name: "another process with a child's pid", tree: tree,
			r: kill(11, time.Second, procID{11, 700}, outside)},
		{name: "a child of another process with the worker's pid", tree: tree,
			r: kill(60, time.Second, procID{60, 900}, procID{10, 400}, outside)},
		{name: "before the window", tree: tree, since: 2 * time.Second,
			r: kill(11, time.Second, procID{11, 510}, procID{10, 500}, outside)},
		{name: "the empty tree", r: kill(11, time.Second, procID{11, 510}, outside)},

		// Without a lineage, the victim was reaped before the record was
		// read: the pid and when it was read decide.
		{name: "reaped child", tree: tree, r: kill(11, time.Second), want: true},
		{name: "reaped child, seen gone", tree: tree, r: kill(12, time.Second+goneSlack), want: true},
		{name: "a pid that was the tree's long ago", tree: tree, r: kill(12, 2*time.Second+goneSlack)},
		{name: "a pid the tree took after the read", tree: tree, r: kill(11, 50*time.Millisecond)},
		{name: "reaped, not the tree's", tree: tree, r: kill(14, time.Second)},
		{name: "reaped, another name", tree: tree,
			r: oomRecord{victim: Victim{PID: 11, Comm: "y"}, at: at(time.Second)}},
		{name: "reaped, name not seen", tree: tree, r: kill(13, time.Second), want: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := tt.tree.holds(tt.r, at(tt.since)); got != tt.want {
				t.Errorf("holds(%+v) = %v, want %v", tt.r, got, tt.want)
			}
		})
	}
}

// TestOOMLogTree: KilledInTree finds a kill of a tree's process among the
// records, keeping the lineage read with the first of a kill's two records
// when the victim is gone by the second.
func TestOOMLogTree(t *testing.T) {
	src := newFakeKmsg()
	clock := &fakeClock{t: time.Unix(1e9, 0)}
	reads := 0
	lineage := func(pid int) []procID {
		reads++
		if pid == 11 && reads == 1 {
			return []procID{{11, 510}, {10, 500}, {1, 1}}
		}
		return nil // reaped
	}
	l := newOOMLog(src, clock.now, lineage)
	defer l.Close()
	since := clock.now()
	tree := Tree{members: map[int]treeMember{10: {start: 500, seen: since}}}

	src.add([]byte("6,1,1,-;oom-kill:constraint=CONSTRAINT_MEMCG,task=python3,pid=11,uid=0\n"))
	src.add([]byte("3,2,2,-;Memory cgroup out of memory: Killed process 11 (python3) total-vm:1kB\n"))
	src.kill(12) // another process, reaped before it was read
	if v, ok := l.KilledInTree(tree, since, 10*time.Second); !ok || v != (Victim{PID: 11, Comm: "python3"}) {
		t.Errorf("KilledInTree() = %+v, %v; want 11 (python3)", v, ok)
	}
	if v, ok := l.KilledInTree(tree, clock.now().Add(time.Nanosecond), 0); ok {
		t.Errorf("KilledInTree(after the records) = %+v, true; want false", v)
	}
	if v, ok := l.KilledInTree(Tree{}, since, 0); ok {
		t.Errorf("KilledInTree(empty tree) = %+v, true; want false", v)
	}
}
