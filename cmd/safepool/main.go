// Command safepool runs commands over many inputs, like GNU parallel and
// xargs -P, on supervised workers that survive the OOM killer. See
// docs/cli.md.
package main

import (
	"context"
	"os"
	"runtime/debug"

	"github.com/safepool/safepool/internal/cli"
	"github.com/safepool/safepool/internal/reaper"
)

// gcPercent is the supervisor's GOGC unless the environment sets one. Its
// live heap is small and bounded (the lines in flight, a few blocks, the
// tasks queued ahead), so at Go's default of 100 it collects every few
// megabytes: in `map` of a million trivial lines the collector took about
// a third of the run, and the supervisor, not the workers, set the pace.
// At 300 the heap may grow to four times what is live before a
// collection: some 5 to 15 MB more at its peak, still flat in the input's
// size (docs/benchmarks.md).
const gcPercent = 300

func main() {
	// As process 1 of a pid namespace (a container without an init),
	// run under an init that reaps the orphans that jobs leave.
	if code, ran := reaper.InitShim(); ran {
		os.Exit(code)
	}
	if os.Getenv("GOGC") == "" {
		debug.SetGCPercent(gcPercent)
	}
	// Run again as a pool's guardian (internal/reaper), the binary never
	// gets here: the guardian runs in a package initialiser.
	//
	// The first SIGINT, SIGTERM or SIGHUP cancels ctx: cli.Run stops the
	// pool gracefully and listens for a second one itself.
	ctx, stop := cli.NotifyContext(context.Background())
	code := cli.Run(ctx, os.Args[1:], os.Stdin, os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}
