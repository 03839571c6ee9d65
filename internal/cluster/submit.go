package cluster

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/safepool/safepool/internal/bytesize"
	"github.com/safepool/safepool/pool"
)

// NewRunID returns a fresh run id: the date and time, and random hex.
func NewRunID() string {
	var b [4]byte
	rand.Read(b[:])
	return time.Now().UTC().Format("20060102-150405") + "-" + hex.EncodeToString(b[:])
}

// ErrRunExists is returned by Begin when a run of that id exists and the
// caller did not ask to resume it.
var ErrRunExists = errors.New("cluster: a run of that id exists")

// Run is one run as its submitter sees it.
type Run struct {
	c    *Conn
	Spec RunSpec
	// Resumed reports whether the run existed: a submitter restarted with
	// its id.
	Resumed bool

	mu       sync.Mutex      // guards recorded
	recorded map[uint64]bool // tasks whose result was recorded at Begin
}

// Begin records spec and returns its run. When a run of that id exists,
// resume says whether to carry it on (it must have the same protocol and
// command): the tasks already recorded are then known to Recorded.
func (c *Conn) Begin(ctx context.Context, spec RunSpec, resume bool) (*Run, error) {
	if err := CheckRunID(spec.ID); err != nil {
		return nil, err
	}
	spec.Created = time.Now()
	body, _ := marshal(spec)
	r := &Run{c: c, Spec: spec, recorded: map[uint64]bool{}}
	err := retry(ctx, func(ctx context.Context) error {
		_, err := c.runs.Create(ctx, spec.ID, body)
		if errors.Is(err, jetstream.ErrKeyExists) {
			return fmt.Errorf("%w%w", err, errPermanent)
		}
		return err
	})
	if err == nil {
		return r, nil
	}
	if !errors.Is(err, jetstream.ErrKeyExists) {
		return nil, fmt.Errorf("cluster: recording run %s: %w", spec.ID, err)
	}
	if !resume {
		return nil, fmt.Errorf("%w: %s", ErrRunExists, spec.ID)
	}
	e, err := c.runs.Get(ctx, spec.ID)
	if err != nil {
		return nil, fmt.Errorf("cluster: reading run %s: %w", spec.ID, err)
	}
	var old RunSpec
	if err := unmarshal(e.Value(), &old); err != nil {
		return nil, fmt.Errorf("cluster: reading run %s: %w", spec.ID, err)
	}
	switch {
	case old.Aborted:
		return nil, fmt.Errorf("cluster: run %s was aborted; start a new run", spec.ID)
	case old.Protocol != spec.Protocol || !slices.Equal(old.Command, spec.Command):
		return nil, fmt.Errorf("cluster: run %s ran %q, not %q", spec.ID, strings.Join(old.Command, " "), strings.Join(spec.Command, " "))
	}
	r.Spec, r.Resumed = old, true
	l, err := c.results.ListKeysFiltered(ctx, spec.ID+".*")
	if err != nil {
		return nil, fmt.Errorf("cluster: listing the results of run %s: %w", spec.ID, err)
	}
	for k := range l.Keys() {
		if seq, err := strconv.ParseUint(k[len(spec.ID)+1:], 10, 64); err == nil {
			r.recorded[seq] = true
		}
	}
	return r, nil
}

// Recorded reports whether task seq's result was recorded when the run was
// resumed, so that it need not be published again.
func (r *Run) Recorded(seq uint64) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.recorded[seq]
}

// RecordedPast reports whether a result of a task past the n-th was
// recorded when the run was resumed: the run had more inputs than n.
func (r *Run) RecordedPast(n uint64) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	for seq := range r.recorded {
		if seq > n {
			return true
		}
	}
	return false
}

// Fed is what a submitter keeps of an input it read, to check that the
// result it collects for that task is that input's: a run id given again
// with other inputs, or by a second submitter at once, would otherwise show
// another input's results as this input's.
type Fed struct {
	sum  [sha256.Size]byte
	head []byte // the input's first bytes, for the error
}

