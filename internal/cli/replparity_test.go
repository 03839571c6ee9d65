package cli

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
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

// TestReplParityValueInComment: a replacement string in a comment of a
// shell command line stays in the comment, whatever newlines its input
// holds. A newline ended the comment, and the rest of the input ran as a
// command.
func TestReplParityValueInComment(t *testing.T) {
	dir := t.TempDir()
	ran := filepath.Join(dir, "ran")
	input := "x\ntouch " + ran + " #"
	for _, line := range []string{
		`printf '[%s]\n' {} # {}`, // run with exec: the shell is gone by then
		`printf '[%s]\n' {} | cat # {}`,
		`printf '[%s]\n' {} | cat # '{}' "{}"`,
		`printf '[%s]\n' "$(printf %s {} # {}` + "\n" + `)"`,
	} {
		code, stdout, stderr := runCLI(t, input+"\x00", "run", "-q", "-0", line)
		if _, err := os.Stat(ran); err == nil {
			t.Errorf("run -0 %q ran a command from its input in a comment", line)
			os.Remove(ran)
		}
		if want := "[" + input + "]\n"; code != exitOK || stdout != want {
			t.Errorf("run -0 %q = %d, stdout %q, stderr %q; want %d and %q", line, code, stdout, stderr, exitOK, want)
		}
	}
}
