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

// Publish queues a task and waits for the server's acknowledgement, or
// returns an error wrapping ErrTooLarge when it does not fit a NATS
// message. The message id makes a publish retried after a lost
// acknowledgement, or by a restarted submitter, a no-op. A Publisher queues
// many tasks without a round trip each.
func (r *Run) Publish(ctx context.Context, t TaskMsg) error {
	subj, id, body, err := r.message(t)
	if err != nil {
		return err
	}
	return retry(ctx, func(ctx context.Context) error {
		_, err := r.c.js.Publish(ctx, subj, body, jetstream.WithMsgID(id))
		return err
	})
}

// message returns task t's subject, message id and body, or an error
// wrapping ErrTooLarge.
func (r *Run) message(t TaskMsg) (subj, id string, body []byte, err error) {
	t.Run = r.Spec.ID
	k := ClassOf(t.Need)
	body, err = marshal(t)
	if err != nil {
		return "", "", nil, err
	}
	if max := r.c.nc.MaxPayload() - 1024; int64(len(body)) > max {
		return "", "", nil, fmt.Errorf("%w: task %d is %s, more than a NATS message holds (%s)", ErrTooLarge, t.Seq, bytesize.Format(int64(len(body))), bytesize.Format(max))
	}
	return taskSubject(k, t.Run), msgID(t.Run, t.Seq, k), body, nil
}

// pubWindow and pubBytes bound a Publisher's publishes in flight, by number
// and by size: a submitter a round trip of D from the server queues up to
// pubWindow tasks every D, and holds at most pubBytes of them (and one
// more) in memory.
const (
	pubWindow = 512
	pubBytes  = 4 << 20
)

// pubAckWait is how long a Publisher first waits for a publish's
// acknowledgement before it sends the message again, and pubAckWaitMax
// how long at most: each time a publish is not acknowledged in time, its
// next wait is twice as long. Sending again early is harmless, since
// JetStream drops a message id it stored within dedupWindow; the doubling
// keeps a link slower than pubAckWait for a window of messages (4 MiB on
// a few Mbit/s) from sending the same messages again and again. The
// connection's own limit (WithPublishAsyncTimeout in setup) is 30 s.
const (
	pubAckWait    = 2 * time.Second
	pubAckWaitMax = 30 * time.Second
)

// Publisher queues a run's tasks without waiting a round trip for each:
// it keeps up to pubWindow publishes (pubBytes of messages) in flight, and
// waits for the oldest's acknowledgement before it sends more. A publish
// that fails, or is not acknowledged within its wait (pubAckWait at
// first: the server lost or restarting, a cluster electing a leader), is
// sent again with the same message id until the server acknowledges it,
// so that JetStream's de-duplication keeps one copy of each task. A
// Publisher is used by one goroutine.
type Publisher struct {
	r       *Run
	pending []*inFlight // oldest first
	bytes   int         // the size of pending's messages
}

// inFlight is a publish not acknowledged yet.
type inFlight struct {
	subj, id string
	body     []byte
	ack      jetstream.PubAckFuture // nil: failed, to send again
	sent     time.Time
	wait     time.Duration // how long after sent the acknowledgement is late
}

// Publisher returns a Publisher of r's tasks.
func (r *Run) Publisher() *Publisher {
	return &Publisher{r: r}
}

// Publish sends task t, first waiting for acknowledgements while the
// publishes in flight fill the window, or returns an error wrapping
// ErrTooLarge when t does not fit a NATS message. Any other error is ctx's:
// the tasks published and not acknowledged are then not known to be queued
// (a submitter resumed with the run's id publishes them again).
func (p *Publisher) Publish(ctx context.Context, t TaskMsg) error {
	subj, id, body, err := p.r.message(t)
	if err != nil {
		return err
	}
	for len(p.pending) >= pubWindow || len(p.pending) > 0 && p.bytes+len(body) > pubBytes {
		if err := p.settle(ctx); err != nil {
			return err
		}
	}
	f := &inFlight{subj: subj, id: id, body: body, wait: pubAckWait}
	p.send(f)
	p.pending = append(p.pending, f)
	p.bytes += len(body)
	return nil
}

