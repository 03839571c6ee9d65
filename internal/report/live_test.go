package report_test

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/safepool/safepool/internal/journal"
	"github.com/safepool/safepool/internal/report"
)

// runnerEnv makes the test binary a safepool whose run goes on: it starts
// a run in the journal at its value, as run does, says "ready" and waits
// to be killed.
const runnerEnv = "SAFEPOOL_REPORT_TEST_RUNNER"

// runningJournal is the process that runnerEnv asks for.
func runningJournal(path string) int {
	j, err := journal.Open(path)
	if err != nil {
		fmt.Println(err)
		return 1
	}
	if _, err := j.Start(journal.Run{Kind: "run", Command: `["work","{}"]`, Workers: 2, MemoryMode: "cgroup-v2"}); err != nil {
		fmt.Println(err)
		return 1
	}
	fmt.Println("ready")
	time.Sleep(time.Minute)
	return 1
}

// startRunner starts a runningJournal on path and waits for it to be
// ready; it is killed at the end of the test at the latest.
func startRunner(t *testing.T, path string) *exec.Cmd {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), runnerEnv+"="+path)
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
	})
	if line, _ := bufio.NewReader(out).ReadString('\n'); line != "ready\n" {
		t.Fatalf("runner said %q", line)
	}
	return cmd
}

// TestRunGoesOn: a run that has no end in the journal is said to go on
// while a safepool runs it, and to have stopped once none does (killed)
// or once a later run of its command has begun. The page said "the
// supervisor died or still runs" of both: a reader could not tell an
// overnight run that died from one that goes on.
func TestRunGoesOn(t *testing.T) {
	path := newTestJournal(t).path
	state := func(run int64) report.RunState {
		t.Helper()
		r, err := report.Load(context.Background(), path, report.Options{RunID: run})
		if err != nil {
			t.Fatal(err)
		}
		return r.State
	}
	page := func(run int64) string {
		t.Helper()
		r, err := report.Load(context.Background(), path, report.Options{RunID: run})
		if err != nil {
			t.Fatal(err)
		}
		var b bytes.Buffer
		if err := report.Write(&b, r, report.Options{}); err != nil {
			t.Fatal(err)
		}
		return b.String()
	}

	first := startRunner(t, path)
	if got := state(1); got != report.RunGoesOn {
		t.Errorf("run 1, while its safepool runs: state %v, want %v (goes on)", got, report.RunGoesOn)
	}
	if p := page(1); !strings.Contains(p, "still running") {
		t.Errorf("the page of run 1, while its safepool runs, does not say it is still running")
	}
	first.Process.Kill()
	first.Wait()
	if got := state(1); got != report.RunStopped {
		t.Errorf("run 1, its safepool killed: state %v, want %v (stopped)", got, report.RunStopped)
	}
	if p := page(1); !strings.Contains(p, "no safepool runs it now") {
		t.Errorf("the page of run 1, its safepool killed, does not say that it stopped")
	}

	startRunner(t, path)
	if got := state(1); got != report.RunStopped {
		t.Errorf("run 1, killed, while run 2 of its command goes on: state %v, want %v (stopped)", got, report.RunStopped)
	}
	if got := state(2); got != report.RunGoesOn {
		t.Errorf("run 2, while its safepool runs: state %v, want %v (goes on)", got, report.RunGoesOn)
	}

	// Without the span file, as in a copy of the database alone, whether
	// the run goes on cannot be told.
	if err := os.Rename(journal.SpanFile(path), path+".moved"); err != nil {
		t.Fatal(err)
	}
	if got := state(2); got != report.RunEndUnknown {
		t.Errorf("run 2, without the span file: state %v, want %v (unknown)", got, report.RunEndUnknown)
	}
}

// TestPythonCallGoesOn: a Python client's call that has no end in the
// journal is said to go on while a program holds the lock that the client
// takes for its function's calls (python/safepool/_journal.py:
// _lock_command, whose place in the span file this test computes as the
// client does), and to have stopped once none holds it. Python's runs
// were always "the supervisor died or still runs".
func TestPythonCallGoesOn(t *testing.T) {
	j := newTestJournal(t)
	start := time.Now().Add(-time.Minute)
	j.addRun(t, runRow{started: start, kind: "python", command: "job.embed", workers: 2, memoryMode: "cgroup-v2", exitStatus: -1})
	state := func() report.RunState {
		t.Helper()
		r, err := report.Load(context.Background(), j.path, report.Options{RunID: 1})
		if err != nil {
			t.Fatal(err)
		}
		return r.State
	}
	f, err := os.OpenFile(journal.SpanFile(j.path), os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	sum := sha256.Sum256([]byte("python\x00job.embed"))
	lk := unix.Flock_t{Type: unix.F_WRLCK, Whence: io.SeekStart, Len: 1,
		Start: 1<<61 + int64(binary.LittleEndian.Uint64(sum[:8])>>4)}
	if err := unix.FcntlFlock(f.Fd(), unix.F_OFD_SETLK, &lk); err != nil {
		t.Skipf("no open file locks here: %v", err)
	}
	if got := state(); got != report.RunGoesOn {
		t.Errorf("a Python call whose program holds its lock: state %v, want %v (goes on)", got, report.RunGoesOn)
	}
	f.Close()
	if got := state(); got != report.RunStopped {
		t.Errorf("a Python call whose lock no program holds: state %v, want %v (stopped)", got, report.RunStopped)
	}
}
