package cluster

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/safepool/safepool/internal/bytesize"
	"github.com/safepool/safepool/internal/memory"
	"github.com/safepool/safepool/pool"
)

// AgentConfig configures an agent.
type AgentConfig struct {
	// URL is the NATS server (or comma-separated servers) to pull from.
	URL string
	// Name names the agent in results and in AgentsBucket. Empty means
	// the host name and the process id.
	Name string
	// Pool is the local pool's configuration: Workers (-j), the memory
	// flags, MemLimit, Timeout and TimeoutGrace (used when a run has
	// none), Grace. Its Command, Protocol, retries and Observer are the
	// agent's to set.
	Pool pool.Config
	// Log receives the agent's messages, one line each. Nil means none.
	Log io.Writer
	// Version is the agent's version of safepool, advertised so that
	// submitters can tell agents of another version.
	Version string
}

// Agent runs a run's tasks on local supervised pools: one one-shot pool
// for every run's commands, and one line pool per run of persistent
// workers. Create it with NewAgent, run it with Run.
type Agent struct {
	cfg      AgentConfig
	name     string
	instance string // AgentInfo.Instance: this process's entry under name
	conn     *Conn
	capacity int64 // the most memory one task may use here
	fit      int   // FitClass(capacity)
	cons     []jetstream.Consumer
	repairMu sync.Mutex // guards repairedAt
	// startMu is held by the take that starts its task (startHeld).
	startMu sync.Mutex
	// repairedAt is when checkStore last looked at the server's store.
	repairedAt time.Time

	oneshot *local // never nil after NewAgent

	mu    sync.Mutex        // guards the fields below
	lines map[string]*local // line pools by run id
	// retired are the line pools closed or stopped while the agent runs;
	// Run waits for their readers.
	retired []*local
	held    int                 // messages taken and not yet answered
	specs   map[string]*RunSpec // run specifications read so far
	// aborted holds the runs whose submitter aborted them (stopped by
	// Ctrl-C, or --on-worker-death abort): their tasks are dropped and
	// their workers stopped (stopRun).
	aborted map[string]bool
	place   placement // what is known of the other agents
	placeAt time.Time // when place was read
	// freed is signalled (without blocking) when a held message is
	// answered, so that the fetch loop may take another.
	freed chan struct{}
	// finishing counts the goroutines recording results; Run waits for
	// them before it returns.
	finishing sync.WaitGroup
}

// local is one local pool and the messages it holds, by the pool's task
// id. Only startHeld submits to it, one task at a time, so ids are known
// before Submit returns.
type local struct {
	p      *pool.Pool
	run    string // the run of a line pool; "" for the one-shot pool
	nextID uint64
	tasks  map[uint64]*held // guarded by Agent.mu
	idle   time.Time        // when it last held nothing; guarded by Agent.mu
	done   chan struct{}    // closed when its results reader has ended
}

// held is one message an agent has taken.
type held struct {
	msg   jetstream.Msg
	task  TaskMsg
	spec  *RunSpec
	prior []AttemptRecord // charged attempts of earlier deliveries
	lost  []AttemptRecord // earlier deliveries lost with their agent
	// pid is the worker running the task in the one-shot pool, 0 before
	// it starts; guarded by Agent.mu.
	pid int
	id  uint64 // the task's id in its local pool
	// claimedAt is when this delivery's claim was made: a claim of
	// another time in AttemptsBucket is a later delivery's (superseded).
	claimedAt time.Time
	// seq is the stream sequence of msg, 0 if unknown.
	seq uint64
}

// dialEvery is how often an agent tries again to reach a NATS server that
// did not answer.
const dialEvery = 2 * time.Second

// dial connects to the agent's server. An agent is a service, often
// started beside the server or before it (by a batch system, a pod, a unit
// file): while no server answers at its URL, it says so once and tries
// again every dialEvery until one does or ctx ends: none listens there,
// or one takes connections but does not answer (stopped, hung). Any other
// failure (credentials, no JetStream) ends it at once.
func (a *Agent) dial(ctx context.Context) (*Conn, error) {
	said := false
	for {
		conn, err := Dial(ctx, a.cfg.URL, "safepool agent "+a.name)
		if err == nil || !errors.Is(err, ErrNoServer) {
			if err == nil && said {
				fmt.Fprintf(a.cfg.Log, "safepool agent %s: the NATS server at %s answers\n", a.name, Redact(a.cfg.URL))
			}
			return conn, err
		}
		if !said {
			fmt.Fprintf(a.cfg.Log, "safepool agent %s: %v; trying again every %v until a server answers (SIGINT or SIGTERM stops the agent)\n", a.name, err, dialEvery)
			said = true
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("cluster: stopped while waiting for the NATS server at %s: %w", Redact(a.cfg.URL), context.Cause(ctx))
		case <-time.After(dialEvery):
		}
	}
}

// NewAgent connects to cfg.URL and measures what the agent can offer.
func NewAgent(ctx context.Context, cfg AgentConfig) (*Agent, error) {
	name := cfg.Name
	if name == "" {
		h, _ := os.Hostname()
		name = fmt.Sprintf("%s-%d", h, os.Getpid())
	}
	if cfg.Log == nil {
		cfg.Log = io.Discard
	}
	a := &Agent{cfg: cfg, name: name, lines: map[string]*local{}, specs: map[string]*RunSpec{}, aborted: map[string]bool{}, freed: make(chan struct{}, 1)}
	// The one-shot pool runs every run's commands: each task carries its
	// own argument vector, so the pool's command is only a placeholder
	// that New does not look up ("{}": the program comes from the task).
	pc := a.poolConfig(pool.OneShot, []string{"{}"})
	l, err := a.startLocal(pc, "")
	if err != nil {
		return nil, err
	}
	a.oneshot = l
	a.capacity = cfg.Pool.MemLimit
	if st, ok := l.p.Memory(); ok && (a.capacity == 0 || st.Budget < a.capacity) {
		a.capacity = st.Budget
	}
	if a.capacity == 0 {
		a.capacity, _ = memory.HostMemTotal()
	}
	a.fit = FitClass(a.capacity)
	conn, err := a.dial(ctx)
	if err != nil {
		l.p.Abort(nil)
		<-l.done
		return nil, err
	}
	a.conn = conn
	for k := 0; k <= a.fit; k++ {
		c, err := conn.stream.Consumer(ctx, consumerName(k))
		if err != nil {
			a.close()
			return nil, fmt.Errorf("cluster: consumer %s: %w", consumerName(k), err)
		}
		a.cons = append(a.cons, c)
	}
	if err := a.claimName(ctx); err != nil {
		a.close()
		return nil, err
	}
	return a, nil
}

// nameWait is how long a starting agent watches an entry of its name, left
// by an agent it cannot tell dead, for a refresh: two refreshes and a
// second. An agent that refreshes it meanwhile is live.
const nameWait = 2*agentTTL/3 + time.Second

// ErrNameTaken is returned by NewAgent when a live agent has the name.
var ErrNameTaken = errors.New("cluster: an agent of that name is running")

