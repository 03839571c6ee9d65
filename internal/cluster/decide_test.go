package cluster

import (
	"fmt"
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
	crowdedOut := AttemptRecord{Cause: pool.CauseOOM, Crowded: true}
	retry2 := &RunSpec{OnWorkerDeath: pool.Retry, Retries: 2}
	skip := &RunSpec{OnWorkerDeath: pool.Skip}
	abort := &RunSpec{OnWorkerDeath: pool.Abort}
	abort2 := &RunSpec{OnWorkerDeath: pool.Abort, Retries: 2}
	small := placement{capacity: 64 * mib, largestClass: 3, largestCap: 512 * mib}
	largest := placement{capacity: 512 * mib, largestClass: 3, largestCap: 512 * mib}
	for _, tc := range []struct {
		name    string
		state   pool.State
		cause   pool.Cause
		crowded bool
		need    int64
		all     []AttemptRecord
		spec    *RunSpec
		pl      placement
		want    decision
	}{
		{"done", pool.Done, "", false, 0, nil, skip, small, decision{move: moveRecord, state: pool.Done}},
		{"cancelled: handed back", pool.Cancelled, pool.CauseCancelled, false, 0, nil, retry2, small, decision{move: moveRelease}},
		{"oom on a small agent: moves up", pool.Failed, pool.CauseOOM, false, 0, []AttemptRecord{oom}, skip, small, decision{move: moveUp, need: 64*mib + 1}},
		{"poison on a small agent: moves up", pool.Poison, pool.CauseOOM, false, 0, []AttemptRecord{oom}, skip, small, decision{move: moveUp, need: 64*mib + 1}},
		{"oom on an agent below class 0's bound: moves a class up", pool.Failed, pool.CauseOOM, false, 0, []AttemptRecord{oom}, skip,
			placement{capacity: 32 * mib, largestClass: 3, largestCap: 512 * mib}, decision{move: moveUp, need: 64*mib + 1}},
		{"oom on the only agent, below class 0's bound: poison", pool.Failed, pool.CauseOOM, false, 0, []AttemptRecord{oom}, skip,
			placement{capacity: 32 * mib, largestClass: 0, largestCap: 32 * mib},
			decision{move: moveRecord, state: pool.Poison, note: "killed for memory with 32 MiB, on the largest agent"}},
		{"oom on the largest: poison", pool.Failed, pool.CauseOOM, false, 0, []AttemptRecord{oom}, skip, largest,
			decision{move: moveRecord, state: pool.Poison, note: "killed for memory with 512 MiB, on the largest agent"}},
		{"death, retries left: nak", pool.Failed, "signal:SIGKILL", false, 0, []AttemptRecord{death}, retry2, small, decision{move: moveNak, delay: 50 * time.Millisecond}},
		{"second death: nak, longer", pool.Failed, "signal:SIGKILL", false, 0, []AttemptRecord{death, death}, retry2, small, decision{move: moveNak, delay: 100 * time.Millisecond}},
		{"memory kills do not count", pool.Failed, "signal:SIGKILL", false, 0, []AttemptRecord{oom, oom, death}, retry2, small, decision{move: moveNak, delay: 50 * time.Millisecond}},
		{"death, no retries left: failed", pool.Failed, "signal:SIGKILL", false, 0, []AttemptRecord{death, death, death}, retry2, small, decision{move: moveRecord, state: pool.Failed}},
		{"death under skip: failed", pool.Failed, "exit:3", false, 0, []AttemptRecord{death}, skip, small, decision{move: moveRecord, state: pool.Failed}},
		{"task error: failed", pool.Failed, pool.CauseTaskError, false, 0, nil, retry2, small, decision{move: moveRecord, state: pool.Failed}},
		{"death under abort, retries left: nak", pool.Failed, "exit:3", false, 0, []AttemptRecord{death}, abort2, small, decision{move: moveNak, delay: 50 * time.Millisecond}},
		{"death under abort, no retries left: failed", pool.Failed, "exit:3", false, 0, []AttemptRecord{death, death, death}, abort2, small, decision{move: moveRecord, state: pool.Failed}},
		{"death under abort without retries: failed", pool.Failed, "exit:3", false, 0, []AttemptRecord{death}, abort, small, decision{move: moveRecord, state: pool.Failed}},

		// Crowded out: a worker death, whatever the agents' memory; the
		// need and class stay, and it never ends poison.
		{"crowded out on the largest, retries left: nak, not poison", pool.Failed, pool.CauseOOM, true, 0, []AttemptRecord{oom, crowdedOut}, retry2, largest,
			decision{move: moveNak, delay: 50 * time.Millisecond, crowded: true}},
		{"crowded out on a small agent, retries left: nak, not moved up", pool.Failed, pool.CauseOOM, true, 100 * mib, []AttemptRecord{crowdedOut}, retry2, small,
			decision{move: moveNak, delay: 50 * time.Millisecond, crowded: true}},
		{"crowded out again: counts as a death", pool.Failed, pool.CauseOOM, true, 0, []AttemptRecord{oom, crowdedOut, crowdedOut}, retry2, small,
			decision{move: moveNak, delay: 100 * time.Millisecond, crowded: true}},
		{"crowded out, no retries left: failed", pool.Failed, pool.CauseOOM, true, 0, []AttemptRecord{crowdedOut, crowdedOut, crowdedOut}, retry2, largest,
			decision{move: moveRecord, state: pool.Failed, crowded: true}},
		{"crowded out under skip: failed, not poison", pool.Failed, pool.CauseOOM, true, 0, []AttemptRecord{crowdedOut}, skip, largest,
			decision{move: moveRecord, state: pool.Failed, crowded: true}},
		{"crowded out under abort: failed", pool.Failed, pool.CauseOOM, true, 0, []AttemptRecord{crowdedOut}, abort, small,
			decision{move: moveRecord, state: pool.Failed, crowded: true}},
		{"oom after a crowding out: moves up", pool.Failed, pool.CauseOOM, false, 0, []AttemptRecord{crowdedOut, oom}, retry2, small,
			decision{move: moveUp, need: 64*mib + 1}},
		{"death after crowdings out: they count", pool.Failed, "signal:SIGKILL", false, 0, []AttemptRecord{crowdedOut, crowdedOut, death}, retry2, small,
			decision{move: moveRecord, state: pool.Failed}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := decide(tc.state, tc.cause, tc.crowded, tc.need, tc.all, tc.spec, tc.pl)
			if got != tc.want {
				t.Errorf("decide(%s, %s, crowded %v) = %+v, want %+v", tc.state, tc.cause, tc.crowded, got, tc.want)
			}
		})
	}
}

