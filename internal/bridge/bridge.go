// Package bridge lets a client in another language drive a pool over two
// pipes. The client (the Python package in python/safepool) sends a Hello
// with the pool's configuration and then tasks; the bridge runs them on a
// pool.Pool of framed workers and sends back each task's outcome with its
// attempts. A client's chunk of items (calls of a Python function) is one
// batch task (pool.Task.Items), whose items each keep their own fate: the
// pool's policy (retries, the memory governor's OOM retry, poison) applies
// to each item as to any task, and a worker death is blamed on the item
// that the worker's running-item page (or its last start frame) names. The
// wire format, bridge/5, is specified in docs/protocol.md.
package bridge

import (
	"bufio"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/safepool/safepool/pool"
)

// Version is the bridge protocol version that Hello and Ready carry.
// Version 1 ran batches of items as one task under the client's own policy;
// version 2 runs one item per task under the pool's; version 3 adds batch
// tasks (KindBatch, KindItems), whose items each keep their own fate;
// version 4 adds ranges to KindItems: one output for several items;
// version 5 sends a run of items without output (cancelled, say) as one
// entry of KindItems.
const Version = 5

// VersionError is the error of a session whose client speaks another version
// of the bridge protocol. The bridge sends its text to the client in an end
// frame, which a client of any version can read, before it gives up.
type VersionError struct {
	// Client is the version in the client's hello.
	Client int
}

func (e *VersionError) Error() string {
	if e.Client < Version {
		return fmt.Sprintf("bridge: the client speaks bridge/%d and this safepool binary bridge/%d: "+
			"the client is older than the binary; install the client and the binary from the same "+
			"release (the Python package bundles its own binary)", e.Client, Version)
	}
	return fmt.Sprintf("bridge: the client speaks bridge/%d and this safepool binary bridge/%d: "+
		"the binary is older than the client; install the client and the binary from the same release",
		e.Client, Version)
}

// Hello is the client's first frame: the pool to run.
type Hello struct {
	// Version is the bridge protocol version the client speaks; it must be
	// Version.
	Version int `json:"version"`
	// Command is the framed worker's argument vector.
	Command []string `json:"command"`
	// Workers is the number of workers. Zero means the number of CPUs.
	Workers int `json:"workers"`
	// MemLimit caps each worker's memory in bytes. Zero means no limit.
	MemLimit int64 `json:"mem_limit"`
	// Timeout bounds each task, in seconds. Zero means no limit.
	Timeout float64 `json:"timeout"`
	// MaxTasksPerWorker replaces a worker after this many tasks. Zero means
	// no limit.
	MaxTasksPerWorker int `json:"max_tasks_per_worker"`
	// MaxRSS replaces a worker whose resident memory exceeds this many bytes
	// after a task. Zero means no limit.
	MaxRSS int64 `json:"max_rss"`
	// Pipeline is how many tasks may be sent to a worker ahead. Zero means
	// the pool's default.
	Pipeline int `json:"pipeline"`
	// Grace is the time in seconds between SIGTERM and SIGKILL when workers
	// are stopped. Zero means the pool's default.
	Grace float64 `json:"grace"`
	// TimeoutGrace is the time in seconds that a task which ran out of its
	// timeout has between SIGTERM and SIGKILL (pool.Config.TimeoutGrace;
	// with NATS, the run's, cluster.RunSpec.TimeoutGrace): absent (nil)
	// means the pool's default (each agent's own), 0 means SIGKILL at
	// once. A negative value is refused.
	TimeoutGrace *float64 `json:"timeout_grace,omitempty"`

	// NoGovernor, MemBudget, MemReserve, MemPerTask, PreemptAbove and
	// PreemptPSI are the pool.Config fields of the same names (the
	// command line's --no-governor, --mem-budget, --mem-reserve,
	// --mem-per-task, --mem-high and --mem-psi); sizes are in bytes, and
	// zero means the pool's default. PreemptAbove is a fraction, not a
	// percentage; a negative PreemptAbove or PreemptPSI turns that trigger
	// off.
	NoGovernor   bool    `json:"no_governor"`
	MemBudget    int64   `json:"mem_budget"`
	MemReserve   int64   `json:"mem_reserve"`
	MemPerTask   int64   `json:"mem_per_task"`
	PreemptAbove float64 `json:"preempt_above"`
	PreemptPSI   float64 `json:"preempt_psi"`
	// Backoff and MaxBackoff, in seconds, are pool.Config's delay before
	// a retry and its cap. Zero means the pool's default.
	Backoff    float64 `json:"backoff"`
	MaxBackoff float64 `json:"max_backoff"`
	// TaskErrorRetries is pool.Config.TaskErrorRetries: extra attempts for
	// a task whose worker reported a failure (an error frame) and stayed
	// alive.
	TaskErrorRetries int `json:"task_error_retries"`
	// Retries and OnWorkerDeath are pool.Config's: extra attempts after
	// worker deaths, and what a death does ("retry", "skip" or "abort";
	// empty means the pool's default).
	Retries       int    `json:"retries"`
	OnWorkerDeath string `json:"on_worker_death"`
	// Clock is the path of the pool clock's file (clock.go), which the
	// client made and which the bridge opens read-write, maps, and keeps
	// standing still while the pool is paused for the stopped client.
	// Empty means no pool clock. A bridge that cannot open it (or that has
	// no client to follow) leaves it alone: it then reads CLOCK_MONOTONIC.
	Clock string `json:"clock,omitempty"`
}

