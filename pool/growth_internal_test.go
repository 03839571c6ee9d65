package pool

import (
	"testing"
	"time"

	"github.com/safepool/safepool/internal/memory"
)

// linearTrace is the trace of an attempt that grows evenly to peak over
// life, sampled every memSampleEvery.
func linearTrace(peak int64, life time.Duration) []usagePoint {
	var tr []usagePoint
	for age := memSampleEvery; age < life; age += memSampleEvery {
		tr = append(tr, usagePoint{age: age, usage: int64(float64(peak) * float64(age) / float64(life))})
	}
	return tr
}

func TestProfileOf(t *testing.T) {
	const peak = 1 << 30
	life := 2 * time.Second
	pr := profileOf(linearTrace(peak, life), life, peak)
	for k := 1; k < profileBins; k++ {
		if pr[k] < pr[k-1] {
			t.Fatalf("profile falls at bin %d: %v", k, pr)
		}
	}
	if pr[profileBins-1] != 1 {
		t.Errorf("last bin = %v, want 1", pr[profileBins-1])
	}
	// A sample counts from the previous sample's age, so bin k holds at
	// least what the attempt had by the end of bin k, and at most one
	// sample more.
	for k := 0; k < profileBins-1; k++ {
		end := float64(k+1) / profileBins
		if pr[k] < end-0.051 || pr[k] > end+float64(memSampleEvery)/float64(life)+0.001 {
			t.Errorf("bin %d = %.3f, want about %.3f", k, pr[k], end)
		}
	}
	short := profileOf(linearTrace(peak, 300*time.Millisecond), 300*time.Millisecond, peak)
	for k, f := range short {
		if f != 1 {
			t.Fatalf("with fewer than %d samples, bin %d = %v: want the peak from the start", minTrace, k, f)
		}
	}
}

func TestEndAfter(t *testing.T) {
	s := time.Second
	lives := []time.Duration{1 * s, 2 * s, 3 * s, 10 * s, 11 * s}
	for _, c := range []struct {
		age, end time.Duration
		ok       bool
	}{{0, 3 * s, true}, {1500 * time.Millisecond, 10 * s, true}, {3 * s, 11 * s, true}, {11 * s, 0, false}} {
		if end, ok := endAfter(lives, c.age); end != c.end || ok != c.ok {
			t.Errorf("endAfter(%v) = %v, %v; want %v, %v", c.age, end, ok, c.end, c.ok)
		}
	}
}

func TestAppendTraceHalves(t *testing.T) {
	var tr []usagePoint
	for i := 0; i < maxTrace+1; i++ {
		tr = appendTrace(tr, usagePoint{age: time.Duration(i), usage: int64(i % 7)})
	}
	if len(tr) != maxTrace/2+1 {
		t.Fatalf("len = %d, want %d", len(tr), maxTrace/2+1)
	}
	if tr[0].age != 0 || tr[0].usage != 1 || tr[1].age != 2 || tr[1].usage != 3 {
		t.Errorf("halved trace starts %v, want each pair at its earlier age with its larger usage", tr[:2])
	}
}

// grownGovernor is a governor that has seen attempts of peak bytes grow
// evenly over life, with the given capacity and 8 slots.
func grownGovernor(peak int64, life time.Duration, capacity int64) *governor {
	g := &governor{workers: 8, budget: capacity, userBudget: capacity, res: map[uint64]*reservation{}, slots: make([]slotMem, 8)}
	pr := profileOf(linearTrace(peak, life), life, peak)
	for i := 0; i < 8; i++ {
		g.peaks = append(g.peaks, peak)
		g.durs = append(g.durs, life)
		g.profiles = append(g.profiles, pr)
	}
	g.learnLocked()
	return g
}

// running adds an attempt in slot that has run for age and uses what a
// linear attempt uses then.
func (g *governor) running(id uint64, slot int, age, life time.Duration, peak int64) {
	g.res[id] = &reservation{slot: slot, start: time.Now().Add(-age)}
	g.slots[slot].usage = int64(float64(peak) * min(1, float64(age)/float64(life)))
}

