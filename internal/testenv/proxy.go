package testenv

import (
	"bytes"
	"fmt"
	"net"
	"sync"
	"testing"
	"time"
)

// Proxy forwards connections on a loopback port to the loopback port
// target, each byte delay late in each direction, like a link to a far
// machine. It returns its port, and cut, which closes the connections
// open, dropping what they still carry, as a link that breaks (the proxy
// takes new connections after it). t's cleanup closes the proxy and its
// connections.
func Proxy(t testing.TB, target int, delay time.Duration) (port int, cut func()) {
	t.Helper()
	l := NewLink(t, target, delay)
	return l.Port, l.Cut
}

// Link is a proxy as Proxy starts, with more control over what it
// carries: it can hold what its clients send, so that a test knows that
// what a client sent is lost when it cuts the link.
type Link struct {
	// Port is the loopback port the proxy listens on.
	Port int

	mu    sync.Mutex
	conns []net.Conn
	hold  bool         // what clients send is held, not forwarded
	held  bytes.Buffer // what clients sent while hold was set
}

// NewLink starts a proxy as Proxy does, and returns it. t's cleanup closes
// the proxy and its connections.
func NewLink(t testing.TB, target int, delay time.Duration) *Link {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	l := &Link{Port: ln.Addr().(*net.TCPAddr).Port}
	var wg sync.WaitGroup
	t.Cleanup(func() {
		ln.Close()
		l.Cut()
		wg.Wait()
	})
	type chunk struct {
		due time.Time
		b   []byte
	}
	// pipe forwards from to to; what a client sends (fromClient) is held
	// instead while hold is set.
	pipe := func(from, to net.Conn, fromClient bool) {
		q := make(chan chunk, 4096)
		wg.Go(func() {
			defer close(q)
			for {
				b := make([]byte, 64<<10)
				n, err := from.Read(b)
				if n > 0 {
					q <- chunk{time.Now().Add(delay), b[:n]}
				}
				if err != nil {
					return
				}
			}
		})
		wg.Go(func() {
			defer to.Close()
			for c := range q {
				time.Sleep(time.Until(c.due))
				l.mu.Lock()
				held := fromClient && l.hold
				if held {
					l.held.Write(c.b)
				}
				l.mu.Unlock()
				if held {
					continue
				}
				if _, err := to.Write(c.b); err != nil {
					from.Close()
					for range q {
					}
					return
				}
			}
		})
	}
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			s, err := net.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", target))
			if err != nil {
				c.Close()
				continue
			}
			l.mu.Lock()
			l.conns = append(l.conns, c, s)
			l.mu.Unlock()
			pipe(c, s, true)
			pipe(s, c, false)
		}
	})
	return l
}

// Cut closes the connections open, dropping what they still carry and
// what the link holds, as a link that breaks; the proxy takes new
// connections after it, and forwards what they carry.
func (l *Link) Cut() {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, c := range l.conns {
		c.Close()
	}
	l.conns = nil
	l.hold = false
	l.held.Reset()
}

// Hold makes the link keep what its clients send from now on instead of
// forwarding it, until Cut drops it; what the server sends still goes
// through.
func (l *Link) Hold() {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.hold = true
}

// Held returns a copy of what the link holds.
func (l *Link) Held() []byte {
	l.mu.Lock()
	defer l.mu.Unlock()
	return bytes.Clone(l.held.Bytes())
}