// TaskMeta is the options of one task sent in a KindTaskMeta frame. Zero
// values mean the pool's own.
type TaskMeta struct {
	// Timeout bounds this task's attempts in seconds, in place of
	// Hello.Timeout (pool.Task.Timeout).
	Timeout float64 `json:"timeout,omitempty"`
	// Mem is the memory in bytes the task is expected to need, which the
	// governor admits it by (pool.Task.MemHint).
	Mem int64 `json:"mem,omitempty"`
}

// taskOf decodes the payload of a KindTaskMeta frame.
func taskOf(payload []byte) (pool.Task, error) {
	if len(payload) < 4 {
		return pool.Task{}, errors.New("bridge: task frame with options is too short")
	}
	n := binary.BigEndian.Uint32(payload)
	if uint64(n) > uint64(len(payload)-4) {
		return pool.Task{}, fmt.Errorf("bridge: task options of %d bytes in a %d-byte frame", n, len(payload))
	}
	var m TaskMeta
	if n == 0 {
		return pool.Task{Input: payload[4:]}, nil
	}
	if err := json.Unmarshal(payload[4:4+n], &m); err != nil {
		return pool.Task{}, fmt.Errorf("bridge: bad task options: %w", err)
	}
	if m.Timeout < 0 || m.Mem < 0 {
		return pool.Task{}, fmt.Errorf("bridge: negative task options %+v", m)
	}
	return pool.Task{Input: payload[4+n:], Timeout: seconds(m.Timeout), MemHint: m.Mem}, nil
}

// batchOf decodes the payload of a KindBatch frame.
func batchOf(payload []byte) (pool.Task, error) {
	if len(payload) < 4 {
		return pool.Task{}, errors.New("bridge: batch frame is too short")
	}
	n := binary.BigEndian.Uint32(payload)
	if n == 0 || n > 1<<24 {
		return pool.Task{}, fmt.Errorf("bridge: batch of %d items", n)
	}
	t, err := taskOf(payload[4:])
	t.Items = int(n)
	return t, err
}

// Ready answers Hello.
type Ready struct {
	// Version is the bridge protocol version.
	Version int `json:"version"`
	// PID is the bridge's process id.
	PID int `json:"pid"`
	// MemoryMode is pool.Pool.MemoryMode, and MemoryModeReason explains it.
	MemoryMode       string `json:"memory_mode"`
	MemoryModeReason string `json:"memory_mode_reason"`
	// MaxPending is how many tasks the client may have sent whose results
	// it has not yet read. The bridge reads the client's frames only while
	// the pool's queue has room; a client that keeps within MaxPending
	// never finds its frames unread, so that an abort frame is read at once.
	MaxPending int `json:"max_pending"`
	// Workers is how many workers the pool runs at once: the number asked
	// for, or fewer where a limit leaves room for fewer (Notices says why).
	Workers int `json:"workers"`
	// Notices is pool.Pool.Notices: what the pool changed of what was
	// asked, one sentence each, for the client to show its user.
	Notices []string `json:"notices,omitempty"`
}