// Flush waits until the server acknowledged every task published, or ctx
// ends.
func (p *Publisher) Flush(ctx context.Context) error {
	for len(p.pending) > 0 {
		if err := p.settle(ctx); err != nil {
			return err
		}
	}
	return nil
}

// send publishes f without waiting for its acknowledgement; f.ack is left
// nil when it could not be sent (not connected, and the reconnect buffer
// full).
func (p *Publisher) send(f *inFlight) {
	f.sent = time.Now()
	f.ack, _ = p.r.c.js.PublishAsync(f.subj, f.body, jetstream.WithMsgID(f.id))
}

// pop forgets the oldest publish, acknowledged.
func (p *Publisher) pop() {
	p.bytes -= len(p.pending[0].body)
	p.pending[0] = nil
	p.pending = p.pending[1:]
}

// settle waits until the oldest publish is acknowledged and forgets it.
// While it fails, it is sent again, with backoff, and with it every other
// publish in flight that failed meanwhile, as after a server restart.
func (p *Publisher) settle(ctx context.Context) error {
	f := p.pending[0]
	wait := 100 * time.Millisecond
	for {
		if f.ack != nil {
			// An acknowledgement in already is taken before a timer
			// that ran out while the feeder waited.
			select {
			case <-f.ack.Ok():
				p.pop()
				return nil
			default:
			}
			late := time.NewTimer(time.Until(f.sent.Add(f.wait)))
			select {
			case <-f.ack.Ok():
				late.Stop()
				p.pop()
				return nil
			case <-f.ack.Err():
				f.ack = nil
			case <-late.C:
				f.ack = nil
				f.wait = min(2*f.wait, pubAckWaitMax)
			case <-ctx.Done():
				late.Stop()
				return fmt.Errorf("cluster: publishing task: %w", ctx.Err())
			}
			late.Stop()
		}
		if !sleep(ctx, wait) {
			return fmt.Errorf("cluster: publishing task: %w", ctx.Err())
		}
		wait = min(2*wait, 2*time.Second)
		for _, g := range p.pending {
			p.resend(g)
		}
	}
}

// resend sends g again when its publish failed or its acknowledgement is
// late, and reports whether it is still to be acknowledged.
func (p *Publisher) resend(g *inFlight) bool {
	if g.ack != nil {
		select {
		case <-g.ack.Err():
			g.ack = nil
		default:
			if len(g.ack.Ok()) > 0 {
				return false
			}
			if time.Since(g.sent) > g.wait {
				g.ack = nil
				g.wait = min(2*g.wait, pubAckWaitMax)
			}
		}
	}
	if g.ack == nil {
		p.send(g)
	}
	return true
}

// Tend does without waiting what Publish and Flush do while they wait: it
// forgets the publishes acknowledged, oldest first, and sends again those
// that failed or whose acknowledgement is late. It reports whether
// publishes remain to be acknowledged. A caller that stops publishing for
// a while (its input is quiet) calls it every so often meanwhile, so that
// the publishes lost just before the pause are sent again: nothing else
// would until the next Publish or Flush.
func (p *Publisher) Tend() bool {
	for len(p.pending) > 0 && p.pending[0].ack != nil && len(p.pending[0].ack.Ok()) > 0 {
		p.pop()
	}
	for _, g := range p.pending {
		p.resend(g)
	}
	return len(p.pending) > 0
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

// Waiting says what keeps tasks from running, or "" when nothing does:
// no live agent at all, or tasks in a memory class no live agent fits.
// It says nothing while the connection to the server is lost: a
// LinkWatch tells of that.
func (r *Run) Waiting(ctx context.Context) string {
	if since, _ := r.c.down(); !since.IsZero() {
		return ""
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
			need, they := "need", "they wait"
			if n == 1 {
				need, they = "needs", "it waits"
			}
			return fmt.Sprintf("%s %s more than %s of memory, and no agent has that much (the largest gives %s per task); %s for one",
				plural(int(n), "task"), need, bytesize.Format(classBound(k-1)), bytesize.Format(capacity), they)
		}
	}
	return ""
}
