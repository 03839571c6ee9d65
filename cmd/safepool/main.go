// Command safepool runs commands over many inputs, like GNU parallel and
// xargs -P, on supervised workers that survive the OOM killer. See
// docs/cli.md.
package main

import (
	"context"
	"os"

	"github.com/safepool/safepool/internal/cli"
	"github.com/safepool/safepool/internal/reaper"
)

func main() {
	// Before anything can write to a terminal or start a process.
	primeProcessStart()
	// As process 1 of a pid namespace (a container without an init),
	// run under an init that reaps the orphans that jobs leave.
	if code, ran := reaper.InitShim(); ran {
		os.Exit(code)
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
