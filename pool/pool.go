// Package pool runs tasks on supervised worker processes that may die at any
// moment: killed by the OOM killer, a signal, a segfault or a timeout.
//
// A Pool starts workers by exec (never by forking the supervisor), feeds them
// tasks, watches how each worker ends, and gives every submitted task exactly
// one terminal state. When a worker dies, only the attempt that was running on
// it is charged, with a precise Cause; the policy then retries, skips or
// aborts.
//
// Submit from one goroutine and read Results from another:
//
//	p, err := pool.New(pool.Config{Command: []string{"python3", "work.py"}, Protocol: pool.Line})
//	if err != nil { ... }
//	go func() {
//		defer p.Close()
//		for _, line := range lines {
//			if _, err := p.Submit(ctx, pool.Task{Input: line}); err != nil {
//				return
//			}
//		}
//	}()
//	for r := range p.Results() { ... }
//	if err := p.Err(); err != nil { ... }
package pool

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/safepool/safepool/internal/bytesize"
	"github.com/safepool/safepool/internal/memory"
	"github.com/safepool/safepool/internal/protocol"
	"github.com/safepool/safepool/internal/reaper"
	"github.com/safepool/safepool/internal/worker"
)

// Pool runs tasks on supervised worker processes. Create it with New; its
// zero value is not usable. Every Pool must be ended by Close (when all tasks
// are submitted) or Abort, and its Results read until closed: only then have
// all its workers, and every process they started, exited. If the program
// exits first, a guardian process that New started ends them.
type Pool struct {
	cfg Config

	mem    *memory.Manager // never nil; without a cgroup per worker where they cannot be made
	guard  *reaper.Guard   // marks the workers, ends what they leave behind; never nil
	oomLog *memory.OOMLog  // nil where the kernel log cannot be read
	gov    *governor       // nil when the memory governor is off
	slots  []*runner       // the runners, by slot
	// preempts carries, by slot, the ids of tasks the memory governor
	// stops (see Pool.preempt). Each is buffered; the slot's runner
	// receives, and ignores an id that is not running on it.
	preempts []chan uint64
	spool    *spooler // keeps one-shot output; nil for other protocols
	// left ends what ended one-shot attempts and persistent workers leave
	// behind where no worker cgroup does; nil with a cgroup per worker.
	left *leftovers
	// notices says what the pool changed of its configuration, and why.
	notices []string
	// commandPath is where Config.Command[0] was found, an absolute path,
	// or empty (then each start looks it up).
	commandPath string
	// procs counts the one-shot attempts starting or running now: those
	// that hold files.
	procs atomic.Int64
	// backlog is how many tasks are waiting to run or running, as the
	// loop saw them last; a runner reads it to take no more than its share
	// (see runner.hasRoom).
	backlog atomic.Int64
	// idle counts the persistent runners whose worker is ready and holds
	// no task, and which wait for one on dispatch (runner.setIdle). While
	// one does, the loop offers the queue's head to them alone: a task goes
	// to a free worker, never behind another task on a busy one.
	idle atomic.Int64
	// saidOverMaxRSS records that EventWorkerOverMaxRSS was sent.
	saidOverMaxRSS atomic.Bool

	submitMu sync.Mutex // serialises Submit so that ids follow the order of acceptance
	lastID   uint64     // guarded by submitMu

	submitCh chan *task     // Submit → loop
	dispatch chan *task     // loop → runners: a task to run now (persistent: on an idle worker)
	pipeline chan *task     // loop → busy persistent runners: a task sent behind others, offered only while idle is 0
	reports  chan report    // runners → loop
	results  chan Result    // loop → user
	closeCh  chan struct{}  // closed by Close
	abortCh  chan struct{}  // closed by the first Abort
	killCh   chan struct{}  // closed by the second Abort
	quit     chan struct{}  // closed by the loop when every task has ended
	runners  sync.WaitGroup // one per worker slot

	closeOnce, abortOnce, killOnce sync.Once

	mu     sync.Mutex // guards the fields below
	stats  Stats
	failed []Result
	err    error

	emitMu sync.Mutex // serialises calls to cfg.Observer

	holdMu   sync.Mutex  // serialises Pause and Resume
	holdWant atomic.Bool // paused by Pause: what the runners are to be
}

