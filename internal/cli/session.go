package cli

import (
	"bufio"
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/safepool/safepool/pool"
)

// errInterrupted is the reason given to Abort when ctx is cancelled without
// a signal; a signal gives a *SignalError.
var errInterrupted = errors.New("interrupted")

// errStdoutClosed is the reason given to Abort when the reader of standard
// output has gone (EPIPE, as after | head -1): nobody wants more results.
var errStdoutClosed = errors.New("stdout was closed")

// job is one run of a pool over a source of inputs, as run, map and demo
// prepare it.
type job struct {
	mode string      // "run", "map" or "demo", for the JSON summary
	cfg  pool.Config // Observer is set by execute
	src  source
	// task makes the task for the seq-th input (counting from 1, which is
	// also the id the pool gives it).
	task func(seq uint64, input []byte) pool.Task
	// emit writes what a result shows on the output.
	emit func(o *output, r *pool.Result)
	// blocks, when not nil, cuts the input into blocks of lines, each one
	// task (safepool map with line workers); src is then not read.
	blocks *lineBlocks

	joblog  string // path of --joblog, or ""
	metrics string // --metrics ADDR, or ""
	// journal is --journal and the resume flags; keyCommand is what task
	// keys are made of with the input (the command template for run, the
	// worker's command for map); argv is the command line, for the journal.
	journal    journalFlags
	keyCommand []string
	argv       []string
	// journalInput, when set, is what the journal keeps of an input in
	// place of the input itself (map --pipe: the block's place in the
	// input, not its megabytes); the key is still the input's.
	journalInput func(input []byte) []byte
	// journaled, when set, says whether a result's end goes to the
	// journal once written (map --pipe: not when its output was too long
	// to keep, so that resume runs it again).
	journaled func(r *pool.Result) bool
	// rawReplay reports whether a replayed output is written as it is
	// (map --pipe: a block's whole output), not as a line.
	rawReplay bool
	// replayAhead is how many replayed outputs may wait for the results
	// loop; 0 means the default, replayAhead.
	replayAhead int
	jsonPath    string // path of the JSON summary, "-" for stdout, or ""
	progress    bool   // whether to draw the progress bar
	quiet       bool   // print no summary when every task succeeded
	messages    bool   // whether the summary shows attempt messages
	// viaShell reports whether the command runs under a shell that stays
	// between safepool and the command, so that an exit status 128+N may
	// be the shell's report of a child killed by signal N.
	viaShell bool
	// notFoundHint, when set, follows the error of a command that is not
	// found: what the user most likely meant.
	notFoundHint string
	e            *env
	// seqs numbers tasks by their inputs for the summary; set by execute.
	seqs *taskSeqs
}

// taskSeqs maps the pool's id of a task to its input's number, where the
// two differ: a resumed run skips the inputs an earlier run finished, and
// the pool numbers only the tasks it gets. The summary and the JSON
// summary then name a task by its input's number, as the job log and the
// journal do. The feeder notes a task before it submits it; the results
// loop forgets it once its result is in, so it holds the tasks under way.
// A nil *taskSeqs maps every id to itself.
type taskSeqs struct {
	mu sync.Mutex
	m  map[uint64]uint64 // guarded by mu
	// abortID and abortSeq are the pool's id and the input's number of
	// the task the pool aborted for (--on-worker-death abort), kept past
	// its result for the summary's reason; guarded by mu.
	abortID, abortSeq uint64
}

// note records that pool task id is the seq-th input.
func (ts *taskSeqs) note(id, seq uint64) {
	if ts == nil || id == seq {
		return
	}
	ts.mu.Lock()
	ts.m[id] = seq
	ts.mu.Unlock()
}

// of returns the input's number of pool task id.
func (ts *taskSeqs) of(id uint64) uint64 {
	if ts == nil {
		return id
	}
	ts.mu.Lock()
	defer ts.mu.Unlock()
	if seq, ok := ts.m[id]; ok {
		return seq
	}
	if id == ts.abortID && id != 0 {
		return ts.abortSeq
	}
	return id
}

