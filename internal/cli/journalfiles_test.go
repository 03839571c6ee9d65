package cli

import (
	"bytes"
	"context"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/safepool/safepool/internal/journal"
)

// TestOutputsOverJournal names the journal, or one of its files, as the
// job log or the JSON summary: a usage error, and the journal is left as
// it was. Both files used to be created over it, empty: the journal was
// lost ("database disk image is malformed"), or its span file, whose keys
// --resume needs; a JSON summary written over its WAL at the end made it
// "not a database".
func TestOutputsOverJournal(t *testing.T) {
	dir := t.TempDir()
	db := filepath.Join(dir, "jobs.db")
	run := func(args ...string) (int, string) {
		var stdout, stderr bytes.Buffer
		code := Run(context.Background(), append([]string{"run", "--no-progress", "--journal", db}, append(args, "echo", "{}", ":::", "a", "b")...),
			strings.NewReader(""), &stdout, &stderr)
		return code, stderr.String()
	}
	if code, stderr := run(); code != exitOK {
		t.Fatalf("the first run = %d: %s", code, stderr)
	}
	link := filepath.Join(dir, "summary.json")
	if err := os.Symlink(db, link); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name, flag, path, want string
	}{
		{"job log over the journal", "--joblog", db, "--joblog " + db + " would overwrite the journal"},
		{"JSON over the journal", "--json", dir + "/./jobs.db", "would overwrite the journal"},
		{"JSON through a link to the journal", "--json", link, "would overwrite the journal"},
		{"job log over the span file", "--joblog", journal.SpanFile(db), "would overwrite the journal's span file"},
		{"JSON over the WAL", "--json", db + "-wal", "would overwrite the journal's WAL"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			code, stderr := run("--resume", tt.flag, tt.path)
			if code != exitUsage || !strings.Contains(stderr, tt.want) {
				t.Errorf("run %s %s = %d, %q; want %d and %q", tt.flag, tt.path, code, stderr, exitUsage, tt.want)
			}
			// The journal still skips both inputs.
			code, stderr = run("--resume")
			if code != exitOK || !strings.Contains(stderr, "0 tasks done") || !strings.Contains(stderr, "2 skipped") {
				t.Fatalf("the journal after run %s %s: resumed = %d, %q; want both inputs skipped", tt.flag, tt.path, code, stderr)
			}
		})
	}
}

// TestResumeOtherCommand resumes with a command other than the earlier
// run's: every input runs, as documented, and safepool now says so, and
// which command the journal's last run had; it used to run the whole batch
// again without a word. A first run with --resume, on a journal with no
// run of its kind, says nothing.
func TestResumeOtherCommand(t *testing.T) {
	db := filepath.Join(t.TempDir(), "jobs.db")
	run := func(args ...string) string {
		t.Helper()
		var stderr bytes.Buffer
		code := Run(context.Background(), append([]string{"run", "--no-progress", "--journal", db, "--resume"}, args...),
			strings.NewReader(""), io.Discard, &stderr)
		if code != exitOK {
			t.Fatalf("run %q = %d: %s", args, code, stderr.String())
		}
		return stderr.String()
	}
	const notice = "has no earlier run of this command"
	if got := run("echo", "{}", ":::", "a", "b"); strings.Contains(got, notice) {
		t.Errorf("a first run with --resume says %q", got)
	}
	if got := run("echo", "{}", ":::", "a", "b"); strings.Contains(got, notice) || !strings.Contains(got, "2 skipped") {
		t.Errorf("a resumed run of the same command says %q, want 2 skipped and no notice", got)
	}
	got := run("echo", "x{}", ":::", "a", "b")
	want := "safepool: --resume: the journal " + db + " has no earlier run of this command, so every input runs (its last safepool run ran echo '{}': the command must be the same, word for word)\n"
	if !strings.Contains(got, want) || !strings.Contains(got, "2 tasks done") {
		t.Errorf("a resumed run of another command says %q, want %q and 2 tasks done", got, want)
	}
}

// TestResumeOtherSubcommand resumes run on a journal that holds only map's
// runs: every input runs, and safepool says why, as for another command;
// it said nothing and ran the whole batch again.
func TestResumeOtherSubcommand(t *testing.T) {
	db := filepath.Join(t.TempDir(), "jobs.db")
	var stderr bytes.Buffer
	if code := Run(context.Background(), []string{"map", "--no-progress", "--journal", db, "cat"},
		strings.NewReader("a\nb\n"), io.Discard, &stderr); code != exitOK {
		t.Fatalf("map = %d: %s", code, stderr.String())
	}
	stderr.Reset()
	if code := Run(context.Background(), []string{"run", "--no-progress", "--journal", db, "--resume", "echo", ":::", "a", "b"},
		strings.NewReader(""), io.Discard, &stderr); code != exitOK {
		t.Fatalf("run --resume = %d: %s", code, stderr.String())
	}
	want := "safepool: --resume: the journal " + db + " has no earlier run of safepool run, so every input runs (it holds runs of safepool map, the last of them of cat: --resume skips only what runs of the same subcommand and command did)\n"
	if got := stderr.String(); !strings.Contains(got, want) || !strings.Contains(got, "2 tasks done") {
		t.Errorf("run --resume on map's journal says %q, want %q and 2 tasks done", got, want)
	}
}
