package pool

import (
	"fmt"
	"testing"
	"time"
)

// The policy and governor states the tests combine.
var (
	settleCauses = []Cause{"", CauseOOM, CauseMemoryLimit, CauseSegfault, SignalCause(9), ExitCause(1),
		ExitCause(0), CauseTimeout, CauseProtocol, CauseOutputLost, CauseTaskError, CausePreempted, CauseCancelled}
	settleActions = []Action{Skip, Retry, Abort}
	// settleGovs: none, a governor that owns OOM kills (run alone with the
	// whole budget, alone with less, alone with all that others left, or
	// beside others), and one that does not (a MemLimit below its budget).
	settleGovs = []struct {
		name  string
		mem   memVerdict
		alone bool
	}{
		{"no governor", memVerdict{}, false},
		{"no governor, alone", memVerdict{}, true},
		{"owns OOM, not alone", memVerdict{governed: true, ownsOOM: true, need: 900}, false},
		{"owns OOM, alone", memVerdict{governed: true, ownsOOM: true, need: 900, whole: true}, true},
		{"owns OOM, alone without the whole budget", memVerdict{governed: true, ownsOOM: true, need: 900}, true},
		{"owns OOM, alone, crowded out", memVerdict{governed: true, ownsOOM: true, need: 900, crowded: true}, true},
		{"owns OOM, crowded out, not alone", memVerdict{governed: true, ownsOOM: true, need: 900, crowded: true}, false},
		{"MemLimit below budget", memVerdict{governed: true, need: 900}, false},
	}
)

func testPolicy(a Action, aborting bool) policy {
	return policy{onDeath: a, retries: 2, taskErrorRetries: 1, backoff: 10 * time.Millisecond,
		maxDelay: 30 * time.Millisecond, aborting: aborting}
}

