package pool

import (
	"fmt"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/safepool/safepool/internal/memory"
)

const (
	// memSampleEvery is how often the governor reads the workers' memory,
	// the host's and the supervisor's cgroup's, and the pressure.
	memSampleEvery = 100 * time.Millisecond
	// peakWindow is how many recent peaks of successful attempts the
	// prediction looks at.
	peakWindow = 64
	// coldStep is, before any peak is known and without a hint, how long
	// the governor waits between two admissions, watching the running
	// attempts grow.
	coldStep = 500 * time.Millisecond
	// victimPatience is how long a preemption may stay unanswered before
	// the governor may choose another victim.
	victimPatience = 2 * time.Second
	// Defaults of the Config fields of the same meaning.
	defaultPreemptAbove = 0.95
	defaultPreemptPSI   = 40
	minReserve          = 64 << 20
	maxReserve          = 2 << 30
)

// governor is the memory governor: it predicts what a task needs, admits an
// attempt only when that fits the budget, and preempts the youngest attempt
// when memory runs short. The loop calls admit, reserve and release; runners
// call bind and setGroup; the sampler goroutine reads memory and preempts.
// Everything it holds is guarded by mu.
type governor struct {
	p      *Pool
	sensor *memory.Sensor

	// Set by newGovernor, read-only afterwards.
	workers      int
	userBudget   int64   // Config.MemBudget, or 0
	host         int64   // host MemTotal, or 0 when unknown
	hostBudget   int64   // host less the reserve, or 0
	cg           int64   // the supervisor's cgroup limit, or 0 for none
	cgBudget     int64   // cg less the reserve, or 0
	budget       int64   // the smallest budget: the most one attempt may get
	hint         int64   // Config.MemPerTask
	preemptAbove float64 // fraction of host or cg in use; <= 0: off
	preemptPSI   float64 // PSI full avg10 percent; <= 0: off

	mu          sync.Mutex
	res         map[uint64]*reservation // one per dispatched task until it ends
	slots       []slotMem               // per runner slot
	peaks       []int64                 // recent peaks of successful attempts, a ring
	peakNext    int                     // next index in peaks once it is full
	hostOutside int64                   // host memory in use outside the workers
	cgOutside   int64                   // cgroup working set outside the workers
	inUse       int64                   // the workers' memory at the last sample
	last        MemoryState             // last state emitted
	blocked     bool                    // the loop waits for memory
	victim      uint64                  // task being preempted, or 0
	victimAt    time.Time               // when it was chosen
	lastCold    time.Time               // last admission on a cold start

	wake chan struct{} // tells the loop to look at admission again
}

// reservation is the memory set aside for one dispatched task.
type reservation struct {
	need  int64     // what the task learned it needs (task.need), or 0
	slot  int       // runner slot that took it, or -1 while on its way
	start time.Time // when the runner took it
}

// slotMem is one runner slot's cgroup and its last sampled usage.
type slotMem struct {
	group *memory.Group // nil between workers or without cgroups
	usage int64
}

// newGovernor returns the governor cfg asks for, or nil when it is off:
// Config.NoGovernor, or no per-worker cgroups to measure peaks with.
func newGovernor(p *Pool, cfg *Config, mode memory.Mode) *governor {
	if cfg.NoGovernor || mode == memory.ModeRSSPolling {
		return nil
	}
	g := &governor{
		p:            p,
		sensor:       memory.NewSensor(),
		workers:      cfg.Workers,
		userBudget:   cfg.MemBudget,
		hint:         cfg.MemPerTask,
		preemptAbove: cfg.PreemptAbove,
		preemptPSI:   cfg.PreemptPSI,
		res:          make(map[uint64]*reservation),
		slots:        make([]slotMem, cfg.Workers),
		wake:         make(chan struct{}, 1),
	}
	if g.preemptAbove == 0 {
		g.preemptAbove = defaultPreemptAbove
	}
	if g.preemptPSI == 0 {
		g.preemptPSI = defaultPreemptPSI
	}
	if total, err := g.sensor.HostTotal(); err == nil {
		g.host, g.hostBudget = total, g.scopeBudget(total, cfg.MemReserve)
	}
	if limit, ok, err := g.sensor.CgroupLimit(); err == nil && ok && (g.host == 0 || limit < g.host) {
		g.cg, g.cgBudget = limit, g.scopeBudget(limit, cfg.MemReserve)
	}
	for _, b := range []int64{g.userBudget, g.hostBudget, g.cgBudget} {
		if b > 0 && (g.budget == 0 || b < g.budget) {
			g.budget = b
		}
	}
	if g.budget == 0 {
		return nil // nothing to plan with
	}
	g.last = g.stateLocked()
	return g
}

