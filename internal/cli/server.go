package cli

import (
	"context"
	"fmt"

	"github.com/safepool/safepool/internal/cluster"
)

var serverSynopsis = []string{"safepool server --store DIR [--listen ADDR] [--cluster ADDR --routes URLS --name NAME]"}

const serverIntro = `safepool server runs a NATS server with JetStream, keeping its queue of tasks
and its results in files under --store, for safepool agent and for run and map
with --nats. Any NATS deployment with JetStream serves as well
(docs/cluster.md). It runs until SIGINT or SIGTERM; restarted on the same
--store, it carries on where it stopped.
`

const serverOutro = `
For a JetStream cluster, start three servers, each with its own --name and
--store, a --cluster address and the others' addresses in --routes; streams
and buckets are then replicated on all three.

Examples:
  safepool server --store /var/lib/safepool --listen 0.0.0.0:4222
  safepool server --store s1 --name s1 --listen :4222 --cluster :6222 --routes nats://h2:6222,nats://h3:6222
`

// serverArgs are the flags of safepool server.
type serverArgs struct {
	cfg    cluster.ServerConfig
	routes []string
	quiet  bool
}

func runServer(ctx context.Context, e *env, args []string) error {
	var a serverArgs
	fs := newFlagSet("server")
	fs.StringVar(&a.cfg.StoreDir, "store", "", "keep JetStream's files in `DIR` (required)")
	fs.StringVar(&a.cfg.Listen, "listen", "127.0.0.1:4222", "take clients on `ADDR`, host:port; port 0 picks a free one; 0.0.0.0:4222 for other machines")
	fs.StringVar(&a.cfg.Name, "name", "", "name this server `NAME`; each server of a cluster needs its own")
	fs.StringVar(&a.cfg.ClusterListen, "cluster", "", "take routes from the other servers of a JetStream cluster on `ADDR`, host:port")
	fs.StringSliceVar(&a.routes, "routes", nil, "the other servers' cluster addresses, `URLS` such as nats://h2:6222,nats://h3:6222")
	fs.Var(newSizeValue(&a.cfg.MaxPayload), "max-payload", "take messages of up to `SIZE` (default 1MiB, at most 64MiB): a task with its input, or a result with its output, must fit one")
	boolVarP(fs, &a.quiet, "quiet", "q", "log only the address, not the NATS server's notices")
	registerHelp(fs)
	if err := parseFlags("server", fs, args); err != nil {
		if err == errHelp {
			writeHelp(e.stdout, serverIntro, serverSynopsis, fs, serverOutro)
			return nil
		}
		return err
	}
	switch {
	case fs.NArg() > 0:
		return usagef("server", "unexpected argument %q", fs.Arg(0))
	case a.cfg.StoreDir == "":
		return usagef("server", "missing --store DIR")
	case len(a.routes) > 0 && a.cfg.ClusterListen == "":
		return usagef("server", "--routes needs --cluster")
	case a.cfg.ClusterListen != "" && a.cfg.Name == "":
		return usagef("server", "--cluster needs --name: each server of a cluster needs its own")
	}
	a.cfg.Routes = a.routes
	a.cfg.Log = !a.quiet
	s, err := cluster.StartServer(a.cfg)
	if err != nil {
		return &statusError{status: exitUsage, err: err}
	}
	fmt.Fprintf(e.stderr, "safepool server: listening on %s, JetStream store %s\n", s.URL(), a.cfg.StoreDir)
	<-ctx.Done()
	s.Shutdown()
	return nil
}