// task is the loop's record of one submitted task. Only the loop goroutine
// changes it, except that a runner holds it while an attempt runs.
type task struct {
	id uint64
	t  Task
	// base is a batch's id, its first item's; items are the indexes of the
	// batch's items this task runs, nil for a task that is not a batch.
	// A task split from a batch has the id of its first item.
	base      uint64
	items     []uint32
	attempts  []Attempt
	deaths    int       // charged attempts that ended in a worker death
	errors    int       // charged attempts that ended in a task error
	notBefore time.Time // backoff: not to run before this
	// passed records that the task was requeued uncharged once for a
	// death that may not have been its doing: a line worker's exit 0
	// while it was in flight, or a framed worker's death while it read the
	// task (blame, settle.go). The next such death is charged. A line
	// block's pass is its running line's: that line goes back alone with
	// passed set (scheduler.batchEnded), never the block.
	passed bool
	// ooms counts charged attempts the OOM killer took that the memory
	// governor handles; they do not count against Config.Retries.
	ooms int
	// need is what the governor learned the task needs, from its own
	// attempts that the OOM killer took or that were preempted; 0 if none.
	need int64
	// alone reports whether the running attempt has had no other attempt
	// beside it since it was dispatched.
	alone bool
	// others is what processes other than the workers held throughout the
	// last attempt, set as the loop forgets it (governor.release).
	others others
	// stdin is Task.Stdin, kept for every attempt from the first one's
	// start (keepStdin), which drops the task's own copy, until the task
	// ends (scheduler.finish).
	stdin *worker.Stdin
	// ended is set by the runner that holds the task once its one-shot
	// attempt's process has ended, before that runner may take another
	// task (oneshot.go), and cleared by the loop as it forgets the attempt:
	// an attempt whose report is still on its way runs beside nothing.
	ended atomic.Bool
	// in is the count of Stats that holds the task's items (its one for a
	// task that is not a batch) until the loop counts them in their next
	// state: Queued from Submit, Running from dispatch, Settling once the
	// loop saw its one-shot attempt ended before its report
	// (scheduler.dispatched). A part split from a batch starts in the
	// batch's. The loop's alone.
	in holder
	// out is the output of the task's last one-shot attempt. The runner
	// that holds the task sets it before it reports the attempt.
	out *attemptOutput
	// fileWaits counts the times the task's one-shot process could not
	// start for want of file descriptors or processes while no other ran.
	fileWaits int
	// early counts the answers of the batch's running attempt that were
	// delivered before it ended (scheduler.answered); the loop's alone.
	early int
}

func (t *task) charged() int { return t.deaths + t.errors + t.ooms }

// count is how many submitted ids t stands for: its items, or 1.
func (t *task) count() int {
	if t.items != nil {
		return len(t.items)
	}
	return 1
}

// split returns a task of batch t that runs the items at indexes, with
// nothing charged yet, its items counted where the batch's are (in): how a
// batch's items go their own ways.
func (t *task) split(indexes []uint32) *task {
	return &task{id: t.base + uint64(indexes[0]), t: t.t, base: t.base, items: indexes,
		need: max(t.t.MemHint, 0), alone: t.alone, others: t.others, in: t.in}
}

// timeout is the limit on t's attempts: its own Task.Timeout, else
// cfg.Timeout; 0 means none.
func (t *task) timeout(cfg *Config) time.Duration {
	if t.t.Timeout > 0 {
		return t.t.Timeout
	}
	return cfg.Timeout
}

// timeoutGrace is the grace of t's attempts that run out of time: its own
// Task.TimeoutGrace, else cfg.TimeoutGrace (which New made nonzero); 0
// or less means SIGKILL at once.
func (t *task) timeoutGrace(cfg *Config) time.Duration {
	if t.t.TimeoutGrace != 0 {
		return t.t.TimeoutGrace
	}
	return cfg.TimeoutGrace
}

// FitWorkers returns how many workers a pool of cfg runs at once: cfg's
// Workers (the CPUs for 0), lowered as New lowers it to what this
// process's open-file and process limits leave room for, and the notices
// that say why. It starts nothing: a dry run shows the slots a run has.
func FitWorkers(cfg Config) (int, []string, error) {
	if err := cfg.normalize(); err != nil {
		return 0, nil, err
	}
	var notices []string
	if n := cfg.fitFiles(); n != "" {
		notices = append(notices, n)
	}
	n, err := cfg.fitPids()
	if err != nil {
		return 0, nil, err
	}
	if n != "" {
		notices = append(notices, n)
	}
	return cfg.Workers, notices, nil
}

