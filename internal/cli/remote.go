package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"maps"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/spf13/pflag"

	"github.com/safepool/safepool/internal/cluster"
	"github.com/safepool/safepool/pool"
)

// natsFlags are the flags with which run and map hand their tasks to the
// agents of a NATS deployment instead of local workers (docs/cluster.md).
type natsFlags struct {
	url   string // --nats URL; "" runs locally
	runID string // --run-id ID
	// timeoutGrace: --timeout-grace was given with --nats, so that the
	// run carries it to the agents (else each agent's own applies).
	timeoutGrace bool
}

func (n *natsFlags) register(fs *pflag.FlagSet) {
	fs.StringVar(&n.url, "nats", "", "run the tasks on the agents of the NATS server at `URL` (safepool server, safepool agent; docs/cluster.md) instead of local workers")
	fs.StringVar(&n.runID, "run-id", "", "with --nats, name the run `ID`; give the id of an earlier run to collect its results and wait for the rest")
}

// agentFlags are the flags of run and map that, with --nats, belong to the
// agents (safepool agent takes them), not to the run.
var agentFlags = []string{"jobs", "max-procs", "mem-limit", "no-data-limit", "mem-budget", "mem-reserve",
	"mem-high", "mem-psi", "no-governor", "grace"}

// check refuses --run-id without --nats, and with --nats the flags that are
// the agents'.
func (n *natsFlags) check(cmd string, fs *pflag.FlagSet) error {
	if fs.Changed("nats") && strings.TrimSpace(n.url) == "" {
		// --nats "$QUEUE_URL" with the variable unset or empty: run locally
		// without a word, the whole job ran on the submitting machine.
		return usagef(cmd, "--nats needs the URL of a NATS server, not an empty one")
	}
	if n.runID != "" && n.url == "" {
		return usagef(cmd, "--run-id needs --nats")
	}
	if n.url != "" {
		for _, name := range agentFlags {
			if fs.Changed(name) {
				return usagef(cmd, "--%s is a flag of each machine's safepool agent, not of the run, with --nats", name)
			}
		}
		n.timeoutGrace = fs.Changed("timeout-grace")
		// The run's record with --nats is the results bucket
		// (--run-id collects it again); the journal and the metrics
		// consume a local pool's events.
		for _, name := range []string{"journal", "resume", "resume-failed", "metrics"} {
			if fs.Lookup(name) != nil && fs.Changed(name) {
				return usagef(cmd, "--%s does not work with --nats: the run's results bucket is its record (collect it again with --run-id)", name)
			}
		}
	}
	if n.runID != "" {
		if err := cluster.CheckRunID(n.runID); err != nil {
			return usagef(cmd, "--run-id: %v", err)
		}
	}
	return nil
}

// remoteSpec is the run specification of a job's configuration.
func remoteSpec(cfg pool.Config) cluster.RunSpec {
	spec := cluster.RunSpec{
		Protocol:      cfg.Protocol,
		Command:       cfg.Command,
		Retries:       cfg.Retries,
		OnWorkerDeath: cfg.OnWorkerDeath,
		Timeout:       cfg.Timeout,
		Pipeline:      cfg.Pipeline,
		StallTimeout:  cfg.StallTimeout,
		MaxLine:       cfg.MaxLine,
		MaxTasks:      cfg.MaxTasksPerWorker,
		MaxRSS:        cfg.MaxRSS,
		StartTimeout:  cfg.StartTimeout,
	}
	if spec.Protocol == "" {
		spec.Protocol = pool.OneShot
	}
	if spec.OnWorkerDeath == "" {
		spec.OnWorkerDeath = pool.Skip
		if spec.Retries > 0 {
			spec.OnWorkerDeath = pool.Retry
		}
	}
	return spec
}

// remoteWindow bounds the tasks published and not yet collected, so that
// the submitter's memory, and the queue, stay bounded for inputs of any
// size.
const remoteWindow = 4096

// waitingEvery is how often the submitter checks that its tasks can run.
const waitingEvery = 3 * time.Second

