package cli

import (
	"bytes"
	"context"
	"strings"
	"testing"
)

// runCLI runs safepool with args in-process, with stdin, and returns its
// exit status, stdout and stderr.
func runCLI(t *testing.T, stdin string, args ...string) (int, string, string) {
	t.Helper()
	var stdout, stderr bytes.Buffer
	code := Run(context.Background(), args, strings.NewReader(stdin), &stdout, &stderr)
	return code, stdout.String(), stderr.String()
}

// TestReplParityLinkedFileAfterList: GNU parallel's ::::+ after a ::: list
// is refused, as ::: ::: and ::: :::: are. It was taken for two more inputs,
// "::::+" and the file's name, and each ran with exit 0.
func TestReplParityLinkedFileAfterList(t *testing.T) {
	for _, marker := range []string{":::", "::::", ":::+", "::::+"} {
		code, stdout, stderr := runCLI(t, "", "run", "-q", "-k", "echo", ":::", "a", marker, "f")
		if code != exitUsage || stdout != "" || !strings.Contains(stderr, "only one ::: list") {
			t.Errorf("run echo ::: a %s f = %d, stdout %q, stderr %q; want %d, nothing run, and only one ::: list", marker, code, stdout, stderr, exitUsage)
		}
	}
}