// New validates cfg, checks that the worker command can be started, and
// starts the pool's workers. A command that cannot be found or executed is
// reported at once as a *StartError.
func New(cfg Config) (*Pool, error) {
	if err := cfg.normalize(); err != nil {
		return nil, err
	}
	path, err := checkCommand(cfg)
	if err != nil {
		return nil, err
	}
	cfg.Stdout, cfg.Stderr = syncWriters(cfg.Stdout, cfg.Stderr)
	var notices []string
	if n := cfg.fitFiles(); n != "" {
		notices = append(notices, n)
	}
	n, err := cfg.fitPids()
	if err != nil {
		return nil, err
	}
	if n != "" {
		notices = append(notices, n)
	}
	p := &Pool{
		cfg:      cfg,
		notices:  notices,
		submitCh: make(chan *task),
		dispatch: make(chan *task),
		pipeline: make(chan *task),
		reports:  make(chan report, cfg.Workers),
		results:  make(chan Result),
		closeCh:  make(chan struct{}),
		abortCh:  make(chan struct{}),
		killCh:   make(chan struct{}),
		quit:     make(chan struct{}),
	}
	if filepath.IsAbs(path) {
		// Looked up once for the pool, not per process (a one-shot pool
		// starts many): the same file, as long as the pool lives.
		p.commandPath = path
	}
	p.stats.Started = time.Now()
	// Every worker gets a memory cgroup of its own where cgroups can be
	// made, limit or not: its oom_kill counter then names the OOM killer's
	// victims inside the worker (behind "sh -c", say), whichever limit was
	// hit: the worker's, an enclosing container's or the host's.
	m, err := memory.NewManager()
	if err != nil {
		return nil, fmt.Errorf("pool: memory control: %w", err)
	}
	p.mem = m
	p.gov = newGovernor(p, &p.cfg, m.Mode())
	if err := p.gov.checkBudget(); err != nil {
		m.Close()
		return nil, err
	}
	// Every worker carries the pool's marker, which its descendants
	// inherit: the pool's end, or the guardian if the supervisor dies,
	// ends every process that still has it (internal/reaper).
	p.guard = reaper.Start(m.Dir())
	p.cfg.Env = p.guard.Env(p.cfg.Env)
	if l, err := memory.WatchOOMKills(); err == nil {
		p.oomLog = l
		if !m.Mode().PerWorker() {
			// The workers' OOM kills are the supervisor's cgroup's.
			l.KeepReserve()
		}
	}
	if cfg.Protocol == OneShot {
		p.spool = newSpooler(&p.cfg)
	}
	if !m.Mode().PerWorker() {
		var among func() ([]int, error)
		if m.Mode() == memory.ModeEnclosing {
			// Every process the workers start stays in the cgroup: a
			// sweep after each second of jobs reads the environment of
			// those alone, not of every process of the host (an open
			// each, charged to the cgroup the workers share). The
			// pool's last sweep still looks at all of /proc.
			among = m.EnclosedPIDs
		}
		p.left = newLeftovers(p.quit, among)
		go p.left.run() // ends when p.quit is closed; shutdown waits for it
	}
	for i := 0; i < cfg.Workers; i++ {
		c := make(chan uint64, 1)
		p.preempts = append(p.preempts, c)
		p.slots = append(p.slots, &runner{p: p, slot: i, preempt: c,
			holdKick: make(chan struct{}, 1), holdAck: make(chan bool, 1)})
	}
	for _, r := range p.slots {
		p.runners.Add(1)
		go r.run()
	}
	if p.gov != nil {
		p.runners.Add(1)
		go p.gov.run()
	}
	go p.loop()
	return p, nil
}

// Pause stops every worker process of the pool where it is (SIGSTOP to its
// process group) and starts no task and no worker until Resume, as a
// terminal's Ctrl-Z stops the processes of a foreground job, which
// safepool's workers are not: each has a process group of its own. While
// paused, no clock of a task's timeout, start-up deadline or stall check
// runs. Pausing a paused pool, or one that has ended, does nothing.
// safepool's command line calls it on SIGTSTP, then stops itself.
//
// Every other process that carries the pool's marker is stopped too: the
// daemons that tasks started in sessions or process groups of their own,
// which the workers' groups do not hold, and would otherwise run on.
func (p *Pool) Pause() {
	p.hold(true)
	// Only a /proc that cannot be read fails it: nothing is left to stop.
	_ = p.guard.Suspend()
}

