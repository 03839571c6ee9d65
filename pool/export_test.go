package pool

import (
	"time"

	"github.com/safepool/safepool/internal/worker"
)

// SetPipelineAhead sets how much work a line worker may have waiting in its
// stdin, for tests that need lines of seconds sent ahead, and returns a
// function that restores it. It must not be called while a pool runs.
func SetPipelineAhead(d time.Duration) (restore func()) {
	old := worker.PipelineAhead
	worker.PipelineAhead = d
	return func() { worker.PipelineAhead = old }
}

// SetMaxFailed sets how many failures Pool.Failed keeps, and returns a
// function that restores it. It must not be called while a pool runs.
func SetMaxFailed(n int) (restore func()) {
	old := maxFailed
	maxFailed = n
	return func() { maxFailed = old }
}

// SetStartupPatience sets how long startup failures in a row must last to
// abort a pool that has done some work, and returns a function that
// restores it. It must not be called while a pool runs.
func SetStartupPatience(d time.Duration) (restore func()) {
	old := startupPatience
	startupPatience = d
	return func() { startupPatience = old }
}

// SetStopWait sets how long the report of a worker that died of a stop
// signal waits for an abort, and returns a function that restores it. It
// must not be called while a pool runs.
func SetStopWait(d time.Duration) (restore func()) {
	old := stopWait
	stopWait = d
	return func() { stopWait = old }
}