// scopeBudget is what the pool may plan with under a wall of limit bytes:
// the limit less the reserve, and below the preemption watermark, so that
// admission alone never triggers preemption.
func (g *governor) scopeBudget(limit, reserve int64) int64 {
	if reserve <= 0 {
		reserve = min(max(limit/10, minReserve), maxReserve)
	}
	b := limit - reserve
	if g.preemptAbove > 0 && g.preemptAbove < 1 {
		b = min(b, int64(g.preemptAbove*float64(limit)))
	}
	return max(b, 1)
}

// workerLimit is the memory limit of each worker's cgroup: Config.MemLimit,
// but never more than the budget, so that one worker alone cannot push the
// host or the enclosing cgroup into an OOM kill of someone else.
func (g *governor) workerLimit(memLimit int64) int64 {
	if g == nil {
		return memLimit
	}
	if memLimit > 0 && memLimit < g.budget {
		return memLimit
	}
	return g.budget
}

// ownsOOM reports whether an OOM kill is the governor's to handle: it is,
// unless Config.MemLimit set a per-worker wall below the budget, which the
// task hit on its own (the ordinary retry policy applies then).
func (g *governor) ownsOOM(memLimit int64) bool {
	return g != nil && (memLimit <= 0 || memLimit >= g.budget)
}

// capacityLocked is the memory the workers may use together now: the
// budget less what others use within the same walls.
func (g *governor) capacityLocked() int64 {
	c := g.budget
	if g.userBudget > 0 {
		c = min(c, g.userBudget)
	}
	if g.hostBudget > 0 {
		c = min(c, g.hostBudget-g.hostOutside)
	}
	if g.cgBudget > 0 {
		c = min(c, g.cgBudget-g.cgOutside)
	}
	return max(c, 0)
}

// baseLocked is the predicted peak of a task with no history of its own.
func (g *governor) baseLocked() (int64, string) {
	if len(g.peaks) > 0 {
		s := slices.Clone(g.peaks)
		slices.Sort(s)
		// The 90th percentile, plus a tenth for what the sample missed.
		p := s[min(len(s)-1, len(s)*9/10)]
		return p + p/10, "peaks"
	}
	if g.hint > 0 {
		return g.hint, "hint"
	}
	// A cold start: three times the most any running attempt uses so far. The
	// attempts are admitted coldStep apart, so the estimate grows with
	// them until the first peak is known.
	var most int64
	for _, r := range g.res {
		if r.slot >= 0 {
			most = max(most, g.slots[r.slot].usage)
		}
	}
	return max(3*most, g.budget/64, 1), "cold start"
}

// predictLocked is the predicted peak of a task that needs need bytes by
// its own history (0: none): the base, or more.
func (g *governor) predictLocked(need int64) int64 {
	b, _ := g.baseLocked()
	return min(max(b, need), g.budget)
}

// committedLocked is the memory the running attempts hold or may still
// take: each busy slot counts the larger of its usage and its tasks'
// predicted peak, an idle slot its usage, a task on its way its peak.
func (g *governor) committedLocked() int64 {
	var sum int64
	need := make([]int64, len(g.slots))
	for _, r := range g.res {
		if r.slot < 0 {
			sum += g.predictLocked(r.need)
		} else {
			need[r.slot] = max(need[r.slot], g.predictLocked(r.need))
		}
	}
	for i, s := range g.slots {
		sum += max(s.usage, need[i])
	}
	return sum
}