// renumber returns msg, a pool's notice about task id, with the task
// named by its input's number: "task 2" in a pool's words is the fourth
// input in a run resumed after the first two.
func (ts *taskSeqs) renumber(msg string, id uint64) string {
	if id == 0 {
		return msg
	}
	seq := ts.of(id)
	if seq == id {
		return msg
	}
	return strings.Replace(msg, "task "+strconv.FormatUint(id, 10)+" ", "task "+strconv.FormatUint(seq, 10)+" ", 1)
}

// keepAbort keeps the input's number of the task of r, which failed, when
// the pool aborted for it (poolErr, the pool's Err), for the summary's
// reason. The pool records that reason before it delivers the result.
func (ts *taskSeqs) keepAbort(r *pool.Result, poolErr error) {
	var ae *pool.AbortError
	if ts == nil || !errors.As(poolErr, &ae) || ae.TaskID == 0 {
		return
	}
	ts.mu.Lock()
	defer ts.mu.Unlock()
	if seq, ok := ts.m[ae.TaskID]; ok && holds(r, ae.TaskID) {
		ts.abortID, ts.abortSeq = ae.TaskID, seq
	}
}

// holds reports whether r is the result of pool task id, or of a batch
// that holds it.
func holds(r *pool.Result, id uint64) bool {
	if r.ID == id {
		return true
	}
	for _, it := range r.Items {
		if it.ID == id {
			return true
		}
	}
	return false
}

// forget drops the tasks of r, whose result is in.
func (ts *taskSeqs) forget(r *pool.Result) {
	if ts == nil {
		return
	}
	ts.mu.Lock()
	defer ts.mu.Unlock()
	if len(ts.m) == 0 {
		return
	}
	delete(ts.m, r.ID)
	for _, it := range r.Items {
		delete(ts.m, it.ID)
	}
}

// output is where results go. Standard output is buffered and flushed when
// the pool has no result waiting; every real write to the terminal goes
// through the progress bar's pause.
type output struct {
	out  *bufio.Writer
	errw io.Writer
	err  error // the first write error
	// stdoutFile is safepool's standard output, which out writes to.
	stdoutFile io.Writer
}

// newOutput returns the output that buffers what goes to w, a writer of
// stdoutFile (safepool's standard output), and writes the jobs' standard
// error to stderr.
func newOutput(w, stderr, stdoutFile io.Writer) *output {
	return &output{out: bufio.NewWriterSize(w, 64<<10), errw: stderr, stdoutFile: stdoutFile}
}

// fail notes err, when not nil, as the first write error, naming the file
// stdout was redirected to (nameStdout).
func (o *output) fail(err error) {
	if err != nil && o.err == nil {
		o.err = nameStdout(o.stdoutFile, err)
	}
}

// stdout appends to the job's standard output.
func (o *output) stdout(b ...[]byte) {
	for _, p := range b {
		if o.err == nil {
			_, err := o.out.Write(p)
			o.fail(err)
		}
	}
}

// stderr writes to the job's standard error, after what is buffered for
// standard output, so that a terminal shows them in order.
func (o *output) stderr(b []byte) {
	if o.err == nil {
		o.fail(o.out.Flush())
	}
	if o.err == nil {
		_, o.err = o.errw.Write(b)
	}
}

// outputLinger is how long a result may wait in the output buffer for more.
const outputLinger = 5 * time.Millisecond

func (o *output) flush() {
	if o.err == nil {
		o.fail(o.out.Flush())
	}
}

