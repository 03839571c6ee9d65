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

	// The reader publishes the client's tasks and says on events what the
	// client wants: more tasks (their count), a close, an abort, or that
	// it is gone.
	type event struct {
		published uint64 // the highest task number published so far
		closed    bool
		err       error // abort: errClientAbort, errParentGone, a bad frame or a publish error
	}
	events := make(chan event, 16)
	var wg sync.WaitGroup
	wg.Add(1)
	go func() { // owned by serveRemote, which waits for it: it ends at end of file on br or when rctx ends
		defer wg.Done()
		send := func(e event) bool {
			select {
			case events <- e:
				return true
			case <-rctx.Done():
				return false
			}
		}
		var last uint64
		for {
			f, err := readFrame(br)
			if err != nil {
				send(event{published: last, err: errParentGone})
				return
			}
			switch f.kind {
			case KindTask, KindTaskMeta, KindBatch:
				t := pool.Task{Input: f.payload}
				switch f.kind {
				case KindTaskMeta:
					t, err = taskOf(f.payload)
				case KindBatch:
					// With nats the client sends batches of one item
					// (python/safepool/_core.py): a cluster task is one
					// item, with one recorded result.
					if t, err = batchOf(f.payload); err == nil && t.Items != 1 {
						err = fmt.Errorf("bridge: a batch of %d items with nats, which takes one item a task", t.Items)
					}
				}
				if err != nil {
					send(event{published: last, err: err})
					continue
				}
				if f.id != last+1 {
					send(event{published: last, err: fmt.Errorf("bridge: task %d sent out of order (want %d)", f.id, last+1)})
					continue
				}
				need := t.MemHint
				if need == 0 {
					need = h.MemPerTask
				}
				if err := run.Publish(rctx, cluster.TaskMsg{Seq: f.id, Input: t.Input, Need: need, Items: t.Items}); err != nil {
					send(event{published: last, err: err})
					continue
				}
				last = f.id
				if !send(event{published: last}) {
					// serveRemote is done: drain the client until it closes.
					_, _ = io.Copy(io.Discard, br)
					return
				}
			case KindClose:
				send(event{published: last, closed: true})
			case KindAbort:
				send(event{published: last, err: errClientAbort})
			default:
				send(event{published: last, err: fmt.Errorf("bridge: unexpected frame of kind %d", f.kind)})
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
					if pool.Cause(a.Cause).IsWorkerDeath() {
						abort = fmt.Errorf("task %d: worker died (%s) and on_worker_death is abort", rec.Seq, a.Cause)
					}
				}
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
	if abort != nil {
		actx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		_ = run.Abort(actx)
		cancel()
		// The tasks published and not ended are cancelled, as a local
		// pool's are when it aborts.
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
func remoteMeta(rec *cluster.ResultRecord) (Meta, []byte) {
	r := rec.Result()
	return metaOf(&r), rec.Output
}
