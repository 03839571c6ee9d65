package metrics

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"strconv"
	"time"
)

// Server serves metrics over HTTP at /metrics. Create it with Listen;
// Close must be called to stop it.
type Server struct {
	ln   net.Listener
	srv  *http.Server
	done chan struct{} // closed when the serving goroutine has returned
}

// Listen listens on addr (host:port; port 0 picks a free one) and serves
// h at /metrics, from a goroutine that Close ends. The address is bound
// before Listen returns, so a port in use is an error here.
func Listen(addr string, h http.Handler) (*Server, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, err
	}
	mux := http.NewServeMux()
	mux.Handle("/metrics", h)
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/" {
			http.NotFound(w, r)
			return
		}
		fmt.Fprintln(w, "safepool metrics are at /metrics")
	})
	s := &Server{
		ln:   ln,
		srv:  &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second},
		done: make(chan struct{}),
	}
	go func() {
		defer close(s.done)
		s.srv.Serve(ln) // returns http.ErrServerClosed after Close
	}()
	return s, nil
}

// Addr is the address the server listens on, with the port it was given.
func (s *Server) Addr() net.Addr { return s.ln.Addr() }

// URL is where the metrics are served. A server listening on every
// interface (":9100", "0.0.0.0:0") is named by localhost, which a browser
// or curl on this machine can open, rather than by "[::]".
func (s *Server) URL() string {
	addr := s.ln.Addr().String()
	if a, ok := s.ln.Addr().(*net.TCPAddr); ok && a.IP.IsUnspecified() {
		addr = net.JoinHostPort("localhost", strconv.Itoa(a.Port))
	}
	return "http://" + addr + "/metrics"
}

// closeGrace is how long Close lets a scrape in progress finish.
const closeGrace = time.Second

// Close stops listening, lets a scrape in progress finish for up to a
// second, then closes the connections and waits for the serving
// goroutine.
func (s *Server) Close() error {
	ctx, cancel := context.WithTimeout(context.Background(), closeGrace)
	defer cancel()
	err := s.srv.Shutdown(ctx)
	if errors.Is(err, context.DeadlineExceeded) {
		err = s.srv.Close()
	}
	<-s.done
	return err
}