// Meta describes a task's outcome in a result frame.
type Meta struct {
	// State is the task's terminal state: done, failed, cancelled or poison.
	State string `json:"state"`
	// Attempts lists the task's attempts in order.
	Attempts []Attempt `json:"attempts"`
}

// Attempt is one pool.Attempt on the wire; the fields mean what
// pool.Attempt's do.
type Attempt struct {
	// Number counts the task's charged attempts from 1.
	Number int `json:"number"`
	// PID is the worker's process id.
	PID int `json:"pid"`
	// Start and End bound the attempt, in Unix seconds; 0 means unknown.
	Start float64 `json:"start"`
	End   float64 `json:"end"`
	// Cause is empty for success, else why the attempt ended ("oom", ...).
	Cause string `json:"cause"`
	// ExitCode is the worker's exit status if it exited, else -1.
	ExitCode int `json:"exit_code"`
	// Signal names the signal that killed the worker, if one did.
	Signal string `json:"signal,omitempty"`
	// PeakRSS is the attempt's peak memory in bytes; 0 means unknown.
	PeakRSS int64 `json:"peak_rss"`
	// Message gives detail, such as the tail of the worker's stderr. For a
	// task error it is the worker's error payload up to its first NUL byte
	// (the rest, if any, is the worker's own record, sent as the result's
	// output).
	Message string `json:"message,omitempty"`
}

// End is the bridge's last frame.
type End struct {
	// Error is why the pool aborted, or empty.
	Error string `json:"error,omitempty"`
	// Stats are the pool's final counts.
	Stats pool.Stats `json:"stats"`
}

// errParentGone is the abort reason when the client's pipe reaches end of
// file before the session ended.
var errParentGone = errors.New("bridge: the client closed its pipe")

// errClientAbort is the abort reason for an abort frame.
var errClientAbort = errors.New("bridge: the client aborted the pool")

// Options are the parts of a session that do not come from the client.
type Options struct {
	// Stdout and Stderr receive the workers' stdout and stderr. Nil means
	// the bridge process's own.
	Stdout, Stderr io.Writer
	// SetProcs lets Serve set the process's GOMAXPROCS for the pool it
	// runs (procsFor), unless the environment sets GOMAXPROCS. It is for a
	// process that runs nothing but the session (safepool __bridge).
	SetProcs bool
	// Client is the process id of the client: while that process is
	// stopped (a terminal's Ctrl-Z, SIGSTOP), the session's pool is
	// paused (pool.Pool.Pause), and it goes on when the process is
	// continued (followClient). Zero means no process is followed.
	Client int
}

// procsFor is the GOMAXPROCS of a bridge process whose pool runs workers
// workers (0: one per CPU) on cpus CPUs: one per 8 workers, at least 1 and
// at most cpus. A batch passes through several goroutines on its way to a
// worker and back (the client's reader, the pool's loop, the runner, the
// task pipe's writer, the result reader). With one P they run in turn on
// the thread that was woken; with more, each hand-off may wake another
// thread, and while the workers keep every CPU busy, a woken thread waits
// for one. The pool's own work per batch is small, so a P per 8 workers
// leaves the bridge room on big pools.
func procsFor(workers, cpus int) int {
	if cpus < 1 {
		cpus = 1
	}
	if workers <= 0 {
		workers = cpus
	}
	return min(max((workers+7)/8, 1), cpus)
}