// execute runs the job to the end and returns its summary and exit status.
// It prints the output, the summary and, on failure, the reason.
func (j *job) execute(ctx context.Context) (*summary, int) {
	e := j.e
	// Standard error may be gone (a closed terminal): what safepool says
	// there is then lost, and nothing else changes.
	// A reader of stdout or stderr that stops reading must not keep a
	// stopping run from ending (stallGuard).
	guard := newStallGuard(cmp.Or(j.cfg.Grace, pool.DefaultGrace))
	stdoutW := guard.guard(e.stdout)
	rawStderr := lossyWriter{guard.guard(e.stderr)}
	jobStderr := &sharedStderr{w: rawStderr}
	stderr := jobStderr.own()
	sum := &summary{
		Mode:      j.mode,
		Command:   j.cfg.Command,
		StartTime: time.Now(),
		messages:  j.messages,
		listedIn:  listedIn(j.joblog, j.journal.path),
		viaShell:  j.viaShell,
		textOnly:  j.jsonPath == "",
	}
	c := newCounters()
	srcTotal := j.src.total()
	c.total.Store(srcTotal)
	j.seqs = &taskSeqs{m: map[uint64]uint64{}}
	sum.seqs = j.seqs

	// Every output file is created before any work starts, so that a path
	// that cannot be written costs nothing.
	// The metrics' address is bound first too: one in use is a usage
	// error, before any output file is made.
	jm, err := startMetrics(j.metrics)
	if err != nil {
		fmt.Fprintf(stderr, "safepool: %v\n", err)
		return sum, exitUsage
	}
	defer jm.close()
	jl, jsonOut, jj, err := j.openOutputs(stdoutW)
	if err != nil {
		fmt.Fprintf(stderr, "safepool: %v\n", err)
		return sum, exitUsage
	}
	if jm != nil {
		fmt.Fprintf(stderr, "safepool: metrics at %s\n", jm.srv.URL())
	}
	prog := &progress{}
	if j.progress {
		// The bar is drawn over, and cleared from, the line it is on.
		prog = startProgress(rawStderr, true, c, e.stderr)
	}
	if j.cfg.Stderr == nil && j.cfg.Protocol != pool.OneShot {
		j.cfg.Stderr = pausedWriter{prog, jobStderr}
	}
	// The pool calls the observer under a lock of its own, so said needs
	// none: each kind of notice is printed once.
	said := map[pool.EventKind]bool{}
	j.cfg.Observer = func(ev pool.Event) {
		c.observe(ev)
		jl.observe(ev)
		jm.observe(ev)
		jj.observe(ev)
		switch ev.Kind {
		case pool.EventWorkerStalled, pool.EventWorkerOutOfStep, pool.EventWorkerOverMaxRSS:
			if !said[ev.Kind] {
				said[ev.Kind] = true
				msg := j.seqs.renumber(ev.Message, ev.TaskID)
				prog.pause(func() { fmt.Fprintf(stderr, "safepool: %s\n", quoteMessage(msg)) })
			}
		}
	}

	if err := jj.start(&j.cfg); err != nil {
		prog.finish()
		jl.close()
		jj.close(exitUsage)
		fmt.Fprintf(stderr, "safepool: %v\n", err)
		sum.Aborted, sum.AbortReason, sum.ExitStatus = true, quoteMessage(err.Error()), exitUsage
		sum.NotRead = noneRead(srcTotal)
		if err := jsonOut.write(sum); err != nil {
			fmt.Fprintf(stderr, "safepool: %v\n", err)
		}
		return sum, exitUsage
	}
	if jj != nil && jj.notice != "" {
		fmt.Fprintf(stderr, "safepool: %s\n", jj.notice)
	}
	p, err := pool.New(j.cfg)
	if err != nil {
		// The command cannot start (or the engine rejects the
		// configuration): nothing ran.
		prog.finish()
		jl.close()
		jj.close(exitUsage)
		reason := quoteMessage(err.Error())
		if j.notFoundHint != "" && errors.Is(err, exec.ErrNotFound) {
			reason += "; " + j.notFoundHint
		}
		fmt.Fprintf(stderr, "safepool: %s\n", reason)
		sum.Aborted, sum.AbortReason, sum.ExitStatus = true, reason, exitUsage
		sum.NotRead = noneRead(srcTotal)
		sum.wall = time.Since(sum.StartTime)
		if err := jsonOut.write(sum); err != nil {
			fmt.Fprintf(stderr, "safepool: %v\n", err)
		}
		return sum, exitUsage
	}
	c.pool.Store(p)
	jm.attach(p)
	jj.describe(p)
	var paused atomic.Bool
	defer followTerminalStops(p, &paused)()
	defer watchTerminalReads(&paused, func(n string) {
		prog.pause(func() { fmt.Fprintf(stderr, "safepool: %s\n", n) })
	})()

	// Without a cgroup per worker, when memory flags were given, say once
	// how memory is watched instead, and what the memory governor plans
	// with and measures workers by.
	if !p.MemoryPerWorker() && (j.cfg.MemLimit > 0 || j.cfg.MemBudget > 0 || j.cfg.MemPerTask > 0 || j.cfg.MemReserve > 0) {
		prog.pause(func() {
			fmt.Fprintf(stderr, "safepool: %s; %s\n", p.MemoryModeReason(), p.MemoryGovernor())
		})
	}

	// What the pool changed of the configuration, such as fewer workers
	// for the open-file limit.
	for _, n := range p.Notices() {
		prog.pause(func() { fmt.Fprintf(stderr, "safepool: %s\n", n) })
	}

	// The feeder submits inputs; Submit blocks while the pool is full,
	// which is the backpressure that keeps memory flat.
	var feedErr error
	var feedMu sync.Mutex // guards feedErr
	// inputEnded says that the feeder read the input to its end: a run
	// stopped before says how much of it was not run.
	var inputEnded atomic.Bool
	feedDone := make(chan struct{})
	// replayCh carries the outputs of map tasks an earlier run did, from
	// the feeder to the results loop, which writes them in their place.
	ahead := replayAhead
	if j.replayAhead > 0 {
		ahead = j.replayAhead
	}
	replayCh := make(chan replay, ahead)
	fb := &feedBack{replays: replayCh, metrics: jm, skipped: &c.skipped}
	fb.fail = func(err error) {
		feedMu.Lock()
		feedErr = err
		feedMu.Unlock()
		p.Abort(err)
	}
	fb.stop = func(err error) {
		feedMu.Lock()
		feedErr = err
		feedMu.Unlock()
	}
	// The feeder closes the channel it was given: the results loop sets
	// replayCh to nil once it stops reading it, which may be before the
	// feeder's first statement when the pool aborts at once (a worker's
	// cgroup that cannot be made, for want of files).
	go func(replayCh chan<- replay) {
		defer close(feedDone)
		defer p.Close()
		defer close(replayCh)
		if j.blocks != nil {
			n, ended := j.feedBlocks(ctx, p, jl, jj, fb)
			c.total.Store(int64(n) + c.skipped.Load())
			inputEnded.Store(ended)
			return
		}
		// seq numbers inputs (the {#} of run, the journal's task ids);
		// id numbers the tasks submitted to the pool, as the pool does.
		var seq, id uint64
		for {
			in, err := j.src.next()
			if err == io.EOF {
				c.total.Store(int64(seq)) // the inputs skipped too
				inputEnded.Store(true)
				return
			}
			if err != nil {
				fb.stop(fmt.Errorf("reading input: %w", err))
				return
			}
			if feedStopped(ctx, p) {
				// A read that came back after the run stopped, which may
				// have ended without this feeder (see the results loop).
				return
			}
			seq++
			key := jj.key(in)
			f, done, err := jj.finished(key)
			if err != nil {
				fb.fail(err)
				return
			}
			jin := in
			if jj != nil && j.journalInput != nil {
				jin = j.journalInput(in)
			}
			if done {
				if feedStopped(ctx, p) {
					return
				}
				fb.skip(j.mode, jj, seq, key, jin, f, id)
				continue
			}
			id++
			t := j.task(seq, in)
			j.seqs.note(id, seq)
			jl.submit(id, seq, t.Input)
			jj.submit(id, seq, key, jin)
			if _, err := p.Submit(ctx, t); err != nil {
				jj.withdraw(id) // not a task of the run: the summary does not count it
				return          // the pool is stopping; the results loop reports why
			}
		}
	}(replayCh)

	// On the first interrupt the pool stops gracefully; on a second one
	// it kills the workers at once. The first one again within relayWindow
	// is not a second one (see relayed).
	var interrupted atomic.Bool
	resultsDone := make(chan struct{})
	interruptDone := make(chan struct{})
	stopInterrupt := context.AfterFunc(ctx, func() {
		defer close(interruptDone)
		interrupted.Store(true)
		// Listen before aborting, so a quick second Ctrl-C is not lost.
		sig := make(chan os.Signal, 1)
		signal.Notify(sig, stopSignals()...)
		defer signal.Stop(sig)
		// From now on a write that the reader of stdout or stderr does
		// not take is given up after the grace period. The message below
		// waits for the write under way, which may be one that no reader
		// takes (a job's stderr to a stuck logger, a terminal stopped by
		// Ctrl-S): the stop must not wait for it, only keep the message
		// ahead of what the stop prints when it can.
		guard.stop()
		said := make(chan struct{})
		go func() { // ends once its write is taken or given up: within the grace period
			defer close(said)
			prog.pause(func() {
				if s := interruptedBy(ctx); s != nil && s != os.Interrupt {
					fmt.Fprintf(stderr, "safepool: interrupted by %s; stopping workers (signal again to kill them now)\n", signalName(s))
					return
				}
				fmt.Fprintln(stderr, "safepool: interrupted; stopping workers (interrupt again to kill them now)")
			})
		}()
		select {
		case <-said:
		case <-time.After(stallMoment):
		}
		p.Abort(errInterrupted)
	second:
		for {
			select {
			case s := <-sig:
				if relayed(ctx, s, time.Now()) {
					continue // the first one again, passed on by timeout(1)
				}
				guard.giveUp()
				prog.pause(func() { fmt.Fprintln(stderr, "safepool: killing workers") })
				p.Abort(errInterrupted)
				break second
			case <-resultsDone:
				break second
			}
		}
		<-said // the message before the summary
	})

	// Standard output needs the bar out of the way only when it shares the
	// terminal with it.
	var stdout io.Writer = stdoutW
	if isTerminal(e.stdout) {
		stdout = pausedWriter{prog, stdoutW}
	}
	o := newOutput(stdout, pausedWriter{prog, jobStderr}, e.stdout)
	led := &outputLedger{jj: jj, jm: jm}
	results := p.Results()
	aborted := false
	// abortOnWriteError stops the pool at the first error writing output.
	// A reader that has gone is no error of the run: it just wants no more.
	abortOnWriteError := func() {
		if o.err == nil || aborted {
			return
		}
		aborted = true
		if errors.Is(o.err, syscall.EPIPE) {
			p.Abort(errStdoutClosed)
			return
		}
		p.Abort(fmt.Errorf("writing output: %w", o.err))
	}
	// Output is flushed when no result has come for outputLinger, not after
	// each result: a write(2) per line would cost more than short lines do.
	flushT := time.NewTimer(time.Hour)
	flushT.Stop()
	var flushC <-chan time.Time
	// In --keep-order, a replayed output waits in held until the pool's
	// task it follows has been written; lastID is the last one written.
	replays := replayCh
	var held *replay
	var lastID uint64
	emitReplay := func(rp *replay) {
		if o.err == nil {
			if j.rawReplay {
				o.stdout(rp.output)
			} else {
				o.stdout(rp.output, newline)
			}
			if flushC == nil && o.out.Buffered() > 0 {
				flushT.Reset(outputLinger)
				flushC = flushT.C
			}
			abortOnWriteError()
		}
	}
	for results != nil || replays != nil || held != nil {
		if held != nil && (results == nil || held.after <= lastID) {
			emitReplay(held)
			held, replays = nil, replayCh
			continue
		}
		select {
		case rp, ok := <-replays:
			if !ok {
				replays, replayCh = nil, nil
				break
			}
			if j.cfg.KeepOrder && rp.after > lastID && results != nil {
				held, replays = &rp, nil
				break
			}
			emitReplay(&rp)
		case r, ok := <-results:
			if !ok {
				results = nil
				if p.Err() != nil && (replayCh != nil || held != nil) {
					// Aborted: Results closed while the feeder may be
					// blocked reading an input that stays open and idle
					// (tail -f log | safepool ...), and nothing can
					// interrupt that read. The run ends without it: the
					// outputs still to replay are not written (the
					// journal keeps them for the next --resume), and the
					// feeder's sends are drained until it returns, at its
					// input's next line or end, or with the process.
					if replayCh != nil {
						go func(ch <-chan replay) {
							for range ch {
							}
						}(replayCh)
					}
					replays, replayCh, held = nil, nil, nil
				}
				break
			}
			if j.cfg.KeepOrder {
				// The outputs replayed before r's task was submitted
				// come first: the feeder sent them before it submitted
				// the task, so they wait in the channel, where select
				// could leave them behind r.
				first := r.ID
				if len(r.Items) > 0 {
					first = r.Items[0].ID
				}
			drain:
				for {
					if held != nil {
						if held.after >= first {
							break
						}
						emitReplay(held)
						held, replays = nil, replayCh
						continue
					}
					if replays == nil {
						break
					}
					select {
					case rp, ok := <-replays:
						if !ok {
							replays, replayCh = nil, nil
							break drain
						}
						held, replays = &rp, nil
					default:
						break drain
					}
				}
			}
			lastID = max(lastID, r.ID)
			if n := len(r.Items); n > 0 {
				lastID = max(lastID, r.Items[n-1].ID) // a block's last line
			}
			if j.blocks != nil {
				j.blocks.observe(&r)
			}
			sum.add(&r)
			if r.State == pool.Failed || r.State == pool.Poison {
				j.seqs.keepAbort(&r, p.Err())
			}
			j.seqs.forget(&r)
			if o.err != nil {
				led.lost(&r, j.journaled == nil || j.journaled(&r))
				break
			}
			j.emit(o, &r)
			// After emit, which may keep the output for the journal.
			led.written(&r, j.journaled == nil || j.journaled(&r))
			switch {
			case o.out.Buffered() == 0:
				// All written out already, as a long output is, which
				// the buffer passes on at once: the journal learns of
				// it now, not at the next flush, which only buffered
				// output starts.
				led.flushed(o.err == nil)
			case flushC == nil:
				flushT.Reset(outputLinger)
				flushC = flushT.C
			}
			abortOnWriteError()
		case <-flushC:
			flushC = nil
			o.flush()
			led.flushed(o.err == nil)
			abortOnWriteError()
		}
	}
	flushT.Stop()
	close(resultsDone)
	if !stopInterrupt() {
		<-interruptDone
	}
	prog.finish()
	o.flush()
	led.flushed(o.err == nil)
	sum.wall = time.Since(sum.StartTime)

	poolErr := p.Err()
	if poolErr == nil {
		<-feedDone // Results is closed, so the feeder has closed the pool.
	}
	feedMu.Lock()
	readErr := feedErr
	feedMu.Unlock()

	stats := p.Stats()
	sum.setTasks(stats, led)
	sum.Tasks.Skipped = int(fb.skipped.Load())
	sum.Tasks.SkippedFailed = int(fb.skippedFailed.Load())
	sum.Attempts = stats.Attempts
	sum.WorkersStarted = stats.WorkersStarted
	sum.WorkerDeaths = stats.WorkerDeaths
	sum.MemoryMode = p.MemoryMode()
	st, governed := p.Memory()
	sum.setMemory(st, governed, p.Workers(), stats.Preempted)

	status := exitOK
	stdoutClosed := errors.Is(o.err, syscall.EPIPE)
	se := cannotStart(poolErr, stats)
	switch {
	case se != nil:
		// Workers keep failing before they take any task: the command is
		// wrong. When tasks ran all the same (their workers died of them,
		// or held them unanswered), the summary says so task by task.
		reason := quoteMessage(se.Error())
		if stats.Attempts == 0 {
			fmt.Fprintf(stderr, "safepool: %s\n", reason)
		}
		sum.Aborted = true
		sum.AbortReason = reason
		status = exitUsage
	case interrupted.Load() && poolErr != nil:
		sum.Aborted, sum.Interrupted = true, true
		sum.AbortReason = errInterrupted.Error()
		if s := interruptedBy(ctx); s != nil {
			sum.AbortReason = (&SignalError{Signal: s}).Error()
		}
		status = exitAborted
	case poolErr != nil:
		sum.Aborted = true
		sum.AbortReason = abortReason(poolErr, j.seqs)
		status = exitAborted
	case readErr != nil:
		// The input stopped early: what was read ran to its end.
		sum.Aborted = true
		sum.AbortReason = quoteMessage(readErr.Error())
		status = exitAborted
	case o.err != nil:
		// The last results were refused after the pool had finished: the
		// output is as incomplete as if the pool had been stopped.
		sum.Aborted = true
		sum.AbortReason = quoteMessage(fmt.Sprintf("writing output: %v", o.err))
		if stdoutClosed {
			sum.AbortReason = errStdoutClosed.Error()
		}
		status = exitAborted
	case !sum.ok():
		status = exitFailed
	case stats.OutOfStep > 0:
		// Every task is done, but some answers may belong to other lines.
		status = exitFailed
	}
	if sum.Aborted && readErr == nil && !inputEnded.Load() {
		// Inputs never read are no task of the run, and the counts
		// above leave them out.
		sum.NotRead = -1
		if srcTotal >= 0 { // the ::: arguments, counted
			sum.NotRead = max(srcTotal-int64(sum.Tasks.Submitted+sum.Tasks.Skipped), 0)
		}
	}
	if stats.OutOfStep > 0 && se == nil {
		if j.cfg.Protocol == pool.Framed {
			fmt.Fprintf(stderr, "safepool: %s broke the framed protocol: results they sent before may be wrong\n",
				plural(stats.OutOfStep, "worker"))
		} else {
			fmt.Fprintf(stderr, "safepool: %s out of step: answers given before may belong to other lines\n",
				plural(stats.OutOfStep, "worker"))
		}
	}
	if readErr != nil && sum.AbortReason != quoteMessage(readErr.Error()) {
		// Said once: the summary gives the reason of the abort.
		fmt.Fprintf(stderr, "safepool: %s\n", quoteMessage(readErr.Error()))
	}
	if o.err != nil && !stdoutClosed {
		fmt.Fprintf(stderr, "safepool: writing output: %v\n", o.err)
	}
	sum.ExitStatus = status

	if err := jj.close(status); err != nil {
		fmt.Fprintf(stderr, "safepool: %v\n", err)
		status = max(status, exitFailed)
		sum.ExitStatus = status
	}
	if err := jl.close(); err != nil {
		fmt.Fprintf(stderr, "safepool: %v\n", err)
		status = max(status, exitFailed)
		sum.ExitStatus = status
	}
	if err := jsonOut.write(sum); err != nil && !(stdoutClosed && jsonOut.path == "-") {
		fmt.Fprintf(stderr, "safepool: %v\n", err)
		status = max(status, exitFailed)
	}
	if se == nil || stats.Attempts > 0 {
		sum.writeText(stderr, j.quiet)
	}
	return sum, status
}

