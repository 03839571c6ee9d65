package report_test

import (
	"context"
	"testing"
	"time"

	"github.com/safepool/safepool/internal/report"
)

// TestPythonRun: the Python client's journal has a task row per task and
// attempt rows only for a task whose worker died (its history): a task
// done, or failed by its function's exception, is one attempt that only
// its row's attempts count. The report counted attempts from attempt rows
// alone: a Python run of 22 done tasks showed 0 attempts, and the causes
// table no attempt for an exception.
func TestPythonRun(t *testing.T) {
	j := newTestJournal(t)
	start := time.Unix(1_700_000_000, 0)
	id := j.addRun(t, runRow{started: start, ended: start.Add(time.Second), kind: "python", command: "job.work",
		workers: 2, memoryMode: "cgroup-v2", exitStatus: 1})
	for i, row := range []struct {
		state, cause string
		attempts     int
	}{{"done", "", 1}, {"done", "", 1}, {"failed", "ValueError", 1}, {"failed", "exit:3", 2}, {"skipped", "", 0}} {
		var cause any
		if row.cause != "" {
			cause = row.cause
		}
		mustExec(t, j, `INSERT INTO task (run_id, id, key, input, state, attempts, cause, ended) VALUES (?, ?, ?, 'x', ?, ?, ?, ?)`,
			id, i+1, taskKey("job.work", []byte{byte(i)}), row.state, row.attempts, cause, start.Add(time.Duration(i)*time.Millisecond).UnixNano())
	}
	for n := 1; n <= 2; n++ {
		mustExec(t, j, `INSERT INTO attempt (run_id, task_id, number, worker_pid, started, ended, cause, exit_code) VALUES (?, 4, ?, 77, ?, ?, 'exit:3', 3)`,
			id, n, start.UnixNano(), start.Add(time.Millisecond).UnixNano())
	}
	r, err := report.Load(context.Background(), j.path, report.Options{})
	if err != nil {
		t.Fatal(err)
	}
	if r.Attempts != 5 {
		t.Errorf("%d attempts, want 5: one per task done or failed by an exception, and the two of the task whose worker died", r.Attempts)
	}
	causes := map[string]report.CauseCount{}
	for _, c := range r.Causes {
		causes[c.Cause] = c
	}
	if c := causes["ValueError"]; c.Attempts != 1 || c.Tasks != 1 {
		t.Errorf("ValueError = %+v, want 1 attempt and 1 task", c)
	}
	if c := causes["exit:3"]; c.Attempts != 2 || c.Tasks != 1 {
		t.Errorf("exit:3 = %+v, want 2 attempts and 1 task", c)
	}
}
