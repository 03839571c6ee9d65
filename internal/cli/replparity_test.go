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

// TestReplParityAppendedInput: a shell command line with no replacement
// string gets the input added at its end, as GNU parallel adds it. Where
// that would not make the input an argument of its own, the line is
// refused before anything runs: in a comment the input was lost (the job
// ran without it, exit 0), and after a trailing backslash it was joined to
// the last word with a space before it.
func TestReplParityAppendedInput(t *testing.T) {
	for _, tc := range []struct {
		line   string
		code   int
		stdout string // with the input "a b"
		stderr string // what the usage error says
	}{
		{`printf '[%s]\n' -x # the input`, exitUsage, "", "ends in a comment"},
		{"printf '[%s]\\n' -x\t#", exitUsage, "", "ends in a comment"},
		{`printf '[%s]\n' -x \`, exitUsage, "", "ends with a backslash"},
		{`printf '[%s]\n' -x \\\`, exitUsage, "", "ends with a backslash"},
		{`printf '[%s]\n' -x # note` + "\n" + `printf '[%s]\n'`, exitOK, "[-x]\n[a b]\n", ""},
		{`printf '[%s]\n' x#y`, exitOK, "[x#y]\n[a b]\n", ""},
		{`printf '[%s]\n' '#' "#"`, exitOK, "[#]\n[#]\n[a b]\n", ""},
		{`printf '[%s]\n' \#`, exitOK, "[#]\n[a b]\n", ""},
		{`printf '[%s]\n' -x \\`, exitOK, "[-x]\n[\\]\n[a b]\n", ""},
		{`printf '[%s]\n' {} # {}`, exitOK, "[a b]\n", ""},
	} {
		code, stdout, stderr := runCLI(t, "", "run", "-q", tc.line, ":::", "a b")
		if code != tc.code || stdout != tc.stdout || !strings.Contains(stderr, tc.stderr) {
			t.Errorf("run %q ::: 'a b' = %d, stdout %q, stderr %q; want %d, %q and %q", tc.line, code, stdout, stderr, tc.code, tc.stdout, tc.stderr)
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

// TestReplParityEscapedValue: a backslash right before a replacement
// string of a shell command line, outside '...', escapes the first
// character of its value, whatever quotes the value is in: "\{}" ran a
// $(...) of an input as a command, and \{} split an input with a space in
// two, each with exit 0. Such a line is refused before anything runs; a
// backslash in '...' or in a comment, or an escaped one, is kept.
func TestReplParityEscapedValue(t *testing.T) {
	dir := t.TempDir()
	ran := filepath.Join(dir, "ran")
	input := "$(touch " + ran + ")'$(touch " + ran + ")' a"
	for _, tc := range []struct {
		line   string
		code   int
		stdout string // V stands for the input
	}{
		{`printf '[%s]\n' "\{}"`, exitUsage, ""},
		{`printf '[%s]\n' \{}`, exitUsage, ""},
		{`printf '[%s]\n' x\{.}`, exitUsage, ""},
		{`printf '[%s]\n' "$(printf %s "\{}")"`, exitUsage, ""},
		{"printf '[%s]\\n' `echo x` \\{}", exitUsage, ""},
		{`printf '[%s]\n' '\{}' \{}`, exitUsage, ""},
		{`printf '[%s]\n' '\{}'`, exitOK, `[\V]` + "\n"},
		{`printf '[%s]\n' \\{} "\\{}"`, exitOK, `[\V]` + "\n" + `[\V]` + "\n"},
		{`printf '[%s]\n' {} # \{}`, exitOK, "[V]\n"},
	} {
		code, stdout, stderr := runCLI(t, "", "run", "-q", tc.line, ":::", input)
		if _, err := os.Stat(ran); err == nil {
			t.Errorf("run %q ran a command from its input", tc.line)
			os.Remove(ran)
		}
		want := strings.ReplaceAll(tc.stdout, "V", input)
		if code != tc.code || stdout != want || tc.code == exitUsage && !strings.Contains(stderr, "backslash right before") {
			t.Errorf("run %q ::: %q = %d, stdout %q, stderr %q; want %d and %q", tc.line, input, code, stdout, stderr, tc.code, want)
		}
	}
	// The lines refused are those quoteContexts gave up on.
	if ctxs, ok := quoteContexts([]part{{lit: `echo \`}, {kind: replInput}}); ok {
		t.Errorf(`quoteContexts(echo \{}) = %v, true; want false`, ctxs)
	}
}

// TestReplParityPaddedNumber: GNU parallel's {0#} and {0%}, the job number
// and slot padded with zeros, are refused rather than passed on as text:
// the job ran with "{0#}" and its input added after it, exit 0.
func TestReplParityPaddedNumber(t *testing.T) {
	for _, args := range [][]string{
		{"echo", "part{0#}"},
		{"echo", "{0%}"},
		{"echo {0#} {}"},
	} {
		argv := append(append([]string{"run", "-q"}, args...), ":::", "a")
		code, stdout, stderr := runCLI(t, "", argv...)
		if code != exitUsage || stdout != "" || !strings.Contains(stderr, "padded with zeros") {
			t.Errorf("run %q ::: a = %d, stdout %q, stderr %q; want %d and padded with zeros", args, code, stdout, stderr, exitUsage)
		}
	}
}
