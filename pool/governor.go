package pool

import (
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/safepool/safepool/internal/bytesize"
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
	// attempts grow, unless memory is roomy (roomyLocked).
	coldStep = 500 * time.Millisecond
	// coldGuess is what roomyLocked assumes a task may take before its
	// peaks are known: more than most jobs run from a shell use.
	coldGuess = 512 << 20
	// learnEvery is how often, at most, the prediction is worked out
	// again as attempts succeed; the sampler catches up on the rest.
	learnEvery = 20 * time.Millisecond
	// lifeWindow is how many recent lives of successful attempts the
	// prediction of a life looks at: few, since lives change with the load.
	lifeWindow = 8
	// profileBins is how many parts of an attempt's life its memory
	// profile has.
	profileBins = 20
	// profileWindow is how many recent profiles the prediction looks at.
	profileWindow = 16
	// minTrace is the fewest samples an attempt needs for its profile to
	// say how it grew (a second's worth); a shorter attempt counts as
	// holding its peak from the start.
	minTrace = 10
	// maxTrace bounds the samples kept for one attempt; longer traces are
	// halved.
	maxTrace = 512
	// victimPatience is how long a preemption may stay unanswered before
	// the governor may choose another victim.
	victimPatience = 2 * time.Second
	// othersSettle is how old a sample of what processes other than the
	// workers hold must be, at an attempt's end, to count in what they held
	// throughout it (reservation.others): older than the time from a
	// worker's death to the loop's hearing of it, which waits for the
	// worker's pipes to drain (a lingering grandchild's 200 ms at most).
	othersSettle = 300 * time.Millisecond
	// Defaults of the Config fields of the same meaning.
	defaultPreemptAbove = 0.95
	defaultPreemptPSI   = 40
	minReserve          = 64 << 20
	maxReserve          = 2 << 30
)

// governor is the memory governor: it predicts what a task needs, admits an
// attempt only when that fits the budget, and preempts the youngest attempt
// when memory runs short. The loop calls admit, reserve and release; runners
// call bind, setGroup and setWatch; the sampler goroutine reads memory and
// preempts. Everything it holds is guarded by mu.
//
// It works the same with or without a cgroup per worker; only what measures
// a worker differs (meter): its cgroup, or the private memory of its
// process tree that the runner's memory.Watch samples.
type governor struct {
	p      *Pool
	sensor *memory.Sensor

	// Set by newGovernor, read-only afterwards.
	workers      int
	perWorker    bool    // each worker has a cgroup of its own (memory.Mode.PerWorker)
	userBudget   int64   // Config.MemBudget, or 0
	host         int64   // host MemTotal, or 0 when unknown
	hostBudget   int64   // host less the reserve, or 0
	availBudget  int64   // without a cgroup per worker: MemAvailable at start less the reserve, or 0
	cg           int64   // the supervisor's cgroup limit, or 0 for none
	cgBudget     int64   // cg less the reserve, or 0
	budget       int64   // the smallest budget: the most one attempt may get
	hint         int64   // Config.MemPerTask
	memReserve   int64   // Config.MemReserve
	preemptAbove float64 // fraction of host or cg in use; <= 0: off
	preemptPSI   float64 // PSI full avg10 percent; <= 0: off

	mu            sync.Mutex
	res           map[uint64]*reservation // one per dispatched task until it ends
	slots         []slotMem               // per runner slot
	peaks         []int64                 // recent peaks of successful attempts, a ring
	peakNext      int                     // next index in peaks once it is full
	fromPeaks     int64                   // the prediction from peaks, or 0 before any (learnLocked)
	growth        growthModel             // how attempts grow and how long they live (learnLocked)
	withNeed      int                     // reservations whose task has a need of its own
	unlearnt      bool                    // successes came since learnLocked last ran
	learntAt      time.Time               // when it did
	durs          []time.Duration         // lives of the last lifeWindow successful attempts, a ring
	durNext       int                     // next index in durs once it is full
	profiles      []profile               // recent attempts' profiles, a ring
	profNext      int                     // next index in profiles once it is full
	hostOutside   int64                   // host memory in use outside the workers
	cgOutside     int64                   // cgroup working set outside the workers
	inUse         int64                   // the workers' memory at the last sample
	last          MemoryState             // last state emitted
	blocked       bool                    // the loop waits for memory
	victim        uint64                  // task being preempted, or 0
	victimAt      time.Time               // when it was chosen
	lastCold      time.Time               // last admission on a cold start
	staggered     bool                    // the last admit spaced admissions out
	lastStaggered time.Time               // last dispatch while admissions were spaced out
	shedding      bool                    // the head waits for idle workers to end (idleInTheWayLocked)

	wake chan struct{} // tells the loop to look at admission again
}

// reservation is the memory set aside for one dispatched task.
type reservation struct {
	need  int64        // what the task learned it needs (task.need), or 0
	slot  int          // runner slot that took it, or -1 while on its way
	start time.Time    // when the runner took it
	trace []usagePoint // its slot's sampled usage since start, oldest first
	// ended: its process has ended and the slot runs another attempt (a
	// one-shot slot, between a process's end and its report): its trace is
	// whole, and the slot's samples are the next attempt's.
	ended bool
	// others is the least that processes other than the workers held
	// within each wall, at the reservation and at the samples until
	// othersSettle before its release: what they held throughout the
	// attempt. The least, because a worker's figure may lag behind what it
	// holds (its watch's last sample), so that what it grew by since
	// counts as others' for a sample. recent holds the samples not yet
	// othersSettle old, oldest first: a worker's memory is freed as it
	// dies (the OOM killer's reaper frees it before the worker exits), and
	// until the next sample of its watch, the samples take that for others
	// freeing memory.
	others others
	recent []othersAt
}