// tendEvery is how often the submitter tends the publishes in flight
// (cluster.Publisher.Tend), whether or not input comes: a publish that
// failed, or whose acknowledgement is late (2 s at first), is sent again
// within tendEvery. A timer rather than a Flush when the input pauses, as
// the Python bridge does: a Flush holds the feeder a round trip, or as
// long as the server is away, and an input that never pauses for long
// would leave a lost publish until the window fills.
const tendEvery = time.Second

// remoteDeath reports whether an attempt of a remote run of protocol
// proto that ended with cause c counts in the summary's worker deaths, by
// the rule of a local pool (pool.Stats.WorkerDeaths): a worker counts
// when it died other than by the pool ending it on purpose. For a one-shot
// job (safepool run), the pool ending it for its timeout or its memory
// limit ends the attempt, as a job's exit does, and is no death
// (pool/oneshot.go: a death the session did not kill); a persistent worker
// (map, the Python client) the pool kills for a task's timeout, its
// memory limit or a protocol error is a worker lost, and counts
// (worker.Death.Expected: only retired, cancelled and preempted workers do
// not). An output lost (output-lost: here, a result too large for a NATS
// message) is the task's failure, not a worker that died: a local pool
// does not count it either, and the task is counted once, as failed. An
// agent lost (agent-lost) counts: its workers went with it.
//
// The agent's record keeps the cause alone, not whether the pool killed
// the process: a one-shot job ended for its timeout whose memory then
// ended it during the grace (cause oom) counts here and not on one
// machine, and a job refused memory past its data size limit without a
// cgroup (cause memory-limit, not killed) the other way round.
func remoteDeath(proto pool.Protocol, c pool.Cause) bool {
	switch {
	case !c.IsWorkerDeath() || c == pool.CauseOutputLost:
		return false
	case proto == pool.OneShot:
		return c != pool.CauseTimeout && c != pool.CauseMemoryLimit && c != pool.CauseProtocol
	}
	return true
}