// Serve runs one session: it reads a Hello and then tasks from in, runs them
// on a pool and writes a Ready, one result per task and an End to out. It
// returns when every task has ended, the client has closed, and in has
// reached end of file. End of file on in before a close frame, a write error
// on out, or ctx being done abort the pool and kill its workers at once, so
// the workers never outlive the client.
func Serve(ctx context.Context, in io.Reader, out io.Writer, opt Options) error {
	br := bufio.NewReaderSize(in, 256<<10)
	bw := bufio.NewWriterSize(out, 256<<10)
	f, err := readFrame(br)
	if err != nil {
		return fmt.Errorf("bridge: reading hello: %w", err)
	}
	if f.kind != KindHello {
		return fmt.Errorf("bridge: first frame is kind %d, want hello", f.kind)
	}
	var h Hello
	if err := json.Unmarshal(f.payload, &h); err != nil {
		return fmt.Errorf("bridge: bad hello: %w", err)
	}
	if h.Version != Version {
		// Say why to the client, which raises it: an end frame reads the
		// same in every version.
		return tell(bw, &VersionError{Client: h.Version})
	}
	if _, err := actionOf(h.OnWorkerDeath); err != nil {
		return tell(bw, err)
	}
	if h.TimeoutGrace != nil && *h.TimeoutGrace < 0 {
		return tell(bw, fmt.Errorf("bridge: negative timeout_grace %g in the hello", *h.TimeoutGrace))
	}
	if url := remoteURL(f.payload); url != "" { // Pool(nats=URL): the agents run the tasks (remote.go)
		return serveRemote(ctx, url, h, br, bw, opt)
	}
	if opt.Stdout == nil {
		opt.Stdout = os.Stdout
	}
	if opt.Stderr == nil {
		opt.Stderr = os.Stderr
	}
	if opt.SetProcs && os.Getenv("GOMAXPROCS") == "" {
		runtime.GOMAXPROCS(procsFor(h.Workers, runtime.NumCPU()))
	}
	window := maxPending(h)
	cfg := configOf(h)
	cfg.Stdout, cfg.Stderr = opt.Stdout, opt.Stderr
	notes := &notices{}
	cfg.Observer = notes.observe
	p, err := pool.New(cfg)
	if err != nil {
		return tell(bw, err)
	}
	ready := Ready{Version: Version, PID: os.Getpid(), MemoryMode: p.MemoryMode(),
		MemoryModeReason: p.MemoryModeReason(), MaxPending: window,
		Workers: p.Workers(), Notices: p.Notices()}
	if err := writeJSON(bw, KindReady, ready); err == nil {
		err = bw.Flush()
	}
	if err != nil {
		killPool(p, errParentGone)
	}

	var wg sync.WaitGroup
	wg.Add(2)
	stop := make(chan struct{})
	var sent *submissions // nil: no follower to tell
	if opt.Client > 0 {
		sent = newSubmissions()
		var clock *poolClock
		if h.Clock != "" {
			// A clock that cannot be opened is the clock of a pool never
			// paused: wait_timeout counts the time stopped, as before it.
			clock, _ = openClock(h.Clock)
		}
		wg.Add(1)
		go func() { // owned by Serve: ends when stop is closed
			defer wg.Done()
			defer clock.close()
			followClient(p, opt.Client, stop, sent, clock)
		}()
	}
	go func() { // owned by Serve, which waits for it: it ends at end of file on in
		defer wg.Done()
		readTasks(ctx, br, p, sent)
	}()
	go func() { // owned by Serve: ends when stop is closed
		defer wg.Done()
		select {
		case <-ctx.Done():
			killPool(p, context.Cause(ctx))
		case <-stop:
		}
	}()

	werr := writeResults(bw, p, notes)
	end := End{Stats: p.Stats()}
	if err := p.Err(); err != nil {
		end.Error = err.Error()
	}
	if werr == nil {
		werr = notes.write(bw)
	}
	if werr == nil {
		if werr = writeJSON(bw, KindEnd, end); werr == nil {
			werr = bw.Flush()
		}
	}
	close(stop)
	wg.Wait()
	if werr != nil && !errors.Is(werr, syscall.EPIPE) {
		// A broken pipe is a client that went away, which ends the session
		// as end of file on in does: it is not an error.
		return fmt.Errorf("bridge: writing to the client: %w", werr)
	}
	return nil
}