// claimName advertises the agent under its name, and refuses the name when
// a live agent has it: the name tells agents apart in AgentsBucket (two of
// one name overwrite each other's capacity, and the first to stop deletes
// the other's), in the claims of tasks, and in results and messages
// ("lost with its agent b1"). An entry that is not refreshed within
// nameWait was left by an agent that is gone (killed, and started again
// before its entry expired): it is taken over.
func (a *Agent) claimName(ctx context.Context) error {
	a.instance = randomHex(8)
	_, err := a.conn.agents.Create(ctx, a.name, a.info())
	if err == nil {
		return nil
	}
	if !errors.Is(err, jetstream.ErrKeyExists) {
		return fmt.Errorf("cluster: advertising agent %s: %w", a.name, err)
	}
	e, err := a.conn.agents.Get(ctx, a.name)
	if isGone(err) {
		return nil // expired since: advertise writes it
	}
	if err != nil {
		return fmt.Errorf("cluster: reading the entry of agent %s: %w", a.name, err)
	}
	fmt.Fprintf(a.cfg.Log, "safepool agent %s: an agent of this name was advertised %s ago; waiting up to %s to see whether it runs\n",
		a.name, time.Since(e.Created()).Round(time.Second), nameWait)
	seen := e.Revision()
	deadline := time.Now().Add(nameWait)
	for time.Now().Before(deadline) {
		if !sleep(ctx, 250*time.Millisecond) {
			return ctx.Err()
		}
		e, err := a.conn.agents.Get(ctx, a.name)
		if isGone(err) {
			return nil // deleted (it stopped) or expired
		}
		if err != nil || e.Revision() == seen {
			continue
		}
		var other AgentInfo
		if unmarshal(e.Value(), &other) == nil && other.Instance != a.instance {
			pid := ""
			if other.PID > 0 {
				pid = fmt.Sprintf(", pid %d", other.PID)
			}
			return fmt.Errorf("%w: agent %s runs on %s%s; give this one another --name", ErrNameTaken, a.name, other.Host, pid)
		}
		seen = e.Revision()
	}
	return nil
}

// info returns the agent's entry in AgentsBucket.
func (a *Agent) info() []byte {
	h, _ := os.Hostname()
	body, _ := marshal(AgentInfo{Name: a.name, Host: h, Slots: a.oneshot.p.Workers(), Capacity: a.capacity, MaxClass: a.fit,
		Updated: time.Now(), Version: a.cfg.Version, PID: os.Getpid(), Instance: a.instance})
	return body
}

// randomHex returns n random bytes in hex.
func randomHex(n int) string {
	b := make([]byte, n)
	rand.Read(b)
	return hex.EncodeToString(b)
}

// Name returns the agent's name.
func (a *Agent) Name() string { return a.name }

// Capacity returns the most memory one task may use on this agent, and
// the largest memory class it pulls from.
func (a *Agent) Capacity() (int64, int) { return a.capacity, a.fit }

// poolConfig is the local pool's configuration for protocol and command.
// Worker deaths are the run's to retry, counted over every machine, so the
// pool has none of its own (decide).
func (a *Agent) poolConfig(protocol pool.Protocol, command []string) pool.Config {
	pc := a.cfg.Pool
	pc.Protocol, pc.Command = protocol, command
	pc.Retries, pc.OnWorkerDeath, pc.TaskErrorRetries = 0, pool.Skip, 0
	pc.KeepOrder = false
	pc.Observer = nil
	return pc
}

// startLocal starts a local pool and its results reader.
func (a *Agent) startLocal(pc pool.Config, run string) (*local, error) {
	return a.startPool(pc, &local{run: run, tasks: map[uint64]*held{}, idle: time.Now(), done: make(chan struct{})})
}

// startPool starts l's pool with pc, and its results reader. The one-shot
// pool tells which worker runs which task (watchAttempt), so that the
// tasks of an aborted run can be stopped one by one.
func (a *Agent) startPool(pc pool.Config, l *local) (*local, error) {
	if l.run == "" {
		pc.Observer = func(e pool.Event) { a.watchAttempt(l, e) }
	}
	p, err := pool.New(pc)
	if err != nil {
		return nil, err
	}
	l.p = p
	go a.readResults(l)
	return l, nil
}