// TestSettleRows checks one row per rule of the table in settle.go.
func TestSettleRows(t *testing.T) {
	gov := memVerdict{governed: true, ownsOOM: true, need: 900}
	whole := memVerdict{governed: true, ownsOOM: true, need: 900, whole: true}
	crowded := memVerdict{governed: true, ownsOOM: true, need: 900, crowded: true}
	tests := []struct {
		name string
		t    taskView
		e    ending
		pol  policy
		mem  memVerdict
		want verdict
	}{
		{"given back", taskView{deaths: 1}, ending{givenBack: true}, testPolicy(Retry, false), gov,
			verdict{fate: fateRequeue}},
		{"given back, aborting", taskView{}, ending{givenBack: true}, testPolicy(Retry, true), gov,
			verdict{fate: fateCancelled}},
		{"success", taskView{errors: 1}, ending{}, testPolicy(Skip, false), memVerdict{},
			verdict{fate: fateDone, number: 2}},
		{"success while aborting", taskView{}, ending{}, testPolicy(Skip, true), memVerdict{},
			verdict{fate: fateDone, number: 1}},
		{"cancelled", taskView{}, ending{cause: CauseCancelled}, testPolicy(Retry, true), memVerdict{},
			verdict{fate: fateCancelled, number: 1}},
		{"death while aborting", taskView{}, ending{cause: CauseSegfault}, testPolicy(Retry, true), memVerdict{},
			verdict{fate: fateCancelled, charge: chargeDeath, number: 1}},
		{"OOM while aborting is a death", taskView{alone: true}, ending{cause: CauseOOM}, testPolicy(Abort, true), gov,
			verdict{fate: fateCancelled, charge: chargeDeath, number: 1}},
		{"task error while aborting", taskView{}, ending{cause: CauseTaskError}, testPolicy(Skip, true), gov,
			verdict{fate: fateCancelled, charge: chargeError, number: 1}},
		{"preempted", taskView{deaths: 1}, ending{cause: CausePreempted}, testPolicy(Skip, false), gov,
			verdict{fate: fateRequeue, need: 900, number: 2}},
		{"preempted without governor", taskView{}, ending{cause: CausePreempted}, testPolicy(Skip, false), memVerdict{},
			verdict{fate: fateRequeue, number: 1}},
		{"OOM alone with the whole budget is poison", taskView{alone: true}, ending{cause: CauseOOM}, testPolicy(Skip, false), whole,
			verdict{fate: fatePoison, charge: chargeOOM, number: 1}},
		{"OOM alone with the whole budget, Abort", taskView{alone: true}, ending{cause: CauseOOM}, testPolicy(Abort, false), whole,
			verdict{fate: fatePoison, charge: chargeOOM, abort: true, number: 1}},
		{"OOM alone, crowded out, fails", taskView{alone: true, ooms: 1}, ending{cause: CauseOOM}, testPolicy(Retry, false), crowded,
			verdict{fate: fateFailed, charge: chargeOOM, number: 2, crowded: true}},
		{"OOM alone, crowded out, Abort", taskView{alone: true}, ending{cause: CauseOOM}, testPolicy(Abort, false), crowded,
			verdict{fate: fateFailed, charge: chargeOOM, abort: true, number: 1, crowded: true}},
		{"OOM crowded out, not alone, retries", taskView{}, ending{cause: CauseOOM}, testPolicy(Skip, false), crowded,
			verdict{fate: fateRetry, charge: chargeOOM, need: 900, delay: 10 * time.Millisecond, number: 1}},
		{"OOM alone with less retries", taskView{alone: true, ooms: 1}, ending{cause: CauseOOM}, testPolicy(Abort, false), gov,
			verdict{fate: fateRetry, charge: chargeOOM, need: 900, delay: 20 * time.Millisecond, number: 2}},
		{"OOM with the whole budget, not alone, retries", taskView{}, ending{cause: CauseOOM}, testPolicy(Skip, false), whole,
			verdict{fate: fateRetry, charge: chargeOOM, need: 900, delay: 10 * time.Millisecond, number: 1}},
		{"OOM not alone retries past Retries", taskView{ooms: 5}, ending{cause: CauseOOM}, testPolicy(Skip, false), gov,
			verdict{fate: fateRetry, charge: chargeOOM, need: 900, delay: 30 * time.Millisecond, number: 6}},
		{"OOM not owned is a death", taskView{alone: true}, ending{cause: CauseOOM}, testPolicy(Skip, false),
			memVerdict{governed: true, need: 900}, verdict{fate: fateFailed, charge: chargeDeath, number: 1}},
		{"task error, retries left", taskView{}, ending{cause: CauseTaskError}, testPolicy(Skip, false), memVerdict{},
			verdict{fate: fateRetry, charge: chargeError, delay: 10 * time.Millisecond, number: 1}},
		{"task error, none left", taskView{errors: 1}, ending{cause: CauseTaskError}, testPolicy(Retry, false), memVerdict{},
			verdict{fate: fateFailed, charge: chargeError, number: 2}},
		{"death, Retry, first", taskView{}, ending{cause: ExitCause(1)}, testPolicy(Retry, false), memVerdict{},
			verdict{fate: fateRetry, charge: chargeDeath, delay: 10 * time.Millisecond, number: 1}},
		{"death, Retry, last retry", taskView{deaths: 1, errors: 1}, ending{cause: CauseTimeout}, testPolicy(Retry, false), memVerdict{},
			verdict{fate: fateRetry, charge: chargeDeath, delay: 20 * time.Millisecond, number: 3}},
		{"death, Retry, none left", taskView{deaths: 2}, ending{cause: CauseProtocol}, testPolicy(Retry, false), memVerdict{},
			verdict{fate: fateFailed, charge: chargeDeath, number: 3}},
		{"death, Skip", taskView{}, ending{cause: CauseMemoryLimit}, testPolicy(Skip, false), memVerdict{},
			verdict{fate: fateFailed, charge: chargeDeath, number: 1}},
		{"death, Abort, retries left", taskView{deaths: 1}, ending{cause: CauseOutputLost}, testPolicy(Abort, false), memVerdict{},
			verdict{fate: fateRetry, charge: chargeDeath, delay: 20 * time.Millisecond, number: 2}},
		{"death, Abort, none left", taskView{deaths: 2}, ending{cause: CauseOutputLost}, testPolicy(Abort, false), memVerdict{},
			verdict{fate: fateFailed, charge: chargeDeath, abort: true, number: 3}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := settle(tt.t, tt.e, tt.pol, tt.mem); got != tt.want {
				t.Errorf("settle(%+v, %+v, %+v, %+v) = %+v, want %+v", tt.t, tt.e, tt.pol, tt.mem, got, tt.want)
			}
		})
	}
}

// TestSettleSweep runs settle over every cause × policy × retries left ×
// governor state × aborting, and checks what must hold in each.
func TestSettleSweep(t *testing.T) {
	for _, c := range settleCauses {
		for _, act := range settleActions {
			for _, left := range []bool{true, false} {
				for _, g := range settleGovs {
					for _, aborting := range []bool{false, true} {
						tv := taskView{deaths: 2, errors: 1, ooms: 3, alone: g.alone}
						if left {
							tv = taskView{deaths: 0, errors: 0, ooms: 0, alone: g.alone}
						}
						name := fmt.Sprintf("%s/%s/left=%v/%s/aborting=%v", c, act, left, g.name, aborting)
						v := settle(tv, ending{cause: c}, testPolicy(act, aborting), g.mem)
						checkSweep(t, name, c, act, left, g.mem, g.alone, aborting, tv, v)
					}
				}
			}
		}
	}
}