// othersAt is what processes other than the workers held at a sample.
type othersAt struct {
	at time.Time
	o  others
}

// others is what processes other than the workers hold within the walls
// around them (the supervisor itself, the program that uses the pool,
// whatever else runs in the same container or on the host): the working
// set of the supervisor's cgroup, and the host's memory in use, less what
// the workers hold.
type others struct {
	cg, host int64
}

// least is the least of o and p within each wall.
func (o others) least(p others) others {
	return others{cg: min(o.cg, p.cg), host: min(o.host, p.host)}
}

// seen records, at a sample at now, that others held o: it joins the
// least once othersSettle old.
func (r *reservation) seen(now time.Time, o others) {
	r.recent = append(r.recent, othersAt{at: now, o: o})
	r.settle(now)
}

// settle adds to the least the samples that are othersSettle old at now,
// and returns it.
func (r *reservation) settle(now time.Time) others {
	k := 0
	for k < len(r.recent) && now.Sub(r.recent[k].at) >= othersSettle {
		r.others = r.others.least(r.recent[k].o)
		k++
	}
	r.recent = append(r.recent[:0], r.recent[k:]...)
	return r.others
}

// usagePoint is one sample of an attempt's memory: its usage at an age.
type usagePoint struct {
	age   time.Duration
	usage int64
}

// profile says how an attempt's memory grew over its life: bin k is the
// most it had used, as a fraction of its peak, by the end of the kth
// profileBins-th part of its life. It never falls, and its last bin is 1.
type profile [profileBins]float64

// slotMem is one runner slot's meter and its last sampled usage.
type slotMem struct {
	meter meter
	usage int64
	// live says a persistent worker runs in the slot, and up that it has
	// shown it is ready (a framed worker's ready frame, a line worker's
	// first answer): what its start-up takes is in its usage by then.
	live, up bool
}

// meter is what measures the worker in one runner slot: its cgroup, or,
// without one, the watch that samples the private memory of its process
// tree. The zero meter measures nothing: there is no worker.
type meter struct {
	group *memory.Group // the worker's cgroup, or nil
	watch *memory.Watch // where group is nil: the current process's watch, or nil
}

// read returns what the worker holds now, and false when it cannot tell:
// its cgroup's working set, or the private memory of its process tree,
// which is 0 once the watch has stopped (the worker is gone). Memory the
// workers share (shared memory, file pages) is in neither, so the
// governor counts it once, with what others use within the same walls.
func (m meter) read() (int64, bool) {
	switch {
	case m.group != nil:
		u, err := m.group.WorkingSet()
		return u, err == nil
	case m.watch != nil:
		return m.watch.Current(), true
	}
	return 0, false
}

// newGovernor returns the governor cfg asks for, or nil when it is off:
// Config.NoGovernor, or no memory figure at all to plan with.
func newGovernor(p *Pool, cfg *Config, mode memory.Mode) *governor {
	if cfg.NoGovernor {
		return nil
	}
	g := &governor{
		p:            p,
		sensor:       memory.NewSensor(),
		workers:      cfg.Workers,
		perWorker:    mode.PerWorker(),
		userBudget:   cfg.MemBudget,
		hint:         cfg.MemPerTask,
		memReserve:   cfg.MemReserve,
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
		// Without a cgroup per worker, no worker's cgroup limit holds it to
		// MemTotal less the reserve, so the host's wall is what is
		// available at start, when the workers hold nothing yet.
		// MemAvailable leaves out what the workers hold: as the pool runs,
		// capacityLocked takes off only what others hold (hostOutside), so
		// the workers may use MemAvailable now plus their own memory, less
		// the reserve, within this.
		if avail, err := memory.HostMemAvailable(); err == nil && !g.perWorker {
			g.availBudget = min(g.hostBudget, max(avail-reserveFor(total, cfg.MemReserve), 1))
		}
	}
	if limit, ok, err := g.sensor.CgroupLimit(); err == nil && ok && (g.host == 0 || limit < g.host) {
		g.cg, g.cgBudget = limit, g.scopeBudget(limit, cfg.MemReserve)
	}
	for _, b := range []int64{g.userBudget, g.hostBudget, g.cgBudget, g.availBudget} {
		if b > 0 && (g.budget == 0 || b < g.budget) {
			g.budget = b
		}
	}
	if g.budget == 0 {
		return nil // nothing to plan with
	}
	// No worker runs yet: what the walls hold now is others'.
	w := g.readWalls()
	if w.hostErr == nil && g.host > 0 {
		g.hostOutside = w.hostUsed
	}
	if w.cgErr == nil && g.cg > 0 {
		g.cgOutside = w.cgUsed
	}
	g.last = g.stateLocked()
	return g
}

// scopeBudget is what the pool may plan with under a wall of limit bytes:
// the limit less the reserve, and below the preemption watermark, so that
// admission alone never triggers preemption.
func (g *governor) scopeBudget(limit, reserve int64) int64 {
	b := limit - reserveFor(limit, reserve)
	if g.preemptAbove > 0 && g.preemptAbove < 1 {
		b = min(b, int64(g.preemptAbove*float64(limit)))
	}
	return max(b, 1)
}

// reserveFor is the reserve held back from a wall of limit bytes:
// Config.MemReserve, or by default a tenth of limit within [minReserve,
// maxReserve].
func reserveFor(limit, reserve int64) int64 {
	if reserve > 0 {
		return reserve
	}
	return min(max(limit/10, minReserve), maxReserve)
}

// MinMemory is the least Config.MemLimit and Config.MemBudget may be, and
// the least memory budget a pool with a cgroup per worker starts with. The
// kernel charges a new process's own structures to its cgroup: in a cgroup
// capped below this, a process cannot even start, and the start fails with
// errors that name something else (ENFILE, ENOMEM) or takes the
// supervisor's thread that starts it down with it.
const MinMemory = 1 << 20

