package report_test

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/safepool/safepool/internal/journal"
	"github.com/safepool/safepool/internal/report"
	"github.com/safepool/safepool/internal/testenv"
)

// readOnlyDir makes dir read-only for this process: a read-only bind
// mount of it over itself as root (whom permissions do not stop), else
// its mode. What is undone at the end of the test.
func readOnlyDir(t *testing.T, dir string) {
	t.Helper()
	if os.Geteuid() != 0 {
		if err := os.Chmod(dir, 0o555); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { os.Chmod(dir, 0o755) })
		return
	}
	if err := unix.Mount(dir, dir, "", unix.MS_BIND, ""); err != nil {
		testenv.SkipOrFail(t, "bind mount: "+err.Error())
		return
	}
	t.Cleanup(func() {
		if err := unix.Unmount(dir, 0); err != nil {
			t.Errorf("unmounting %s: %v", dir, err)
		}
	})
	if err := unix.Mount("", dir, "", unix.MS_REMOUNT|unix.MS_BIND|unix.MS_RDONLY, ""); err != nil {
		testenv.SkipOrFail(t, "read-only remount: "+err.Error())
	}
}

// TestReadOnlyJournal: a journal in a directory safepool cannot write (a
// read-only file system, an archive, another user's directory) is read
// all the same, whether its run ended (no WAL beside it: SQLite cannot
// make the shared-memory file it wants) or its supervisor was killed
// (WAL and shared memory left beside it). The first used to be refused
// as "not a safepool journal".
func TestReadOnlyJournal(t *testing.T) {
	t.Run("closed", func(t *testing.T) {
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
		if _, err := os.Stat(j.path + "-wal"); !os.IsNotExist(err) {
			t.Fatalf("a WAL is left beside the closed journal: %v", err)
		}
		readOnlyDir(t, filepath.Dir(j.path))
		r, err := report.Load(context.Background(), j.path, report.Options{})
		if err != nil {
			t.Fatal(err)
		}
		if r.Tasks != 5 || !r.EndKnown() {
			t.Errorf("%d tasks, end known %v; want 5 and true", r.Tasks, r.EndKnown())
		}
		if _, err := os.Stat(j.path + "-shm"); !os.IsNotExist(err) {
			t.Errorf("reading made %s-shm: %v", j.path, err)
		}
	})
	// Permissions, not a read-only file system, keep the reader from
	// writing beside the journal: SQLite says SQLITE_READONLY_DIRECTORY,
	// not SQLITE_CANTOPEN, and the page was refused ("attempt to write a
	// readonly database"). Root is stopped by no permission: the reader
	// is then this test binary run as nobody.
	t.Run("another user's directory", func(t *testing.T) {
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
		if os.Geteuid() != 0 {
			if err := os.Chmod(filepath.Dir(j.path), 0o555); err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { os.Chmod(filepath.Dir(j.path), 0o755) })
			if got := loadSummary(j.path); got != "5 tasks, end known true" {
				t.Errorf("Load = %q, want 5 tasks, end known true", got)
			}
			return
		}
		// The journal, root's, in a directory of root's that others can
		// read and enter; the test binary where nobody can run it.
		dir := worldReadableDir(t)
		path := filepath.Join(dir, "journal.db")
		copyFile(t, j.path, path, 0o644)
		bin := filepath.Join(worldReadableDir(t), "report.test")
		copyFile(t, os.Args[0], bin, 0o755)
		cmd := exec.Command(bin, "-test.run=^$")
		cmd.Env = append(os.Environ(), loaderEnv+"="+path)
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("the reader as nobody: %v: %s", err, out)
		}
		if got := strings.TrimSpace(string(out)); got != "5 tasks, end known true" {
			t.Errorf("Load as nobody = %q, want 5 tasks, end known true", got)
		}
		if _, err := os.Stat(path + "-shm"); !os.IsNotExist(err) {
			t.Errorf("reading made %s-shm: %v", path, err)
		}
	})
	t.Run("writer killed", func(t *testing.T) {
		j := newTestJournal(t)
		j.db.Close()
		cmd := exec.Command(os.Args[0], "-test.run=^$")
		cmd.Env = append(os.Environ(), writerEnv+"="+j.path)
		out, err := cmd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		line, _ := bufio.NewReader(out).ReadString('\n')
		cmd.Process.Kill()
		cmd.Wait()
		if line != "ready\n" {
			t.Fatalf("writer said %q", line)
		}
		readOnlyDir(t, filepath.Dir(j.path))
		r, err := report.Load(context.Background(), j.path, report.Options{})
		if err != nil {
			t.Fatal(err)
		}
		if r.Tasks != 100 || r.EndKnown() {
			t.Errorf("%d tasks, end known %v; want 100 (those in the WAL) and false", r.Tasks, r.EndKnown())
		}
	})
}

// loaderEnv makes the test binary a reader of the journal it names: it
// prints what loadSummary returns.
const loaderEnv = "SAFEPOOL_REPORT_TEST_LOADER"

// loadSummary loads the last run of the journal at path and says how many
// tasks it has and whether its end is known, or why it could not.
func loadSummary(path string) string {
	r, err := report.Load(context.Background(), path, report.Options{})
	if err != nil {
		return err.Error()
	}
	return fmt.Sprintf("%d tasks, end known %v", r.Tasks, r.EndKnown())
}

// worldReadableDir makes a directory that every user may read and enter
// but only its owner write (t.TempDir's only its owner may enter),
// removed when the test ends.
func worldReadableDir(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "safepool-report-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	return dir
}

// copyFile copies src to a new file dst of mode perm.
func copyFile(t *testing.T, src, dst string, perm os.FileMode) {
	t.Helper()
	in, err := os.Open(src)
	if err != nil {
		t.Fatal(err)
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_EXCL, perm)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		t.Fatal(err)
	}
	if err := out.Close(); err != nil {
		t.Fatal(err)
	}
}

// TestIncompleteJournal reads a run whose journal could not be written to
// its end (journal.IncompleteEvent): it ended, but its note says that the
// journal is incomplete, for the page and the line on stderr, rather than
// nothing, as for a run whose journal holds all it did.
func TestIncompleteJournal(t *testing.T) {
	j := newTestJournal(t)
	j.addRun(t, runRow{started: time.Unix(1, 0), ended: time.Unix(9, 0), kind: "map", command: "work",
		workers: 2, memoryMode: "cgroup-v2", exitStatus: 1})
	mustExec(t, j, `INSERT INTO task (run_id, id, key, input, state, ended) VALUES (1, 1, ?, 'x', 'done', ?)`,
		taskKey("work", []byte{1}), int64(2e9))
	mustExec(t, j, `INSERT INTO event (run_id, at, kind, detail) VALUES (1, ?, ?, 'database or disk is full (13)')`,
		int64(3e9), journal.IncompleteEvent)
	r, err := report.Load(context.Background(), j.path, report.Options{})
	if err != nil {
		t.Fatal(err)
	}
	want := "the journal is incomplete: writing it failed 2s after the start (database or disk is full (13))"
	if !r.EndKnown() || !strings.HasPrefix(r.EndNote(), want) {
		t.Errorf("end known %v, EndNote() = %q; want true and %q...", r.EndKnown(), r.EndNote(), want)
	}
	var page strings.Builder
	if err := report.Write(&page, r, report.Options{}); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(page.String(), want) {
		t.Errorf("the page does not say %q", want)
	}
}