// ToldError is the error of a session that ended before it began (a hello
// that cannot be used, a pool that cannot start), whose reason the bridge
// sent to the client in an end frame: the client raises it, so Serve's
// caller need not print it again.
type ToldError struct {
	// Err is why the session could not begin.
	Err error
}

func (e *ToldError) Error() string { return e.Err.Error() }

// Unwrap returns Err.
func (e *ToldError) Unwrap() error { return e.Err }

// tell sends err to the client in an end frame, so that the client can
// raise it, and returns it as a ToldError.
func tell(bw *bufio.Writer, err error) error {
	_ = writeJSON(bw, KindEnd, End{Error: err.Error()})
	_ = bw.Flush()
	return &ToldError{Err: err}
}

// configOf returns the pool configuration that h asks for, without the
// session's environment and output streams.
func configOf(h Hello) pool.Config {
	return pool.Config{
		Command:           h.Command,
		Protocol:          pool.Framed,
		Workers:           h.Workers,
		OnWorkerDeath:     pool.Action(h.OnWorkerDeath),
		Retries:           h.Retries,
		TaskErrorRetries:  h.TaskErrorRetries,
		Backoff:           seconds(h.Backoff),
		MaxBackoff:        seconds(h.MaxBackoff),
		Timeout:           seconds(h.Timeout),
		TimeoutGrace:      timeoutGrace(h.TimeoutGrace),
		MaxTasksPerWorker: h.MaxTasksPerWorker,
		MaxRSS:            h.MaxRSS,
		MemLimit:          h.MemLimit,
		NoGovernor:        h.NoGovernor,
		MemBudget:         h.MemBudget,
		MemReserve:        h.MemReserve,
		MemPerTask:        h.MemPerTask,
		PreemptAbove:      h.PreemptAbove,
		PreemptPSI:        h.PreemptPSI,
		Pipeline:          h.Pipeline,
		MaxPending:        maxPending(h),
		Grace:             seconds(h.Grace),
	}
}

// timeoutGrace returns the pool.Config.TimeoutGrace (or, for a session on
// the agents, the cluster.RunSpec.TimeoutGrace) for the hello's
// timeout_grace: nil is the pool's default (0; on the agents, each agent's
// own), 0 is SIGKILL at once (a negative duration), and a positive value
// is that many seconds.
func timeoutGrace(s *float64) time.Duration {
	switch {
	case s == nil:
		return 0
	case *s <= 0:
		return -1
	}
	if d := seconds(*s); d > 0 {
		return d
	}
	return time.Nanosecond // a grace too short to count is still a grace
}

// actionOf returns the pool.Action that the hello's on_worker_death names;
// empty is the pool's default.
func actionOf(s string) (pool.Action, error) {
	if s == "" {
		return "", nil
	}
	a, err := pool.ParseAction(s)
	if err != nil {
		return "", fmt.Errorf("bridge: bad on_worker_death in the hello: %w", err)
	}
	return a, nil
}

// maxPending returns the pool's MaxPending for h, which is also the most
// tasks (a batch is one) the client may have sent without having read all
// their results (Ready.MaxPending): enough to keep every worker's pipeline
// full with tasks to spare, as the pool's own default.
func maxPending(h Hello) int {
	workers, pipeline := h.Workers, h.Pipeline
	if workers <= 0 {
		workers = runtime.NumCPU() // as the pool does
	}
	if pipeline <= 0 {
		pipeline = 8 // the pool's default for framed workers
	}
	return 64 + 4*workers*pipeline
}

// killPool aborts p and kills its workers without a grace period.
func killPool(p *pool.Pool, reason error) {
	p.Abort(reason)
	p.Abort(reason)
}