// checkBudget reports a budget that would cap each worker's cgroup below
// MinMemory: a reserve as large as the host's memory or the enclosing
// cgroup's limit. Without a cgroup per worker a small budget only makes
// tasks run one at a time, as memory running short does. Config.MemBudget
// below MinMemory is refused before (Config.normalize).
func (g *governor) checkBudget() error {
	if g == nil || !g.perWorker || g.budget >= MinMemory {
		return nil
	}
	size := g.host
	wall := "the host's " + bytesize.Format(size)
	if g.budget == g.cgBudget {
		size = g.cg
		wall = "the enclosing cgroup's limit of " + bytesize.Format(size)
	}
	left := "no memory"
	if g.budget > 1 { // scopeBudget's 1 stands for nothing left
		left = "only " + bytesize.Format(g.budget)
	}
	if g.preemptAbove > 0 && g.preemptAbove < 1 && int64(g.preemptAbove*float64(size)) < size-reserveFor(size, g.memReserve) {
		// scopeBudget kept the budget under the watermark, not the reserve.
		return fmt.Errorf("pool: Config.PreemptAbove of %v leaves the workers %s of %s (each worker's cgroup needs at least %s)",
			g.preemptAbove, left, wall, bytesize.Format(MinMemory))
	}
	return fmt.Errorf("pool: a memory reserve of %s leaves the workers %s of %s (each worker's cgroup needs at least %s)",
		bytesize.Format(reserveFor(size, g.memReserve)), left, wall, bytesize.Format(MinMemory))
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
// unless Config.MemLimit set a per-worker cgroup limit below the budget,
// which the task hit on its own (the ordinary retry policy applies then).
// Without a cgroup per worker the supervisor enforces MemLimit itself
// (CauseMemoryLimit), so every OOM kill is memory running out around the
// workers: the enclosing cgroup's or the host's.
func (g *governor) ownsOOM(memLimit int64) bool {
	return g != nil && (!g.perWorker || memLimit <= 0 || memLimit >= g.budget)
}

// capacityLocked is the memory the workers may use together now: the
// budget less what others use within the same walls.
func (g *governor) capacityLocked() int64 {
	return g.capacityBeside(g.othersLocked())
}

// othersLocked is what processes other than the workers hold now, at the
// last sample.
func (g *governor) othersLocked() others {
	return others{cg: g.cgOutside, host: g.hostOutside}
}

// capacityBeside is the memory the workers may use together while others
// hold o: the budget less o within each wall.
func (g *governor) capacityBeside(o others) int64 {
	c := g.budget
	if g.userBudget > 0 {
		c = min(c, g.userBudget)
	}
	if g.hostBudget > 0 {
		c = min(c, g.hostBudget-o.host)
	}
	if g.cgBudget > 0 {
		c = min(c, g.cgBudget-o.cg)
	}
	return max(c, 0)
}

// wallBeside is the wall that leaves the workers the least memory while
// others hold o, and what it leaves them: the enclosing cgroup's limit or
// the host's memory, less o there. The reserve is not taken off: this is
// where the kernel kills, not what the governor plans with. ok is false
// when neither wall is known.
func (g *governor) wallBeside(o others) (w tightWall, ok bool) {
	if g.host > 0 {
		w, ok = tightWall{size: g.host, held: o.host, room: g.host - o.host}, true
	}
	if g.cg > 0 && (!ok || g.cg-o.cg < w.room) {
		w, ok = tightWall{cgroup: true, size: g.cg, held: o.cg, room: g.cg - o.cg}, true
	}
	return w, ok
}

// tightWall is the wall around the workers that leaves them the least, as
// wallBeside sees it.
type tightWall struct {
	cgroup bool  // the enclosing cgroup's limit; else the host's memory
	size   int64 // the limit, or the host's MemTotal
	held   int64 // what processes other than the workers held within it
	room   int64 // size less held: what it left the workers
}

// String names the wall in a message: "the enclosing cgroup's limit of
// 600 MiB", "the host's memory of 16 GiB".
func (w tightWall) String() string {
	if w.cgroup {
		return "the enclosing cgroup's limit of " + bytesize.Format(w.size)
	}
	return "the host's memory of " + bytesize.Format(w.size)
}

// baseLocked is the predicted peak of a task with no history of its own.
func (g *governor) baseLocked() (int64, Basis) {
	if g.fromPeaks > 0 {
		return g.fromPeaks, BasisPeaks
	}
	if g.hint > 0 {
		return g.hint, BasisHint
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
	return max(3*most, g.budget/64, 1), BasisColdStart
}

// predictLocked is the predicted peak of a task that needs need bytes by
// its own history (0: none): the base, or more.
func (g *governor) predictLocked(need int64) int64 {
	b, _ := g.baseLocked()
	return g.predictFrom(b, need)
}

// predictFrom is the predicted peak of a task that needs need bytes by its
// own history, given the base b.
func (g *governor) predictFrom(b, need int64) int64 {
	return min(max(b, need), g.budget)
}

// committedLocked is the memory the running attempts hold or may still
// take: each busy slot counts the larger of its usage and its tasks'
// predicted peak, an idle slot its usage, a task on its way its peak.
func (g *governor) committedLocked() int64 {
	var sum int64
	b, _ := g.baseLocked()
	need := make([]int64, len(g.slots))
	for _, r := range g.res {
		if r.slot < 0 {
			sum += g.predictFrom(b, r.need)
		} else {
			need[r.slot] = max(need[r.slot], g.predictFrom(b, r.need))
		}
	}
	for i, s := range g.slots {
		sum += max(s.usage, need[i])
	}
	return sum
}

// admit reports whether t may start now: its predicted peak fits beside
// what the running attempts hold, either at once or, once the governor has
// seen how attempts grow and how long they live, at every moment of t's
// predicted life. When nothing runs, it always may, so that the pool never
// stalls, unless idle workers hold what t needs: then it waits for them to
// end (idleInTheWayLocked).
func (g *governor) admit(t *task) bool {
	// A wait that begins or ends is told once g.mu is released, so that
	// an observer may ask the pool about memory.
	var told *Event
	defer func() {
		if told != nil {
			g.p.emit(*told)
		}
	}()
	var shed []int
	defer func() {
		for _, slot := range shed {
			g.p.preempt(slot, shedIdle)
		}
	}()
	g.mu.Lock()
	defer g.mu.Unlock()
	ok := len(g.res) == 0
	if ok {
		shed = g.idleInTheWayLocked(t)
		ok = shed == nil
	}
	g.shedding = !ok && shed != nil
	if !ok && shed == nil {
		base, basis := g.baseLocked()
		c := g.capacityLocked()
		gap := g.staggerLocked()
		g.staggered = gap > 0
		switch {
		case basis == BasisColdStart && time.Since(g.lastCold) < coldStep && !g.roomyLocked(base, c):
		case time.Since(g.lastStaggered) < gap:
		default:
			ok = g.fitsAtOnceLocked(t, c) || g.fitsOverTimeLocked(t, c)
		}
	}
	if g.blocked == ok {
		told = &Event{Kind: EventAdmissionWait, TaskID: t.id}
		if ok {
			told.Kind = EventAdmissionWaitEnded
		}
	}
	g.blocked = !ok
	return ok
}

// shedIdle, sent to a slot in place of a task's id to preempt, asks the
// slot to end its worker if it is idle (no task has the id 0).
const shedIdle = 0

// idleInTheWayLocked returns, when nothing runs, the slots whose idle
// persistent workers t must not run beside, or nil when it may start now.
// A persistent worker holds memory while idle (what it loaded, what its
// tasks left). When t carries a need of its own (it was OOM-killed or
// preempted) that does not fit beside what the idle workers hold, other
// than the one that will take it, they are asked to end, and t waits until
// they have: run beside them, such a task was killed again and again, and
// once its need was the whole budget it was judged poison ("it needs more
// memory than the pool may use") or crowded out by others, though it would
// have fitted alone. While t waits, no worker starts (mayStartWorker); the
// slots start theirs again when memory allows, as after any exit.
func (g *governor) idleInTheWayLocked(t *task) []int {
	if t.need <= 0 {
		return nil
	}
	keep := -1 // the worker left to take t: one that is ready, if any
	for i, s := range g.slots {
		if s.live && (keep < 0 || s.up && !g.slots[keep].up) {
			keep = i
		}
	}
	var held int64
	var shed []int
	for i, s := range g.slots {
		if i != keep && s.live {
			held += s.usage
			shed = append(shed, i)
		}
	}
	if held == 0 || g.predictLocked(t.need)+held <= g.capacityLocked() {
		return nil
	}
	return shed
}

// roomyLocked reports whether, on a cold start with the prediction base,
// memory within capacity c is so far above what the workers could take
// that admissions need not wait for the running attempts to show how they
// grow: every worker at the larger of coldGuess and base (three times the
// most a running attempt uses so far) fits in half of c. A batch of small jobs
// then starts at full concurrency at once; a batch whose first attempts
// grow large turns the prediction up, and the admissions after are spaced
// out again.
func (g *governor) roomyLocked(base, c int64) bool {
	return int64(g.workers)*max(coldGuess, base) <= c/2
}

// staggerLocked is the least time between two admissions: half a short
// life (growthLocked's ramp) shared by as many attempts as memory allows,
// when memory is what limits how many run and attempts grow over their
// lives; otherwise zero.
// Attempts that start together grow together and end together, and then
// only as many fit as fit at their peaks; spread out, some grow while
// others end, and more fit.
func (g *governor) staggerLocked() time.Duration {
	env, ramp, _, ok := g.growthLocked()
	if !ok || env[0] >= 0.5 {
		return 0
	}
	base, _ := g.baseLocked()
	c := g.capacityLocked()
	if c/max(base, 1) >= int64(g.workers) {
		return 0
	}
	return ramp / time.Duration(2*g.allowsLocked(base, c))
}

// fitsAtOnceLocked reports whether t's predicted peak fits within capacity
// beside what the running attempts hold or may still take. It tries a
// bound that needs no look at the reservations first: with many small
// tasks in flight, the loop asks for every one.
func (g *governor) fitsAtOnceLocked(t *task, capacity int64) bool {
	b, _ := g.baseLocked()
	want := g.predictFrom(b, t.need)
	if g.withNeed == 0 {
		bound := int64(len(g.res)) * g.predictFrom(b, 0)
		for _, s := range g.slots {
			bound += s.usage
		}
		if bound+want <= capacity {
			return true
		}
	}
	return g.committedLocked()+want <= capacity
}

// member is one attempt in a projection of memory over time.
type member struct {
	age   time.Duration // how long it has run at the projection's start
	end   time.Duration // the age at which it is expected to end
	peak  int64         // its predicted peak
	floor int64         // what it uses now: it is not assumed to use less
	flat  bool          // it holds the larger of floor and peak until the end of the projection
}

// endAfter predicts when an attempt that has run for age ends: the median
// of the recent lives longer than age (sorted), so that an old attempt is
// expected to live as long as the long-lived did. ok is false when it has
// outlived them all.
func endAfter(lives []time.Duration, age time.Duration) (end time.Duration, ok bool) {
	i, _ := slices.BinarySearch(lives, age+1)
	if i == len(lives) {
		return 0, false
	}
	return lives[i+(len(lives)-i)/2], true
}

// fitsOverTimeLocked reports whether t, started now, keeps the workers'
// memory within capacity over its predicted life. Each attempt is assumed
// to grow as fast as the fastest recent attempt did (growthLocked) and to
// end when endAfter says; after its end its slot holds what an attempt
// holds at its start. An attempt with a need of its own (one the OOM
// killer or a preemption stopped), one that has outlived every recent
// life, and a worker with several tasks in flight are assumed to hold
// their peak throughout. The sum is checked wherever some attempt's
// predicted use steps up.
func (g *governor) fitsOverTimeLocked(t *task, capacity int64) bool {
	env, ramp, lives, ok := g.growthLocked()
	if !ok || ramp <= 0 {
		return false
	}
	life, _ := endAfter(lives, 0)
	now := time.Now()
	perSlot := make([][]*reservation, len(g.slots))
	var ms []member
	for _, r := range g.res {
		if r.slot < 0 {
			ms = append(ms, member{end: life, peak: g.predictLocked(r.need), flat: r.need > 0})
		} else {
			perSlot[r.slot] = append(perSlot[r.slot], r)
		}
	}
	var idle int64
	for i, rs := range perSlot {
		use := g.slots[i].usage
		switch {
		case len(rs) == 0:
			idle += use
		case len(rs) > 1:
			var need int64
			for _, r := range rs {
				need = max(need, g.predictLocked(r.need))
			}
			ms = append(ms, member{peak: need, floor: use, flat: true})
		default:
			r := rs[0]
			age := now.Sub(r.start)
			end, ok := endAfter(lives, age)
			ms = append(ms, member{age: age, end: end, peak: g.predictLocked(r.need), floor: use, flat: r.need > 0 || !ok})
		}
	}
	ms = append(ms, member{end: life, peak: g.predictLocked(t.need), flat: t.need > 0})

	// use is what m holds at time at from now.
	use := func(m member, at time.Duration) int64 {
		if m.flat {
			return max(m.floor, m.peak)
		}
		if m.age+at >= m.end {
			return int64(env[0] * float64(m.peak))
		}
		return max(m.floor, int64(env[binOf(m.age+at, ramp)]*float64(m.peak)))
	}
	// The new attempt lives from 0 to life; the sum can only rise where
	// some attempt enters a new bin.
	points := []time.Duration{0}
	for _, m := range ms {
		if m.flat {
			continue
		}
		for k := 1; k < profileBins; k++ {
			if at := ramp*time.Duration(k)/profileBins - m.age; at > 0 && at < life {
				points = append(points, at)
			}
		}
	}
	for _, at := range points {
		sum := idle
		for _, m := range ms {
			sum += use(m, at)
		}
		if sum > capacity {
			return false
		}
	}
	return true
}

// reserve sets memory aside for t as it is dispatched. The runner that
// took t may have bound it already.
func (g *governor) reserve(t *task) {
	g.mu.Lock()
	if _, basis := g.baseLocked(); basis == BasisColdStart {
		g.lastCold = time.Now()
	}
	if g.staggered {
		g.lastStaggered = time.Now()
	}
	r := g.res[t.id]
	if r == nil {
		r = &reservation{slot: -1, others: g.othersLocked()}
		g.res[t.id] = r
	}
	if r.need == 0 && t.need > 0 {
		g.withNeed++
	}
	r.need = t.need
	g.mu.Unlock()
}

// bind records that the runner in slot took task id. It may come before
// the loop's reserve, never after its release.
func (g *governor) bind(id uint64, slot int) {
	g.bindSlot(id, slot, false)
}

// bindAlone is bind for a slot that runs one attempt at a time (one-shot):
// any other attempt still reserved on it has ended, and its trace is kept
// as it is rather than dropped as that of an attempt sharing its worker.
func (g *governor) bindAlone(id uint64, slot int) {
	g.bindSlot(id, slot, true)
}

func (g *governor) bindSlot(id uint64, slot int, alone bool) {
	g.mu.Lock()
	if alone {
		for other, r := range g.res {
			if other != id && r.slot == slot {
				r.ended = true
			}
		}
	}
	r := g.res[id]
	if r == nil {
		r = &reservation{others: g.othersLocked()}
		g.res[id] = r
	}
	r.slot, r.start, r.ended = slot, time.Now(), false
	g.mu.Unlock()
}

// release frees task id's reservation when its attempt ended or it went
// back to the queue, and returns what processes other than the workers
// held throughout (reservation.others).
func (g *governor) release(id uint64) others {
	g.mu.Lock()
	var m meter
	slot := -1
	o := g.othersLocked()
	if r := g.res[id]; r != nil {
		if r.slot >= 0 {
			slot, m = r.slot, g.slots[r.slot].meter
		}
		if r.need > 0 {
			g.withNeed--
		}
		o = r.settle(time.Now())
	}
	delete(g.res, id)
	if g.victim == id {
		g.victim = 0
	}
	blocked := g.blocked
	g.mu.Unlock()
	// The slot's last sample still holds what the attempt used; while the
	// loop waits for memory, read what the worker holds now.
	if !blocked || m == (meter{}) {
		return o
	}
	if u, ok := m.read(); ok {
		g.mu.Lock()
		if g.slots[slot].meter == m {
			g.slots[slot].usage = u
		}
		g.mu.Unlock()
	}
	return o
}

// setGroup records the cgroup of the worker in slot, or nil.
func (g *governor) setGroup(slot int, grp *memory.Group) {
	g.mu.Lock()
	g.slots[slot].meter, g.slots[slot].usage = meter{group: grp}, 0
	g.mu.Unlock()
}

// setWatch records the watch of the process just started in slot, whose
// worker has no cgroup of its own. It does nothing when the governor is
// off (g is nil). The watch answers 0 once it stops, so a slot whose
// process ended holds nothing until the next one starts.
func (g *governor) setWatch(slot int, w *memory.Watch) {
	if g == nil {
		return
	}
	g.mu.Lock()
	g.slots[slot].meter, g.slots[slot].usage = meter{watch: w}, 0
	g.mu.Unlock()
}

// workerLive records that a persistent worker started in slot (live) or
// ended (!live). It does nothing when the governor is off.
func (g *governor) workerLive(slot int, live bool) {
	if g == nil {
		return
	}
	g.mu.Lock()
	g.slots[slot].live, g.slots[slot].up = live, false
	g.mu.Unlock()
}

// workerUp records that slot's persistent worker is ready.
func (g *governor) workerUp(slot int) {
	if g == nil {
		return
	}
	g.mu.Lock()
	g.slots[slot].up = true
	g.mu.Unlock()
}

// mayStartWorker reports whether slot may start a persistent worker now,
// and if so counts it live from now (workerLive(slot, false) undoes that
// when the start fails), so that slots asking at once are answered one
// after another.
// Workers that load a model or a library as they start hold much before
// their first task: started together in a container too small for all of
// them, they were OOM-killed together at start-up, and the pool gave up
// with nothing done. So where memory is short (the workers, each at the
// most a running worker holds and at least coldGuess, would not fit in
// half the capacity), a worker starts only beside workers that are ready,
// one start at a time, and only while one more worker of the most a
// running one holds fits beside what is committed. The first worker
// always may. It is always true when the governor is off.
func (g *governor) mayStartWorker(slot int) bool {
	if g == nil {
		return true
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	live, starting := 0, false
	var most int64
	for i, s := range g.slots {
		if i == slot || !s.live {
			continue
		}
		live++
		most = max(most, s.usage)
		starting = starting || !s.up
	}
	c := g.capacityLocked()
	ok := false
	switch {
	case live == 0:
		ok = true
	case g.shedding:
		// The head waits for idle workers to end (idleInTheWayLocked).
	case int64(g.workers)*max(coldGuess, most) <= c/2:
		ok = true
	case starting:
	default:
		ok = g.committedLocked()+most <= c
	}
	if ok {
		g.slots[slot].live, g.slots[slot].up = true, false
	}
	return ok
}

// observe learns from task id's successful attempt a, before its
// reservation is released: its peak, how long it lived and how its memory
// grew meanwhile.
func (g *governor) observe(id uint64, a Attempt) {
	if a.PeakRSS <= 0 {
		return
	}
	g.mu.Lock()
	pushRing(&g.peaks, &g.peakNext, a.PeakRSS, peakWindow)
	if r := g.res[id]; r != nil && r.slot >= 0 {
		if life := a.End.Sub(r.start); life > 0 {
			pushRing(&g.durs, &g.durNext, life, lifeWindow)
			pushRing(&g.profiles, &g.profNext, profileOf(r.trace, life, a.PeakRSS), profileWindow)
		}
	}
	g.unlearnt = true
	if time.Since(g.learntAt) >= learnEvery {
		g.learnLocked()
	}
	g.mu.Unlock()
	g.emitIfChanged()
}

// pushRing adds v to a ring of at most size values whose next slot to
// overwrite, once it is full, is *next.
func pushRing[T any](ring *[]T, next *int, v T, size int) {
	if len(*ring) < size {
		*ring = append(*ring, v)
		return
	}
	(*ring)[*next] = v
	*next = (*next + 1) % size
}

// profileOf is the profile of an attempt that lived life and peaked at
// peak, from its trace. A sample counts from the previous sample's age on,
// since the attempt may have reached it any time in between: the profile
// errs on the side of growing early. With too few samples to tell, the
// attempt counts as holding its peak from the start.
func profileOf(trace []usagePoint, life time.Duration, peak int64) profile {
	var pr profile
	if len(trace) < minTrace || life <= 0 {
		for k := range pr {
			pr[k] = 1
		}
		return pr
	}
	for _, pt := range trace {
		peak = max(peak, pt.usage)
	}
	var since time.Duration
	for _, pt := range trace {
		k := binOf(since, life)
		pr[k] = max(pr[k], float64(pt.usage)/float64(peak))
		since = pt.age
	}
	for k := 1; k < profileBins; k++ {
		pr[k] = max(pr[k], pr[k-1])
	}
	pr[profileBins-1] = 1
	return pr
}

// binOf is the profile bin of age in a life of span.
func binOf(age, span time.Duration) int {
	if age <= 0 {
		return 0
	}
	if age >= span {
		return profileBins - 1
	}
	return min(int(float64(age)/float64(span)*profileBins), profileBins-1)
}

// growthLocked is what the governor knows of how attempts grow over time:
// env, per bin, the largest fraction of its peak any recent attempt had
// reached by then; ramp, the 25th percentile of recent lives, over which
// env is laid out, so that attempts are assumed to grow faster than most
// did; and lives, the recent lives, sorted. ok is false until an attempt
// has succeeded, and always with a hint (Config.MemPerTask), which asks
// for each task's peak to be set aside for its whole life.
func (g *governor) growthLocked() (env profile, ramp time.Duration, lives []time.Duration, ok bool) {
	m := &g.growth
	return m.env, m.ramp, m.lives, m.ok
}

// learnLocked brings what baseLocked and growthLocked return up to date
// with the recent peaks, lives and profiles. The loop asks for them for
// every admission, so they are worked out here: after a success, at most
// every learnEvery, and by the sampler for what is left.
func (g *governor) learnLocked() {
	g.unlearnt, g.learntAt = false, time.Now()
	if len(g.peaks) > 0 {
		s := slices.Clone(g.peaks)
		slices.Sort(s)
		// The 90th percentile, plus a tenth for what the sample missed.
		p := s[min(len(s)-1, len(s)*9/10)]
		g.fromPeaks = p + p/10
	}
	if g.hint > 0 || len(g.profiles) == 0 || len(g.durs) == 0 {
		return
	}
	var env profile
	for _, pr := range g.profiles {
		for k, f := range pr {
			env[k] = max(env[k], f)
		}
	}
	d := slices.Clone(g.durs)
	slices.Sort(d)
	g.growth = growthModel{env: env, ramp: d[len(d)/4], lives: d, ok: true}
}

// growthModel is what growthLocked returns.
type growthModel struct {
	env   profile
	ramp  time.Duration
	lives []time.Duration
	ok    bool
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

// judgeAlone says what an OOM kill of t's attempt, which peaked at peak
// bytes, shows of the task if the attempt ran alone (settle asks only
// then); t.need is still the need the attempt was given, and t.others what
// processes other than the workers held throughout it.
//
// whole: the attempt had the whole budget. Its peak reached it (within a
// fiftieth, as where its cgroup's limit is the budget and the kill came at
// that limit), or it needed all of it, so that it could start only with
// nothing beside it, and the others left it the budget: the walls, less
// what they held, were no smaller. The task needs more memory than the
// pool may use (poison).
//
// crowded: the others left it less than the budget, and it had all they
// left: it needed at least the capacity beside them. The task may need no
// more than the budget; what the others held is why it did not fit.
// Judged against the budget alone, such a task was poison, though a
// program that uses the pool and holds more than half its container's
// memory was what left it no room.
//
// Neither: it may fit with more, and is retried with its need raised.
func (g *governor) judgeAlone(t *task, peak int64) (whole, crowded bool) {
	if peak >= g.budget-g.budget/50 {
		return true, false
	}
	if w, ok := g.wallBeside(t.others); ok && w.room < g.budget {
		return false, t.need >= g.capacityBeside(t.others)
	}
	return t.need >= g.budget, false
}

// MemoryGovernor says in one line whether the memory governor is on, the
// budget it plans with and where that comes from, and what measures each
// worker: its cgroup, or without one the private memory of its process
// tree, such as "memory governor on: a budget of 2.7 GiB (the enclosing
// cgroup's limit of 3 GiB less a reserve), each worker measured by the
// private memory of its process tree (anonymous memory and swap)".
func (p *Pool) MemoryGovernor() string {
	if p.gov == nil {
		return "memory governor off"
	}
	return p.gov.describe()
}

// describe is what MemoryGovernor says of a governor that is on.
func (g *governor) describe() string {
	var from string
	switch g.budget {
	case g.userBudget:
		from = "as given"
	case g.cgBudget:
		from = "the enclosing cgroup's limit of " + bytesize.Format(g.cg) + " less a reserve"
	case g.availBudget:
		from = "the host's available memory at start less a reserve"
	default:
		from = "the host's memory of " + bytesize.Format(g.host) + " less a reserve"
	}
	measure := "its own cgroup"
	if !g.perWorker {
		measure = "the private memory of its process tree (anonymous memory and swap)"
	}
	if g.budget <= 1 && g.budget != g.userBudget {
		// scopeBudget's 1 stands for nothing left: the reserve took it all.
		// Without a cgroup per worker (checkBudget refuses it with one)
		// tasks then run one at a time.
		wall := g.host
		if g.budget == g.cgBudget {
			wall = g.cg
		}
		return fmt.Sprintf("memory governor on: no memory left for the workers (%s, and the reserve is %s): tasks run one at a time, each worker measured by %s",
			strings.TrimSuffix(from, " less a reserve"), bytesize.Format(reserveFor(wall, g.memReserve)), measure)
	}
	return fmt.Sprintf("memory governor on: a budget of %s (%s), each worker measured by %s", bytesize.Format(g.budget), from, measure)
}

// poisonMessage explains a Poison task whose last attempt was a.
func (g *governor) poisonMessage(a Attempt) string {
	return fmt.Sprintf("killed by the OOM killer while running alone with the whole memory budget of %s (peak %s): it needs more memory than the pool may use",
		bytesize.Format(g.budget), bytesize.Format(a.PeakRSS))
}

// crowdedMessage explains a task that failed because processes other than
// the workers, holding o, left its attempt a, run alone, less memory than
// it needed (judgeAlone's crowded), such as "killed by the OOM killer while
// running alone (peak 180 MiB): processes other than the pool's workers
// held 395 MiB of the enclosing cgroup's limit of 600 MiB, which left it
// 205 MiB, less than it needs; it may fit within the memory budget of 536
// MiB when they hold less".
func (g *governor) crowdedMessage(a Attempt, o others) string {
	w, _ := g.wallBeside(o)
	return fmt.Sprintf("killed by the OOM killer while running alone (peak %s): processes other than the pool's workers held %s of %s, which left it %s, less than it needs; it may fit within the memory budget of %s when they hold less",
		bytesize.Format(a.PeakRSS), bytesize.Format(w.held), w, bytesize.Format(max(w.room, 0)), bytesize.Format(g.budget))
}

// stateLocked is the governor's current plan.
func (g *governor) stateLocked() MemoryState {
	base, basis := g.baseLocked()
	c := g.capacityLocked()
	return MemoryState{Budget: c, InUse: g.inUse, Predicted: base, Allows: g.allowsLocked(base, c), Basis: basis}
}

// allowsLocked is how many attempts of predicted peak base memory allows
// at once within c: as many as fit with their peaks side by side, or, once
// the governor knows how attempts grow, as many as fit when they start
// evenly spread over a life, the oldest at its peak.
func (g *governor) allowsLocked(base, c int64) int {
	base = max(base, 1)
	n := int(min(int64(g.workers), max(1, c/base)))
	env, ramp, lives, ok := g.growthLocked()
	if !ok || ramp <= 0 {
		return n
	}
	life, _ := endAfter(lives, 0)
	for k := n + 1; k <= g.workers; k++ {
		var sum int64
		for j := 1; j <= k; j++ {
			sum += int64(env[binOf(life*time.Duration(j)/time.Duration(k), ramp)] * float64(base))
		}
		if sum > c {
			break
		}
		n = k
	}
	return n
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
	meters, usage, inUse := g.readWorkers()
	w := g.readWalls()

	g.mu.Lock()
	now := time.Now()
	g.recordLocked(meters, usage, now)
	g.inUse = inUse
	if g.unlearnt {
		g.learnLocked()
	}
	if w.hostErr == nil && g.host > 0 {
		g.hostOutside = max(0, w.hostUsed-inUse)
	}
	if w.cgErr == nil && g.cg > 0 {
		g.cgOutside = max(0, w.cgUsed-inUse)
	}
	for _, r := range g.res {
		r.seen(now, g.othersLocked())
	}
	victim, slot := uint64(0), -1
	if w.short && (g.victim == 0 || time.Since(g.victimAt) > victimPatience) {
		victim, slot = g.youngestLocked()
		if victim != 0 {
			g.victim, g.victimAt = victim, time.Now()
		}
	}
	wake := g.blocked
	var ev *Event
	if g.p.cfg.Observer != nil {
		ev = &Event{Kind: EventMemorySample, Time: now, Usage: g.usageLocked(usage)}
		st := g.stateLocked()
		ev.Memory = &st
	}
	g.mu.Unlock()

	if victim != 0 {
		g.p.preempt(slot, victim)
	}
	if wake {
		select {
		case g.wake <- struct{}{}:
		default:
		}
	}
	g.emitIfChanged()
	if ev != nil {
		g.p.emit(*ev)
	}
}

// readWorkers reads what the worker in each slot holds now, without the
// lock: the slots' meters, each one's usage (0 when it cannot tell), and
// their sum.
func (g *governor) readWorkers() (meters []meter, usage []int64, inUse int64) {
	g.mu.Lock()
	meters = make([]meter, len(g.slots))
	for i, s := range g.slots {
		meters[i] = s.meter
	}
	g.mu.Unlock()
	usage = make([]int64, len(meters))
	for i, m := range meters {
		if u, ok := m.read(); ok {
			usage[i] = u
			inUse += u
		}
	}
	return meters, usage, inUse
}

// walls is what sample reads of the host and of the supervisor's cgroup.
type walls struct {
	hostUsed int64 // host memory in use, when g.host > 0 and hostErr is nil
	hostErr  error
	cgUsed   int64 // the cgroup's working set, when g.cg > 0 and cgErr is nil
	cgErr    error
	short    bool // memory runs short: above the watermark, or under pressure
}

// readWalls reads the host's and the cgroup's use, after the workers'
// (what grows in between counts as outside, which errs on the cautious
// side), and says whether memory runs short.
func (g *governor) readWalls() walls {
	var w walls
	if g.host > 0 {
		w.hostUsed, w.hostErr = g.sensor.HostUsed()
	}
	if g.cg > 0 {
		w.cgUsed, w.cgErr = g.sensor.CgroupUsed()
	}
	if g.preemptAbove > 0 {
		w.short = w.hostErr == nil && g.host > 0 && float64(w.hostUsed) > g.preemptAbove*float64(g.host) ||
			w.cgErr == nil && g.cg > 0 && float64(w.cgUsed) > g.preemptAbove*float64(g.cg)
	}
	if !w.short && g.preemptPSI > 0 {
		if psi, err := g.sensor.Pressure(); err == nil && psi > g.preemptPSI {
			w.short = true
		}
	}
	return w
}

// recordLocked stores the usage read from meters in the slots that still
// have them, and adds it, at now, to the trace of each attempt alone on
// its worker: with several tasks in flight, the worker's memory is not one
// task's.
func (g *governor) recordLocked(meters []meter, usage []int64, now time.Time) {
	for i, m := range meters {
		if g.slots[i].meter == m {
			g.slots[i].usage = usage[i]
		}
	}
	perSlot := make([]int, len(meters))
	for _, r := range g.res {
		if r.slot >= 0 && !r.ended {
			perSlot[r.slot]++
		}
	}
	for _, r := range g.res {
		if r.slot >= 0 && !r.ended && meters[r.slot] != (meter{}) && g.slots[r.slot].meter == meters[r.slot] {
			if perSlot[r.slot] == 1 {
				r.trace = appendTrace(r.trace, usagePoint{age: now.Sub(r.start), usage: usage[r.slot]})
			} else {
				r.trace = nil
			}
		}
	}
}

// usageLocked names each busy slot's usage by one task it runs, for
// EventMemorySample.
func (g *governor) usageLocked(usage []int64) []TaskUsage {
	var out []TaskUsage
	seen := make([]bool, len(usage))
	for id, r := range g.res {
		if r.slot >= 0 && r.slot < len(usage) && !seen[r.slot] {
			seen[r.slot] = true
			out = append(out, TaskUsage{TaskID: id, Bytes: usage[r.slot]})
		}
	}
	return out
}

// appendTrace adds pt to trace, halving the trace when it is full: each
// pair of samples becomes one, at the earlier age with the larger usage.
func appendTrace(trace []usagePoint, pt usagePoint) []usagePoint {
	if len(trace) >= maxTrace {
		for i := 0; i < len(trace)/2; i++ {
			a, b := trace[2*i], trace[2*i+1]
			trace[i] = usagePoint{age: a.age, usage: max(a.usage, b.usage)}
		}
		trace = trace[:len(trace)/2]
	}
	return append(trace, pt)
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