func TestFitsOverTime(t *testing.T) {
	const peak = 1 << 30
	life := 2 * time.Second
	predicted := int64(peak + peak/10) // the 90th percentile plus a tenth
	capacity := 3*predicted + predicted/3

	t.Run("staggered", func(t *testing.T) {
		g := grownGovernor(peak, life, capacity)
		for i, age := range []time.Duration{500 * time.Millisecond, time.Second, 1500 * time.Millisecond} {
			g.running(uint64(i+1), i, age, life, peak)
		}
		if g.committedLocked()+g.predictLocked(0) <= capacity {
			t.Fatal("the attempts fit at their peaks side by side: the case tests nothing")
		}
		if !g.fitsOverTimeLocked(&task{}, capacity) {
			t.Error("a fourth attempt does not fit beside three spread over their lives")
		}
		if g.fitsOverTimeLocked(&task{need: predicted}, capacity) {
			t.Error("a task with a need of its own (after an OOM kill) was assumed to grow like the others")
		}
	})
	t.Run("together", func(t *testing.T) {
		g := grownGovernor(peak, life, capacity)
		for i := 0; i < 3; i++ {
			g.running(uint64(i+1), i, 200*time.Millisecond, life, peak)
		}
		if g.fitsOverTimeLocked(&task{}, capacity) {
			t.Error("a fourth attempt fits beside three that started together and peak together")
		}
	})
	t.Run("outlived", func(t *testing.T) {
		for _, c := range []struct {
			age  time.Duration
			fits bool
		}{{1900 * time.Millisecond, true}, {3 * life, false}} {
			g := grownGovernor(peak, life, 3*predicted)
			g.running(1, 0, c.age, life, peak)
			g.running(2, 1, time.Second, life, peak)
			g.running(3, 2, 500*time.Millisecond, life, peak)
			// About to end, attempt 1 makes room for the fourth; once it
			// has outlived the predicted life it is assumed to hold its
			// peak, beside attempts 2 and 3 near theirs.
			if got := g.fitsOverTimeLocked(&task{}, 3*predicted); got != c.fits {
				t.Errorf("beside an attempt of age %v: fits = %v, want %v", c.age, got, c.fits)
			}
		}
	})
	t.Run("allows", func(t *testing.T) {
		g := grownGovernor(peak, life, capacity)
		flat := int(capacity / predicted)
		if got := g.allowsLocked(predicted, capacity); got <= flat {
			t.Errorf("allows %d, want more than the %d that fit at their peaks", got, flat)
		}
	})
}

func TestOwnsOOM(t *testing.T) {
	const budget = 1 << 30
	for _, c := range []struct {
		name      string
		perWorker bool
		memLimit  int64
		want      bool
	}{
		{"cgroup per worker, no limit", true, 0, true},
		{"cgroup per worker, limit below the budget", true, budget / 2, false},
		{"cgroup per worker, limit at the budget", true, budget, true},
		{"no cgroup per worker, no limit", false, 0, true},
		// The supervisor enforces MemLimit (memory-limit): an OOM kill is
		// memory running out around the workers.
		{"no cgroup per worker, limit below the budget", false, budget / 2, true},
	} {
		t.Run(c.name, func(t *testing.T) {
			g := &governor{perWorker: c.perWorker, budget: budget}
			if got := g.ownsOOM(c.memLimit); got != c.want {
				t.Errorf("ownsOOM(%d) = %v, want %v", c.memLimit, got, c.want)
			}
		})
	}
	var off *governor
	if off.ownsOOM(0) {
		t.Error("ownsOOM with the governor off = true, want false")
	}
}

// TestEndedOneShotTraceKept: a one-shot slot starts its next attempt as
// soon as a process has ended, before that attempt is reported; samples
// taken then are the next attempt's, and the ended one's trace stays whole
// (it was dropped, as if the two shared a worker, and the attempt then
// counted as holding its peak from its start). On a persistent worker two
// attempts at once do share it, and their traces are dropped.
func TestEndedOneShotTraceKept(t *testing.T) {
	for _, alone := range []bool{true, false} {
		g := &governor{workers: 1, budget: 1 << 30, userBudget: 1 << 30, res: map[uint64]*reservation{}, slots: make([]slotMem, 1)}
		m := meter{group: &memory.Group{}}
		g.slots[0].meter = m
		bind := g.bind
		if alone {
			bind = g.bindAlone
		}
		bind(1, 0)
		start := g.res[1].start
		for i := 1; i <= minTrace+2; i++ {
			g.recordLocked([]meter{m}, []int64{int64(i) << 20}, start.Add(time.Duration(i)*memSampleEvery))
		}
		bind(2, 0)
		g.recordLocked([]meter{m}, []int64{1 << 20}, time.Now())
		first, next := len(g.res[1].trace), len(g.res[2].trace)
		if alone && (first != minTrace+2 || next != 1) {
			t.Errorf("one-shot: traces of %d and %d samples, want %d (the ended attempt's, whole) and 1", first, next, minTrace+2)
		}
		if !alone && (first != 0 || next != 0) {
			t.Errorf("persistent: traces of %d and %d samples, want both dropped", first, next)
		}
	}
}