// fedHead is how much of an input Fed keeps: what a summary shows of it
// (a JSON summary shows 1 KiB).
const fedHead = 1024

// NewFed returns what to keep of input in.
func NewFed(in []byte) Fed {
	return Fed{sum: sha256.Sum256(in), head: bytes.Clone(in[:min(len(in), fedHead)])}
}

// Restore gives rec, a result of f's input recorded without it (an input
// too large to travel with its output), the input's first bytes, which is
// what summaries show of an input.
func (f Fed) Restore(rec *ResultRecord) {
	if rec.Input == nil && rec.InputSum != nil {
		rec.Input = f.head
	}
}

// ErrOtherInput is returned by Fed.Check when the run's task ran another
// input than the submitter's.
var ErrOtherInput = errors.New("cluster: the run holds other inputs")

// Check returns an error wrapping ErrOtherInput unless rec is the result of
// f's input in run.
func (f Fed) Check(run string, rec *ResultRecord) error {
	if sha256.Sum256(rec.Input) == f.sum || rec.InputSum != nil && bytes.Equal(rec.InputSum, f.sum[:]) {
		return nil
	}
	return fmt.Errorf("%w: task %d of run %s ran %s, but input %d here is %s; --run-id carries on a run over the same inputs, so give other inputs a new run id",
		ErrOtherInput, rec.Seq, run, quoteHead(rec.Input), rec.Seq, quoteHead(f.head))
}

// quoteHead quotes an input's first bytes.
func quoteHead(in []byte) string {
	if len(in) > 40 {
		return fmt.Sprintf("%q...", in[:40])
	}
	return fmt.Sprintf("%q", in)
}

// Publish queues a task, or returns an error wrapping ErrTooLarge when it
// does not fit a NATS message. The message id makes a publish retried after a
// lost acknowledgement, or by a restarted submitter, a no-op.
func (r *Run) Publish(ctx context.Context, t TaskMsg) error {
	t.Run = r.Spec.ID
	k := ClassOf(t.Need)
	body, err := marshal(t)
	if err != nil {
		return err
	}
	if max := r.c.nc.MaxPayload() - 1024; int64(len(body)) > max {
		return fmt.Errorf("%w: task %d is %s, more than a NATS message holds (%s)", ErrTooLarge, t.Seq, bytesize.Format(int64(len(body))), bytesize.Format(max))
	}
	return retry(ctx, func(ctx context.Context) error {
		_, err := r.c.js.Publish(ctx, taskSubject(k, t.Run), body, jetstream.WithMsgID(msgID(t.Run, t.Seq, k)))
		return err
	})
}

// ErrTooLarge is returned by Publish for a task larger than a NATS message.
var ErrTooLarge = errors.New("cluster: task too large")

// Fail records task t failed, with why as its message, instead of
// publishing it: for a task Publish refused with ErrTooLarge, so that one
// input too large for the queue fails its task, as an output too large for
// the results does, not the whole run. The record holds the input's
// SHA-256, not the input.
func (r *Run) Fail(ctx context.Context, t TaskMsg, why error) error {
	sum := sha256.Sum256(t.Input)
	now := time.Now()
	rec := ResultRecord{Seq: t.Seq, InputSum: sum[:], State: pool.Failed, Agent: "submitter",
		Attempts: []AttemptRecord{{Number: 1, Start: now, End: now, ExitCode: -1, Message: strings.TrimPrefix(why.Error(), "cluster: ")}}}
	body, _ := marshal(rec)
	return retry(ctx, func(ctx context.Context) error {
		_, err := r.c.results.Create(ctx, taskKey(r.Spec.ID, t.Seq), body)
		if errors.Is(err, jetstream.ErrKeyExists) {
			return nil
		}
		return err
	})
}

// Results sends each of the run's results once, those recorded already
// first, on the returned channel until ctx ends; then it closes the
// channel. A watch that goes quiet, as after a server restart, is started
// again.
func (r *Run) Results(ctx context.Context) <-chan ResultRecord {
	out := make(chan ResultRecord)
	go func() {
		defer close(out)
		seen := map[uint64]bool{}
		for ctx.Err() == nil {
			r.watchOnce(ctx, seen, out)
			sleep(ctx, 200*time.Millisecond)
		}
	}()
	return out
}