func checkSweep(t *testing.T, name string, c Cause, act Action, left bool, mem memVerdict, alone, aborting bool, tv taskView, v verdict) {
	t.Helper()
	memOOM := c == CauseOOM && mem.ownsOOM && !aborting
	var want fate
	switch {
	case c == "":
		want = fateDone
	case aborting || c == CauseCancelled:
		want = fateCancelled
	case c == CausePreempted:
		want = fateRequeue
	case memOOM && alone && mem.whole:
		want = fatePoison
	case memOOM && alone && mem.crowded:
		want = fateFailed
	case memOOM:
		want = fateRetry // however many times the OOM killer took it
	case c == CauseTaskError && left:
		want = fateRetry
	case c == CauseTaskError:
		want = fateFailed
	case act != Skip && left:
		want = fateRetry
	default:
		want = fateFailed
	}
	if v.fate != want {
		t.Errorf("%s: fate = %d, want %d", name, v.fate, want)
	}
	if aborting && (v.fate == fateRetry || v.fate == fateRequeue || v.abort) {
		t.Errorf("%s: while aborting, verdict %+v runs the task again or aborts again", name, v)
	}
	if v.crowded != (v.fate == fateFailed && memOOM) {
		t.Errorf("%s: crowded = %v with fate %d", name, v.crowded, v.fate)
	}
	if v.abort != (act == Abort && (v.fate == fateFailed && c != CauseTaskError || v.fate == fatePoison)) {
		t.Errorf("%s: abort = %v under %s with fate %d", name, v.abort, act, v.fate)
	}
	charged := v.charge != chargeNone
	if charged != (c != "" && c != CausePreempted && c != CauseCancelled) {
		t.Errorf("%s: charge = %d", name, v.charge)
	}
	if n := tv.deaths + tv.errors + tv.ooms + 1; v.number != n {
		t.Errorf("%s: number = %d, want %d", name, v.number, n)
	}
	if v.fate == fateRetry && (v.delay <= 0 || v.delay > 30*time.Millisecond) {
		t.Errorf("%s: delay = %v, want within (0, MaxBackoff]", name, v.delay)
	}
	if v.fate != fateRetry && v.delay != 0 {
		t.Errorf("%s: delay = %v without a retry", name, v.delay)
	}
	if wantNeed := v.fate != fateCancelled && (memOOM && !(alone && (mem.whole || mem.crowded)) || c == CausePreempted && mem.governed); (v.need > 0) != wantNeed {
		t.Errorf("%s: need = %d, want it set: %v", name, v.need, wantNeed)
	}
}

// TestBlame checks which flights a worker's death charges.
func TestBlame(t *testing.T) {
	tests := []struct {
		name  string
		f     flightView
		cause Cause
		want  blameFate
	}{
		{"never started", flightView{}, CauseOOM, blameRequeue},
		{"running", flightView{started: true}, CauseOOM, blameCharge},
		{"bystander of a timeout", flightView{started: true, bystander: true}, CauseTimeout, blameRequeue},
		{"bystander of a protocol error", flightView{started: true, bystander: true}, CauseProtocol, blameRequeue},
		{"bystander of an OOM kill", flightView{started: true, bystander: true}, CauseOOM, blameCharge},
		{"line unread", flightView{started: true, unread: true, line: true}, CauseSegfault, blameRequeue},
		{"line unread, preempted", flightView{started: true, unread: true, line: true}, CausePreempted, blameCharge},
		{"line unread, cancelled", flightView{started: true, unread: true, line: true}, CauseCancelled, blameCharge},
		{"line exit 0, first", flightView{started: true, line: true}, ExitCause(0), blamePass},
		{"line exit 0, second", flightView{started: true, line: true, passed: true}, ExitCause(0), blameCharge},
		{"framed exit 0", flightView{started: true}, ExitCause(0), blameCharge},
		{"framed reading, first", flightView{reading: true}, CauseOOM, blamePass},
		{"framed reading, second", flightView{reading: true, passed: true}, CauseOOM, blameCharge},
		{"framed reading, timed out", flightView{reading: true, passed: true}, CauseTimeout, blameCharge},
		{"framed reading, bystander", flightView{reading: true, bystander: true, passed: true}, CauseProtocol, blameRequeue},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := blame(tt.f, tt.cause); got != tt.want {
				t.Errorf("blame(%+v, %s) = %d, want %d", tt.f, tt.cause, got, tt.want)
			}
		})
	}
}