// openOutputs creates the job log and the JSON summary's file, and opens
// the journal; stdout is where --json - writes.
func (j *job) openOutputs(stdout io.Writer) (*joblog, *jsonOutput, *jobJournal, error) {
	if err := j.outputOverInput(); err != nil {
		return nil, nil, nil, err
	}
	if j.journal.path != "" {
		// Either would be created, empty, over the journal's file.
		for _, o := range []struct{ flag, path string }{{"--joblog", j.joblog}, {"--json", j.jsonPath}} {
			if o.path == "" || o.path == "-" {
				continue
			}
			if what := journalFileAt(o.path, j.journal.path); what != "" {
				return nil, nil, nil, fmt.Errorf("%s %s would overwrite %s: name another file", o.flag, o.path, what)
			}
		}
	}
	var jl *joblog
	if j.joblog != "" {
		var err error
		if jl, err = openJoblog(j.joblog, j.journal.resuming()); err != nil {
			return nil, nil, nil, err
		}
	}
	jj, err := openJournal(j.mode, j.keyCommand, j.journal, j.argv)
	if err != nil {
		jl.close()
		return nil, nil, nil, err
	}
	if jj != nil {
		// map keeps the output of every task in the journal, but map
		// --pipe's blocks' (journaled), whose output may be too long.
		jj.atEnd = j.mode == "map" && j.journaled == nil
	}
	jsonOut, err := openJSONOutput(j.jsonPath, stdout)
	if err != nil {
		jl.close()
		jj.close(exitUsage)
		return nil, nil, nil, err
	}
	return jl, jsonOut, jj, nil
}

