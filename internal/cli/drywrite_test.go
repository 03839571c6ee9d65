package cli

import (
	"context"
	"strings"
	"syscall"
	"testing"
)

// fullWriter fails every write as a full disk does.
type fullWriter struct{}

func (fullWriter) Write([]byte) (int, error) { return 0, syscall.ENOSPC }

// TestDryRunFullStdout: --dry-run whose stdout cannot be written (a full
// disk) stops with exit 3 and the error, as a run does; it used to exit 1,
// the status of a run whose tasks failed.
func TestDryRunFullStdout(t *testing.T) {
	var stderr syncBuffer
	code := Run(context.Background(), []string{"run", "--dry-run", "echo", ":::", "a", "b"}, strings.NewReader(""), fullWriter{}, &stderr)
	if code != exitAborted || !strings.Contains(stderr.String(), "writing output: no space left on device") {
		t.Errorf("run --dry-run to a full stdout = %d, stderr %q; want %d and the error", code, stderr.String(), exitAborted)
	}
}
