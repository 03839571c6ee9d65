package cli

import (
	"bytes"
	"context"
	"database/sql"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
	_ "modernc.org/sqlite"

	"github.com/safepool/safepool/internal/testenv"
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
	link := filepath.Join(dir, "link.html")
	if err := os.Symlink(journal, link); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name   string
		args   []string
		code   int
		page   string // the page's path, when one is written
		has    string // what the page or stdout holds
		stderr string // what stderr holds
	}{
		{"default output", []string{journal}, exitOK, filepath.Join(dir, "jobs.html"), "run2-b", "safepool: wrote " + filepath.Join(dir, "jobs.html") + ": run 2 of 2, 2 tasks: 1 done, 1 failed\n"},
		{"flags after FILE", []string{journal, "-o", filepath.Join(dir, "one.html"), "--run", "1"}, exitOK, filepath.Join(dir, "one.html"), "run1-b", "run 1 of 2"},
		{"stdout", []string{"-o", "-", journal}, exitOK, "", "<!DOCTYPE html>", "safepool: wrote the page on stdout: run 2 of 2, 2 tasks: 1 done, 1 failed\n"},
		{"run 0", []string{"--run", "0", journal}, exitUsage, "", "", "--run must be a run's number, at least 1"},
		{"no such run", []string{"--run", "9", journal}, exitUsage, "", "", "no such run in the journal: run 9 (the journal has 2)"},
		{"missing journal", []string{filepath.Join(dir, "none.db")}, exitUsage, "", "", "no such file or directory"},
		{"not a journal", []string{"-o", filepath.Join(dir, "x.html"), notJournal}, exitUsage, "", "", "not a safepool journal"},
		{"no FILE", nil, exitUsage, "", "", "missing journal FILE"},
		{"two FILEs", []string{journal, journal}, exitUsage, "", "", "give one journal FILE, not 2"},
		{"page over journal", []string{"-o", journal, journal}, exitUsage, "", "", "would overwrite the journal"},
		// The page used to replace the journal when its name was spelt
		// otherwise.
		{"page over journal spelt otherwise", []string{"-o", dir + "/./jobs.db", journal}, exitUsage, "", "", "would overwrite the journal"},
		{"page over journal through a link", []string{"-o", link, journal}, exitUsage, "", "", "would overwrite the journal"},
		{"page over span file", []string{"-o", journal + "-spans", journal}, exitUsage, "", "", "would overwrite the journal's span file"},
		{"page over WAL", []string{"-o", journal + "-wal", journal}, exitUsage, "", "", "would overwrite the journal's WAL"},
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

// TestReportOutputNotRegular: -o naming something other than a regular
// file writes the page into it, as any program writing a file does, and
// leaves it what it was. The page went to a temporary file renamed over
// OUT: `safepool report -o /dev/null jobs.db`, run as root, replaced the
// system's /dev/null with a regular file; a FIFO was replaced the same
// way, and a symbolic link by the page instead of its target.
func TestReportOutputNotRegular(t *testing.T) {
	journal := newJournal(t)
	dir := t.TempDir()
	report := func(t *testing.T, out string) {
		t.Helper()
		var stderr bytes.Buffer
		if code := Run(context.Background(), []string{"report", "-o", out, journal}, nil, io.Discard, &stderr); code != exitOK {
			t.Fatalf("report -o %s = %d: %s", out, code, stderr.String())
		}
	}
	mode := func(t *testing.T, path string) os.FileMode {
		t.Helper()
		fi, err := os.Lstat(path)
		if err != nil {
			t.Fatal(err)
		}
		return fi.Mode()
	}

	t.Run("device", func(t *testing.T) {
		null := filepath.Join(dir, "null")
		// A null device of its own, as /dev/null is: major 1, minor 3.
		if err := unix.Mknod(null, unix.S_IFCHR|0o666, int(unix.Mkdev(1, 3))); err != nil {
			testenv.SkipOrFail(t, "mknod (needs root): "+err.Error())
			return
		}
		report(t, null)
		if m := mode(t, null); m&os.ModeCharDevice == 0 {
			t.Errorf("%s is now %v, want the character device it was", null, m)
		}
	})

	t.Run("fifo", func(t *testing.T) {
		fifo := filepath.Join(dir, "fifo")
		if err := unix.Mkfifo(fifo, 0o644); err != nil {
			t.Fatal(err)
		}
		// Read and write ends at once: opening it never blocks, and the
		// page's writer finds a reader.
		f, err := os.OpenFile(fifo, os.O_RDWR, 0)
		if err != nil {
			t.Fatal(err)
		}
		var got bytes.Buffer
		read := make(chan struct{})
		go func() {
			defer close(read)
			buf := make([]byte, 64<<10)
			for {
				n, err := f.Read(buf)
				got.Write(buf[:n])
				if err != nil {
					return
				}
			}
		}()
		report(t, fifo)
		// The page may still wait in the FIFO: let the reader take it all
		// before the close ends its Read.
		// (Through SyscallConn: Fd would make the file blocking, and the
		// close would then no longer end the Read.)
		rc, err := f.SyscallConn()
		if err != nil {
			t.Fatal(err)
		}
		for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(5 * time.Millisecond) {
			n, ierr := 0, error(nil)
			rc.Control(func(fd uintptr) { n, ierr = unix.IoctlGetInt(int(fd), unix.TIOCINQ) })
			if ierr != nil || n == 0 {
				break
			}
		}
		f.Close() // ends the reader's Read
		<-read
		if m := mode(t, fifo); m&os.ModeNamedPipe == 0 {
			t.Errorf("%s is now %v, want the FIFO it was", fifo, m)
		}
		if !strings.Contains(got.String(), "</html>") {
			t.Errorf("read %d bytes from the FIFO, not the page", got.Len())
		}
	})

	t.Run("pipe by a link", func(t *testing.T) {
		// /dev/stdout when stdout is a pipe: a link of /proc to a pipe,
		// which has no path of its own to write beside.
		r, w, err := os.Pipe()
		if err != nil {
			t.Fatal(err)
		}
		defer r.Close()
		read := make(chan []byte)
		go func() {
			b, _ := io.ReadAll(r)
			read <- b
		}()
		report(t, fmt.Sprintf("/proc/self/fd/%d", w.Fd()))
		w.Close()
		if b := <-read; !strings.Contains(string(b), "</html>") {
			t.Errorf("read %d bytes from the pipe, not the page", len(b))
		}
	})

	t.Run("symlink", func(t *testing.T) {
		pages := filepath.Join(dir, "pages")
		os.Mkdir(pages, 0o755)
		target := filepath.Join(pages, "page.html")
		link := filepath.Join(dir, "latest.html")
		if err := os.Symlink(target, link); err != nil {
			t.Fatal(err)
		}
		report(t, link)
		if m := mode(t, link); m&os.ModeSymlink == 0 {
			t.Errorf("%s is now %v, want the link it was", link, m)
		}
		if b, err := os.ReadFile(target); err != nil || !strings.Contains(string(b), "</html>") {
			t.Errorf("the link's target holds %d bytes (%v), not the page", len(b), err)
		}
		entries, _ := os.ReadDir(pages)
		for _, e := range entries {
			if e.Name() != "page.html" {
				t.Errorf("left behind %s", e.Name())
			}
		}
	})
}

// TestReportReaderGone checks that a page written to a pipe whose reader
// has gone (| head) stops quietly with status 3, as run and map do, rather
// than failing with a broken-pipe error.
func TestReportReaderGone(t *testing.T) {
	journal := newJournal(t)
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	r.Close()
	defer w.Close()
	var stderr bytes.Buffer
	if code := Run(context.Background(), []string{"report", "-o", "-", journal}, nil, w, &stderr); code != exitAborted || stderr.Len() != 0 {
		t.Fatalf("report -o - into a pipe without a reader = %d, stderr %q; want %d and nothing", code, stderr.String(), exitAborted)
	}
}