// Resume lets the processes that Pause stopped go on (SIGCONT), and the
// pool start tasks again.
func (p *Pool) Resume() {
	// The runners first: each continues its worker only once its clocks
	// are moved on and its page says how long it was paused, which a
	// worker reads as soon as it runs. Then the daemons, and any worker
	// whose runner has not come back within holdWait.
	p.hold(false)
	_ = p.guard.Resume()
}

// hold asks every runner to pause (or go on), and waits for them to have
// done it, holdWait at most: a runner busy elsewhere (reaping a process,
// emptying a cgroup) does it once it comes back, so that a pause is never
// lost, but it is not waited for longer.
func (p *Pool) hold(pause bool) {
	p.holdMu.Lock()
	defer p.holdMu.Unlock()
	if p.holdWant.Load() == pause {
		return
	}
	for _, r := range p.slots {
		select {
		case <-r.holdAck: // an answer to an earlier request
		default:
		}
	}
	p.holdWant.Store(pause)
	for _, r := range p.slots {
		select {
		case r.holdKick <- struct{}{}:
		default: // a kick is pending: the runner reads holdWant then
		}
	}
	limit := time.NewTimer(holdWait)
	defer limit.Stop()
	for _, r := range p.slots {
		for done := false; !done; {
			select {
			case got := <-r.holdAck:
				done = got == pause
			case <-p.quit:
				return
			case <-p.abortCh:
				return
			case <-limit.C:
				return
			}
		}
	}
}

// holdWait is how long Pause and Resume wait for the runners.
const holdWait = 5 * time.Second

// preempt asks the runner of slot to stop task id to save memory. It never
// blocks: a request while one is still pending is dropped, and the governor
// asks again after victimPatience.
func (p *Pool) preempt(slot int, id uint64) {
	select {
	case p.preempts[slot] <- id:
	default:
	}
}

// reap ends what the workers left behind, once they have all ended and
// their cgroups are gone: every process that still carries the pool's
// marker, such as a daemon a task started, and then the guardian.
func (p *Pool) reap() {
	if err := p.guard.Close(); err != nil {
		p.setErr(fmt.Errorf("pool: ending the processes the workers left: %w", err))
	}
}

// MaxPipeline is the most Config.Pipeline may be. Each persistent worker
// has room for that many tasks sent ahead, made when it starts: a
// Pipeline in the billions used to end the program, out of memory, at
// the first worker's start. A few dozen tasks ahead already hide the
// round trip of the shortest tasks.
const MaxPipeline = 1 << 16

// DefaultGrace is Config.Grace when it is zero: how long a stopped worker
// has between SIGTERM and SIGKILL.
const DefaultGrace = 3 * time.Second

// DefaultTimeoutGrace is Config.TimeoutGrace when it is zero: how long an
// attempt that ran out of time has between SIGTERM and SIGKILL.
const DefaultTimeoutGrace = 3 * time.Second

const (
	// defaultStartTimeout is long enough for an interpreter to import a
	// large library from a cold disk, short enough that a worker that will
	// never be ready is noticed within a minute or two.
	defaultStartTimeout = 30 * time.Second
	// defaultStallTimeout leaves a worker blocked on its stdin time to be
	// woken by anything legitimate, and the user time to read the notice.
	defaultStallTimeout = 10 * time.Second
)

// DefaultMaxLine is Config.MaxLine's default: 64 MiB holds any line a text
// tool writes (a 40 MB image in base64, a JSON document of millions of
// numbers), and bounds what an endless line costs: 32 workers writing one
// at once hold 2 GiB, not all of memory.
const DefaultMaxLine = 64 << 20

