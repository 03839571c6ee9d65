package cli

import (
	"context"
	"encoding/json"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
)

// fullAfter is a stdout with room for n bytes, as a file on a full disk:
// it takes what fits, then fails every write with ENOSPC.
type fullAfter struct {
	mu      sync.Mutex
	n, took int
}

func (w *fullAfter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	k := min(len(p), w.n-w.took)
	w.took += k
	if k < len(p) {
		return k, syscall.ENOSPC
	}
	return k, nil
}

// jsonTasks reads the tasks of the JSON summary at path.
func jsonTasks(t *testing.T, path string) taskCounts {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var s struct{ Tasks taskCounts }
	if err := json.Unmarshal(data, &s); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	return s.Tasks
}

// TestFullStdoutNotDone: when stdout fills up (a full disk), the tasks
// whose output was not written out are not counted done. The summary and
// the JSON summary count as done exactly what the journal has as done,
// which a --resume then skips; the outputs of the tasks counted done
// were written whole. They used to be counted done as soon as their
// output went into safepool's buffer: "aborted: 24 done" where the
// journal, and --resume, had 20.
func TestFullStdoutNotDone(t *testing.T) {
	dir := t.TempDir()
	db := filepath.Join(dir, "j.db")
	const size = 3000 // each job's output, with its newline
	args := []string{"-j", "2", "--no-progress", "--journal", db, "--",
		"sh", "-c", `printf "%0` + strconv.Itoa(size-1) + `d\n" "$1"`, "sh", "{}", ":::"}
	for i := 1; i <= 100; i++ {
		args = append(args, strconv.Itoa(i))
	}
	out := &fullAfter{n: 64 << 10}
	var stderr syncBuffer
	first := filepath.Join(dir, "1.json")
	code := Run(context.Background(), append([]string{"run", "--json", first}, args...), strings.NewReader(""), out, &stderr)
	if code != exitAborted {
		t.Fatalf("Run = %d, want %d; stderr:\n%s", code, exitAborted, stderr.String())
	}
	got := jsonTasks(t, first)
	t.Logf("stdout took %d bytes; tasks %+v", out.took, got)
	if sum := got.Done + got.Unwritten + got.Failed + got.Cancelled + got.Poison; sum != got.Submitted {
		t.Errorf("tasks %+v: the states add up to %d, want submitted, %d", got, sum, got.Submitted)
	}
	if got.Unwritten == 0 {
		t.Errorf("tasks %+v: want some unwritten, whose output the full stdout refused", got)
	}
	if whole := out.took / size; got.Done > whole {
		t.Errorf("tasks.done = %d, but stdout took only %d bytes: %d whole outputs", got.Done, out.took, whole)
	}
	if want := "aborted: " + strconv.Itoa(got.Done) + " done, 0 failed, " + strconv.Itoa(got.Unwritten) + " output not written"; !strings.Contains(stderr.String(), want) {
		t.Errorf("stderr does not say %q:\n%s", want, stderr.String())
	}

	// The journal has the same tasks done: --resume skips them, and runs
	// the others, whose outputs were not written.
	second := filepath.Join(dir, "2.json")
	stderr = syncBuffer{}
	if code := Run(context.Background(), append([]string{"run", "--resume", "--json", second}, args...), strings.NewReader(""), io.Discard, &stderr); code != exitOK {
		t.Fatalf("Run --resume = %d, want 0; stderr:\n%s", code, stderr.String())
	}
	if again := jsonTasks(t, second); again.Skipped != got.Done || again.Done != 100-got.Done {
		t.Errorf("--resume: tasks %+v; want %d skipped (the first run's done) and the %d others done", again, got.Done, 100-got.Done)
	}
}
