package cluster

import (
	"fmt"
	"net"
	"strconv"
	"time"

	"github.com/nats-io/nats-server/v2/server"
)

// ServerConfig configures the embedded NATS server.
type ServerConfig struct {
	// StoreDir is where JetStream keeps its files; required.
	StoreDir string
	// Listen is the client address, host:port. Port 0 picks a free port.
	// Empty means 127.0.0.1:4222.
	Listen string
	// Name names the server; required in a cluster, where each must have
	// its own. Empty means one NATS picks.
	Name string
	// ClusterListen is the address for routes from the other servers of a
	// JetStream cluster, host:port; empty means no cluster.
	ClusterListen string
	// Routes are the other servers' cluster addresses, nats://host:port.
	Routes []string
	// ClusterName names the cluster; empty means "safepool".
	ClusterName string
	// Log reports whether to log the server's notices to stderr.
	Log bool
	// MaxPayload is the largest message, in bytes, the server takes: it
	// bounds a task with its input, and a result with its output. Zero
	// means NATS's default, 1 MiB; at most MaxPayloadLimit.
	MaxPayload int64
}

// MaxPayloadLimit is the largest MaxPayload NATS allows, 64 MiB.
const MaxPayloadLimit = 64 << 20

// Server is a running embedded NATS server with JetStream.
type Server struct {
	s *server.Server
}

// StartServer starts a NATS server with JetStream and file storage, and
// waits until it takes clients.
func StartServer(cfg ServerConfig) (*Server, error) {
	if cfg.StoreDir == "" {
		return nil, fmt.Errorf("cluster: the server needs a store directory")
	}
	if cfg.Listen == "" {
		cfg.Listen = "127.0.0.1:4222"
	}
	host, port, err := splitAddr(cfg.Listen)
	if err != nil {
		return nil, fmt.Errorf("cluster: --listen %q: %w", cfg.Listen, err)
	}
	opts := &server.Options{
		ServerName: cfg.Name,
		Host:       host,
		Port:       port,
		JetStream:  true,
		StoreDir:   cfg.StoreDir,
		NoSigs:     true, // the caller owns signals
	}
	if cfg.MaxPayload < 0 || cfg.MaxPayload > MaxPayloadLimit {
		return nil, fmt.Errorf("cluster: the largest message must be at most %d MiB, not %d bytes", MaxPayloadLimit>>20, cfg.MaxPayload)
	}
	opts.MaxPayload = int32(cfg.MaxPayload)
	if cfg.ClusterListen != "" {
		ch, cp, err := splitAddr(cfg.ClusterListen)
		if err != nil {
			return nil, fmt.Errorf("cluster: --cluster %q: %w", cfg.ClusterListen, err)
		}
		opts.Cluster = server.ClusterOpts{Name: cfg.ClusterName, Host: ch, Port: cp}
		if opts.Cluster.Name == "" {
			opts.Cluster.Name = "safepool"
		}
		if len(cfg.Routes) > 0 {
			opts.Routes = server.RoutesFromStr(joinComma(cfg.Routes))
		}
	}
	s, err := server.NewServer(opts)
	if err != nil {
		return nil, fmt.Errorf("cluster: NATS server: %w", err)
	}
	if cfg.Log {
		s.ConfigureLogger()
	}
	go s.Start()
	if !s.ReadyForConnections(30 * time.Second) {
		s.Shutdown()
		return nil, fmt.Errorf("cluster: the NATS server did not start listening on %s within 30s", cfg.Listen)
	}
	return &Server{s: s}, nil
}

// URL returns the address clients connect to.
func (s *Server) URL() string { return s.s.ClientURL() }

// Shutdown stops the server and waits for it.
func (s *Server) Shutdown() {
	s.s.Shutdown()
	s.s.WaitForShutdown()
}

// splitAddr parses host:port; port 0 becomes NATS's "any free port".
func splitAddr(addr string) (string, int, error) {
	h, p, err := net.SplitHostPort(addr)
	if err != nil {
		return "", 0, err
	}
	n, err := strconv.Atoi(p)
	if err != nil || n < 0 || n > 65535 {
		return "", 0, fmt.Errorf("bad port %q", p)
	}
	if n == 0 {
		n = server.RANDOM_PORT
	}
	return h, n, nil
}

func joinComma(s []string) string {
	out := ""
	for i, x := range s {
		if i > 0 {
			out += ","
		}
		out += x
	}
	return out
}
