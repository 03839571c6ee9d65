package cluster

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// Conn is a connection to a NATS deployment with JetStream, and the
// stream, consumers and buckets a run uses, created if absent.
type Conn struct {
	nc *nats.Conn
	js jetstream.JetStream

	stream   jetstream.Stream
	runs     jetstream.KeyValue
	results  jetstream.KeyValue
	attempts jetstream.KeyValue
	agents   jetstream.KeyValue
	// Replicas is how many servers hold each stream and bucket: 3 on a
	// JetStream cluster, 1 on a single server.
	Replicas int

	mu        sync.Mutex // guards the fields below, set by the connection's handlers
	downSince time.Time  // when the server was last known to answer, once the connection is lost; zero while connected
	downErr   error      // why, if known
	backAt    time.Time  // when the connection last came back after a loss
	denied    error      // the last permissions violation the server reported
	stopSetup func()     // while setup runs: ends its requests, which a violation leaves unanswered
	setUp     bool       // setup has ended: asyncErr prints what it is told
}

// Dial connects to the NATS server at url (a comma-separated list of
// servers is allowed) as name, and sets up the JetStream objects: file
// storage, replicated three times when the server is part of a cluster. The
// connection reconnects for ever; Close ends it.
func Dial(ctx context.Context, url, name string) (*Conn, error) {
	c := &Conn{}
	nc, err := nats.Connect(url,
		nats.Name(name),
		nats.MaxReconnects(-1),
		nats.ReconnectWait(250*time.Millisecond),
		nats.PingInterval(pingEvery),
		nats.MaxPingsOutstanding(pingsOut),
		nats.RetryOnFailedConnect(false),
		nats.DisconnectErrHandler(c.lost),
		nats.ReconnectHandler(c.back),
		nats.ErrorHandler(c.asyncErr),
	)
	if err != nil {
		if noServer(err) {
			return nil, fmt.Errorf("cluster: %w at %s (%v)", ErrNoServer, Redact(url), err)
		}
		return nil, fmt.Errorf("cluster: connecting to %s: %w", Redact(url), err)
	}
	c.nc = nc
	if err := c.setup(ctx); err != nil {
		nc.Close()
		return nil, err
	}
	return c, nil
}

// Close closes the connection.
func (c *Conn) Close() { c.nc.Close() }

// asyncErr is told of the errors the server reports apart from any
// request, such as a permissions violation, which a request the server
// refuses to pass on never returns: it notes the last permissions
// violation, which setup names rather than wait for replies that cannot
// come, and once set up prints each error, as NATS does by default.
func (c *Conn) asyncErr(nc *nats.Conn, sub *nats.Subscription, err error) {
	c.mu.Lock()
	if errors.Is(err, nats.ErrPermissionViolation) {
		c.denied = err
		if c.stopSetup != nil {
			c.stopSetup()
		}
	}
	setUp := c.setUp
	c.mu.Unlock()
	if setUp {
		fmt.Fprintf(os.Stderr, "safepool: NATS: %v\n", err)
	}
}

// Redact returns urls, a comma-separated list of server URLs, with any
// password hidden, for messages.
func Redact(urls string) string {
	parts := strings.Split(urls, ",")
	for i, p := range parts {
		if u, err := url.Parse(strings.TrimSpace(p)); err == nil && u.User != nil {
			if _, has := u.User.Password(); has {
				u.User = url.UserPassword(u.User.Username(), "xxxxx")
			} else {
				u.User = url.User("xxxxx") // a token
			}
			parts[i] = u.String()
		}
	}
	return strings.Join(parts, ",")
}

func (c *Conn) setup(ctx context.Context) error {
	// A Publisher's tasks are published without waiting: a publish the
	// server never acknowledges (it was lost meanwhile) is forgotten
	// after a while rather than held for ever (and sent again).
	js, err := jetstream.New(c.nc, jetstream.WithPublishAsyncTimeout(30*time.Second))
	if err != nil {
		return fmt.Errorf("cluster: JetStream: %w", err)
	}
	c.js = js
	c.Replicas = 1
	if c.nc.ConnectedClusterName() != "" {
		c.Replicas = 3
	}
	// Setting up may race with the server still electing leaders (a
	// cluster starting, a server restarting): try for a while.
	sctx, stop := context.WithCancel(ctx)
	defer stop()
	c.mu.Lock()
	c.stopSetup = stop
	c.mu.Unlock()
	deadline := time.Now().Add(30 * time.Second)
	for {
		c.stream, err = c.create(sctx)
		if err == nil {
			break
		}
		if why := c.hopeless(err); why != nil {
			err = why
			break
		}
		if time.Now().After(deadline) || sctx.Err() != nil || !sleep(sctx, 500*time.Millisecond) {
			break
		}
	}
	c.mu.Lock()
	c.stopSetup, c.setUp = nil, true
	c.mu.Unlock()
	if err != nil {
		return fmt.Errorf("cluster: setting up JetStream at %s: %w", c.nc.ConnectedUrlRedacted(), err)
	}
	return nil
}