// TestJudgeCrowded follows a task crowded out on one agent after another
// through the path an agent reports it by: the local pool's Result, judge,
// the attempts noted for the next delivery (JSON in AttemptsBucket), and
// the result recorded (JSON in ResultsBucket) that the submitter renders.
// The crowding travels with each attempt, so the task is handed back with
// its need, never moved up or poison, until --retries is spent.
func TestJudgeCrowded(t *testing.T) {
	const mib = 1 << 20
	spec := &RunSpec{OnWorkerDeath: pool.Retry, Retries: 2}
	const msg = "killed by the OOM killer while running alone (peak 203 MiB): processes other than the pool's workers held 368 MiB of the enclosing cgroup's limit of 600 MiB, which left it 232 MiB, less than it needs"
	crowded := pool.Attempt{Number: 2, Cause: pool.CauseOOM, ExitCode: -1, Signal: "SIGKILL", PeakRSS: 203 * mib, Message: msg, Crowded: true}
	local := pool.Result{ID: 1, State: pool.Failed, Attempts: []pool.Attempt{
		{Number: 1, Cause: pool.CauseOOM, ExitCode: -1, Signal: "SIGKILL", PeakRSS: 150 * mib}, crowded}}
	noPlace := func() placement {
		t.Errorf("judge asked where the agents are for a task crowded out")
		return placement{capacity: 512 * mib, largestClass: 3, largestCap: 512 * mib}
	}
	var prior []AttemptRecord
	for i, want := range []decision{
		{move: moveNak, delay: 50 * time.Millisecond, crowded: true},
		{move: moveNak, delay: 100 * time.Millisecond, crowded: true},
		{move: moveRecord, state: pool.Failed, crowded: true},
	} {
		agent := fmt.Sprintf("agent%d", i+1)
		all, d := judge(agent, &local, prior, 100*mib, spec, noPlace)
		if d != want {
			t.Fatalf("delivery %d: judge = %+v, want %+v", i+1, d, want)
		}
		last := all[len(all)-1]
		if !last.Crowded || last.Agent != agent || last.Message != msg || last.Number != 2*(i+1) {
			t.Fatalf("delivery %d: last attempt = %+v, want crowded, on %s, number %d", i+1, last, agent, 2*(i+1))
		}
		// The next delivery reads the attempts this one noted.
		b, err := marshal(attemptsRecord{Attempts: all})
		if err != nil {
			t.Fatal(err)
		}
		var ar attemptsRecord
		if err := unmarshal(b, &ar); err != nil {
			t.Fatal(err)
		}
		prior = ar.Attempts
		if d.move != moveRecord {
			continue
		}
		b, err = marshal(ResultRecord{Seq: 1, State: d.state, Attempts: all})
		if err != nil {
			t.Fatal(err)
		}
		var rec ResultRecord
		if err := unmarshal(b, &rec); err != nil {
			t.Fatal(err)
		}
		r := rec.Result()
		if a := r.Attempts[len(r.Attempts)-1]; r.State != pool.Failed || a.Cause != pool.CauseOOM || !a.Crowded || a.Message != msg {
			t.Errorf("recorded result = %s, last attempt %+v, want failed, oom, crowded, with its message", r.State, a)
		}
	}

	// The same kill, not crowded out, is the task's own: it moves up.
	local.Attempts[1].Crowded = false
	placed := false
	_, d := judge("agent1", &local, nil, 0, spec, func() placement {
		placed = true
		return placement{capacity: 64 * mib, largestClass: 3, largestCap: 512 * mib}
	})
	if want := (decision{move: moveUp, need: 64*mib + 1}); d != want || !placed {
		t.Errorf("judge of an oom not crowded out = %+v (placement asked: %v), want %+v", d, placed, want)
	}
}

