package cluster

import (
	"errors"
	"fmt"
	"net"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
)

// pingEvery and pingsOut bound how long a connection to a server that
// stopped answering (SIGSTOPped, hung, or cut off without a reset, as by a
// network partition) is taken for live: a ping goes out every pingEvery,
// and with pingsOut unanswered the connection is dropped and the client
// reconnects, saying so: 15 to 20 s after the server's last answer.
// NATS's defaults (2 min, 2) took six minutes, in
// silence.
const (
	pingEvery = 5 * time.Second
	pingsOut  = 3
)

// ErrNoServer is returned by Dial when no NATS server answers at the URL.
var ErrNoServer = errors.New("no NATS server answers")

// noServer reports whether err, from connecting, means that no server
// answers at the URL: none listens there, or one takes the connection but
// says nothing (stopped, hung), or the address drops packets, or its host
// name does not resolve (yet: in a compose file or a StatefulSet, the
// server's name resolves once it runs). Credentials refused, or a URL that
// cannot be parsed, are other errors.
func noServer(err error) bool {
	var ne net.Error
	var dns *net.DNSError
	return errors.Is(err, nats.ErrNoServers) || errors.Is(err, nats.ErrTimeout) ||
		errors.As(err, &ne) && ne.Timeout() || errors.As(err, &dns)
}

// lost notes that the connection to the server is lost; the client
// reconnects for ever. A connection found stale was lost when the server
// last answered, up to staleAfter before.
func (c *Conn) lost(nc *nats.Conn, err error) {
	if nc.IsClosed() {
		return // Close, not a loss
	}
	now := time.Now()
	if errors.Is(err, nats.ErrStaleConnection) {
		now = now.Add(-pingEvery * pingsOut)
		err = fmt.Errorf("the server stopped answering: %d pings in %v unanswered", pingsOut, pingEvery*pingsOut)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.downSince.IsZero() {
		c.downSince = now
	}
	c.downErr = err
}

// back notes that the connection to the server is back.
func (c *Conn) back(nc *nats.Conn) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.downSince, c.downErr = time.Time{}, nil
	c.backAt = time.Now()
}

// reconnectedAt returns when the connection last came back after a loss,
// or the zero time.
func (c *Conn) reconnectedAt() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.backAt
}

// down returns since when the connection is lost and why, or the zero time
// while it is up.
func (c *Conn) down() (since time.Time, why error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.downSince, c.downErr
}

// LinkWatch tells a long-running client (an agent, a submitter) when its
// connection to the server is lost and when it is back, so that a wait for
// an absent server is not silent, and no more often than a person reading
// the log wants: see notices. It is used by one goroutine, which calls Say
// every second or so.
type LinkWatch struct {
	c *Conn
	n notices
}

// Watch returns a LinkWatch of c.
func (c *Conn) Watch() *LinkWatch { return &LinkWatch{c: c} }

// Say returns a sentence to tell of the connection now, or "".
func (w *LinkWatch) Say() string {
	now := time.Now()
	since, why := w.c.down()
	servers := Redact(strings.Join(w.c.nc.Servers(), ","))
	switch w.n.next(now, since) {
	case noticeLost:
		because := ""
		if why != nil {
			because = fmt.Sprintf(" (%v)", why)
		}
		return fmt.Sprintf("lost the connection to the NATS server%s; reconnecting to %s for as long as it takes", because, servers)
	case noticeStill:
		return fmt.Sprintf("still no NATS server at %s, for %v; reconnecting for as long as it takes", servers, now.Sub(since).Round(time.Second))
	case noticeBack:
		return fmt.Sprintf("reconnected to the NATS server at %s after %v", w.c.nc.ConnectedUrlRedacted(), now.Sub(w.n.lostSince).Round(time.Second))
	}
	return ""
}

// notice is what a LinkWatch says.
type notice int

const (
	noticeNone  notice = iota
	noticeLost         // the connection is lost
	noticeStill        // it still is, a reminder
	noticeBack         // it is back after a loss that was told
)

// noticeGap is the least time between a return told and the next loss
// told, so that a connection that comes and goes (a server restarting
// again and again, a flapping link) says so twice a minute at most; and
// remindEvery how often a loss that lasts is told again, so that the log
// of a run left overnight shows that it still waits, and since when.
const (
	noticeGap   = 30 * time.Second
	remindEvery = 10 * time.Minute
)

// notices decides when to tell of the connection. A loss is told at once,
// unless a return was told less than noticeGap before: then once it has
// lasted until noticeGap after that. A loss told is told again every
// remindEvery while it lasts, and its end is told; a loss that ended
// before it was told is not.
type notices struct {
	told      bool      // a loss is told and its end not yet
	lostSince time.Time // when the loss told began
	last      time.Time // when the last notice was given
}

// next returns what to tell at now, when the connection is lost since
// since (zero: it is up).
func (n *notices) next(now, since time.Time) notice {
	switch {
	case since.IsZero() && n.told:
		n.told, n.last = false, now
		return noticeBack
	case since.IsZero():
		return noticeNone
	case n.told && now.Sub(n.last) >= remindEvery:
		n.last = now
		return noticeStill
	case n.told:
		return noticeNone
	case !n.last.IsZero() && now.Sub(n.last) < noticeGap:
		return noticeNone
	}
	n.told, n.lostSince, n.last = true, since, now
	return noticeLost
}
