package cli

import (
	"bytes"
	"context"
	"database/sql"
	"os"
	"path/filepath"
	"strings"
	"testing"

	_ "modernc.org/sqlite"
)

// newJournal makes a journal with the journal's schema and two runs of two
// tasks each, and returns its path.
func newJournal(t *testing.T) string {
	t.Helper()
	schema, err := os.ReadFile(filepath.Join("..", "journal", "schema.sql"))
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "jobs.db")
	db, err := sql.Open("sqlite", path)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	stmts := []string{string(schema)}
	for run := 1; run <= 2; run++ {
		stmts = append(stmts,
			`INSERT INTO run (id, started, ended, kind, command, argv, workers, memory_mode, exit_status)
				VALUES (`+itoa(run)+`, 1000000000, 3000000000, 'run', 'echo {}', '["safepool","run","echo","{}"]', 2, 'cgroup-v2', 0)`,
			`INSERT INTO task (run_id, id, key, input, state, attempts, peak, ended)
				VALUES (`+itoa(run)+`, 1, 'k1', 'run`+itoa(run)+`-a', 'done', 1, 1048576, 2000000000)`,
			`INSERT INTO task (run_id, id, key, input, state, attempts, cause, ended)
				VALUES (`+itoa(run)+`, 2, 'k2', 'run`+itoa(run)+`-b', 'failed', 1, 'exit:1', 2500000000)`,
			`INSERT INTO attempt (run_id, task_id, number, worker_pid, started, ended, cause)
				VALUES (`+itoa(run)+`, 2, 1, 77, 1500000000, 2500000000, 'exit:1')`,
		)
	}
	for _, s := range stmts {
		if _, err := db.Exec(s); err != nil {
			t.Fatalf("%s: %v", s, err)
		}
	}
	return path
}

func itoa(n int) string { return string(rune('0' + n)) }

// TestReport runs safepool report on a journal: the page is written where
// asked, of the run asked for, and the mistakes are usage errors.
func TestReport(t *testing.T) {
	journal := newJournal(t)
	dir := filepath.Dir(journal)
	notJournal := filepath.Join(dir, "notes.txt")
	os.WriteFile(notJournal, []byte(strings.Repeat("not a database\n", 20)), 0o644)
	tests := []struct {
		name   string
		args   []string
		code   int
		page   string // the page's path, when one is written
		has    string // what the page or stdout holds
		stderr string // what stderr holds
	}{
		{"default output", []string{journal}, exitOK, filepath.Join(dir, "jobs.html"), "run2-b", "safepool: wrote " + filepath.Join(dir, "jobs.html") + ": run 2 of 2, 2 tasks\n"},
		{"flags after FILE", []string{journal, "-o", filepath.Join(dir, "one.html"), "--run", "1"}, exitOK, filepath.Join(dir, "one.html"), "run1-b", "run 1 of 2"},
		{"stdout", []string{"-o", "-", journal}, exitOK, "", "<!DOCTYPE html>", ""},
		{"no such run", []string{"--run", "9", journal}, exitUsage, "", "", "no such run in the journal: run 9 (the journal has 2)"},
		{"missing journal", []string{filepath.Join(dir, "none.db")}, exitUsage, "", "", "no such file or directory"},
		{"not a journal", []string{"-o", filepath.Join(dir, "x.html"), notJournal}, exitUsage, "", "", "not a safepool journal"},
		{"no FILE", nil, exitUsage, "", "", "missing journal FILE"},
		{"two FILEs", []string{journal, journal}, exitUsage, "", "", "give one journal FILE, not 2"},
		{"page over journal", []string{"-o", journal, journal}, exitUsage, "", "", "would overwrite the journal"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var stdout, stderr bytes.Buffer
			code := Run(context.Background(), append([]string{"report"}, tt.args...), nil, &stdout, &stderr)
			if code != tt.code || !strings.Contains(stderr.String(), tt.stderr) {
				t.Fatalf("report %q = %d, stderr %q; want %d and %q", tt.args, code, stderr.String(), tt.code, tt.stderr)
			}
			got := stdout.String()
			if tt.page != "" {
				b, err := os.ReadFile(tt.page)
				if err != nil {
					t.Fatal(err)
				}
				got = string(b)
			}
			if !strings.Contains(got, tt.has) {
				t.Errorf("report %q wrote no %q", tt.args, tt.has)
			}
		})
	}
	// No temporary file is left beside the pages.
	entries, _ := os.ReadDir(dir)
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), ".") {
			t.Errorf("left behind %s", e.Name())
		}
	}
}
