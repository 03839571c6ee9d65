package testenv

import (
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
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var conns []net.Conn
	var wg sync.WaitGroup
	t.Cleanup(func() {
		l.Close()
		mu.Lock()
		for _, c := range conns {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	type chunk struct {
		due time.Time
		b   []byte
	}
	pipe := func(from, to net.Conn) {
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
			c, err := l.Accept()
			if err != nil {
				return
			}
			s, err := net.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", target))
			if err != nil {
				c.Close()
				continue
			}
			mu.Lock()
			conns = append(conns, c, s)
			mu.Unlock()
			pipe(c, s)
			pipe(s, c)
		}
	})
	cut = func() {
		mu.Lock()
		defer mu.Unlock()
		for _, c := range conns {
			c.Close()
		}
	}
	return l.Addr().(*net.TCPAddr).Port, cut
}
