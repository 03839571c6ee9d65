package cluster

import (
	"testing"
	"time"

	"github.com/safepool/safepool/pool"
)

func TestClasses(t *testing.T) {
	const mib = 1 << 20
	for _, tc := range []struct {
		need int64
		want int
	}{
		{0, 0}, {1, 0}, {64 * mib, 0}, {64*mib + 1, 1}, {128 * mib, 1}, {200 * mib, 2}, {1 << 62, MaxClass},
	} {
		if got := ClassOf(tc.need); got != tc.want {
			t.Errorf("ClassOf(%d) = %d, want %d", tc.need, got, tc.want)
		}
	}
	for _, tc := range []struct {
		capacity int64
		want     int
	}{
		{0, 0}, {32 * mib, 0}, {64 * mib, 0}, {100 * mib, 0}, {128 * mib, 1}, {512 * mib, 3}, {600 * mib, 3},
	} {
		if got := FitClass(tc.capacity); got != tc.want {
			t.Errorf("FitClass(%d) = %d, want %d", tc.capacity, got, tc.want)
		}
	}
	// Every need an agent fits goes to a class it pulls from, and a need
	// just above its capacity does not.
	for _, c := range []int64{64 * mib, 100 * mib, 512 * mib, 3 << 30} {
		if ClassOf(c+1) <= FitClass(c) {
			t.Errorf("capacity %d: ClassOf(capacity+1) = %d, within FitClass = %d", c, ClassOf(c+1), FitClass(c))
		}
	}
}

func TestDecide(t *testing.T) {
	const mib = 1 << 20
	death := AttemptRecord{Cause: "signal:SIGKILL"}
	oom := AttemptRecord{Cause: pool.CauseOOM}
	retry2 := &RunSpec{OnWorkerDeath: pool.Retry, Retries: 2}
	skip := &RunSpec{OnWorkerDeath: pool.Skip}
	small := placement{capacity: 64 * mib, largestClass: 3, largestCap: 512 * mib}
	largest := placement{capacity: 512 * mib, largestClass: 3, largestCap: 512 * mib}
	for _, tc := range []struct {
		name  string
		state pool.State
		cause pool.Cause
		all   []AttemptRecord
		spec  *RunSpec
		pl    placement
		want  decision
	}{
		{"done", pool.Done, "", nil, skip, small, decision{move: moveRecord, state: pool.Done}},
		{"cancelled: handed back", pool.Cancelled, pool.CauseCancelled, nil, retry2, small, decision{move: moveRelease}},
		{"oom on a small agent: moves up", pool.Failed, pool.CauseOOM, []AttemptRecord{oom}, skip, small, decision{move: moveUp, need: 64*mib + 1}},
		{"poison on a small agent: moves up", pool.Poison, pool.CauseOOM, []AttemptRecord{oom}, skip, small, decision{move: moveUp, need: 64*mib + 1}},
		{"oom on an agent below class 0's bound: moves a class up", pool.Failed, pool.CauseOOM, []AttemptRecord{oom}, skip,
			placement{capacity: 32 * mib, largestClass: 3, largestCap: 512 * mib}, decision{move: moveUp, need: 64*mib + 1}},
		{"oom on the only agent, below class 0's bound: poison", pool.Failed, pool.CauseOOM, []AttemptRecord{oom}, skip,
			placement{capacity: 32 * mib, largestClass: 0, largestCap: 32 * mib},
			decision{move: moveRecord, state: pool.Poison, note: "killed for memory with 32 MiB, on the largest agent"}},
		{"oom on the largest: poison", pool.Failed, pool.CauseOOM, []AttemptRecord{oom}, skip, largest,
			decision{move: moveRecord, state: pool.Poison, note: "killed for memory with 512 MiB, on the largest agent"}},
		{"death, retries left: nak", pool.Failed, "signal:SIGKILL", []AttemptRecord{death}, retry2, small, decision{move: moveNak, delay: 50 * time.Millisecond}},
		{"second death: nak, longer", pool.Failed, "signal:SIGKILL", []AttemptRecord{death, death}, retry2, small, decision{move: moveNak, delay: 100 * time.Millisecond}},
		{"memory kills do not count", pool.Failed, "signal:SIGKILL", []AttemptRecord{oom, oom, death}, retry2, small, decision{move: moveNak, delay: 50 * time.Millisecond}},
		{"death, no retries left: failed", pool.Failed, "signal:SIGKILL", []AttemptRecord{death, death, death}, retry2, small, decision{move: moveRecord, state: pool.Failed}},
		{"death under skip: failed", pool.Failed, "exit:3", []AttemptRecord{death}, skip, small, decision{move: moveRecord, state: pool.Failed}},
		{"task error: failed", pool.Failed, pool.CauseTaskError, nil, retry2, small, decision{move: moveRecord, state: pool.Failed}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := decide(tc.state, tc.cause, 0, tc.all, tc.spec, tc.pl)
			if got != tc.want {
				t.Errorf("decide = %+v, want %+v", got, tc.want)
			}
		})
	}
}