// TestWithLost: the deliveries lost with their agent take their place
// among a task's attempts in the order they started, each numbered as the
// charged attempt after it: a loss does not spend --retries.
func TestWithLost(t *testing.T) {
	t0 := time.Date(2026, 11, 30, 12, 0, 0, 0, time.UTC)
	at := func(s int) time.Time { return t0.Add(time.Duration(s) * time.Second) }
	lost := func(s int) AttemptRecord {
		return AttemptRecord{Agent: "b", Start: at(s), Cause: CauseAgentLost, ExitCode: -1}
	}
	charged := func(n, s int, c pool.Cause) AttemptRecord {
		return AttemptRecord{Number: n, Agent: "a", Start: at(s), Cause: c}
	}
	got := withLost([]AttemptRecord{charged(1, 10, "exit:1"), charged(2, 30, "")}, []AttemptRecord{lost(0), lost(20)})
	var seen []string
	for _, a := range got {
		seen = append(seen, fmt.Sprintf("%d:%s", a.Number, a.Cause))
	}
	if want := "[1:agent-lost 1:exit:1 2:agent-lost 2:]"; fmt.Sprint(seen) != want {
		t.Errorf("withLost = %v, want %s", seen, want)
	}
	// Lost after every charged attempt (recorded agent-lost): the number
	// the next would have had.
	got = withLost([]AttemptRecord{charged(1, 10, "exit:1")}, []AttemptRecord{lost(20), lost(40)})
	if len(got) != 3 || got[1].Number != 2 || got[2].Number != 2 {
		t.Errorf("withLost after the charged attempts = %+v, want numbers 1, 2, 2", got)
	}
	if got = withLost(nil, []AttemptRecord{lost(0)}); len(got) != 1 || got[0].Number != 1 {
		t.Errorf("withLost(nil, one loss) = %+v, want attempt 1", got)
	}
}
