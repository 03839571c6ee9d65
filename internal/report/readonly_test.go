package report_test

import (
	"bufio"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"golang.org/x/sys/unix"

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