// watchAttempt notes the worker of each attempt the one-shot pool l
// starts, and stops it at once if its run was aborted meanwhile.
func (a *Agent) watchAttempt(l *local, e pool.Event) {
	if e.Kind != pool.EventAttemptStarted || e.WorkerPID <= 0 {
		return
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	h := l.tasks[e.TaskID]
	if h == nil {
		return
	}
	h.pid = e.WorkerPID
	if a.aborted[h.task.Run] {
		a.stopWorker(h)
	}
}

// Run pulls and runs tasks until ctx ends. Then it stops its workers,
// hands back the tasks it holds, and returns.
func (a *Agent) Run(ctx context.Context) error {
	slots := "1 slot"
	if n := a.oneshot.p.Workers(); n != 1 {
		slots = fmt.Sprintf("%d slots", n)
	}
	fmt.Fprintf(a.cfg.Log, "safepool agent %s: %s, up to %s per task (memory classes 0-%d), on %s\n",
		a.name, slots, bytesize.Format(a.capacity), a.fit, a.conn.nc.ConnectedUrlRedacted())
	var bg sync.WaitGroup
	bgCtx, stopBg := context.WithCancel(context.Background())
	bg.Add(3)
	go func() { defer bg.Done(); a.advertise(bgCtx) }()
	go func() { defer bg.Done(); a.keepAlive(bgCtx) }()
	go func() { defer bg.Done(); a.watchLink(bgCtx) }()

	a.fetchLoop(ctx)

	// Stopping: the pools end their attempts, whose tasks come back
	// cancelled and are handed back at once for another agent.
	a.mu.Lock()
	pools := []*local{a.oneshot}
	for _, l := range a.lines {
		pools = append(pools, l)
	}
	pools = append(pools, a.retired...)
	a.mu.Unlock()
	for _, l := range pools {
		l.p.Abort(nil)
	}
	for _, l := range pools {
		<-l.done
	}
	a.finishing.Wait()
	stopBg()
	bg.Wait()
	a.unadvertise()
	a.conn.Close()
	return nil
}

// unadvertise deletes the agent's entry in AgentsBucket, if it is still
// this agent's: another agent may have taken the name over since (this
// one was stopped, SIGSTOP, for longer than its entry lives), and its
// entry is not this one's to delete.
func (a *Agent) unadvertise() {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	e, err := a.conn.agents.Get(ctx, a.name)
	if err != nil {
		return
	}
	var info AgentInfo
	if unmarshal(e.Value(), &info) != nil || info.Instance != a.instance {
		return
	}
	a.conn.agents.Delete(ctx, a.name, jetstream.LastRevision(e.Revision()))
}

// close ends what NewAgent started, when it fails.
func (a *Agent) close() {
	a.oneshot.p.Abort(nil)
	<-a.oneshot.done
	a.conn.Close()
}

// admits returns how many more tasks to fetch: the free slots, and no more
// than the memory governor admits beside the tasks held already. An agent
// holding nothing takes one, so that it learns.
func (a *Agent) admits() int {
	a.mu.Lock()
	held := a.held
	a.mu.Unlock()
	n := a.oneshot.p.Workers() - held
	if st, ok := a.oneshot.p.Memory(); ok {
		n = min(n, st.Allows-held)
	}
	if held == 0 {
		n = max(n, 1)
	}
	return max(n, 0)
}

// fetchLoop takes tasks while ctx lasts, from the largest class that fits
// down, so that the tasks only large agents can run go to large agents
// first, and never more than admits says.
func (a *Agent) fetchLoop(ctx context.Context) {
	for ctx.Err() == nil {
		n := a.admits()
		if n == 0 {
			select {
			case <-a.freed:
			case <-time.After(250 * time.Millisecond): // the governor may admit more
			case <-ctx.Done():
			}
			continue
		}
		a.closeIdle()
		got := 0
		queued := a.queuedClasses(ctx)
		// The messages fetched are taken at once, each claimed in round
		// trips of its own (take); the next fetch waits for them all.
		var taking sync.WaitGroup
		for k := a.fit; k >= 0 && got < n && ctx.Err() == nil; k-- {
			if k > 0 && queued != nil && !queued[k] {
				continue
			}
			var b jetstream.MessageBatch
			var err error
			if k == 0 {
				// The lowest class waits a little for work; the others
				// are only looked at.
				b, err = a.cons[k].Fetch(n-got, jetstream.FetchMaxWait(300*time.Millisecond))
			} else {
				b, err = a.cons[k].FetchNoWait(n - got)
			}
			if err != nil {
				sleep(ctx, 250*time.Millisecond)
				break
			}
			for m := range b.Messages() {
				got++
				taking.Go(func() { a.take(ctx, m) })
			}
			if err := b.Error(); err != nil {
				a.fetchFailed(ctx, k, err)
				break
			}
		}
		taking.Wait()
	}
}

// queuedClasses returns the classes above 0 that hold tasks now, in one
// request, or nil when it cannot tell. The fetch loop looks only at those:
// a look at each class this agent fits, one after the other, cost a round
// trip each, 3 s per task taken for an agent 400 ms (there and back) from
// the server.
func (a *Agent) queuedClasses(ctx context.Context) map[int]bool {
	out := map[int]bool{}
	if a.fit == 0 {
		return out
	}
	counts, err := a.conn.classCounts(ctx)
	if err != nil {
		return nil
	}
	for k, n := range counts {
		out[k] = n > 0
	}
	return out
}

// fetchFailed answers a failed pull from class k. A server that no longer
// has the class's consumer (restarted on an empty store) answers every
// pull with "no responders" at once: the agent checks the server's store
// (checkStore) rather than spin or wait for ever.
func (a *Agent) fetchFailed(ctx context.Context, k int, err error) {
	if errors.Is(err, nats.ErrNoResponders) {
		a.checkStore(ctx, k)
	}
	sleep(ctx, 250*time.Millisecond)
}

// checkStore sets the stream, the consumers and the buckets up again,
// saying so, when the server no longer has class k's consumer: a server
// restarted on an empty store. It looks at most every two seconds. Both
// the fetch loop (a pull nobody answers) and keepAlive (for a while after
// each reconnection, since an agent whose slots are all taken does not
// pull) call it.
func (a *Agent) checkStore(ctx context.Context, k int) {
	a.repairMu.Lock()
	defer a.repairMu.Unlock()
	if time.Since(a.repairedAt) < 2*time.Second {
		return
	}
	a.repairedAt = time.Now()
	did, err := a.conn.repair(ctx, k)
	switch {
	case did:
		fmt.Fprintf(a.cfg.Log, "safepool agent %s: the NATS server had no queue of tasks (restarted without its store?): set it up again; the runs it held are lost\n", a.name)
	case err != nil && ctx.Err() == nil:
		fmt.Fprintf(a.cfg.Log, "safepool agent %s: %v\n", a.name, err)
	}
}

// take starts a message's task on a local pool, or answers it at once.
// The fetch loop takes the messages of a fetch at once: the round trips
// of their claims overlap, and their starts (startHeld) follow one
// another.
func (a *Agent) take(ctx context.Context, m jetstream.Msg) {
	var t TaskMsg
	if err := unmarshal(m.Data(), &t); err != nil {
		a.unreadable(ctx, m, err)
		return
	}
	spec, err := a.spec(ctx, t.Run)
	if err != nil {
		fmt.Fprintf(a.cfg.Log, "safepool agent: run %s: %v\n", t.Run, err)
		m.NakWithDelay(time.Second)
		return
	}
	if spec.Aborted || a.isAborted(t.Run) {
		m.Term()
		return
	}
	h := &held{msg: m, task: t, spec: spec}
	if !a.claim(ctx, h) {
		return
	}
	if !a.startHeld(ctx, h) {
		// The pool has stopped: the agent is stopping, or a run's line
		// workers could not start (the tasks it held are recorded failed
		// by readResults). The next task of the run gets a new pool.
		a.unclaim(ctx, h)
		m.NakWithDelay(time.Second)
	}
}

// startHeld submits h's task, claimed, to its local pool, and reports
// whether the pool took it. Only one take at a time starts its task: a
// local pool's ids are counted here before Submit gives them, and a run's
// line pool is started once.
func (a *Agent) startHeld(ctx context.Context, h *held) bool {
	a.startMu.Lock()
	defer a.startMu.Unlock()
	t, spec := h.task, h.spec
	l, err := a.localFor(spec)
	if err != nil {
		a.hold(1)
		a.finishing.Add(1)
		go a.finish(h, pool.Result{ID: t.Seq, Input: t.Input, Args: t.Args, State: pool.Failed,
			Attempts: []pool.Attempt{{Number: 1, Start: time.Now(), End: time.Now(), ExitCode: -1, Message: err.Error()}}})
		return true
	}
	timeout := spec.Timeout
	task := pool.Task{Input: t.Input, Args: t.Args, Timeout: timeout, TimeoutGrace: spec.TimeoutGrace, MemHint: t.Need, Items: t.Items}
	a.mu.Lock()
	l.nextID++
	id := l.nextID
	h.id = id
	l.tasks[id] = h
	a.held++
	a.mu.Unlock()
	if _, err := l.p.Submit(ctx, task); err != nil {
		a.mu.Lock()
		delete(l.tasks, id)
		l.nextID--
		a.held--
		if l.run != "" && a.lines[l.run] == l {
			delete(a.lines, l.run)
			a.retired = append(a.retired, l)
		}
		a.mu.Unlock()
		return false
	}
	return true
}

// claimerLive reports whether the agent name still advertises itself in
// AgentsBucket as the instance that made a claim, refreshed within
// liveFresh: the same process, alive and connected. (An entry outlives
// its agent by up to agentTTL; the freshness tells a killed agent's, whose
// task is given again at least AckWait after its last word, from a live
// one's, refreshed every agentTTL/3.)
func (a *Agent) claimerLive(ctx context.Context, name, instance string) bool {
	cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	e, err := a.conn.agents.Get(cctx, name)
	if err != nil || time.Since(e.Created()) > liveFresh {
		return false
	}
	var info AgentInfo
	return unmarshal(e.Value(), &info) == nil && info.Instance == instance
}

// liveFresh is how recent an agent's entry must be for claimerLive.
const liveFresh = agentTTL/3 + 2*time.Second

// claim claims h's task for this delivery, and reports whether to run it;
// when it does not, it has answered the message.
//
// The task is not run when its result is recorded already: the task was
// delivered before and its ack lost, or this message is a second copy of
// it. Nor is it run when another message of the task holds the claim and is
// still on the stream: that message's delivery runs the task now, or will
// run it once delivered again (its agent lost), so this copy is dropped.
// Copies come from a publish sent again after a lone server restarted
// (JetStream then forgets the ids of the messages consumed, and the de-
// duplication misses), or by a submitter resumed after the de-duplication
// window (an hour), or from a task moved up a class. A claim of this very
// message is a delivery lost with its agent: it is counted (h.lost). The
// claim is written only if the record is still as read (a compare and
// set), so that of two deliveries taking the task at once, one runs it.
func (a *Agent) claim(ctx context.Context, h *held) bool {
	m, t := h.msg, h.task
	key := taskKey(t.Run, t.Seq)
	var seq uint64
	first := true // this message's first delivery
	if md, err := m.Metadata(); err == nil {
		seq = md.Sequence.Stream
		first = md.NumDelivered <= 1
	}
	h.seq = seq
	redelivered := !first || t.Moved > 0
	if !redelivered && seq != 0 {
		if run, answered := a.claimFirst(ctx, h, seq); answered {
			return run
		}
	}
	var ended uint64 // a claimed message found gone from the stream
	for range 10 {
		recorded, ar, rev, err := a.records(ctx, key)
		if err != nil {
			a.later(ctx, m, t, err)
			return false
		}
		if recorded {
			m.Ack()
			return false
		}
		h.prior, h.lost = ar.Attempts, ar.Lost
		if c := ar.Claim; c != nil {
			switch {
			case ar.ClaimMsg != 0 && ar.ClaimMsg == seq && ar.ClaimBy == a.instance && a.runs(seq):
				// This agent runs the task from this very message: the
				// server, which heard nothing of it for AckWait (it was
				// stopped, or cut off from this agent), gave it again. The
				// task is neither lost nor run twice: this delivery is left
				// unanswered, and the running one's progress and answer,
				// which JetStream takes by the message, end it.
				fmt.Fprintf(a.cfg.Log, "safepool agent %s: task %d of run %s, message %d, was given again while it runs here: it goes on\n",
					a.name, t.Seq, t.Run, seq)
				return false
			case ar.ClaimMsg != 0 && ar.ClaimMsg == seq && ar.ClaimBy == a.instance:
				// This agent's own claim of this message, whose delivery it
				// answered without running the task: the claim was written
				// although its answer was lost (the server away), or its
				// withdrawal was lost. No loss.
			case ar.ClaimMsg != 0 && ar.ClaimMsg == seq && first && c.Agent == a.name:
				// This delivery's own claim (claimFirst's, its answer
				// lost): no loss.
			case ar.ClaimMsg != 0 && ar.ClaimMsg == seq && ar.ClaimBy != "" && ar.ClaimBy != a.instance &&
				(first || time.Since(a.conn.reconnectedAt()) < 2*AckWait) && a.claimerLive(ctx, c.Agent, ar.ClaimBy):
				// A message that another agent has claimed, delivered
				// here for the first time, or soon after this agent
				// reconnected: the server was killed and started again,
				// and forgot deliveries and their progress, and gives them
				// out anew while their agents, which still advertise
				// themselves, run them. That agent is not lost: this
				// delivery is left unanswered, and once given again,
				// finds the task's result recorded, or (no longer soon
				// after a restart) takes its agent for lost. Taken for
				// lost at once, the task ran twice, with a cause of
				// agent-lost that was false, which counted towards
				// MaxLost. (A delivery given again after AckWait without a
				// word from its agent, stopped or cut off, while the
				// server ran on, is neither.)
				fmt.Fprintf(a.cfg.Log, "safepool agent %s: task %d of run %s, message %d, was given again while agent %s, which took it, runs: it is left to that agent\n",
					a.name, t.Seq, t.Run, seq, c.Agent)
				return false
			case ar.ClaimMsg != 0 && ar.ClaimMsg == seq || ar.ClaimMsg == 0 && redelivered:
				// This message's delivery before this one ended without a
				// word from its agent. (A claim that names no message is an
				// older agent's: it is taken for this message's.)
				c.End, c.Cause, c.ExitCode = time.Now(), CauseAgentLost, -1
				c.Message = fmt.Sprintf("agent %s took the task at %s and was lost (killed, or cut off for %s)",
					c.Agent, c.Start.Format(time.RFC3339), AckWait)
				h.lost = append(h.lost, *c)
			case ar.ClaimMsg == 0 || ar.ClaimMsg == ended:
				// The claim's message was answered without a result
				// (handed on, the claim not withdrawn), or an older
				// agent's claim is found by a first delivery: nothing is
				// known to run the task.
			default:
				queued, err := a.queued(ctx, ar.ClaimMsg, t)
				if err != nil {
					a.later(ctx, m, t, err)
					return false
				}
				if queued {
					fmt.Fprintf(a.cfg.Log, "safepool agent %s: task %d of run %s is held by message %d (taken by agent %s at %s): this copy of it, message %d, is dropped\n",
						a.name, t.Seq, t.Run, ar.ClaimMsg, c.Agent, c.Start.Format(time.RFC3339), seq)
					m.Ack()
					return false
				}
				// Its delivery ended: read again, since its result may
				// have been recorded meanwhile.
				ended = ar.ClaimMsg
				continue
			}
		}
		if len(h.lost) >= MaxLost {
			a.lostTooOften(ctx, h)
			return false
		}
		now := time.Now().Round(0)
		body, _ := marshal(attemptsRecord{Attempts: h.prior, Lost: h.lost,
			Claim: &AttemptRecord{Agent: a.name, Start: now, End: now, ExitCode: -1}, ClaimMsg: seq, ClaimBy: a.instance})
		cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		if rev == 0 {
			_, err = a.conn.attempts.Create(cctx, key, body)
		} else {
			_, err = a.conn.attempts.Update(cctx, key, body, rev)
		}
		cancel()
		if err == nil {
			h.claimedAt = now
			return true
		}
		if !errors.Is(err, jetstream.ErrKeyExists) && !errors.Is(err, jetstream.ErrKeyRevisionMismatch) {
			a.later(ctx, m, t, err)
			return false
		}
		// Another delivery wrote the record since it was read.
	}
	a.later(ctx, m, t, errors.New("its attempts record keeps changing"))
	return false
}

// claimFirst claims h's task, delivered for the first time from message
// seq, as a new task is claimed: it creates the task's attempts record,
// which succeeds only if there is none, while it reads whether the result
// is recorded, in one round trip for both. An absent record means that no
// delivery runs the task: a delivery leaves its claim there until it hands
// the task back. It reports whether to run the task, and whether it
// answered the message or claimed the task; when it did neither (a record
// exists: the task ran before, or this message is a second copy), claim
// reads the record.
func (a *Agent) claimFirst(ctx context.Context, h *held, seq uint64) (run, answered bool) {
	m, t := h.msg, h.task
	key := taskKey(t.Run, t.Seq)
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	now := time.Now().Round(0)
	body, _ := marshal(attemptsRecord{Claim: &AttemptRecord{Agent: a.name, Start: now, End: now, ExitCode: -1}, ClaimMsg: seq, ClaimBy: a.instance})
	var rerr error
	var wg sync.WaitGroup
	wg.Go(func() { _, rerr = a.conn.results.Get(ctx, key) })
	_, cerr := a.conn.attempts.Create(ctx, key, body)
	wg.Wait()
	if cerr != nil {
		return false, false
	}
	if rerr != nil && !isGone(rerr) {
		_, rerr = a.conn.results.Get(ctx, key)
	}
	switch {
	case rerr == nil:
		// Recorded (by a delivery that left no record: an agent cannot
		// read the task, or an agent of an earlier version purged it).
		m.Ack()
		return false, true
	case isGone(rerr):
		h.claimedAt = now
		return true, true
	default:
		a.unclaim(ctx, h)
		a.later(ctx, m, t, rerr)
		return false, true
	}
}

// records reads, at once, whether the result of the task of key is
// recorded, and its attempts record with the record's revision (0 when
// there is none).
func (a *Agent) records(ctx context.Context, key string) (recorded bool, ar attemptsRecord, rev uint64, err error) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	var rerr error
	var wg sync.WaitGroup
	wg.Go(func() { _, rerr = a.conn.results.Get(ctx, key) })
	e, aerr := a.conn.attempts.Get(ctx, key)
	wg.Wait()
	switch {
	case rerr == nil:
		return true, ar, 0, nil
	case !isGone(rerr):
		return false, ar, 0, rerr
	case aerr != nil && isGone(aerr):
		return false, ar, 0, nil
	case aerr != nil:
		return false, ar, 0, aerr
	}
	if unmarshal(e.Value(), &ar) != nil {
		ar = attemptsRecord{} // unreadable: written over
	}
	return false, ar, e.Revision(), nil
}