// noneRead is the summary's NotRead for a run that ended before it read
// any of its input (srcTotal inputs, -1 when not known): all of the :::
// arguments, or the lines, whose number is not known.
func noneRead(srcTotal int64) int64 {
	if srcTotal > 0 {
		return srcTotal
	}
	return -1
}

// cannotStart returns the *pool.StartError the pool aborted with when its
// command never worked in this run (no task done), and nil otherwise. That
// run exits 2 (the command cannot start), even when its workers died of the
// tasks they took or held them unanswered. A pool whose command has worked
// also gives up on workers that keep failing at start-up, but only after a
// minute of failures in a row (Config.StartupFailures): tasks ran and their
// output was written, so that run was stopped before the end, and exits 3.
// "Worked" is the pool's own test: it waits that minute once a task is done.
func cannotStart(poolErr error, stats pool.Stats) *pool.StartError {
	var se *pool.StartError
	if stats.Done > 0 || !errors.As(poolErr, &se) {
		return nil
	}
	return se
}

// abortReason says why the pool aborted, for the summary, naming a task
// by its input's number (seqs).
func abortReason(err error, seqs *taskSeqs) string {
	var ae *pool.AbortError
	if errors.As(err, &ae) && ae.Reason != nil {
		var te *pool.TaskError
		if errors.As(ae.Reason, &te) {
			if te.Result != nil {
				r := *te.Result
				r.ID = seqs.of(r.ID)
				te = &pool.TaskError{Result: &r}
			}
			return quoteMessage(fmt.Sprintf("%v (--on-worker-death abort)", te))
		}
		return quoteMessage(ae.Reason.Error())
	}
	return quoteMessage(err.Error())
}