// ErrNoJetStream is returned by Dial when the NATS deployment does not
// give the connection's user JetStream: the server runs without it, or
// the user's account has it disabled, or the user may not use its API.
var ErrNoJetStream = errors.New("no JetStream")

// hopeless returns why setting up failed when trying again cannot help,
// or nil: the server runs without JetStream, the user's account has it
// disabled, or the server refused the user a JetStream request. These were
// tried again for 30 s, silently, and then named only by what the last
// request returned ("no responders available for request", "context
// deadline exceeded").
func (c *Conn) hopeless(err error) error {
	c.mu.Lock()
	denied := c.denied
	c.mu.Unlock()
	switch {
	case denied != nil:
		return fmt.Errorf("%w for this user: %v; the user needs to publish and subscribe to JetStream's API ($JS.>), to safepool's subjects (safepool.>, $KV.>) and to replies (_INBOX.>)", ErrNoJetStream, denied)
	case errors.Is(err, jetstream.ErrJetStreamNotEnabledForAccount):
		return fmt.Errorf("%w for this user's account: the NATS server runs JetStream, but not for this account (jetstream: enabled in the account's configuration): %v", ErrNoJetStream, err)
	case errors.Is(err, nats.ErrNoResponders):
		if on, _ := c.nc.ConnectedServerJetStream(); !on {
			return fmt.Errorf("%w: the NATS server runs without JetStream (start nats-server with -js, or jetstream {} in its configuration; safepool server runs it): %v", ErrNoJetStream, err)
		}
	}
	return nil
}

// create creates or updates the stream, the class consumers and the
// buckets, and returns the stream. The consumers and buckets are set up
// at once, each request with a time of its own: one after the other, the
// 26 requests of a client far from the server (400 ms there and back) took
// longer than the 10 s they had together, and its agent could not start.
func (c *Conn) create(ctx context.Context) (jetstream.Stream, error) {
	sctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	st, err := c.js.CreateOrUpdateStream(sctx, jetstream.StreamConfig{
		Name:       StreamName,
		Subjects:   []string{subjectPrefix + ".>"},
		Retention:  jetstream.WorkQueuePolicy,
		Storage:    jetstream.FileStorage,
		Replicas:   c.Replicas,
		Duplicates: dedupWindow,
	})
	cancel()
	if err != nil {
		return nil, fmt.Errorf("stream %s: %w", StreamName, err)
	}
	buckets := []struct {
		kv  *jetstream.KeyValue
		cfg jetstream.KeyValueConfig
	}{
		{&c.runs, jetstream.KeyValueConfig{Bucket: RunsBucket, TTL: resultsTTL}},
		{&c.results, jetstream.KeyValueConfig{Bucket: ResultsBucket, TTL: resultsTTL}},
		{&c.attempts, jetstream.KeyValueConfig{Bucket: AttemptsBucket, TTL: resultsTTL}},
		{&c.agents, jetstream.KeyValueConfig{Bucket: AgentsBucket, TTL: agentTTL}},
	}
	errs := make([]error, MaxClass+1+len(buckets))
	kvs := make([]jetstream.KeyValue, len(buckets))
	var wg sync.WaitGroup
	for k := 0; k <= MaxClass; k++ {
		wg.Go(func() {
			cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
			defer cancel()
			_, err := st.CreateOrUpdateConsumer(cctx, jetstream.ConsumerConfig{
				Durable:       consumerName(k),
				FilterSubject: fmt.Sprintf("%s.%d.>", subjectPrefix, k),
				AckPolicy:     jetstream.AckExplicitPolicy,
				AckWait:       AckWait,
				MaxDeliver:    -1,
				MaxAckPending: -1,
				Replicas:      c.Replicas,
			})
			if err != nil {
				errs[k] = fmt.Errorf("consumer %s: %w", consumerName(k), err)
			}
		})
	}
	for i, b := range buckets {
		wg.Go(func() {
			bctx, cancel := context.WithTimeout(ctx, 10*time.Second)
			defer cancel()
			b.cfg.Storage = jetstream.FileStorage
			b.cfg.Replicas = c.Replicas
			kv, err := c.js.CreateOrUpdateKeyValue(bctx, b.cfg)
			if err != nil {
				errs[MaxClass+1+i] = fmt.Errorf("bucket %s: %w", b.cfg.Bucket, err)
			}
			kvs[i] = kv
		})
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			return nil, err // the first says it: they fail together
		}
	}
	for i, b := range buckets {
		if *b.kv == nil {
			// A bucket set up again (repair) keeps its name: the handle
			// made first serves it.
			*b.kv = kvs[i]
		}
	}
	return st, nil
}