// queued reports whether message seq of the task stream is still there,
// holding task t: its delivery has not ended.
func (a *Agent) queued(ctx context.Context, seq uint64, t TaskMsg) (bool, error) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	raw, err := a.conn.stream.GetMsg(ctx, seq)
	if errors.Is(err, jetstream.ErrMsgNotFound) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	var o TaskMsg
	if unmarshal(raw.Data, &o) != nil || o.Run != t.Run || o.Seq != t.Seq {
		return false, nil // another task's: the stream was set up again since
	}
	return true, nil
}

// runs reports whether the agent holds a delivery of message seq of the
// task stream.
func (a *Agent) runs(seq uint64) bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	for _, l := range append([]*local{a.oneshot}, mapValues(a.lines)...) {
		for _, h := range l.tasks {
			if h.seq == seq {
				return true
			}
		}
	}
	return false
}

// later hands m, task t's message, back for a while when its records
// cannot be read or written now.
func (a *Agent) later(ctx context.Context, m jetstream.Msg, t TaskMsg, err error) {
	if ctx.Err() != nil {
		m.NakWithDelay(time.Second) // the agent is stopping
		return
	}
	fmt.Fprintf(a.cfg.Log, "safepool agent %s: task %d of run %s: %v; handed back for a second\n", a.name, t.Seq, t.Run, err)
	m.NakWithDelay(time.Second)
}