// jsonOutput is where the JSON summary goes: a file created before the run
// starts, or standard output. A nil *jsonOutput writes nothing.
type jsonOutput struct {
	path   string // the --json argument
	f      *os.File
	stdout io.Writer
}

// openJSONOutput creates path, unless it is "-" (standard output) or ""
// (no JSON summary).
func openJSONOutput(path string, stdout io.Writer) (*jsonOutput, error) {
	switch path {
	case "":
		return nil, nil
	case "-":
		return &jsonOutput{path: path, stdout: stdout}, nil
	}
	f, err := os.Create(path)
	if err != nil {
		return nil, fmt.Errorf("cannot create the JSON summary: %w", err)
	}
	return &jsonOutput{path: path, f: f}, nil
}

// write writes the summary and closes the file.
func (jo *jsonOutput) write(sum *summary) error {
	if jo == nil {
		return nil
	}
	if jo.f == nil {
		return sum.writeJSON(jo.stdout)
	}
	err := sum.writeJSON(jo.f)
	if cerr := jo.f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("writing the JSON summary: %w", err)
	}
	return nil
}

// lossyWriter writes to w and reports success whatever happens, for
// standard error once it may be gone: a message safepool cannot show must
// not stop workers whose stderr it carries, nor the run.
type lossyWriter struct{ w io.Writer }

