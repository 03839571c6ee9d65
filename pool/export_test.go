package pool

import "time"

// SetPipelineAhead sets how much work a line worker may have waiting in its
// stdin, for tests that need lines of seconds sent ahead, and returns a
// function that restores it. It must not be called while a pool runs.
func SetPipelineAhead(d time.Duration) (restore func()) {
	old := pipelineAhead
	pipelineAhead = d
	return func() { pipelineAhead = old }
}

// SetMaxFailed sets how many failures Pool.Failed keeps, and returns a
// function that restores it. It must not be called while a pool runs.
func SetMaxFailed(n int) (restore func()) {
	old := maxFailed
	maxFailed = n
	return func() { maxFailed = old }
}