// repair sets up again the stream, the class consumers and the buckets
// when the server no longer has class k's consumer: a server restarted on
// an empty store (or a store lost), or the objects deleted by hand. It
// reports whether it did; the queued tasks and the results the server had
// are gone, but agents and new runs carry on. The handles made by Dial
// name the objects, so they serve the new ones.
func (c *Conn) repair(ctx context.Context, k int) (bool, error) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	_, err := c.js.Consumer(ctx, StreamName, consumerName(k))
	if err == nil || !errors.Is(err, jetstream.ErrStreamNotFound) && !errors.Is(err, jetstream.ErrConsumerNotFound) {
		return false, nil // there, or no answer yet (a leader being elected)
	}
	if _, err := c.create(ctx); err != nil {
		return false, fmt.Errorf("cluster: setting up JetStream again at %s: %w", c.nc.ConnectedUrlRedacted(), err)
	}
	return true, nil
}

// liveAgents returns the agents that advertise their capacity now.
func (c *Conn) liveAgents(ctx context.Context) ([]AgentInfo, error) {
	l, err := c.agents.ListKeys(ctx)
	if err != nil {
		return nil, err
	}
	var out []AgentInfo
	for k := range l.Keys() {
		e, err := c.agents.Get(ctx, k)
		if err != nil {
			continue // expired meanwhile
		}
		var a AgentInfo
		if unmarshal(e.Value(), &a) == nil {
			out = append(out, a)
		}
	}
	return out, nil
}

// classCounts returns how many tasks each memory class holds now (queued,
// or delivered and not yet answered), in one request.
func (c *Conn) classCounts(ctx context.Context) (map[int]uint64, error) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	info, err := c.stream.Info(ctx, jetstream.WithSubjectFilter(subjectPrefix+".>"))
	if err != nil {
		return nil, err
	}
	out := map[int]uint64{}
	for subj, n := range info.State.Subjects {
		rest, _ := strings.CutPrefix(subj, subjectPrefix+".")
		ks, _, _ := strings.Cut(rest, ".")
		if k, err := strconv.Atoi(ks); err == nil {
			out[k] += n
		}
	}
	return out, nil
}

// largestClass returns the largest class any live agent fits, and the
// largest capacity, or -1 when no agent is live.
func largestClass(agents []AgentInfo) (int, int64) {
	k, c := -1, int64(0)
	for _, a := range agents {
		k, c = max(k, a.MaxClass), max(c, a.Capacity)
	}
	return k, c
}

// isGone reports whether err says a key is absent.
func isGone(err error) bool {
	return errors.Is(err, jetstream.ErrKeyNotFound) || errors.Is(err, jetstream.ErrKeyDeleted)
}

// sleep waits d, and reports false if ctx ended first.
func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}

// retry calls f until it succeeds or ctx ends, waiting between tries: for
// the writes that must not be lost while a server restarts or a cluster
// elects a new leader.
func retry(ctx context.Context, f func(ctx context.Context) error) error {
	wait := 100 * time.Millisecond
	for {
		tctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		err := f(tctx)
		cancel()
		if err == nil || errors.Is(err, errPermanent) {
			return err
		}
		if !sleep(ctx, wait) {
			return fmt.Errorf("%w (last error: %v)", ctx.Err(), err)
		}
		wait = min(2*wait, 2*time.Second)
	}
}

// errPermanent marks an error retry must not retry.
var errPermanent = errors.New("permanent")
