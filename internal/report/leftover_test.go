package report_test

import (
	"bufio"
	"context"
	"database/sql"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/safepool/safepool/internal/report"
)

// closedJournal makes a journal of one finished run of 5 tasks, closed as
// its writer closes it: no WAL, no shared memory beside it.
func closedJournal(t *testing.T) string {
	t.Helper()
	j := newTestJournal(t)
	j.addRun(t, runRow{started: time.Unix(1, 0), ended: time.Unix(3, 0), kind: "run", command: "work",
		workers: 2, memoryMode: "cgroup-v2", exitStatus: 0})
	for i := 1; i <= 5; i++ {
		mustExec(t, j, `INSERT INTO task (run_id, id, key, input, state, ended) VALUES (1, ?, ?, 'x', 'done', ?)`,
			i, taskKey("work", []byte{byte(i)}), int64(i)*1e9)
	}
	if err := j.db.Close(); err != nil {
		t.Fatal(err)
	}
	noneBeside(t, j.path, "the closed journal")
	return j.path
}

// noneBeside fails t when a WAL or a shared-memory file is beside the
// journal at path.
func noneBeside(t *testing.T, path, what string) {
	t.Helper()
	for _, suffix := range []string{"-wal", "-shm"} {
		if fi, err := os.Lstat(path + suffix); err == nil {
			t.Errorf("%s has %s beside it (%d bytes, uid %d)", what, filepath.Base(path+suffix), fi.Size(), fi.Sys().(*syscall.Stat_t).Uid)
		}
	}
}

// TestReadingLeavesNoFiles: reading a finished journal leaves nothing
// beside it. A read-only SQLite connection makes a WAL and a shared-memory
// file to read a database in WAL mode, and never removes them: beside a
// journal in a directory others write too (/tmp), another user's report
// left files that the journal's owner could neither write nor remove,
// and its next --resume failed ("attempt to write a readonly database").
func TestReadingLeavesNoFiles(t *testing.T) {
	t.Run("own journal", func(t *testing.T) {
		path := closedJournal(t)
		if got := loadSummary(path); got != "5 tasks, end known true" {
			t.Fatalf("Load = %q", got)
		}
		noneBeside(t, path, "the journal read")
	})
	// An empty WAL and its shared memory, as a reader of an earlier
	// safepool left them, are removed by the next reader.
	t.Run("left by an earlier reader", func(t *testing.T) {
		path := closedJournal(t)
		db, err := sql.Open("sqlite", "file:"+path+"?mode=ro")
		if err != nil {
			t.Fatal(err)
		}
		if _, err := db.Exec("SELECT COUNT(*) FROM task"); err != nil {
			t.Fatal(err)
		}
		db.Close()
		if _, err := os.Stat(path + "-shm"); err != nil {
			t.Fatalf("no shared memory left by a read-only reader to test with: %v", err)
		}
		if got := loadSummary(path); got != "5 tasks, end known true" {
			t.Fatalf("Load = %q", got)
		}
		noneBeside(t, path, "the journal read")
	})
	t.Run("another user's journal in a shared directory", func(t *testing.T) {
		if os.Geteuid() != 0 {
			t.Skip("needs root, to be two users")
		}
		path := closedJournal(t)
		dir := worldReadableDir(t)
		if err := os.Chmod(dir, 0o777|os.ModeSticky); err != nil {
			t.Fatal(err)
		}
		shared := filepath.Join(dir, "journal.db")
		copyFile(t, path, shared, 0o644)
		if err := os.Chown(shared, 65534, 65534); err != nil {
			t.Fatal(err)
		}
		bin := filepath.Join(worldReadableDir(t), "report.test")
		copyFile(t, os.Args[0], bin, 0o755)
		cmd := exec.Command(bin, "-test.run=^$")
		cmd.Env = append(os.Environ(), loaderEnv+"="+shared)
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65533, Gid: 65533}}
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("the reader as uid 65533: %v: %s", err, out)
		}
		if got := strings.TrimSpace(string(out)); got != "5 tasks, end known true" {
			t.Errorf("Load as uid 65533 = %q", got)
		}
		noneBeside(t, shared, "the journal of uid 65534 read by uid 65533")
	})
	// A writer that has the journal open, and has not written yet (its
	// WAL is empty), keeps its WAL and shared memory, and writes on after
	// a read.
	t.Run("writer connected", func(t *testing.T) {
		path := closedJournal(t)
		cmd := exec.Command(os.Args[0], "-test.run=^$")
		cmd.Env = append(os.Environ(), idleWriterEnv+"="+path)
		stdin, err := cmd.StdinPipe()
		if err != nil {
			t.Fatal(err)
		}
		stdout, err := cmd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		defer cmd.Process.Kill()
		out := bufio.NewReader(stdout)
		if line, _ := out.ReadString('\n'); line != "ready\n" {
			t.Fatalf("writer said %q", line)
		}
		if fi, err := os.Stat(path + "-wal"); err != nil || fi.Size() != 0 {
			t.Fatalf("want the writer's WAL empty before the read: %v", err)
		}
		if got := loadSummary(path); got != "5 tasks, end known true" {
			t.Fatalf("Load = %q", got)
		}
		for _, suffix := range []string{"-wal", "-shm"} {
			if _, err := os.Stat(path + suffix); err != nil {
				t.Errorf("the connected writer's %s: %v", suffix, err)
			}
		}
		fmt.Fprintln(stdin, "write")
		if line, _ := out.ReadString('\n'); line != "written\n" {
			t.Fatalf("writer said %q", line)
		}
		r, err := report.Load(context.Background(), path, report.Options{})
		if err != nil {
			t.Fatal(err)
		}
		if r.Tasks != 6 {
			t.Errorf("%d tasks after the writer's; want 6", r.Tasks)
		}
		stdin.Close()
		if err := cmd.Wait(); err != nil {
			t.Errorf("writer: %v", err)
		}
		noneBeside(t, path, "the journal closed by its writer")
	})
}

