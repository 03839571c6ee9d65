package pool

import (
	"strings"
	"testing"
	"time"
)

// TestJudgeAlone checks what an OOM kill of an attempt that ran alone
// shows, by what it needed, how high it peaked and what processes other
// than the workers held throughout it: poison only when they left it the
// whole budget; failed, crowded out, when they left it less and it had all
// of that; else a retry with more.
func TestJudgeAlone(t *testing.T) {
	const mib = 1 << 20
	// A 600 MiB container on a 16 GiB host: a budget of 536 MiB.
	container := &governor{host: 16 << 30, hostBudget: 14 << 30, cg: 600 * mib, cgBudget: 536 * mib, budget: 536 * mib}
	// No cgroup: the budget is what was available at start less a
	// reserve, 2 GiB of a 16 GiB host.
	host := &governor{host: 16 << 30, hostBudget: 14 << 30, availBudget: 2 << 30, budget: 2 << 30}
	// A budget given, far below what the walls leave.
	given := &governor{host: 16 << 30, hostBudget: 14 << 30, cg: 8 << 30, cgBudget: 7 << 30, userBudget: 1 << 30, budget: 1 << 30}
	tests := []struct {
		name           string
		g              *governor
		need, peak     int64
		others         others
		whole, crowded bool
	}{
		{"peak reached the budget", container, 0, 530 * mib, others{cg: 20 * mib, host: 1 << 30}, true, false},
		{"needed the budget, others held the reserve", container, 536 * mib, 500 * mib, others{cg: 60 * mib, host: 1 << 30}, true, false},
		{"needed the budget, others held more", container, 536 * mib, 220 * mib, others{cg: 369 * mib, host: 1 << 30}, false, true},
		// The client's 369 MiB leave a capacity of 167 MiB: a need of 240
		// MiB was all of it.
		{"needed all that others left", container, 240 * mib, 220 * mib, others{cg: 369 * mib, host: 1 << 30}, false, true},
		{"needed less than others left", container, 100 * mib, 220 * mib, others{cg: 369 * mib, host: 1 << 30}, false, false},
		{"first attempt, others held much", container, 0, 220 * mib, others{cg: 369 * mib, host: 1 << 30}, false, false},
		// All the capacity, but others held no more than the reserve: it
		// may fit with the whole budget.
		{"needed the capacity, not the budget", container, 520 * mib, 500 * mib, others{cg: 20 * mib, host: 1 << 30}, false, false},
		{"host: needed the budget, others grew", host, 2 << 30, 1 << 30, others{host: 15 << 30}, false, true},
		{"host: needed the budget, others as at start", host, 2 << 30, 1 << 30, others{host: 13 << 30}, true, false},
		{"budget given: needed it", given, 1 << 30, 900 * mib, others{cg: 2 << 30, host: 4 << 30}, true, false},
		{"budget given: others left less", given, 1 << 30, 700 * mib, others{cg: 7300 * mib, host: 4 << 30}, false, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			task := &task{need: tt.need, others: tt.others}
			whole, crowded := tt.g.judgeAlone(task, tt.peak)
			if whole != tt.whole || crowded != tt.crowded {
				t.Errorf("judgeAlone(need %d MiB, peak %d MiB, others %+v) = whole %v, crowded %v, want %v, %v",
					tt.need/mib, tt.peak/mib, tt.others, whole, crowded, tt.whole, tt.crowded)
			}
		})
	}
}

// TestCrowdedMessage checks that the message of a task crowded out names
// the wall, what others held within it, what that left, and the budget.
func TestCrowdedMessage(t *testing.T) {
	const mib = 1 << 20
	g := &governor{host: 16 << 30, hostBudget: 14 << 30, cg: 600 * mib, cgBudget: 536 * mib, budget: 536 * mib}
	got := g.crowdedMessage(Attempt{PeakRSS: 220 * mib}, others{cg: 369 * mib, host: 1 << 30})
	want := "killed by the OOM killer while running alone (peak 220 MiB): processes other than the pool's workers held 369 MiB of the enclosing cgroup's limit of 600 MiB, which left it 231 MiB, less than it needs; it may fit within the memory budget of 536 MiB when they hold less"
	if got != want {
		t.Errorf("crowdedMessage() = %q, want %q", got, want)
	}
	// The host is the tighter wall.
	got = g.crowdedMessage(Attempt{PeakRSS: 100 * mib}, others{cg: 100 * mib, host: 16<<30 - 200*mib})
	if !strings.Contains(got, "of the host's memory of 16 GiB, which left it 200 MiB") {
		t.Errorf("crowdedMessage() = %q, want it to name the host", got)
	}
}

// TestReservationOthers checks what processes other than the workers held
// throughout an attempt, as the samples say: the least, over the reading
// at the reservation and the samples until othersSettle before its end;
// the samples just before it may take a dying worker's memory, freed
// before its watch saw it, for others freeing theirs.
func TestReservationOthers(t *testing.T) {
	const mib = 1 << 20
	start := time.Now()
	at := func(ms int) time.Time { return start.Add(time.Duration(ms) * time.Millisecond) }
	r := &reservation{others: others{cg: 370 * mib, host: 2000 * mib}}
	// As the worker grows, its watch lags behind: others look larger.
	for ms := 100; ms <= 1000; ms += 100 {
		r.seen(at(ms), others{cg: 450 * mib, host: 2080 * mib})
	}
	// It dies: its memory is freed before its watch's next sample.
	r.seen(at(1100), others{cg: 150 * mib, host: 1780 * mib})
	if got, want := r.settle(at(1150)), (others{cg: 370 * mib, host: 2000 * mib}); got != want {
		t.Errorf("others at the end = %+v, want %+v (the reading at the reservation; not the dip just before the end)", got, want)
	}
	// A client that freed memory while the attempt ran, long before its end.
	r = &reservation{others: others{cg: 370 * mib}}
	r.seen(at(100), others{cg: 100 * mib})
	r.seen(at(200), others{cg: 100 * mib})
	if got := r.settle(at(1000)); got.cg != 100*mib {
		t.Errorf("others at the end = %d MiB, want 100 MiB, what the client held after it freed memory", got.cg/mib)
	}
	if len(r.recent) != 0 {
		t.Errorf("recent = %v after settling, want none", r.recent)
	}
}