func (l lossyWriter) Write(b []byte) (int, error) {
	l.w.Write(b)
	return len(b), nil
}

// sharedStderr is standard error as jobs and safepool share it: a job's
// bytes go as they are (Write), and each of safepool's own messages
// (own) starts a line of its own, after a newline when a job's last
// bytes did not end one; else a summary glued to a job's binary bytes
// or cut message would be missed by whoever looks for it.
type sharedStderr struct {
	mu   sync.Mutex
	w    io.Writer
	open bool // the last byte written did not end a line; guarded by mu
}

// Write writes a job's bytes as they are.
func (s *sharedStderr) Write(b []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	n, err := s.w.Write(b)
	if n > 0 {
		s.open = b[n-1] != '\n'
	}
	return n, err
}

// own is the writer of safepool's own messages, each written in one call.
func (s *sharedStderr) own() io.Writer { return ownStderr{s} }

type ownStderr struct{ s *sharedStderr }

func (o ownStderr) Write(b []byte) (int, error) {
	s := o.s
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.open && len(b) > 0 {
		if _, err := s.w.Write([]byte{'\n'}); err != nil {
			return 0, err
		}
		s.open = false
	}
	n, err := s.w.Write(b)
	if n > 0 {
		s.open = b[n-1] != '\n'
	}
	return n, err
}