func (c *Config) normalize() error {
	if len(c.Command) == 0 {
		return fmt.Errorf("pool: Config.Command is empty")
	}
	switch c.Protocol {
	case "":
		c.Protocol = OneShot
	case OneShot, Line, Framed:
	default:
		return fmt.Errorf("pool: unknown protocol %q (want oneshot, line or framed)", c.Protocol)
	}
	if c.Workers == 0 {
		c.Workers = runtime.NumCPU()
	}
	for i, kv := range c.Env {
		if strings.IndexByte(kv, 0) >= 0 {
			// exec refuses it; dropped, a variable would be missing
			// from every process without a word.
			name, _, _ := strings.Cut(kv, "=")
			return fmt.Errorf("pool: Config.Env[%d] (%q) holds a NUL byte", i, name)
		}
	}
	switch c.OnWorkerDeath {
	case "":
		c.OnWorkerDeath = Skip
		if c.Retries > 0 {
			c.OnWorkerDeath = Retry
		}
	case Skip, Retry, Abort:
	default:
		return fmt.Errorf("pool: unknown OnWorkerDeath %q", c.OnWorkerDeath)
	}
	if c.OnWorkerDeath == Skip && c.Retries > 0 {
		return fmt.Errorf("pool: Config.Retries is %d, but OnWorkerDeath skip retries nothing (Retry retries, then fails the task; Abort retries, then stops the pool)", c.Retries)
	}
	for _, v := range []struct {
		name string
		n    int64
	}{{"Workers", int64(c.Workers)}, {"Grace", int64(c.Grace)}, {"Backoff", int64(c.Backoff)}, {"MaxBackoff", int64(c.MaxBackoff)},
		{"Retries", int64(c.Retries)}, {"TaskErrorRetries", int64(c.TaskErrorRetries)},
		{"MaxTasksPerWorker", int64(c.MaxTasksPerWorker)}, {"MaxRSS", c.MaxRSS}, {"MemLimit", c.MemLimit},
		{"Timeout", int64(c.Timeout)}, {"Pipeline", int64(c.Pipeline)}, {"MaxPending", int64(c.MaxPending)},
		{"MemBudget", c.MemBudget}, {"MemReserve", c.MemReserve}, {"MemPerTask", c.MemPerTask},
		{"OutputInMemory", c.OutputInMemory}, {"StartTimeout", int64(c.StartTimeout)}, {"MaxLine", c.MaxLine}} {
		if v.n < 0 {
			return fmt.Errorf("pool: Config.%s is negative", v.name)
		}
	}
	for _, v := range []struct {
		name string
		n    int64
	}{{"MemLimit", c.MemLimit}, {"MemBudget", c.MemBudget}, {"MemPerTask", c.MemPerTask}} {
		if v.n > 0 && v.n < MinMemory {
			return fmt.Errorf("pool: Config.%s of %d bytes is below MinMemory (%s): no process can start in it", v.name, v.n, bytesize.Format(MinMemory))
		}
	}
	if math.IsNaN(c.PreemptAbove) || math.IsNaN(c.PreemptPSI) {
		// No comparison holds for NaN: the trigger would be off without
		// a word.
		return fmt.Errorf("pool: Config.PreemptAbove (%v) and Config.PreemptPSI (%v) must be numbers", c.PreemptAbove, c.PreemptPSI)
	}
	if c.PreemptAbove > 1 {
		// A percentage here would turn the trigger off without a word:
		// memory in use never passes 90 times the host's.
		return fmt.Errorf("pool: Config.PreemptAbove of %v is above 1: it is a fraction of memory (%.2f for %v%%)", c.PreemptAbove, c.PreemptAbove/100, c.PreemptAbove)
	}
	if c.PreemptAbove > 0 && c.PreemptAbove < 0.01 {
		// A percentage given as a fraction of a hundred twice over (the
		// Python client's mem_high=0.9, sent as 0.009): preemption
		// whenever 0.9% of memory is in use, that is always.
		return fmt.Errorf("pool: Config.PreemptAbove of %v is below 0.01: it is a fraction of memory (%.2f for %v%%)", c.PreemptAbove, c.PreemptAbove*100, c.PreemptAbove*10000)
	}
	if c.PreemptPSI > 100 {
		return fmt.Errorf("pool: Config.PreemptPSI of %v is above 100: it is a percentage", c.PreemptPSI)
	}
	if c.Pipeline > MaxPipeline {
		return fmt.Errorf("pool: Config.Pipeline of %d is above MaxPipeline (%d)", c.Pipeline, MaxPipeline)
	}
	if c.Backoff == 0 {
		c.Backoff = 50 * time.Millisecond
	}
	if c.MaxBackoff == 0 {
		c.MaxBackoff = 5 * time.Second
	}
	switch {
	case c.Protocol == OneShot:
		c.Pipeline = 1 // one process per attempt
	case c.Pipeline == 0 && c.Protocol == Framed:
		c.Pipeline = 8
	case c.Pipeline == 0:
		// A line worker that does not flush each answer would stall with
		// lines sent ahead; a caller who knows it does asks for more.
		c.Pipeline = 1
	}
	if c.MaxPending == 0 {
		c.MaxPending = 64 + 4*c.Workers*c.Pipeline
	}
	if c.Grace == 0 {
		c.Grace = DefaultGrace
	}
	if c.TimeoutGrace == 0 {
		c.TimeoutGrace = DefaultTimeoutGrace
	}
	if c.StartupFailures == 0 {
		c.StartupFailures = 3
	}
	if c.StartTimeout == 0 {
		c.StartTimeout = defaultStartTimeout
	}
	if c.StallTimeout == 0 {
		c.StallTimeout = defaultStallTimeout
	}
	if c.MaxLine == 0 {
		c.MaxLine = DefaultMaxLine
	}
	return nil
}