// unclaim withdraws h's claim before its task is handed back without a
// result: giving it back is no loss.
func (a *Agent) unclaim(ctx context.Context, h *held) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	body, _ := marshal(attemptsRecord{Attempts: h.prior, Lost: h.lost})
	retry(ctx, func(ctx context.Context) error {
		_, err := a.conn.attempts.Put(ctx, taskKey(h.task.Run, h.task.Seq), body)
		return err
	})
}

// lostTooOften records h's task failed, without running it, once MaxLost
// deliveries of it were lost with their agents.
func (a *Agent) lostTooOften(ctx context.Context, h *held) {
	agents := make([]string, 0, len(h.lost))
	for _, l := range h.lost {
		agents = append(agents, l.Agent)
	}
	t := h.task
	msg := fmt.Sprintf("lost with its agent %d times (%s): it may be what ends them; not run again", len(h.lost), strings.Join(agents, ", "))
	fmt.Fprintf(a.cfg.Log, "safepool agent %s: task %d of run %s: %s\n", a.name, t.Seq, t.Run, msg)
	attempts := withLost(h.prior, h.lost)
	last := &attempts[len(attempts)-1]
	last.Message = joinMessage(last.Message, msg)
	rec := ResultRecord{Seq: t.Seq, Input: t.Input, Args: t.Args, State: pool.Failed, Attempts: attempts, Agent: a.name}
	body := a.fitPayload(&rec, true)
	rctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	err := retry(rctx, func(ctx context.Context) error {
		_, err := a.conn.results.Create(ctx, taskKey(t.Run, t.Seq), body)
		if errors.Is(err, jetstream.ErrKeyExists) {
			return nil
		}
		return err
	})
	if err != nil {
		h.msg.NakWithDelay(time.Second)
		return
	}
	h.msg.TermWithReason(string(pool.Failed))
}

// unreadable answers a message that is no task this agent can read (an
// agent of another version of safepool, or not safepool's): when it names
// a task of a run, that task is recorded failed, saying why, so that its
// submitter does not wait for it for ever; then the message is dropped.
func (a *Agent) unreadable(ctx context.Context, m jetstream.Msg, why error) {
	var fields map[string]json.RawMessage
	var id struct {
		Run   string
		Seq   uint64
		Input []byte
	}
	if unmarshal(m.Data(), &fields) == nil {
		unmarshal(fields["run"], &id.Run)
		unmarshal(fields["seq"], &id.Seq)
		unmarshal(fields["input"], &id.Input)
	}
	if CheckRunID(id.Run) != nil || id.Seq == 0 {
		fmt.Fprintf(a.cfg.Log, "safepool agent %s: dropping a message that is no task (%v)\n", a.name, why)
		m.Term()
		return
	}
	msg := fmt.Sprintf("agent %s cannot read the task (%v): do the agents and the submitter run the same version of safepool?", a.name, why)
	fmt.Fprintf(a.cfg.Log, "safepool agent %s: task %d of run %s: %s\n", a.name, id.Seq, id.Run, msg)
	now := time.Now()
	rec := ResultRecord{Seq: id.Seq, Input: id.Input, State: pool.Failed, Agent: a.name,
		Attempts: []AttemptRecord{{Number: 1, Agent: a.name, Start: now, End: now, ExitCode: -1, Message: msg}}}
	body, _ := marshal(rec)
	rctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	err := retry(rctx, func(ctx context.Context) error {
		_, err := a.conn.results.Create(ctx, taskKey(id.Run, id.Seq), body)
		if errors.Is(err, jetstream.ErrKeyExists) {
			return nil
		}
		return err
	})
	if err != nil {
		m.NakWithDelay(time.Second)
		return
	}
	m.Term()
}

// hold counts n more held messages.
func (a *Agent) hold(n int) {
	a.mu.Lock()
	a.held += n
	a.mu.Unlock()
}

