package cli

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/safepool/safepool/pool"
)

// errInterrupted is the reason given to Abort on SIGINT or SIGTERM.
var errInterrupted = errors.New("interrupted")

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

	joblog   string // path of --joblog, or ""
	jsonPath string // path of the JSON summary, "-" for stdout, or ""
	progress bool   // whether to draw the progress bar
	quiet    bool   // print no summary when every task succeeded
	messages bool   // whether the summary shows attempt messages
	e        *env
}

// output is where results go. Standard output is buffered and flushed when
// the pool has no result waiting; every real write to the terminal goes
// through the progress bar's pause.
type output struct {
	out  *bufio.Writer
	errw io.Writer
	err  error // the first write error
}

// stdout appends to the job's standard output.
func (o *output) stdout(b ...[]byte) {
	for _, p := range b {
		if o.err == nil {
			_, o.err = o.out.Write(p)
		}
	}
}

// stderr writes to the job's standard error, after what is buffered for
// standard output, so that a terminal shows them in order.
func (o *output) stderr(b []byte) {
	if o.err == nil {
		o.err = o.out.Flush()
	}
	if o.err == nil {
		_, o.err = o.errw.Write(b)
	}
}

// outputLinger is how long a result may wait in the output buffer for more.
const outputLinger = 5 * time.Millisecond

func (o *output) flush() {
	if o.err == nil {
		o.err = o.out.Flush()
	}
}