// admit reports whether t may start now: its predicted peak fits beside
// what the running attempts hold. When nothing runs, it always may, so
// that the pool never stalls.
func (g *governor) admit(t *task) bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	ok := len(g.res) == 0
	if !ok {
		_, basis := g.baseLocked()
		ok = (basis != "cold start" || time.Since(g.lastCold) >= coldStep) &&
			g.committedLocked()+g.predictLocked(t.need) <= g.capacityLocked()
	}
	g.blocked = !ok
	return ok
}

// reserve sets memory aside for t as it is dispatched. The runner that
// took t may have bound it already.
func (g *governor) reserve(t *task) {
	g.mu.Lock()
	if _, basis := g.baseLocked(); basis == "cold start" {
		g.lastCold = time.Now()
	}
	if r := g.res[t.id]; r != nil {
		r.need = t.need
	} else {
		g.res[t.id] = &reservation{need: t.need, slot: -1}
	}
	g.mu.Unlock()
}

// bind records that the runner in slot took task id. It may come before
// the loop's reserve, never after its release.
func (g *governor) bind(id uint64, slot int) {
	g.mu.Lock()
	r := g.res[id]
	if r == nil {
		r = &reservation{}
		g.res[id] = r
	}
	r.slot, r.start = slot, time.Now()
	g.mu.Unlock()
}

// release frees task id's reservation when its attempt ended or it went
// back to the queue.
func (g *governor) release(id uint64) {
	g.mu.Lock()
	delete(g.res, id)
	if g.victim == id {
		g.victim = 0
	}
	g.mu.Unlock()
}

// setGroup records the cgroup of the worker in slot, or nil.
func (g *governor) setGroup(slot int, grp *memory.Group) {
	g.mu.Lock()
	g.slots[slot] = slotMem{group: grp}
	g.mu.Unlock()
}

// observePeak learns from the peak of a successful attempt.
func (g *governor) observePeak(peak int64) {
	if peak <= 0 {
		return
	}
	g.mu.Lock()
	if len(g.peaks) < peakWindow {
		g.peaks = append(g.peaks, peak)
	} else {
		g.peaks[g.peakNext] = peak
		g.peakNext = (g.peakNext + 1) % peakWindow
	}
	g.mu.Unlock()
	g.emitIfChanged()
}

// needAfter returns what t needs after an attempt that the OOM killer took
// or the governor preempted at peak bytes: more than that peak, and at least
// twice what it was given before, so that retries climb quickly to the whole
// budget (where a task runs alone) and never loop.
func (g *governor) needAfter(t *task, peak int64) int64 {
	g.mu.Lock()
	defer g.mu.Unlock()
	return min(max(peak+peak/4, 2*t.need, g.predictLocked(t.need)), g.budget)
}

// poisonMessage explains a Poison task whose last attempt was a.
func (g *governor) poisonMessage(a Attempt) string {
	return fmt.Sprintf("killed by the OOM killer while running alone with the whole memory budget of %s (peak %s): it needs more memory than the pool may use",
		sizeText(g.budget), sizeText(a.PeakRSS))
}

// stateLocked is the governor's current plan.
func (g *governor) stateLocked() MemoryState {
	base, basis := g.baseLocked()
	c := g.capacityLocked()
	allows := int(min(int64(g.workers), max(1, c/max(base, 1))))
	return MemoryState{Budget: c, InUse: g.inUse, Predicted: base, Allows: allows, Basis: basis}
}

// state returns the governor's current plan.
func (g *governor) state() MemoryState {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.stateLocked()
}

// emitIfChanged sends an EventMemory when the concurrency memory allows,
// or the basis of the prediction, changed.
func (g *governor) emitIfChanged() {
	g.mu.Lock()
	s := g.stateLocked()
	changed := s.Allows != g.last.Allows || s.Basis != g.last.Basis
	if changed {
		g.last = s
	}
	g.mu.Unlock()
	if changed {
		g.p.emit(Event{Kind: EventMemory, Memory: &s})
	}
}