// spec returns run's specification.
func (a *Agent) spec(ctx context.Context, run string) (*RunSpec, error) {
	a.mu.Lock()
	s := a.specs[run]
	a.mu.Unlock()
	if s != nil && !s.Aborted {
		return s, nil
	}
	e, err := a.conn.runs.Get(ctx, run)
	if err != nil {
		return nil, fmt.Errorf("reading the run's specification: %w", err)
	}
	s = &RunSpec{}
	if err := unmarshal(e.Value(), s); err != nil {
		return nil, fmt.Errorf("reading the run's specification: %w", err)
	}
	a.mu.Lock()
	a.specs[run] = s
	a.mu.Unlock()
	return s, nil
}

// localFor returns the pool that runs spec's tasks.
func (a *Agent) localFor(spec *RunSpec) (*local, error) {
	if spec.Protocol == pool.OneShot {
		return a.oneshot, nil
	}
	a.mu.Lock()
	l := a.lines[spec.ID]
	a.mu.Unlock()
	if l != nil {
		return l, nil
	}
	pc := a.poolConfig(spec.Protocol, spec.Command)
	pc.Pipeline, pc.StallTimeout, pc.MaxLine = spec.Pipeline, spec.StallTimeout, spec.MaxLine
	pc.MaxTasksPerWorker, pc.MaxRSS, pc.StartTimeout = spec.MaxTasks, spec.MaxRSS, spec.StartTimeout
	pc.TaskErrorRetries = spec.TaskErrorRetries
	l, err := a.startLocal(pc, spec.ID)
	if err != nil {
		return nil, err
	}
	a.mu.Lock()
	a.lines[spec.ID] = l
	a.mu.Unlock()
	return l, nil
}

// lineIdle is how long a run's line pool may hold nothing before its
// workers are stopped.
const lineIdle = 10 * time.Second

// closeIdle closes the line pools that held nothing for lineIdle.
func (a *Agent) closeIdle() {
	a.mu.Lock()
	defer a.mu.Unlock()
	for run, l := range a.lines {
		if len(l.tasks) == 0 && time.Since(l.idle) > lineIdle {
			l.p.Close()
			delete(a.lines, run)
			a.retired = append(a.retired, l)
		}
	}
}

// readResults hands each result of l to finish, until l's pool ends.
func (a *Agent) readResults(l *local) {
	defer close(l.done)
	for r := range l.p.Results() {
		a.mu.Lock()
		h := l.tasks[r.ID]
		delete(l.tasks, r.ID)
		if len(l.tasks) == 0 {
			l.idle = time.Now()
		}
		a.mu.Unlock()
		if h == nil {
			r.Release()
			continue
		}
		if r.State == pool.Cancelled {
			var se *pool.StartError
			if errors.As(l.p.Err(), &se) {
				// The command cannot start here: that is the task's
				// failure, not a reason to hand it on for ever.
				r.State = pool.Failed
				r.Attempts = append(r.Attempts, pool.Attempt{Number: 1, ExitCode: -1, Start: time.Now(), End: time.Now(), Message: se.Error()})
			}
		}
		a.finishing.Add(1)
		go a.finishHeld(h, r)
	}
}

func (a *Agent) finishHeld(h *held, r pool.Result) {
	h.task.Input, h.task.Args = r.Input, r.Args
	a.finish(h, r)
}

// finish applies decide's verdict to a task whose local result is r.
func (a *Agent) finish(h *held, r pool.Result) {
	defer a.finishing.Done()
	// release gives the task's slot back: when the result is recorded, or
	// at the latest when finish returns.
	released := false
	release := func() {
		if released {
			return
		}
		released = true
		a.hold(-1)
		select {
		case a.freed <- struct{}{}:
		default:
		}
	}
	defer release()
	defer r.Release()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if a.isAborted(h.task.Run) {
		// Stopped because its submitter aborted the run: nobody waits
		// for its result.
		h.msg.Term()
		return
	}

	all, d := judge(a.name, &r, h.prior, h.task.Need, h.spec, func() placement {
		return a.placement(ctx) // only a kill for memory needs it: it costs round trips
	})
	key := taskKey(h.task.Run, h.task.Seq)
	if (d.move != moveRecord || d.state != pool.Done) && a.superseded(ctx, h) {
		// This agent was cut off (stopped, or its network) for AckWait,
		// and the task was delivered again: the newer delivery decides
		// its fate. A result is kept (the first recorded is), but a
		// failure, a retry or a hand-back here would take the place of
		// an attempt that may yet succeed.
		fmt.Fprintf(a.cfg.Log, "safepool agent %s: task %d of run %s was given to another agent while this one was cut off; its %s here is dropped\n",
			a.name, h.task.Seq, h.task.Run, describe(r))
		return
	}
	switch d.move {
	case moveRelease:
		a.unclaim(ctx, h)
		h.msg.Nak()
	case moveNak:
		a.noteAttempts(ctx, h, all)
		h.msg.NakWithDelay(d.delay)
		if d.crowded {
			fmt.Fprintf(a.cfg.Log, "safepool agent %s: task %d of run %s crowded out here (processes other than the workers held the memory it lacked); handed back to class %d as before\n",
				a.name, h.task.Seq, h.task.Run, ClassOf(h.task.Need))
		}
	case moveUp:
		a.noteAttempts(ctx, h, all)
		t := h.task
		t.Need, t.Moved = d.need, t.Moved+1
		k := ClassOf(t.Need)
		body, _ := marshal(t)
		err := retry(ctx, func(ctx context.Context) error {
			_, err := a.conn.js.Publish(ctx, taskSubject(k, t.Run), body, jetstream.WithMsgID(msgID(t.Run, t.Seq, k)))
			return err
		})
		if err != nil {
			h.msg.Nak()
			return
		}
		fmt.Fprintf(a.cfg.Log, "safepool agent %s: task %d of run %s killed for memory here; handed on needing more than %s\n",
			a.name, t.Seq, t.Run, bytesize.Format(t.Need-1))
		h.msg.Ack()
	case moveRecord:
		rec := ResultRecord{Seq: h.task.Seq, Input: h.task.Input, Args: h.task.Args, State: d.state,
			Output: r.Output, Stderr: r.Stderr, Attempts: withLost(all, h.lost), Agent: a.name}
		if len(r.Items) == 1 {
			// A batch of one item (the Python client's task): its output.
			rec.Output = r.Items[0].Output
		} else if r.Output == nil {
			rec.Output, _ = io.ReadAll(r.OutputReader())
		}
		if r.Stderr == nil {
			rec.Stderr, _ = io.ReadAll(r.StderrReader())
		}
		if h.spec.Protocol == pool.Framed && r.Cause() == pool.CauseTaskError && len(rec.Attempts) > 0 {
			// A framed worker's error payload may hold bytes after a NUL
			// (the Python worker's pickled exception), which a JSON string
			// would not keep: the payload travels whole as the output, and
			// the message keeps its text.
			last := &rec.Attempts[len(rec.Attempts)-1]
			rec.Output = []byte(last.Message)
			if k := strings.IndexByte(last.Message, 0); k >= 0 {
				last.Message = last.Message[:k]
			}
		}
		if d.note != "" && len(rec.Attempts) > 0 {
			last := &rec.Attempts[len(rec.Attempts)-1]
			last.Message = joinMessage(last.Message, d.note)
		}
		if d.crowded && len(rec.Attempts) > 0 {
			// The processes that crowded it out are this machine's.
			last := &rec.Attempts[len(rec.Attempts)-1]
			last.Message = joinMessage(last.Message, "on agent "+a.name)
		}
		// A framed task's error payload is cut no more than a result is.
		body := a.fitPayload(&rec, !(h.spec.Protocol == pool.Framed && r.Cause() == pool.CauseTaskError))
		err := retry(ctx, func(ctx context.Context) error {
			_, err := a.conn.results.Create(ctx, key, body)
			if errors.Is(err, jetstream.ErrKeyExists) {
				return nil // another delivery recorded it first: that one is kept
			}
			return err
		})
		if err != nil {
			a.unclaim(ctx, h)
			h.msg.Nak()
			return
		}
		// The attempts record keeps this delivery's claim (it was purged
		// here): a copy of the task that found no result a moment before
		// it was recorded would have found no claim either, and run the
		// task again. Kept, the copy waits for this message to be
		// answered, then reads the result (claim).
		release()
		if d.state == pool.Done {
			// Once the result is recorded, the ack only spares a
			// redelivery, which is acknowledged without running. A server
			// restarted without this delivery in its state never answers
			// it: try for AckWait at most, the slot given back meanwhile.
			actx, cancel := context.WithTimeout(ctx, AckWait)
			retry(actx, func(ctx context.Context) error { return h.msg.DoubleAck(ctx) })
			cancel()
		} else {
			h.msg.TermWithReason(string(d.state))
		}
	}
}