// quietWatch is how long a watch may bring nothing before it is started
// again.
const quietWatch = 5 * time.Second

func (r *Run) watchOnce(ctx context.Context, seen map[uint64]bool, out chan<- ResultRecord) {
	w, err := r.c.results.Watch(ctx, r.Spec.ID+".*")
	if err != nil {
		return
	}
	defer w.Stop()
	quiet := time.NewTimer(quietWatch)
	defer quiet.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-quiet.C:
			return
		case e, ok := <-w.Updates():
			if !ok {
				return
			}
			quiet.Reset(quietWatch)
			if e == nil || e.Operation() != jetstream.KeyValuePut {
				continue
			}
			var rec ResultRecord
			if unmarshal(e.Value(), &rec) != nil || seen[rec.Seq] {
				continue
			}
			seen[rec.Seq] = true
			select {
			case out <- rec:
			case <-ctx.Done():
				return
			}
		}
	}
}

// Abort marks the run aborted, so that agents drop its tasks, and removes
// the tasks still queued.
func (r *Run) Abort(ctx context.Context) error {
	r.Spec.Aborted = true
	body, _ := marshal(r.Spec)
	err := retry(ctx, func(ctx context.Context) error {
		_, err := r.c.runs.Put(ctx, r.Spec.ID, body)
		return err
	})
	if err != nil {
		return err
	}
	return retry(ctx, func(ctx context.Context) error {
		return r.c.stream.Purge(ctx, jetstream.WithPurgeSubject(fmt.Sprintf("%s.*.%s", subjectPrefix, r.Spec.ID)))
	})
}

// Lost reports whether the server no longer holds the run: it was
// restarted on an empty store, or lost its store, or the run is older than
// the seven days runs are kept. The run's queued tasks and recorded results
// are gone with it, and no agent will record its results again. A server
// that does not answer is not taken for one that lost the run.
func (r *Run) Lost(ctx context.Context) bool {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if _, err := r.c.js.KeyValue(ctx, RunsBucket); errors.Is(err, jetstream.ErrBucketNotFound) {
		return true
	}
	_, err := r.c.runs.Get(ctx, r.Spec.ID)
	return isGone(err)
}

// OtherVersions returns, for each live agent that runs another version of
// safepool than version (or does not say which), its name and a sentence
// saying so. Agents and submitters of one deployment should run the same
// version: the tasks and records they exchange may change between versions.
func (r *Run) OtherVersions(ctx context.Context, version string) map[string]string {
	agents, err := r.c.liveAgents(ctx)
	if err != nil {
		return nil
	}
	out := map[string]string{}
	for _, a := range agents {
		if a.Version == version {
			continue
		}
		v := "safepool " + a.Version
		if a.Version == "" {
			v = "a version of safepool that does not say which"
		}
		out[a.Name] = fmt.Sprintf("agent %s on %s runs %s, not safepool %s as this submitter: run the same version on every machine", a.Name, a.Host, v, version)
	}
	return out
}

// Waiting says what keeps tasks from running, or "" when nothing does: a
// lost connection to the server, no live agent at all, or tasks in a
// memory class no live agent fits.
func (r *Run) Waiting(ctx context.Context) string {
	if m := r.c.downMessage(); m != "" {
		return m
	}
	agents, err := r.c.liveAgents(ctx)
	if err != nil {
		return ""
	}
	if len(agents) == 0 {
		return "no agent is connected; start one on each machine with: safepool agent --nats URL"
	}
	largest, capacity := largestClass(agents)
	queued, err := r.c.classCounts(ctx)
	if err != nil {
		return ""
	}
	for k := MaxClass; k > largest; k-- {
		if n := queued[k]; n > 0 {
			return fmt.Sprintf("%d tasks need more than %s of memory, and no agent has that much (the largest gives %s per task); they wait for one",
				n, bytesize.Format(classBound(k-1)), bytesize.Format(capacity))
		}
	}
	return ""
}