// checkCommand fails fast when the worker program does not exist. A one-shot
// command whose program name comes from the input is checked per attempt.
func checkCommand(c Config) (path string, err error) {
	if c.Protocol == OneShot && strings.Contains(c.Command[0], "{}") {
		return "", nil
	}
	path, err = exec.LookPath(c.Command[0])
	if err != nil {
		return "", &StartError{Command: c.Command, Err: err}
	}
	return path, nil
}

// Submit queues one task and returns its id. It blocks while MaxPending
// tasks are submitted but not yet delivered on Results, until ctx is done, or
// until the pool is closed or aborted (then it returns ErrClosed). The pool
// keeps t.Input and t.Args: do not change them afterwards. A framed task
// whose frame would be over the protocol's 1 GiB limit is refused with an
// error that wraps ErrTooLarge.
func (p *Pool) Submit(ctx context.Context, t Task) (uint64, error) {
	p.submitMu.Lock()
	defer p.submitMu.Unlock()
	select {
	case <-p.closeCh:
		return 0, ErrClosed
	case <-p.abortCh:
		return 0, ErrClosed
	default:
	}
	if p.cfg.Protocol == Framed {
		// A batch's frame holds its item indexes before the input.
		n := int64(len(t.Input))
		if t.Items > 0 {
			n += 4 + 4*int64(t.Items)
		}
		if n > protocol.DefaultMaxPayload {
			return 0, fmt.Errorf("%w: its frame would hold %d bytes, over the limit of %d", ErrTooLarge, n, protocol.DefaultMaxPayload)
		}
	}
	tk := &task{id: p.lastID + 1, t: t, need: max(t.MemHint, 0)}
	if t.Items > 0 {
		switch {
		case p.cfg.Protocol == Line:
			if n := bytes.Count(t.Input, []byte{'\n'}); n != t.Items || t.Input[len(t.Input)-1] != '\n' {
				return 0, fmt.Errorf("pool: a line batch of %d items holds %d lines, each ended by a newline", t.Items, n)
			}
		case p.cfg.Protocol != Framed || p.cfg.KeepOrder:
			return 0, errors.New("pool: batch tasks (Task.Items) need the line protocol, or the framed protocol without KeepOrder")
		}
		tk.base, tk.items = tk.id, make([]uint32, t.Items)
		for i := range tk.items {
			tk.items[i] = uint32(i)
		}
	}
	select {
	case p.submitCh <- tk:
		p.lastID = tk.id + uint64(tk.count()) - 1
		return tk.id, nil
	case <-ctx.Done():
		return 0, ctx.Err()
	case <-p.closeCh:
		return 0, ErrClosed
	case <-p.abortCh:
		return 0, ErrClosed
	}
}

// Close says that no more tasks will be submitted. The pool finishes the
// tasks it has, then stops its workers and closes Results. Close does not
// block and may be called more than once.
func (p *Pool) Close() { p.closeOnce.Do(func() { close(p.closeCh) }) }

// Results returns the channel on which every submitted task's Result is
// delivered exactly once: in submission order with Config.KeepOrder,
// otherwise as tasks end. It is closed after the last result, once every
// worker has exited. It must be read until closed.
func (p *Pool) Results() <-chan Result { return p.results }

