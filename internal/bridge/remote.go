package bridge

import (
	"bufio"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/safepool/safepool/internal/cluster"
	"github.com/safepool/safepool/pool"
)

// remoteURL returns the NATS URL that a hello's "nats" member names, or ""
// when the session's workers are local.
func remoteURL(hello []byte) string {
	var h struct {
		NATS string `json:"nats"`
	}
	_ = json.Unmarshal(hello, &h)
	return h.NATS
}

// remoteWaitingEvery is how often a remote session checks that its tasks
// can run (no agent connected, or none large enough).
const remoteWaitingEvery = 3 * time.Second

// serveRemote runs a session whose tasks go to the agents of a NATS
// deployment (docs/cluster.md) instead of local workers: a run of the
// framed protocol whose worker command is the hello's. Each task the client
// sends is published as the run's task of the same number; each recorded
// result comes back to the client in a result frame, as Serve sends it.
// The client closing its pipe before its close frame, an abort frame, or
// ctx ending aborts the run: its queued tasks are removed.
func serveRemote(ctx context.Context, url string, h Hello, br *bufio.Reader, bw *bufio.Writer, opt Options) error {
	fail := func(err error) error {
		_ = writeJSON(bw, KindEnd, End{Error: err.Error()})
		_ = bw.Flush()
		return err
	}
	stderr := opt.Stderr
	if stderr == nil {
		stderr = os.Stderr
	}
	action, err := actionOf(h.OnWorkerDeath)
	if err != nil {
		return fail(err)
	}
	if action == "" {
		action = pool.Skip
		if h.Retries > 0 {
			action = pool.Retry
		}
	}
	conn, err := cluster.Dial(ctx, url, "safepool python")
	if err != nil {
		return fail(err)
	}
	defer conn.Close()
	spec := cluster.RunSpec{
		ID: cluster.NewRunID(), Protocol: pool.Framed, Command: h.Command,
		Retries: h.Retries, OnWorkerDeath: action, Timeout: seconds(h.Timeout),
		Pipeline: h.Pipeline, MaxTasks: h.MaxTasksPerWorker, MaxRSS: h.MaxRSS,
		TaskErrorRetries: h.TaskErrorRetries,
		TimeoutGrace:     timeoutGrace(h.TimeoutGrace), // absent: each agent's own
	}
	run, err := conn.Begin(ctx, spec, false)
	if err != nil {
		return fail(err)
	}
	window := maxPending(h)
	ready := Ready{Version: Version, PID: os.Getpid(), MemoryMode: "cluster",
		MemoryModeReason: fmt.Sprintf("run %s on the agents of %s", spec.ID, url), MaxPending: window}
	if err := writeJSON(bw, KindReady, ready); err == nil {
		err = bw.Flush()
	}
	if err != nil {
		return nil // the client is gone before the first task
	}

	rctx, stop := context.WithCancel(ctx)
	defer stop()
	results := run.Results(rctx)

	// The reader reads the client's frames. It hands the tasks, in order,
	// and the close to the publisher on tasks, and says at once on events
	// an abort, the client gone or a bad frame, so that these stop the run
	// even while the publisher waits for the server.
	type event struct {
		published uint64 // the highest task number handed to the publisher so far
		closed    bool
		err       error // abort: errClientAbort, errParentGone, a bad frame or a publish error
	}
	type handed struct {
		task   cluster.TaskMsg
		closed bool // the client's close frame, after every task
	}
	events := make(chan event, 16)
	tasks := make(chan handed, 64)
	var read atomic.Uint64 // the highest task number the reader took
	send := func(e event) bool {
		select {
		case events <- e:
			return true
		case <-rctx.Done():
			return false
		}
	}
	var wg sync.WaitGroup
	wg.Add(1)
	go func() { // owned by serveRemote, which waits for it: it ends at end of file on br
		defer wg.Done()
		// drain reads the client until it closes its pipe, once
		// serveRemote is done with it or after a frame that ends the run.
		drain := func() { _, _ = io.Copy(io.Discard, br) }
		hand := func(h handed) bool {
			select {
			case tasks <- h:
				return true
			case <-rctx.Done():
				return false
			}
		}
		for {
			f, err := readFrame(br)
			if err != nil {
				send(event{err: errParentGone})
				return
			}
			var t pool.Task
			switch f.kind {
			case KindTask:
				t = pool.Task{Input: f.payload}
			case KindTaskMeta:
				t, err = taskOf(f.payload)
			case KindBatch:
				// With nats the client sends batches of one item
				// (python/safepool/_core.py): a cluster task is one
				// item, with one recorded result.
				if t, err = batchOf(f.payload); err == nil && t.Items != 1 {
					err = fmt.Errorf("bridge: a batch of %d items with nats, which takes one item a task", t.Items)
				}
			case KindClose:
				if !hand(handed{closed: true}) {
					drain()
					return
				}
				continue
			case KindAbort:
				err = errClientAbort
			default:
				err = fmt.Errorf("bridge: unexpected frame of kind %d", f.kind)
			}
			if err == nil && f.id != read.Load()+1 {
				err = fmt.Errorf("bridge: task %d sent out of order (want %d)", f.id, read.Load()+1)
			}
			if err != nil {
				send(event{err: err})
				drain()
				return
			}
			need := t.MemHint
			if need == 0 {
				need = h.MemPerTask
			}
			read.Store(f.id)
			if !hand(handed{task: cluster.TaskMsg{Seq: f.id, Input: t.Input, Need: need, Items: t.Items}}) {
				drain()
				return
			}
		}
	}()

	// The publisher queues the tasks without waiting a round trip for
	// each (cluster.Publisher: many in flight, each sent again until the
	// server acknowledges it). When the client has nothing more to send
	// for now, it waits for what is in flight to be acknowledged, sending
	// again what was lost, since the client may wait for those tasks'
	// results before it sends more.
	var pubLast uint64 // the last task the publisher published; read once pubDone is closed
	pubDone := make(chan struct{})
	go func() { // owned by serveRemote, which waits for it: it ends when rctx ends, or after a publish error
		defer close(pubDone)
		pub := run.Publisher()
		for {
			var got handed
			select {
			case got = <-tasks:
			default:
				if pub.Flush(rctx) != nil {
					return
				}
				select {
				case got = <-tasks:
				case <-rctx.Done():
					return
				}
			}
			if got.closed {
				if !send(event{published: pubLast, closed: true}) {
					return
				}
				continue
			}
			if err := pub.Publish(rctx, got.task); err != nil {
				send(event{published: pubLast, err: err})
				return
			}
			pubLast = got.task.Seq
			if !send(event{published: pubLast}) {
				return
			}
		}
	}()

	var stats pool.Stats
	var published uint64
	closed := false
	delivered := map[uint64]bool{}
	var abort error
	var werr error
	waiting := time.NewTicker(remoteWaitingEvery)
	defer waiting.Stop()
	said := ""
	// The connection to the server is looked at every second, apart from
	// the waiting checks, whose requests wait seconds while it is away.
	link := conn.Watch()
	linkTick := time.NewTicker(time.Second)
	defer linkTick.Stop()

	deliver := func(seq uint64, m Meta, out []byte) {
		delivered[seq] = true
		switch pool.State(m.State) {
		case pool.Done:
			stats.Done++
		case pool.Failed:
			stats.Failed++
		case pool.Poison:
			stats.Poison++
		case pool.Cancelled:
			stats.Cancelled++
		}
		stats.Attempts += len(m.Attempts)
		if werr != nil {
			return
		}
		meta, err := json.Marshal(m)
		if err != nil {
			werr = err
			return
		}
		var n [4]byte
		binary.BigEndian.PutUint32(n[:], uint32(len(meta)))
		if werr = writeFrame(bw, KindResult, seq, n[:], meta, out); werr == nil {
			werr = bw.Flush()
		}
	}

loop:
	for !(closed && uint64(len(delivered)) == published) && abort == nil && werr == nil {
		select {
		case e := <-events:
			published = max(published, e.published)
			closed = closed || e.closed
			if e.err != nil {
				abort = e.err
			}
		case rec, ok := <-results:
			if !ok {
				break loop
			}
			if delivered[rec.Seq] {
				continue
			}
			m, out := remoteMeta(&rec)
			deliver(rec.Seq, m, out)
			if rec.State != pool.Done && action == pool.Abort {
				for _, a := range m.Attempts {
					// A delivery lost with its agent was handed to another
					// agent, and is no worker death of the run's policy;
					// nor is an output too large for a NATS message, whose
					// worker did not die.
					if c := pool.Cause(a.Cause); c.IsWorkerDeath() && c != cluster.CauseAgentLost && c != pool.CauseOutputLost {
						abort = fmt.Errorf("task %d: worker died (%s) and on_worker_death is abort", rec.Seq, a.Cause)
					}
				}
			}
		case <-linkTick.C:
			if msg := link.Say(); msg != "" {
				fmt.Fprintf(stderr, "safepool: %s (%d tasks submitted, %d ended)\n", msg, published, len(delivered))
			}
		case <-waiting.C:
			if w := run.Waiting(rctx); w != said {
				if w != "" {
					fmt.Fprintf(stderr, "safepool: %s\n", w)
				}
				said = w
			}
		case <-ctx.Done():
			abort = context.Cause(ctx)
		}
	}
	stop()
	<-pubDone // nothing is published after this, nor after the run's abort
	if abort != nil {
		actx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		_ = run.Abort(actx)
		cancel()
		// The tasks the client sent and not ended are cancelled, as a
		// local pool's are when it aborts: those published, and those
		// read but not yet published.
		published = max(published, pubLast, read.Load())
		for seq := uint64(1); seq <= published; seq++ {
			if !delivered[seq] {
				deliver(seq, Meta{State: string(pool.Cancelled), Attempts: []Attempt{}}, nil)
			}
		}
	}
	stats.Submitted = int(published)
	end := End{Stats: stats}
	if abort != nil {
		end.Error = abort.Error()
	}
	if werr == nil {
		if werr = writeJSON(bw, KindEnd, end); werr == nil {
			werr = bw.Flush()
		}
	}
	wg.Wait()
	if werr != nil && !errors.Is(werr, syscall.EPIPE) {
		return fmt.Errorf("bridge: writing to the client: %w", werr)
	}
	return nil
}

// remoteMeta returns the result frame's meta and payload of a recorded
// result. A task error's payload is the worker's error payload whole, which
// the agent records as the output (see cluster.Agent).
//
// A task an agent failed without running it has no cause: its worker could
// not start there (the client's Python is not at the same path on that
// machine, or safepool is not importable there), or the agent could not
// read it. Its last attempt is given the cause task-error, with the
// agent's message: a client takes a failed attempt without a cause for a
// cancellation, which waits for the end of a pool that does not end, and
// would wait for ever.
func remoteMeta(rec *cluster.ResultRecord) (Meta, []byte) {
	r := rec.Result()
	m := metaOf(&r)
	if r.State == pool.Failed || r.State == pool.Poison {
		if len(m.Attempts) == 0 {
			m.Attempts = []Attempt{{Number: 1, ExitCode: -1}}
		}
		if last := &m.Attempts[len(m.Attempts)-1]; last.Cause == "" {
			last.Cause = string(pool.CauseTaskError)
		}
	}
	return m, rec.Output
}
