package cli

import (
	"bytes"
	"context"
	"strings"
	"testing"
)

// TestInputsTooLongDoNotAbort: inputs that no program can be given (longer
// than Linux's 128 KiB per argument, or holding a NUL byte) fail their own
// jobs, exit:127, as docs/cli.md says, and the run goes on with the inputs
// after them. The first three such inputs of a run were taken for a
// command that cannot start at all: the run was aborted with exit 2, and
// the inputs after them never ran.
func TestInputsTooLongDoNotAbort(t *testing.T) {
	long := strings.Repeat("w", 200<<10)
	for _, tc := range []struct {
		name  string
		args  []string
		input string
	}{
		{"too long", []string{"run", "-k", "-j", "1", "echo"}, strings.Repeat(long+"\n", 4) + "short\n"},
		{"too long, shell line", []string{"run", "-k", "-j", "1", "echo {} | wc -c"}, strings.Repeat(long+"\n", 4) + "short\n"},
		{"NUL byte", []string{"run", "-k", "-j", "1", "echo"}, strings.Repeat("a\x00b\n", 4) + "short\n"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var stdout, stderr bytes.Buffer
			code := Run(context.Background(), tc.args, strings.NewReader(tc.input), &stdout, &stderr)
			msg := stderr.String()
			if len(msg) > 2000 {
				msg = msg[:2000]
			}
			if code != exitFailed {
				t.Fatalf("Run(%q) = %d, want %d (some tasks failed); stderr:\n%s", tc.args, code, exitFailed, msg)
			}
			if want := "1 done, 4 failed of 5 tasks"; !strings.Contains(stderr.String(), want) {
				t.Errorf("stderr does not say %q:\n%s", want, msg)
			}
			if !strings.HasSuffix(stdout.String(), "\n") || strings.Contains(stderr.String(), "aborted") {
				t.Errorf("stdout %q, stderr:\n%s\nwant the short input's job run and no abort", stdout.String(), msg)
			}
		})
	}
}