// readTasks submits the client's tasks to p until a close frame, and returns
// at end of file on br. Any other end of the stream aborts p. It counts
// each task it submits in sent (nil: none).
func readTasks(ctx context.Context, br *bufio.Reader, p *pool.Pool, sent *submissions) {
	closed := false
	for {
		f, err := readFrame(br)
		if err != nil {
			// A client that is gone cannot read results: stop at once.
			// After the end frame the client closes its pipe, and this
			// kills a pool that has already finished, which is harmless.
			killPool(p, errParentGone)
			return
		}
		switch {
		case (f.kind == KindTask || f.kind == KindTaskMeta || f.kind == KindBatch) && !closed:
			t := pool.Task{Input: f.payload}
			var err error
			switch f.kind {
			case KindTaskMeta:
				t, err = taskOf(f.payload)
			case KindBatch:
				t, err = batchOf(f.payload)
			}
			if err != nil {
				p.Abort(err)
				continue
			}
			id, err := p.Submit(ctx, t)
			if err == nil {
				sent.add(t)
			}
			if err == nil && id != f.id {
				// Task numbers must follow the pool's own, so that a
				// result's id is the client's task number.
				p.Abort(fmt.Errorf("bridge: task %d sent out of order (want %d)", f.id, id))
			}
		case f.kind == KindClose:
			closed = true
			p.Close()
		case f.kind == KindAbort:
			p.Abort(errClientAbort)
		default:
			p.Abort(fmt.Errorf("bridge: unexpected frame of kind %d", f.kind))
		}
	}
}

// writeResults sends every result of p to the client. On a write error it
// kills the pool and goes on reading its results until they end.
func writeResults(bw *bufio.Writer, p *pool.Pool, notes *notices) error {
	var werr error
	results := p.Results()
	for {
		var r pool.Result
		var ok bool
		select {
		case r, ok = <-results:
		default:
			// Nothing ready: push what is buffered before blocking.
			if werr == nil {
				if werr = bw.Flush(); werr != nil {
					killPool(p, errParentGone)
				}
			}
			r, ok = <-results
		}
		if !ok {
			return werr
		}
		if werr != nil {
			continue
		}
		if werr = notes.write(bw); werr != nil {
			killPool(p, errParentGone)
			continue
		}
		if r.Items != nil {
			if werr = writeItems(bw, &r); werr != nil {
				killPool(p, errParentGone)
			}
			continue
		}
		meta, err := json.Marshal(metaOf(&r))
		if err != nil {
			return fmt.Errorf("bridge: encoding a result: %w", err)
		}
		var n [4]byte
		binary.BigEndian.PutUint32(n[:], uint32(len(meta)))
		out := r.Output
		if r.State == pool.Failed && r.Cause() == pool.CauseTaskError {
			// The worker's error payload whole: a client's worker may put
			// a record of its own after a NUL (the Python worker puts the
			// pickled exception there).
			out = []byte(r.Attempts[len(r.Attempts)-1].Message)
		}
		if werr = writeFrame(bw, KindResult, r.ID, n[:], meta, out); werr != nil {
			killPool(p, errParentGone)
		}
	}
}

// notices holds the pool's notices for the client (KindNotice) until the
// results' writer sends them, ahead of the next result or the end: the
// pool's observer, which gathers them, must not write to the client
// itself, and a notice comes with a task's end (a worker over the max RSS
// after its first task), whose result follows.
type notices struct {
	mu      sync.Mutex
	pending []string
	said    map[pool.EventKind]bool
}