// Abort stops the pool: no task is dispatched any more, queued tasks end
// Cancelled, and running workers get SIGTERM, then SIGKILL after
// Config.Grace; their tasks end Cancelled, but for those their workers
// answer before they end (as a worker that handles SIGTERM may), which end
// Done. A task whose worker died of a SIGTERM, SIGINT or SIGHUP that the
// pool did not send, up to a second before Abort, ends Cancelled too: the
// signal that stopped the caller most likely stopped the worker as well (a
// batch scheduler signals every process of a job), and such a death is
// reported a second late for that reason. reason, if not nil, is reported
// by Err. Calling Abort again kills the workers at once. Results is still
// delivered until closed.
func (p *Pool) Abort(reason error) {
	first := false
	p.abortOnce.Do(func() {
		first = true
		p.setErr(&AbortError{Reason: reason})
		close(p.abortCh)
	})
	if !first {
		p.killOnce.Do(func() { close(p.killCh) })
	}
}

// abortFor aborts the pool because of task id, unless it is already aborting.
func (p *Pool) abortFor(id uint64, reason error) {
	p.abortOnce.Do(func() {
		p.setErr(&AbortError{TaskID: id, Reason: reason})
		close(p.abortCh)
	})
}

func (p *Pool) setErr(err error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.err == nil {
		p.err = err
	}
}

// Err returns nil if the pool was not aborted, and otherwise an *AbortError
// saying why: the reason given to Abort, the failed task under the Abort
// policy, or a *StartError when workers could not start. Once Results is
// closed, a pool that was not aborted may also report what failed as it
// ended: its cgroups could not be removed, or the processes its workers
// left could not be ended; that error is not an *AbortError.
func (p *Pool) Err() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.err
}

// Failed returns the results of the last 1000 tasks that ended Failed or
// Poison so far, in the order they ended, without their output. Older
// failures are dropped so that the pool's memory stays bounded; an
// Observer sees every failure as it happens (EventTaskEnded), and Stats
// counts them all.
func (p *Pool) Failed() []Result {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]Result(nil), p.failed...)
}

// Stats returns what the pool has done so far.
func (p *Pool) Stats() Stats {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.stats
}

// MemoryMode returns how workers' memory is watched and limited:
// "cgroup-v1" or "cgroup-v2" (each worker in a memory cgroup of its own,
// limited to Config.MemLimit if set); where cgroups cannot be made,
// "enclosing-cgroup" (workers share the supervisor's cgroup, as in a
// container, whose oom_kill counter confirms OOM kills) or "no-cgroup"
// (only the kernel log can). Without a cgroup per worker the supervisor
// watches each worker's memory and enforces Config.MemLimit itself.
// MemoryModeReason says why.
func (p *Pool) MemoryMode() string { return p.mem.Mode().String() }

// MemoryPerWorker reports whether each worker has a memory cgroup of its
// own (MemoryMode "cgroup-v1" or "cgroup-v2"): exact peaks, limits the
// kernel enforces, and OOM kills read from the worker's own counter.
func (p *Pool) MemoryPerWorker() bool { return p.mem.Mode().PerWorker() }

// MemoryModeReason explains MemoryMode in one line.
func (p *Pool) MemoryModeReason() string { return p.mem.Reason() }

// Workers returns how many workers the pool runs at once: Config.Workers,
// or fewer when the open-file limit does not allow that many (Notices says
// so).
func (p *Pool) Workers() int { return p.cfg.Workers }

// Notices returns what the pool changed of its Config, one sentence each,
// for the user to see: for example fewer Workers than asked for, because
// of the open-file limit.
func (p *Pool) Notices() []string { return append([]string(nil), p.notices...) }

// Memory returns what the memory governor plans with now, and false when
// the governor is off (Config.NoGovernor, or no memory figure at all to
// plan with). MemoryGovernor says what it plans and measures with.
func (p *Pool) Memory() (MemoryState, bool) {
	if p.gov == nil {
		return MemoryState{}, false
	}
	return p.gov.state(), true
}

func (p *Pool) emit(e Event) {
	if p.cfg.Observer == nil {
		return
	}
	if e.Time.IsZero() {
		e.Time = time.Now()
	}
	p.emitMu.Lock()
	defer p.emitMu.Unlock()
	p.cfg.Observer(e)
}

func (p *Pool) count(f func(s *Stats)) {
	p.mu.Lock()
	f(&p.stats)
	p.mu.Unlock()
}
