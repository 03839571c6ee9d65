package main

import (
	"os"

	"github.com/safepool/safepool/internal/memory"
)

// primeProcessStart makes Go test the kernel's pidfd calls now, with the
// stop signals of job control blocked (memory.WithStopsBlocked), rather
// than at the first process that safepool starts: the test starts a child
// that blocks nothing before it exits, and a stop that reached it then
// (safepool's first write to a terminal set to `stty tostop`, from the
// background) would leave safepool stuck for good. FindProcess runs the
// test, once for the process.
func primeProcessStart() {
	memory.WithStopsBlocked(func() {
		if p, err := os.FindProcess(os.Getpid()); err == nil {
			_ = p.Release()
		}
	})
}
