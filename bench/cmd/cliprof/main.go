// Command cliprof runs the safepool command line in its own process with a
// CPU profile of the supervisor written to FILE:
//
//	cliprof FILE map -q -j 2 -- bench/.bin/benchworker line < in.txt
//
// It is cmd/safepool with the profile around it, for bench/cli/run; read
// the profile with go tool pprof -top bench/.bin/cliprof FILE.
package main

import (
	"context"
	"log"
	"os"
	"runtime/pprof"

	"github.com/safepool/safepool/internal/cli"
)

func main() {
	log.SetFlags(0)
	log.SetPrefix("cliprof: ")
	if len(os.Args) < 2 {
		log.Fatal("usage: cliprof FILE SAFEPOOL-ARGS...")
	}
	f, err := os.Create(os.Args[1])
	if err != nil {
		log.Fatal(err)
	}
	if err := pprof.StartCPUProfile(f); err != nil {
		log.Fatal(err)
	}
	ctx, stop := cli.NotifyContext(context.Background())
	code := cli.Run(ctx, os.Args[2:], os.Stdin, os.Stdout, os.Stderr)
	stop()
	pprof.StopCPUProfile()
	if err := f.Close(); err != nil {
		log.Fatal(err)
	}
	os.Exit(code)
}
