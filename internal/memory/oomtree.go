package memory

import "time"

// A worker without a cgroup of its own has no counter of the OOM kills in
// its process tree: the kernel log names the victims by pid, and a pid
// alone does not say whose process it was. A victim is the tree's when it
// is the very process (pid and start time) that the watch saw in the tree,
// or a descendant of one, as its ancestry, read when the kill was read,
// shows. Start times guard against reuse: pid_max may be 32768, and a pid
// that the tree used may belong to anyone a moment later.

// goneSlack is how long after a watch saw a process of the tree gone a
// kill of its pid that the log reader read too late to see the victim
// still counts as the tree's. The log is read as the kill is logged, and
// the victim dies after that: a late read means a busy machine, not
// minutes. A pid would have to come round again in that time, through
// pid_max new processes, for a kill of another process to be taken for
// the tree's.
const goneSlack = 2 * time.Second

// procID names one process: its pid and its start time (clock ticks after
// boot, field 22 of /proc/PID/stat), which a later process with the same
// pid does not share.
type procID struct {
	pid   int
	start uint64
}

// Victim is a process that the kernel log says the OOM killer killed.
type Victim struct {
	// PID is its pid, as the kernel log gives it.
	PID int
	// Comm is its name as the kernel log gives it (at most 15 bytes).
	Comm string
}

// Tree is the processes a Watch has seen in a worker's process tree: the
// worker itself from its start, and each descendant from the scan that
// found it, until it has been gone for a while. The zero Tree holds
// nothing.
type Tree struct {
	members map[int]treeMember // by pid
}

// treeMember is a process of a Tree.
type treeMember struct {
	start uint64    // its start time (see procID)
	comm  [16]byte  // its name when last seen, zero-padded
	seen  time.Time // when the watch first saw it
	gone  time.Time // when the watch first found it gone; zero before
}

// named reports whether m was last seen with the name comm, or either name
// is unknown.
func (m treeMember) named(comm string) bool {
	n := 0
	for n < len(m.comm) && m.comm[n] != 0 {
		n++
	}
	return n == 0 || comm == "" || string(m.comm[:n]) == comm
}

// oomRecord is a kill read from the kernel log.
type oomRecord struct {
	victim Victim
	at     time.Time // when it was read
	// lineage is the victim and its ancestors, victim first, as /proc
	// showed them when the record was read; empty when the victim was
	// already gone (its parent had reaped it).
	lineage []procID
}

// holds reports whether r is a kill of a process of t, read at or after
// since.
func (t Tree) holds(r oomRecord, since time.Time) bool {
	if r.at.Before(since) || len(t.members) == 0 {
		return false
	}
	if len(r.lineage) > 0 {
		// The victim was still there when the kill was read: it is the
		// tree's if it, or one of its ancestors, is a process the tree
		// holds, the same process, by its start time.
		for _, p := range r.lineage {
			if m, ok := t.members[p.pid]; ok && m.start == p.start {
				return true
			}
		}
		return false
	}
	// The victim was gone before the kill was read, so no process had its
	// pid then. It was the tree's process with that pid if that one was
	// seen before the read (one seen only later started after it), had
	// not been gone long, and had the victim's name: another process would
	// have to take the pid within seconds, and have the same name.
	m, ok := t.members[r.victim.PID]
	if !ok || m.seen.After(r.at) || !m.named(r.victim.Comm) {
		return false
	}
	return m.gone.IsZero() || !r.at.After(m.gone.Add(goneSlack))
}