// executeRemote runs the job on the agents of a NATS deployment and
// returns its exit status: the same output, summary, job log and JSON
// summary as a local run.
func (j *job) executeRemote(ctx context.Context, nf *natsFlags) int {
	e := j.e
	stderr := lossyWriter{e.stderr}
	sum := &summary{Mode: j.mode, Command: j.cfg.Command, StartTime: time.Now(), messages: j.messages,
		viaShell: j.viaShell, MemoryMode: "cluster"}
	jl, jsonOut, _, err := j.openOutputs(e.stdout) // no journal: check refuses --journal with --nats
	if err != nil {
		fmt.Fprintf(stderr, "safepool: %v\n", err)
		return exitUsage
	}
	fail := func(status int, err error) int {
		jl.close()
		reason := quoteMessage(err.Error())
		fmt.Fprintf(stderr, "safepool: %s\n", reason)
		sum.Aborted, sum.AbortReason, sum.ExitStatus = true, reason, status
		sum.wall = time.Since(sum.StartTime)
		jsonOut.write(sum)
		return status
	}
	// setupFailed ends a run whose connection or set-up failed: a usage
	// error, but for an interrupt (Ctrl-C, SIGTERM, SIGHUP) meanwhile,
	// which stops it as any interrupted run, before it read any input.
	setupFailed := func(err error) int {
		if ctx.Err() == nil {
			return fail(exitUsage, err)
		}
		err = errInterrupted
		if s := interruptedBy(ctx); s != nil {
			err = &SignalError{Signal: s}
		}
		sum.Interrupted, sum.NotRead = true, noneRead(j.src.total())
		return fail(exitAborted, err)
	}
	conn, err := cluster.Dial(ctx, nf.url, "safepool "+j.mode)
	if err != nil {
		return setupFailed(err)
	}
	defer conn.Close()
	spec := remoteSpec(j.cfg)
	if nf.timeoutGrace {
		// The flag's default is not the run's: unset, each agent's
		// own --timeout-grace applies.
		spec.TimeoutGrace = j.cfg.TimeoutGrace
	}
	spec.ID = nf.runID
	if spec.ID == "" {
		spec.ID = cluster.NewRunID()
	}
	run, err := conn.Begin(ctx, spec, nf.runID != "")
	if err != nil {
		return setupFailed(err)
	}
	if kept := run.Spec.SettingsKept(spec); run.Resumed && len(kept) > 0 {
		fmt.Fprintf(stderr, "safepool: run %s keeps the settings it was first submitted with: %s\n", spec.ID, strings.Join(kept, ", "))
	}
	if !j.quiet {
		verb := "started"
		if run.Resumed {
			verb = "resumed"
		}
		fmt.Fprintf(stderr, "safepool: run %s %s on %s (collect it again with --run-id %s)\n", spec.ID, verb, cluster.Redact(nf.url), spec.ID)
	}

	// The collector stops when every task's result is in, or ctx ends.
	cctx, stopCollect := context.WithCancel(ctx)
	defer stopCollect()
	results := run.Results(cctx)

	// The reader reads the inputs, one ahead of the feeder, so that the
	// feeder does not block on a quiet input (tail -f jobs | safepool run
	// --nats ...) and tends its publishes meanwhile.
	type input struct {
		in  []byte
		err error // io.EOF at the end
	}
	reads := make(chan input)
	readDone := make(chan struct{})
	go func() { // owned by executeRemote: it ends at the input's end or error, or once cctx ends and its read returns (stopReading)
		defer close(readDone)
		for {
			in, err := j.src.next()
			select {
			case reads <- input{in, err}:
			case <-cctx.Done():
				return
			}
			if err != nil {
				return
			}
		}
	}()

	// The feeder publishes inputs, at most remoteWindow ahead of the
	// results, without waiting a round trip for each (cluster.Publisher).
	// It says each input it read on feed, in order, and at the end how many
	// there were, once the server acknowledged them all: a result is shown
	// only once its input is read here and is the input the result ran
	// (cluster.Fed). While publishes are in flight it tends them every
	// tendEvery, also while the input is quiet: a publish lost just before
	// a pause would otherwise be sent again only at the next input, and its
	// task not queued for as long as the input stays quiet.
	type fed struct {
		seq   uint64
		input cluster.Fed
		end   bool // the input ended: seq is the total
		err   error
	}
	feed := make(chan fed, 64)
	window := make(chan struct{}, remoteWindow)
	feedDone := make(chan struct{})
	go func() { // owned by executeRemote, which waits for it: it ends at the input's end, after an error, or when cctx ends
		defer close(feedDone)
		// send reports false when the collector has stopped.
		send := func(f fed) bool {
			select {
			case feed <- f:
				return true
			case <-cctx.Done():
				return false
			}
		}
		pub := run.Publisher()
		tend := time.NewTimer(tendEvery)
		tend.Stop()
		defer tend.Stop()
		tending := false // tend is set: publishes are in flight
		var seq uint64
		for {
			var got input
			select {
			case got = <-reads:
			case <-tend.C:
				if tending = pub.Tend(); tending {
					tend.Reset(tendEvery)
				}
				continue
			case <-cctx.Done():
				return
			}
			in, err := got.in, got.err
			if err == io.EOF {
				if err := pub.Flush(cctx); err != nil {
					send(fed{seq: seq, end: true, err: err})
					return
				}
				send(fed{seq: seq, end: true})
				return
			}
			if err != nil {
				send(fed{seq: seq, end: true, err: fmt.Errorf("reading input: %w", err)})
				return
			}
			seq++
			select {
			case window <- struct{}{}:
			case <-cctx.Done():
				return
			}
			jl.submit(seq, seq, in) // a remote run's task id is its input's number
			t := j.task(seq, in)
			if !send(fed{seq: seq, input: cluster.NewFed(t.Input)}) {
				return
			}
			if run.Recorded(seq) {
				continue
			}
			tm := cluster.TaskMsg{Seq: seq, Input: t.Input, Args: t.Args, Need: j.cfg.MemPerTask}
			err = pub.Publish(cctx, tm)
			if errors.Is(err, cluster.ErrTooLarge) {
				err = run.Fail(cctx, tm, err)
			}
			if err != nil {
				send(fed{seq: seq, end: true, err: err})
				return
			}
			if !tending {
				tending = true
				tend.Reset(tendEvery)
			}
		}
	}()

	o := newOutput(e.stdout, stderr, e.stdout)
	led := &outputLedger{}
	var counts pool.Stats
	var total uint64
	totalKnown := false
	var collected uint64
	pending := map[uint64]*cluster.ResultRecord{} // -k: results waiting for their turn
	next := uint64(1)
	var abortReason string
	// inputs holds what was read of each input whose result is not in yet;
	// early, the results whose input is not read yet. A result past the
	// last input (a resumed run's, of a longer input) is left out, and
	// extra says so.
	inputs := map[uint64]cluster.Fed{}
	early := map[uint64]*cluster.ResultRecord{}
	var read uint64
	extra := false
	// otherInput is the first result found of another input than the one
	// read here for its task (the run id is another run's), and otherSeq
	// that task. The results of the inputs before it are still collected
	// and shown, as after an input that cannot be read; none after it.
	var otherInput error
	var otherSeq uint64
	// before reports whether every input read before otherSeq has its
	// result collected (inputs are read in order, so all of them are).
	before := func() bool {
		for seq := range inputs {
			if seq < otherSeq {
				return false
			}
		}
		return true
	}
	interrupted := false
	// The checker looks every waitingEvery at what may keep the run
	// from ending, off this loop: its requests take round trips, many
	// seconds from a server far away, while results come in.
	type check struct {
		lost     bool              // the server no longer holds the run
		waiting  string            // what keeps tasks waiting, or ""
		versions map[string]string // agents of another version
	}
	checks := make(chan check)
	var checker sync.WaitGroup
	checker.Go(func() { // ends with cctx; waited for below
		t := time.NewTicker(waitingEvery)
		defer t.Stop()
		for {
			select {
			case <-t.C:
			case <-cctx.Done():
				return
			}
			c := check{lost: run.Lost(cctx)}
			if !c.lost {
				c.versions = run.OtherVersions(cctx, version())
				c.waiting = run.Waiting(cctx)
			}
			select {
			case checks <- c:
			case <-cctx.Done():
				return
			}
		}
	})
	// The connection to the server is looked at every second, off the
	// checker, whose requests wait seconds each while the server is away.
	link := conn.Watch()
	linkTick := time.NewTicker(time.Second)
	defer linkTick.Stop()
	said := ""
	lostSeen := 0                    // checks in a row that found the run gone from the server
	lost := false                    // the server lost the run: there is nothing to abort
	versionSaid := map[string]bool{} // agents said to run another version

	deliver := func(rec *cluster.ResultRecord) {
		r := rec.Result()
		for i := range r.Attempts {
			jl.observe(pool.Event{Kind: pool.EventAttemptEnded, TaskID: r.ID, Attempt: &r.Attempts[i]})
			counts.Attempts++
			if remoteDeath(spec.Protocol, r.Attempts[i].Cause) {
				counts.WorkerDeaths++
			}
		}
		jl.observe(pool.Event{Kind: pool.EventTaskEnded, TaskID: r.ID, Result: &r})
		counts.CountEnded(&r)
		sum.add(&r)
		if n := len(rec.Attempts); n > 0 && rec.Attempts[n-1].Agent != "" && r.State != pool.Done && r.State != pool.Cancelled {
			sum.setAgent(r.ID, rec.Attempts[n-1].Agent)
		}
		if o.err == nil {
			j.emit(o, &r)
			led.written(&r, false)
		} else {
			led.lost(&r, false)
		}
		if r.State != pool.Done && spec.OnWorkerDeath == pool.Abort && abortReason == "" {
			abortReason = quoteMessage(fmt.Sprintf("%v (--on-worker-death abort)", r.Err()))
		}
	}

	// collect takes the result of an input read here.
	collect := func(rec *cluster.ResultRecord) {
		in := inputs[rec.Seq]
		delete(inputs, rec.Seq)
		if otherInput != nil && rec.Seq > otherSeq {
			return
		}
		if err := in.Check(spec.ID, rec); err != nil {
			otherInput, otherSeq = err, rec.Seq
			return
		}
		in.Restore(rec)
		collected++
		<-window
		if !j.cfg.KeepOrder {
			deliver(rec)
		} else {
			pending[rec.Seq] = rec
			for pending[next] != nil {
				deliver(pending[next])
				delete(pending, next)
				next++
			}
		}
		o.flush()
		led.flushed(o.err == nil)
	}

loop:
	for !(totalKnown && collected == total) && abortReason == "" && !(otherInput != nil && before()) && o.err == nil {
		select {
		case f := <-feed:
			if f.end {
				total, totalKnown = f.seq, true
				extra = extra || len(early) > 0
				clear(early)
				if f.err != nil && ctx.Err() == nil {
					fmt.Fprintf(stderr, "safepool: %v\n", f.err)
					abortReason = quoteMessage(f.err.Error())
				}
				continue
			}
			read = f.seq
			inputs[f.seq] = f.input
			if rec := early[f.seq]; rec != nil {
				delete(early, f.seq)
				collect(rec)
			}
		case rec, ok := <-results:
			if !ok {
				// The collector stops only when ctx ends: this is the
				// interrupt, seen here before ctx.Done below.
				interrupted = ctx.Err() != nil
				break loop
			}
			switch {
			case rec.Seq <= read:
				if _, ok := inputs[rec.Seq]; ok {
					collect(&rec)
				}
			case totalKnown:
				extra = true
			default:
				early[rec.Seq] = &rec
			}
		case <-linkTick.C:
			if msg := link.Say(); msg != "" {
				fmt.Fprintf(stderr, "safepool: %s (%d tasks submitted, %d ended)\n", msg, read, collected)
			}
		case c := <-checks:
			// A server that lost the run (restarted on an empty store)
			// will never give its results: say so and stop, rather than
			// wait for ever. Seen twice in a row, so that a server
			// setting itself up again is not taken for one that lost it.
			if c.lost {
				if lostSeen++; lostSeen >= 2 {
					lost = true
					abortReason = quoteMessage(fmt.Sprintf("the NATS server no longer holds run %s (restarted without its store, or the store was lost): the results not collected here are lost with it; run the command again to run those tasks", spec.ID))
					fmt.Fprintf(stderr, "safepool: %s\n", abortReason)
				}
				continue
			}
			lostSeen = 0
			for name, msg := range c.versions {
				if !versionSaid[name] {
					versionSaid[name] = true
					fmt.Fprintf(stderr, "safepool: %s\n", msg)
				}
			}
			// What keeps tasks waiting is said once, not at every check.
			if w := c.waiting; w != said {
				if w != "" {
					fmt.Fprintf(stderr, "safepool: %s\n", w)
				}
				said = w
			}
		case <-ctx.Done():
			interrupted = true
			break loop
		}
	}
	// Output that cannot be written stops the run, as on one machine: a
	// reader that has gone (| head -1) wants no more, and the agents
	// would otherwise run every task for nobody. A run whose every result
	// is in is not aborted: --run-id can still collect it.
	stdoutClosed := errors.Is(o.err, syscall.EPIPE)
	if o.err != nil && abortReason == "" && !interrupted && !(totalKnown && collected == total) {
		abortReason = quoteMessage(fmt.Sprintf("writing output: %v", o.err))
		if stdoutClosed {
			abortReason = errStdoutClosed.Error()
		}
	}
	stopCollect()
	checker.Wait()
	<-feedDone
	stopReading(j.src, readDone)
	o.flush()
	led.flushed(o.err == nil)
	// A run stopped on purpose (Ctrl-C, SIGTERM, or the abort policy) is
	// aborted: its queued tasks removed, its running ones stopped by the
	// agents. One whose terminal hung up goes on, to be collected with
	// --run-id, as does one whose submitter was killed.
	detached := interrupted && interruptedBy(ctx) == syscall.SIGHUP
	stopped := false
	if !lost && !detached && (abortReason != "" || interrupted) {
		actx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		if err := run.Abort(actx); err != nil {
			fmt.Fprintf(stderr, "safepool: could not stop run %s on the agents: %v; it goes on, collect its results with --run-id %s\n", spec.ID, err, spec.ID)
			detached = interrupted
		} else {
			stopped = true
		}
		cancel()
	}
	if j.cfg.KeepOrder {
		// Results collected behind a task that was still running when
		// the run stopped (Ctrl-C, SIGTERM, the abort policy) are shown
		// now, in input order without it: an aborted run cannot be
		// collected again, so they would be lost, although recorded
		// done. After the run is stopped, so that a slow reader of
		// stdout does not keep its tasks going. Those past another
		// input's result are not shown.
		for _, seq := range slices.Sorted(maps.Keys(pending)) {
			if otherInput == nil || seq < otherSeq {
				deliver(pending[seq])
			}
			delete(pending, seq)
		}
	}
	o.flush()
	led.flushed(o.err == nil)
	if !totalKnown {
		// Interrupted or aborted: what the feeder has read by now.
		total = read
		for drained := false; !drained; {
			select {
			case f := <-feed:
				total, drained = f.seq, f.end
			default:
				drained = true
			}
		}
	}
	if (extra || run.RecordedPast(total)) && otherInput == nil && totalKnown {
		fmt.Fprintf(stderr, "safepool: run %s holds results of tasks past this input's %d; they are not shown\n", spec.ID, total)
	}
	sum.wall = time.Since(sum.StartTime)
	counts.Submitted = int(total)
	uncollected := int(total) - counts.Done - counts.Failed - counts.Poison - counts.Cancelled
	if !detached {
		counts.Cancelled += uncollected
	}
	sum.setTasks(counts, led)
	if detached {
		// Not cancelled: they go on on the agents, for --run-id.
		sum.Tasks.NotCollected = uncollected
	}
	sum.Attempts = counts.Attempts
	sum.WorkerDeaths = counts.WorkerDeaths

	status := exitOK
	switch {
	case otherInput != nil:
		sum.Aborted, sum.AbortReason = true, quoteMessage(otherInput.Error())
		status = exitUsage
	case interrupted:
		sum.Aborted, sum.Interrupted = true, true
		sum.AbortReason = errInterrupted.Error()
		if s := interruptedBy(ctx); s != nil {
			sum.AbortReason = (&SignalError{Signal: s}).Error()
		}
		if stopped {
			fmt.Fprintf(stderr, "safepool: run %s stopped: its queued tasks are removed and the agents stop its running tasks\n", spec.ID)
		} else if detached {
			fmt.Fprintf(stderr, "safepool: run %s goes on on the agents; collect its results with --run-id %s\n", spec.ID, spec.ID)
		}
		status = exitAborted
	case abortReason != "":
		sum.Aborted, sum.AbortReason = true, abortReason
		status = exitAborted
	case o.err != nil:
		// The last results were refused after every task had ended.
		sum.Aborted = true
		sum.AbortReason = quoteMessage(fmt.Sprintf("writing output: %v", o.err))
		if errors.Is(o.err, syscall.EPIPE) {
			sum.AbortReason = errStdoutClosed.Error()
		}
		status = exitAborted
	case !sum.ok():
		status = exitFailed
	}
	stdoutClosed = errors.Is(o.err, syscall.EPIPE)
	if o.err != nil && !stdoutClosed {
		fmt.Fprintf(stderr, "safepool: writing output: %v\n", o.err)
	}
	sum.ExitStatus = status
	if err := jl.close(); err != nil {
		fmt.Fprintf(stderr, "safepool: %v\n", err)
		status = max(status, exitFailed)
		sum.ExitStatus = status
	}
	if err := jsonOut.write(sum); err != nil && !(stdoutClosed && jsonOut.path == "-") {
		fmt.Fprintf(stderr, "safepool: %v\n", err)
		status = max(status, exitFailed)
	}
	sum.writeText(stderr, j.quiet)
	return status
}
