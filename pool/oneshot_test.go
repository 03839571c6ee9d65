package pool_test

import (
	"strings"
	"testing"

	"github.com/safepool/safepool/pool"
)

// TestArgumentTooLong: a one-shot task whose argument is longer than Linux
// allows fails with a message that names the user's command and says
// "argument list too long", not the shell of the cgroup v1 shim or the
// program's path.
func TestArgumentTooLong(t *testing.T) {
	cfg := pool.Config{Command: []string{"echo", "{}"}, Workers: 1}
	got, _ := run(t, cfg, "ok", strings.Repeat("a", 300<<10))
	if r := got[1]; r.State != pool.Done {
		t.Fatalf("task 1 = %s %s, want done", r.State, r.Cause())
	}
	r := got[2]
	if r.State != pool.Failed || len(r.Attempts) != 1 {
		t.Fatalf("task 2 = %s after %d attempts, want failed after 1", r.State, len(r.Attempts))
	}
	msg := r.Attempts[0].Message
	if !strings.Contains(msg, "echo: argument list too long") || strings.Contains(msg, "/bin/") {
		t.Errorf("message = %q, want it to name echo and say \"argument list too long\", without a path", msg)
	}
	if !strings.Contains(msg, "307200 bytes") {
		t.Errorf("message = %q, want it to give the size of the long argument", msg)
	}
	t.Logf("message: %s", msg)
}