// judge is how an agent called agent reports its local result r of a task
// to decide: it returns every attempt so far (prior, the attempts of
// earlier deliveries, then r's, numbered after them) and decide's verdict,
// for the task's need and its run's spec. place is called only for a kill
// for memory that may move the task up a class.
func judge(agent string, r *pool.Result, prior []AttemptRecord, need int64, spec *RunSpec, place func() placement) ([]AttemptRecord, decision) {
	base := 0
	for _, p := range prior {
		base = max(base, p.Number)
	}
	all := append(append([]AttemptRecord(nil), prior...), attemptRecords(agent, base, r.Attempts)...)
	crowded := len(r.Attempts) > 0 && r.Attempts[len(r.Attempts)-1].Crowded
	var pl placement
	if !crowded && (r.State == pool.Poison || isMemory(r.Cause())) {
		pl = place()
	}
	return all, decide(r.State, r.Cause(), crowded, need, all, spec, pl)
}

// withLost returns a task's attempts as its result records them: its
// charged attempts, all, with the deliveries lost with their agent (lost,
// cause CauseAgentLost) among them in the order they started, so that the
// job log and the summary show each lost attempt, as a local run shows a
// worker death. A loss is not charged (it does not spend --retries): like
// a local preempted attempt, it shares its number with the next charged
// attempt.
func withLost(all, lost []AttemptRecord) []AttemptRecord {
	out := make([]AttemptRecord, 0, len(all)+len(lost))
	i, j := 0, 0
	for i < len(all) || j < len(lost) {
		if j < len(lost) && (i == len(all) || lost[j].Start.Before(all[i].Start)) {
			l := lost[j]
			l.Number = 1
			if i < len(all) {
				l.Number = all[i].Number
			} else if i > 0 {
				l.Number = all[i-1].Number + 1
			}
			out = append(out, l)
			j++
			continue
		}
		out = append(out, all[i])
		i++
	}
	return out
}

// superseded reports whether h's task was delivered again since this
// agent took it: AttemptsBucket holds another delivery's claim.
func (a *Agent) superseded(ctx context.Context, h *held) bool {
	if h.claimedAt.IsZero() {
		return false
	}
	gctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	e, err := a.conn.attempts.Get(gctx, taskKey(h.task.Run, h.task.Seq))
	if err != nil {
		return false
	}
	var ar attemptsRecord
	if unmarshal(e.Value(), &ar) != nil || ar.Claim == nil {
		return false
	}
	return ar.Claim.Agent != a.name || !ar.Claim.Start.Equal(h.claimedAt)
}

// describe names a local result for the agent's log: "failed (exit:1)".
func describe(r pool.Result) string {
	if c := r.Cause(); c != "" {
		return fmt.Sprintf("%s (%s)", r.State, c)
	}
	return string(r.State)
}

// noteAttempts records h's task's attempts so far for its next delivery,
// which withdraws this delivery's claim.
func (a *Agent) noteAttempts(ctx context.Context, h *held, all []AttemptRecord) {
	body, _ := marshal(attemptsRecord{Attempts: all, Lost: h.lost})
	retry(ctx, func(ctx context.Context) error {
		_, err := a.conn.attempts.Put(ctx, taskKey(h.task.Run, h.task.Seq), body)
		return err
	})
}

// fitPayload encodes rec so that it fits one message. A record too large
// leaves out its input first (the submitter has it: InputSum stands for
// it). If that is not enough, a task that failed keeps its state and its
// last attempt's cause, and its output is cut to what fits: the first
// bytes of its stdout and the last of its stderr (where a failure is
// told), the last attempt's message saying how much was cut. A task that
// succeeded, whose output is its result and cannot be cut, is recorded
// failed with cause output-lost instead, as is a failed task whose output
// may not be cut (cut false: a framed task's error, whose output is the
// worker's error payload whole).
func (a *Agent) fitPayload(rec *ResultRecord, cut bool) []byte {
	body, _ := marshal(rec)
	limit := a.conn.nc.MaxPayload() - 4096
	if int64(len(body)) <= limit {
		return body
	}
	if rec.Input != nil || rec.Args != nil {
		sum := sha256.Sum256(rec.Input)
		rec.Input, rec.Args, rec.InputSum = nil, nil, sum[:]
		if body, _ = marshal(rec); int64(len(body)) <= limit {
			return body
		}
	}
	n := len(rec.Attempts)
	if rec.State != pool.Done && n > 0 && rec.Attempts[n-1].Cause != "" && cut {
		if body, ok := cutOutput(rec, limit); ok {
			return body
		}
	}
	lost := len(rec.Output) + len(rec.Stderr)
	room := max(limit-(int64(len(body))-int64(base64.StdEncoding.EncodedLen(len(rec.Output))+base64.StdEncoding.EncodedLen(len(rec.Stderr)))), 0)
	rec.Output, rec.Stderr = nil, nil
	if rec.State == pool.Done {
		rec.State = pool.Failed
	}
	if n > 0 {
		last := &rec.Attempts[n-1]
		last.Cause = pool.CauseOutputLost
		last.Message = joinMessage(last.Message, fmt.Sprintf("output of %s does not fit a NATS message of %s, which holds %s of output (encoded in base64); raise the server's max_payload (safepool server --max-payload)",
			bytesize.Format(int64(lost)), bytesize.Format(limit), bytesize.Format(room/4*3)))
	}
	body, _ = marshal(rec)
	return body
}