// observe is the pool's Observer: it keeps the first notice of each kind.
func (n *notices) observe(ev pool.Event) {
	switch ev.Kind {
	case pool.EventWorkerOverMaxRSS, pool.EventWorkerStalled, pool.EventWorkerOutOfStep:
	default:
		return
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.said[ev.Kind] {
		return
	}
	if n.said == nil {
		n.said = map[pool.EventKind]bool{}
	}
	n.said[ev.Kind] = true
	n.pending = append(n.pending, ev.Message)
}

// write sends the notices gathered so far, each in a KindNotice frame.
func (n *notices) write(bw *bufio.Writer) error {
	n.mu.Lock()
	pending := n.pending
	n.pending = nil
	n.mu.Unlock()
	for _, msg := range pending {
		if err := writeFrame(bw, KindNotice, 0, []byte(msg)); err != nil {
			return err
		}
	}
	return nil
}

// writeItems writes the result of items of a batch in a KindItems frame.
// In a frame whose state is not done, a run of consecutive items without
// output and with the same start and end (the items of a batch that an
// abort cancelled before they ran, say) is one entry whose span is the
// run's length (bridge/5): cancelling a batch of a million items costs one
// entry, not a million.
func writeItems(bw *bufio.Writer, r *pool.Result) error {
	meta, err := json.Marshal(metaOf(r))
	if err != nil {
		return fmt.Errorf("bridge: encoding a result: %w", err)
	}
	taskErr := r.State == pool.Failed && r.Cause() == pool.CauseTaskError
	entries := itemEntries(r)
	outs := make([][]byte, len(entries))
	head := make([]byte, 0, 8+len(meta)+28*len(entries))
	head = binary.BigEndian.AppendUint32(head, uint32(len(meta)))
	head = append(head, meta...)
	head = binary.BigEndian.AppendUint32(head, uint32(len(entries)))
	for i, it := range entries {
		outs[i] = it.Output
		if taskErr {
			// The worker's error payload whole, as for a task's result.
			outs[i] = []byte(r.Attempts[len(r.Attempts)-1].Message)
		}
		head = binary.BigEndian.AppendUint32(head, uint32(it.Index))
		head = binary.BigEndian.AppendUint32(head, uint32(it.Span))
		head = binary.BigEndian.AppendUint32(head, uint32(len(outs[i])))
		head = binary.BigEndian.AppendUint64(head, math.Float64bits(unixSeconds(it.Start)))
		head = binary.BigEndian.AppendUint64(head, math.Float64bits(unixSeconds(it.End)))
	}
	return writeFrame(bw, KindItems, r.ID, append([][]byte{head}, outs...)...)
}

// itemEntries returns the entries of r's items frame: r's items, with each
// run of two or more consecutive items that are not done, have no output
// (and no task error's payload) and share their start and end made one item
// whose Span is the run's length. A done entry with a span is a range that
// a worker answered together, whose output holds every value: those are
// left as they are.
func itemEntries(r *pool.Result) []pool.Item {
	if r.State == pool.Done || (r.State == pool.Failed && r.Cause() == pool.CauseTaskError) || len(r.Items) < 2 {
		return r.Items
	}
	alone := func(it *pool.Item) bool { return it.Span == 0 && len(it.Output) == 0 }
	var out []pool.Item
	for i := 0; i < len(r.Items); {
		it := r.Items[i]
		j := i + 1
		if alone(&it) {
			for j < len(r.Items) {
				n := &r.Items[j]
				if !alone(n) || n.Index != it.Index+(j-i) || !n.Start.Equal(it.Start) || !n.End.Equal(it.End) {
					break
				}
				j++
			}
			if j-i > 1 {
				it.Span = j - i
			}
		}
		if out == nil && j-i > 1 {
			out = append(make([]pool.Item, 0, len(r.Items)/(j-i)+1), r.Items[:i]...)
		}
		if out != nil {
			out = append(out, it)
		}
		i = j
	}
	if out == nil {
		return r.Items
	}
	return out
}

func metaOf(r *pool.Result) Meta {
	m := Meta{State: string(r.State), Attempts: make([]Attempt, len(r.Attempts))}
	for i, a := range r.Attempts {
		msg := a.Message
		if a.Cause == pool.CauseTaskError {
			if k := strings.IndexByte(msg, 0); k >= 0 {
				msg = msg[:k]
			}
		}
		m.Attempts[i] = Attempt{
			Number: a.Number, PID: a.WorkerPID, Start: unixSeconds(a.Start), End: unixSeconds(a.End),
			Cause: string(a.Cause), ExitCode: a.ExitCode, Signal: a.Signal, PeakRSS: a.PeakRSS, Message: msg,
		}
	}
	return m
}

func writeJSON(bw *bufio.Writer, kind Kind, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return fmt.Errorf("bridge: encoding %T: %w", v, err)
	}
	return writeFrame(bw, kind, 0, b)
}

func seconds(s float64) time.Duration { return time.Duration(s * float64(time.Second)) }

func unixSeconds(t time.Time) float64 {
	if t.IsZero() {
		return 0
	}
	return float64(t.UnixNano()) / 1e9
}
