package cli

import (
	"errors"
	"testing"

	"github.com/safepool/safepool/pool"
)

// TestExitStatusOfStartError checks which runs that the pool aborted for
// workers failing at start-up exit 2 (the command cannot start): those in
// which no task was done. A run with tasks done was stopped before the end
// (exit 3), as restart_fails.txtar checks with real workers.
func TestExitStatusOfStartError(t *testing.T) {
	se := &pool.StartError{Command: []string{"w"}, Cause: pool.ExitCause(3)}
	tests := []struct {
		name  string
		err   error
		done  int
		start bool
	}{
		{"no error", nil, 0, false},
		{"start error, nothing done", &pool.AbortError{Reason: se}, 0, true},
		{"start error, tasks done", &pool.AbortError{Reason: se}, 2, false},
		{"other abort, nothing done", &pool.AbortError{Reason: errors.New("stop")}, 0, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := cannotStart(tt.err, pool.Stats{Done: tt.done, Attempts: 1})
			if (got != nil) != tt.start {
				t.Errorf("cannotStart(%v, Done %d) = %v, want a *StartError: %v", tt.err, tt.done, got, tt.start)
			}
		})
	}
}
