package cli

import (
	"fmt"
	"runtime"
	"strings"

	"github.com/safepool/safepool/internal/bytesize"
	"github.com/safepool/safepool/pool"
)

// memorySummary is the memory governor's plan at the end of a run, in the
// JSON summary.
type memorySummary struct {
	BudgetBytes    int64      `json:"budget_bytes"`
	PredictedBytes int64      `json:"predicted_bytes"`
	Allows         int        `json:"allows"`
	Basis          pool.Basis `json:"basis"`
	Workers        int        `json:"workers"`
}

// setMemory records the governor's plan and the pool's preemptions.
func (s *summary) setMemory(st pool.MemoryState, ok bool, workers, preempted int) {
	s.Preempted = preempted
	if !ok {
		return
	}
	if workers <= 0 {
		workers = runtime.NumCPU()
	}
	s.Memory = &memorySummary{BudgetBytes: st.Budget, PredictedBytes: st.Predicted, Allows: st.Allows, Basis: st.Basis, Workers: workers}
}

// memoryNote tells, after the first summary line, when memory held the
// concurrency below -j or attempts were preempted:
// "; memory allowed 3 of 16 at once (1.6 GiB each), 2 attempts preempted".
func (s *summary) memoryNote() string {
	var parts []string
	if m := s.Memory; m != nil && m.Basis != pool.BasisColdStart && m.Allows < m.Workers {
		parts = append(parts, fmt.Sprintf("memory allowed %d of %d at once (%s each)", m.Allows, m.Workers, bytesize.Format(m.PredictedBytes)))
	}
	if s.Preempted > 0 {
		parts = append(parts, plural(s.Preempted, "attempt")+" preempted")
	}
	if len(parts) == 0 {
		return ""
	}
	return "; " + strings.Join(parts, ", ")
}