// cutOutput cuts the output of rec, a failed task's record too large for
// a message of limit bytes, to what fits: its cause and state stay. The
// room left is shared between stdout, which keeps its first bytes, and
// stderr, which keeps its last; what one of them does not need goes to
// the other. The last attempt's message says what was cut. It reports
// false when even the record without output does not fit.
func cutOutput(rec *ResultRecord, limit int64) ([]byte, bool) {
	out, errOut := rec.Output, rec.Stderr
	last := &rec.Attempts[len(rec.Attempts)-1]
	msg := last.Message
	// The note is written with the figures it will hold at most, so that
	// the room measured with it stays enough for the final one.
	last.Message = joinMessage(msg, cutNote(int64(len(out)), int64(len(out)), int64(len(errOut)), int64(len(errOut)), limit))
	rec.Output, rec.Stderr = nil, nil
	body, _ := marshal(rec)
	room := limit - int64(len(body)) - 64 // the fields' names, base64's padding, the note's figures
	if room < 0 {
		rec.Output, rec.Stderr, last.Message = out, errOut, msg
		return nil, false
	}
	// Bytes that fit: base64 takes 4 characters for every 3 bytes.
	fits := room / 4 * 3
	keepOut := min(int64(len(out)), max(fits/2, fits-int64(len(errOut))))
	keepErr := min(int64(len(errOut)), fits-keepOut)
	rec.Output = out[:keepOut]
	rec.Stderr = errOut[int64(len(errOut))-keepErr:]
	last.Message = joinMessage(msg, cutNote(keepOut, int64(len(out)), keepErr, int64(len(errOut)), limit))
	body, _ = marshal(rec)
	return body, true
}

// cutNote says how much of a failed task's output was kept to fit a
// message of limit bytes.
func cutNote(keptOut, out, keptErr, errOut, limit int64) string {
	return fmt.Sprintf("output cut to fit a NATS message of %s: stdout %s kept of %s (the first), stderr %s kept of %s (the last); raise the server's max_payload (safepool server --max-payload) to keep it whole",
		bytesize.Format(limit), bytesize.Format(keptOut), bytesize.Format(out), bytesize.Format(keptErr), bytesize.Format(errOut))
}

func joinMessage(a, b string) string {
	if a == "" {
		return b
	}
	return a + "; " + b
}

// placement returns what is known of the agents, read at most every two
// seconds.
func (a *Agent) placement(ctx context.Context) placement {
	a.mu.Lock()
	p, at := a.place, a.placeAt
	a.mu.Unlock()
	if time.Since(at) < 2*time.Second {
		return p
	}
	p = placement{capacity: a.capacity, largestClass: a.fit, largestCap: a.capacity}
	if agents, err := a.conn.liveAgents(ctx); err == nil {
		k, c := largestClass(agents)
		p.largestClass, p.largestCap = max(k, a.fit), max(c, a.capacity)
	}
	a.mu.Lock()
	a.place, a.placeAt = p, time.Now()
	a.mu.Unlock()
	return p
}

// advertise keeps the agent's capacity in AgentsBucket until ctx ends.
func (a *Agent) advertise(ctx context.Context) {
	for {
		pctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		a.conn.agents.Put(pctx, a.name, a.info())
		cancel()
		if !sleep(ctx, agentTTL/3) {
			return
		}
	}
}

// isAborted reports whether run was found aborted.
func (a *Agent) isAborted(run string) bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.aborted[run]
}

// checkAborted reads the specification of each run in runs, which the
// agent holds tasks of, and stops those the submitter has aborted since.
func (a *Agent) checkAborted(ctx context.Context, runs map[string]bool) {
	for run := range runs {
		if a.isAborted(run) {
			continue
		}
		gctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		e, err := a.conn.runs.Get(gctx, run)
		cancel()
		var s RunSpec
		if err == nil && unmarshal(e.Value(), &s) == nil && s.Aborted {
			a.stopRun(run)
		}
	}
}

// stopRun stops the tasks this agent holds of run, which its submitter
// aborted: the run's persistent workers, and each one-shot worker running
// one of its tasks (SIGTERM, then SIGKILL after the grace period). Their
// messages are terminated (finish), and later ones dropped (take).
func (a *Agent) stopRun(run string) {
	a.mu.Lock()
	if a.aborted[run] {
		a.mu.Unlock()
		return
	}
	a.aborted[run] = true
	n := 0
	for _, h := range a.oneshot.tasks {
		if h.task.Run == run {
			n++
			if h.pid > 0 {
				a.stopWorker(h)
			}
		}
	}
	l := a.lines[run]
	if l != nil {
		n += len(l.tasks)
		delete(a.lines, run)
		a.retired = append(a.retired, l)
	}
	a.mu.Unlock()
	fmt.Fprintf(a.cfg.Log, "safepool agent %s: run %s was aborted by its submitter: stopping its %d tasks here\n", a.name, run, n)
	if l != nil {
		l.p.Abort(nil)
	}
}

// stopWorker sends SIGTERM to the process group of the one-shot worker
// running h, and SIGKILL after the grace period if it still runs h then.
// a.mu is held.
func (a *Agent) stopWorker(h *held) {
	pid := h.pid
	syscall.Kill(-pid, syscall.SIGTERM)
	grace := a.cfg.Pool.Grace
	if grace <= 0 {
		grace = 3 * time.Second
	}
	time.AfterFunc(grace, func() {
		a.mu.Lock()
		defer a.mu.Unlock()
		if a.oneshot.tasks[h.id] == h && h.pid == pid {
			syscall.Kill(-pid, syscall.SIGKILL)
		}
	})
}

// keepAlive tells JetStream every progressEvery that each held task is
// still running, so that it is not given to another agent.
func (a *Agent) keepAlive(ctx context.Context) {
	for sleep(ctx, progressEvery) {
		a.mu.Lock()
		var msgs []jetstream.Msg
		runs := map[string]bool{}
		for _, l := range append([]*local{a.oneshot}, mapValues(a.lines)...) {
			for _, h := range l.tasks {
				msgs = append(msgs, h.msg)
				runs[h.task.Run] = true
			}
		}
		a.mu.Unlock()
		for _, m := range msgs {
			m.InProgress()
		}
		a.checkAborted(ctx, runs)
		if time.Since(a.conn.reconnectedAt()) < 30*time.Second {
			a.checkStore(ctx, 0)
		}
	}
}

// watchLink says in the agent's log when its connection to the server is
// lost and when it is back (LinkWatch), with the tasks it runs meanwhile,
// until ctx ends.
func (a *Agent) watchLink(ctx context.Context) {
	w := a.conn.Watch()
	for sleep(ctx, time.Second) {
		if msg := w.Say(); msg != "" {
			a.mu.Lock()
			n := a.held
			a.mu.Unlock()
			fmt.Fprintf(a.cfg.Log, "safepool agent %s: %s (%s held here)\n", a.name, msg, plural(n, "task"))
		}
	}
}

// plural returns n and noun, with an s unless n is 1.
func plural(n int, noun string) string {
	if n == 1 {
		return "1 " + noun
	}
	return fmt.Sprintf("%d %ss", n, noun)
}

func mapValues[K comparable, V any](m map[K]V) []V {
	out := make([]V, 0, len(m))
	for _, v := range m {
		out = append(out, v)
	}
	return out
}