// run samples memory until the pool ends, wakes the loop when it waits for
// memory, and preempts when memory runs short.
func (g *governor) run() {
	defer g.p.runners.Done()
	t := time.NewTicker(memSampleEvery)
	defer t.Stop()
	g.mu.Lock()
	first := g.last // a copy: emitIfChanged rewrites g.last
	g.mu.Unlock()
	g.p.emit(Event{Kind: EventMemory, Memory: &first})
	for {
		select {
		case <-g.p.quit:
			return
		case <-t.C:
		}
		g.sample()
	}
}

// sample reads memory once and acts on it.
func (g *governor) sample() {
	g.mu.Lock()
	groups := make([]*memory.Group, len(g.slots))
	for i, s := range g.slots {
		groups[i] = s.group
	}
	g.mu.Unlock()
	// The workers first, then the walls: what grows in between counts as
	// outside, which errs on the cautious side.
	usage := make([]int64, len(groups))
	var inUse int64
	for i, grp := range groups {
		if grp != nil {
			if u, err := grp.WorkingSet(); err == nil {
				usage[i] = u
				inUse += u
			}
		}
	}
	hostUsed, hostErr := int64(0), error(nil)
	if g.host > 0 {
		hostUsed, hostErr = g.sensor.HostUsed()
	}
	cgUsed, cgErr := int64(0), error(nil)
	if g.cg > 0 {
		cgUsed, cgErr = g.sensor.CgroupUsed()
	}
	short := false
	if g.preemptAbove > 0 {
		short = hostErr == nil && g.host > 0 && float64(hostUsed) > g.preemptAbove*float64(g.host) ||
			cgErr == nil && g.cg > 0 && float64(cgUsed) > g.preemptAbove*float64(g.cg)
	}
	if !short && g.preemptPSI > 0 {
		if psi, err := g.sensor.Pressure(); err == nil && psi > g.preemptPSI {
			short = true
		}
	}

	g.mu.Lock()
	for i, grp := range groups {
		if g.slots[i].group == grp {
			g.slots[i].usage = usage[i]
		}
	}
	g.inUse = inUse
	if hostErr == nil && g.host > 0 {
		g.hostOutside = max(0, hostUsed-inUse)
	}
	if cgErr == nil && g.cg > 0 {
		g.cgOutside = max(0, cgUsed-inUse)
	}
	victim, slot := uint64(0), -1
	if short && (g.victim == 0 || time.Since(g.victimAt) > victimPatience) {
		victim, slot = g.youngestLocked()
		if victim != 0 {
			g.victim, g.victimAt = victim, time.Now()
		}
	}
	wake := g.blocked
	g.mu.Unlock()

	if victim != 0 {
		select {
		case g.p.slots[slot].preempt <- victim:
		default:
		}
	}
	if wake {
		select {
		case g.wake <- struct{}{}:
		default:
		}
	}
	g.emitIfChanged()
}

// youngestLocked picks the attempt to preempt: the one that started last,
// so the least work is lost. It picks none when fewer than two slots run
// attempts: a task running alone is never preempted.
func (g *governor) youngestLocked() (id uint64, slot int) {
	busy := map[int]bool{}
	var at time.Time
	for tid, r := range g.res {
		if r.slot < 0 {
			continue
		}
		busy[r.slot] = true
		if id == 0 || r.start.After(at) {
			id, slot, at = tid, r.slot, r.start
		}
	}
	if len(busy) < 2 {
		return 0, -1
	}
	return id, slot
}

// sizeText renders n bytes as "1.5 GiB".
func sizeText(n int64) string {
	const unit = 1024
	if n < unit {
		return strconv.FormatInt(n, 10) + " B"
	}
	f, i := float64(n), -1
	for f >= unit && i < 4 {
		f /= unit
		i++
	}
	return strconv.FormatFloat(f, 'f', 1, 64) + " " + [...]string{"KiB", "MiB", "GiB", "TiB", "PiB"}[i]
}