// execute runs the job to the end and returns its summary and exit status.
// It prints the output, the summary and, on failure, the reason.
func (j *job) execute(ctx context.Context) (*summary, int) {
	e := j.e
	sum := &summary{
		Mode:      j.mode,
		Command:   j.cfg.Command,
		StartTime: time.Now(),
		messages:  j.messages,
	}
	c := newCounters()
	c.total.Store(j.src.total())

	var jl *joblog
	if j.joblog != "" {
		var err error
		if jl, err = openJoblog(j.joblog); err != nil {
			fmt.Fprintf(e.stderr, "safepool: %v\n", err)
			return sum, exitUsage
		}
	}
	prog := &progress{}
	if j.progress {
		prog = startProgress(e.stderr, true, c)
	}
	if j.cfg.Stderr == nil && j.cfg.Protocol != pool.OneShot {
		j.cfg.Stderr = pausedWriter{prog, e.stderr}
	}
	// The pool calls the observer under a lock of its own, so said needs
	// none: each kind of notice is printed once.
	said := map[pool.EventKind]bool{}
	j.cfg.Observer = func(ev pool.Event) {
		c.observe(ev)
		switch ev.Kind {
		case pool.EventTaskEnded:
			if ev.Result != nil {
				jl.add(ev.Result)
			}
		case pool.EventWorkerStalled, pool.EventWorkerOutOfStep:
			if !said[ev.Kind] {
				said[ev.Kind] = true
				prog.pause(func() { fmt.Fprintf(e.stderr, "safepool: %s\n", ev.Message) })
			}
		}
	}

	p, err := pool.New(j.cfg)
	if err != nil {
		// The command cannot start (or the engine rejects the
		// configuration): nothing ran.
		prog.finish()
		jl.close()
		reason := strings.TrimPrefix(err.Error(), "pool: ")
		fmt.Fprintf(e.stderr, "safepool: %s\n", reason)
		sum.Aborted, sum.AbortReason, sum.ExitStatus = true, reason, exitUsage
		sum.wall = time.Since(sum.StartTime)
		if j.jsonPath != "" {
			if err := writeJSONSummary(j.jsonPath, e.stdout, sum); err != nil {
				fmt.Fprintf(e.stderr, "safepool: %v\n", err)
			}
		}
		return sum, exitUsage
	}

	// Without cgroups, when memory flags were given, say once how memory
	// is watched instead, and that the memory governor is off.
	if p.MemoryMode() == "rss-polling" && (j.cfg.MemLimit > 0 || j.cfg.MemBudget > 0 || j.cfg.MemPerTask > 0) {
		prog.pause(func() {
			fmt.Fprintf(e.stderr, "safepool: %s; memory governor off\n", p.MemoryModeReason())
		})
	}

	// The feeder submits inputs; Submit blocks while the pool is full,
	// which is the backpressure that keeps memory flat.
	var feedErr error
	var feedMu sync.Mutex // guards feedErr
	feedDone := make(chan struct{})
	go func() {
		defer close(feedDone)
		defer p.Close()
		var seq uint64
		for {
			in, err := j.src.next()
			if err == io.EOF {
				c.total.Store(int64(seq))
				return
			}
			if err != nil {
				feedMu.Lock()
				feedErr = err
				feedMu.Unlock()
				p.Abort(fmt.Errorf("reading input: %w", err))
				return
			}
			seq++
			if _, err := p.Submit(ctx, j.task(seq, in)); err != nil {
				return // the pool is stopping; the results loop reports why
			}
		}
	}()

	// On the first interrupt the pool stops gracefully; on a second one
	// it kills the workers at once.
	var interrupted atomic.Bool
	resultsDone := make(chan struct{})
	interruptDone := make(chan struct{})
	stopInterrupt := context.AfterFunc(ctx, func() {
		defer close(interruptDone)
		interrupted.Store(true)
		// Listen before aborting, so a quick second Ctrl-C is not lost.
		sig := make(chan os.Signal, 1)
		signal.Notify(sig, os.Interrupt, syscall.SIGTERM)
		defer signal.Stop(sig)
		prog.pause(func() {
			fmt.Fprintln(e.stderr, "safepool: interrupted; stopping workers (interrupt again to kill them now)")
		})
		p.Abort(errInterrupted)
		select {
		case <-sig:
			prog.pause(func() { fmt.Fprintln(e.stderr, "safepool: killing workers") })
			p.Abort(errInterrupted)
		case <-resultsDone:
		}
	})

	// Standard output needs the bar out of the way only when it shares the
	// terminal with it.
	var stdout io.Writer = e.stdout
	if isTerminal(e.stdout) {
		stdout = pausedWriter{prog, e.stdout}
	}
	o := &output{out: bufio.NewWriterSize(stdout, 64<<10), errw: pausedWriter{prog, e.stderr}}
	results := p.Results()
	aborted := false
	// Output is flushed when no result has come for outputLinger, not after
	// each result: a write(2) per line would cost more than short lines do.
	flushT := time.NewTimer(time.Hour)
	flushT.Stop()
	var flushC <-chan time.Time
	for results != nil {
		select {
		case r, ok := <-results:
			if !ok {
				results = nil
				break
			}
			sum.add(&r)
			if o.err != nil {
				break
			}
			j.emit(o, &r)
			if flushC == nil && o.out.Buffered() > 0 {
				flushT.Reset(outputLinger)
				flushC = flushT.C
			}
			if o.err != nil && !aborted {
				aborted = true
				p.Abort(fmt.Errorf("writing output: %w", o.err))
			}
		case <-flushC:
			flushC = nil
			o.flush()
			if o.err != nil && !aborted {
				aborted = true
				p.Abort(fmt.Errorf("writing output: %w", o.err))
			}
		}
	}
	flushT.Stop()
	close(resultsDone)
	if !stopInterrupt() {
		<-interruptDone
	}
	prog.finish()
	o.flush()
	sum.wall = time.Since(sum.StartTime)

	poolErr := p.Err()
	if poolErr == nil {
		<-feedDone // Results is closed, so the feeder has closed the pool.
	}
	feedMu.Lock()
	readErr := feedErr
	feedMu.Unlock()

	stats := p.Stats()
	sum.Attempts = stats.Attempts
	sum.WorkersStarted = stats.WorkersStarted
	sum.WorkerDeaths = stats.WorkerDeaths
	sum.MemoryMode = p.MemoryMode()
	st, governed := p.Memory()
	sum.setMemory(st, governed, j.cfg.Workers, stats.Preempted)

	status := exitOK
	var se *pool.StartError
	switch {
	case errors.As(poolErr, &se):
		// Workers keep failing before they take any task: the command is
		// wrong. When tasks ran all the same (their workers died of them,
		// or held them unanswered), the summary says so task by task.
		if stats.Attempts == 0 {
			fmt.Fprintf(e.stderr, "safepool: %s\n", strings.TrimPrefix(se.Error(), "pool: "))
		}
		sum.Aborted = true
		sum.AbortReason = strings.TrimPrefix(se.Error(), "pool: ")
		status = exitUsage
	case interrupted.Load() && poolErr != nil:
		sum.Aborted, sum.Interrupted = true, true
		sum.AbortReason = errInterrupted.Error()
		status = exitAborted
	case poolErr != nil:
		sum.Aborted = true
		sum.AbortReason = abortReason(poolErr)
		status = exitAborted
	case !sum.ok():
		status = exitFailed
	case stats.OutOfStep > 0:
		// Every task is done, but some answers may belong to other lines.
		status = exitFailed
	}
	if stats.OutOfStep > 0 && se == nil {
		fmt.Fprintf(e.stderr, "safepool: %s out of step: answers given before may belong to other lines\n",
			plural(stats.OutOfStep, "worker"))
	}
	if readErr != nil {
		fmt.Fprintf(e.stderr, "safepool: %v\n", readErr)
	}
	if o.err != nil {
		fmt.Fprintf(e.stderr, "safepool: writing output: %v\n", o.err)
	}
	sum.ExitStatus = status

	if err := jl.close(); err != nil {
		fmt.Fprintf(e.stderr, "safepool: %v\n", err)
		status = max(status, exitFailed)
		sum.ExitStatus = status
	}
	if j.jsonPath != "" {
		if err := writeJSONSummary(j.jsonPath, e.stdout, sum); err != nil {
			fmt.Fprintf(e.stderr, "safepool: %v\n", err)
			status = max(status, exitFailed)
		}
	}
	if se == nil || stats.Attempts > 0 {
		sum.writeText(e.stderr, j.quiet)
	}
	return sum, status
}

// abortReason says why the pool aborted, for the summary.
func abortReason(err error) string {
	var ae *pool.AbortError
	if errors.As(err, &ae) && ae.Reason != nil {
		var te *pool.TaskError
		if errors.As(ae.Reason, &te) {
			return fmt.Sprintf("%v (--on-worker-death abort)", te)
		}
		return strings.TrimPrefix(ae.Reason.Error(), "pool: ")
	}
	return strings.TrimPrefix(err.Error(), "pool: ")
}

// writeJSONSummary writes the JSON summary to path, or to stdout for "-".
func writeJSONSummary(path string, stdout io.Writer, sum *summary) error {
	if path == "-" {
		return sum.writeJSON(stdout)
	}
	f, err := os.Create(path)
	if err != nil {
		return fmt.Errorf("cannot write JSON summary: %w", err)
	}
	if err := sum.writeJSON(f); err != nil {
		f.Close()
		return fmt.Errorf("writing JSON summary: %w", err)
	}
	return f.Close()
}
