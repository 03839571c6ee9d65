package pool

import "time"

// Growth returns what p's memory governor has learnt of how attempts grow:
// the envelope of their profiles, bin by bin, and their recent lives. ok
// is false when the governor is off or has learnt nothing yet.
func Growth(p *Pool) (env []float64, lives []time.Duration, ok bool) {
	if p.gov == nil {
		return nil, nil, false
	}
	p.gov.mu.Lock()
	defer p.gov.mu.Unlock()
	e, _, l, ok := p.gov.growthLocked()
	return e[:], l, ok
}
