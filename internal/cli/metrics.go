package cli

import (
	"fmt"
	"net"

	"github.com/spf13/pflag"

	"github.com/safepool/safepool/internal/metrics"
	"github.com/safepool/safepool/pool"
)

// registerMetrics adds --metrics, the same in run and map.
func (f *commonFlags) registerMetrics(fs *pflag.FlagSet) {
	fs.Var(addrValue{&f.metrics}, "metrics", "serve Prometheus metrics at http://`ADDR`/metrics while the run goes on, such as localhost:9100 (port 0 picks a free port; stderr says which)")
}

// addrValue is a host:port flag, checked as it is parsed.
type addrValue struct{ p *string }

func (a addrValue) Set(s string) error {
	if _, _, err := net.SplitHostPort(s); err != nil {
		return fmt.Errorf("want HOST:PORT, such as localhost:9100 or :9100")
	}
	*a.p = s
	return nil
}

func (a addrValue) String() string { return *a.p }
func (a addrValue) Type() string   { return "ADDR" }

// jobMetrics serves a job's metrics. A nil *jobMetrics (no --metrics)
// does nothing.
type jobMetrics struct {
	c   *metrics.Collector
	srv *metrics.Server
}

// startMetrics listens on addr and serves the metrics of the pool to
// come; with addr "", it returns nil.
func startMetrics(addr string) (*jobMetrics, error) {
	if addr == "" {
		return nil, nil
	}
	c := metrics.New()
	srv, err := metrics.Listen(addr, c.Handler())
	if err != nil {
		c.Close()
		return nil, fmt.Errorf("cannot serve metrics: %w", err)
	}
	return &jobMetrics{c: c, srv: srv}, nil
}

func (m *jobMetrics) observe(ev pool.Event) {
	if m != nil {
		m.c.Observe(ev)
	}
}

// unwritten moves n tasks from done to unwritten: their output was not
// written (outputLedger).
func (m *jobMetrics) unwritten(n int) {
	if m != nil {
		m.c.AddUnwritten(n)
	}
}

// skipped counts an input that an earlier run finished in state, and
// that this one skips.
func (m *jobMetrics) skipped(state string) {
	if m != nil {
		m.c.AddSkipped(pool.State(state))
	}
}

func (m *jobMetrics) attach(p *pool.Pool) {
	if m != nil {
		m.c.Attach(p)
	}
}

// close stops serving: the metrics are there while the job runs.
func (m *jobMetrics) close() {
	if m != nil {
		m.c.Close()
		m.srv.Close()
	}
}