// idleWriterEnv makes the test binary a journal writer that opens the
// journal it names, reads it, says "ready", and writes one task when it
// reads a line, then says "written"; at the end of its input it closes
// the journal.
const idleWriterEnv = "SAFEPOOL_REPORT_TEST_IDLE_WRITER"

func idleWriter(path string) int {
	db, err := sql.Open("sqlite", path+"?_pragma=busy_timeout(10000)")
	if err == nil {
		db.SetMaxOpenConns(1)
		_, err = db.Exec("SELECT COUNT(*) FROM task")
	}
	if err != nil {
		fmt.Println(err)
		return 1
	}
	fmt.Println("ready")
	in := bufio.NewScanner(os.Stdin)
	for in.Scan() {
		if _, err := db.Exec(`INSERT INTO task (run_id, id, key, input, state, ended) VALUES (1, 6, 'k6', 'x', 'done', 6000000000)`); err != nil {
			fmt.Println(err)
			return 1
		}
		fmt.Println("written")
	}
	if err := db.Close(); err != nil {
		fmt.Println(err)
		return 1
	}
	return 0
}

// TestHotRollbackJournalKept: a journal whose writer was killed as it made
// the file (SQLite had not yet turned it to WAL mode) has a rollback
// journal beside it, which a connection that may write rolls back: the
// reader leaves it to the journal's next writer.
func TestHotRollbackJournalKept(t *testing.T) {
	path := filepath.Join(t.TempDir(), "journal.db")
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), rollbackWriterEnv+"="+path)
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	line, _ := bufio.NewReader(stdout).ReadString('\n')
	cmd.Process.Kill()
	cmd.Wait()
	if line != "ready\n" {
		t.Fatalf("writer said %q", line)
	}
	before, err := os.Stat(path + "-journal")
	if err != nil || before.Size() == 0 {
		t.Fatalf("no rollback journal to test with: %v", err)
	}
	_, err = report.Load(context.Background(), path, report.Options{})
	t.Logf("Load: %v", err)
	after, err := os.Stat(path + "-journal")
	if err != nil || after.Size() != before.Size() {
		t.Errorf("the rollback journal, %d bytes before the read, is not kept: %v", before.Size(), err)
	}
}

// rollbackWriterEnv makes the test binary a writer that makes a database
// in rollback mode, writes past its page cache within a transaction (so
// that the rollback journal and the file are written), says "ready" and
// waits to be killed.
const rollbackWriterEnv = "SAFEPOOL_REPORT_TEST_ROLLBACK_WRITER"

func rollbackWriter(path string) int {
	db, err := sql.Open("sqlite", path+"?_pragma=cache_size(2)")
	if err != nil {
		fmt.Println(err)
		return 1
	}
	db.SetMaxOpenConns(1)
	for _, q := range []string{"PRAGMA user_version = 3", "CREATE TABLE t (x BLOB)", "BEGIN",
		"WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i+1 FROM n WHERE i < 200) INSERT INTO t SELECT randomblob(4000) FROM n"} {
		if _, err := db.Exec(q); err != nil {
			fmt.Println(err)
			return 1
		}
	}
	fmt.Println("ready")
	time.Sleep(time.Minute)
	return 0
}

// TestUnreadableJournal: a journal the reader may not read says so,
// rather than SQLite's "unable to open database file".
func TestUnreadableJournal(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root, to be two users")
	}
	path := closedJournal(t)
	private := filepath.Join(worldReadableDir(t), "journal.db")
	copyFile(t, path, private, 0o600)
	bin := filepath.Join(worldReadableDir(t), "report.test")
	copyFile(t, os.Args[0], bin, 0o755)
	cmd := exec.Command(bin, "-test.run=^$")
	cmd.Env = append(os.Environ(), loaderEnv+"="+private)
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("the reader as nobody: %v: %s", err, out)
	}
	if got := strings.TrimSpace(string(out)); !strings.HasSuffix(got, "permission denied") {
		t.Errorf("Load of a journal nobody may not read = %q, want it to say permission denied", got)
	}
}
