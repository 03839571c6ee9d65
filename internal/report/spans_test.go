package report_test

import (
	"context"
	"encoding/binary"
	"testing"
	"time"

	"github.com/safepool/safepool/internal/report"
)

// TestSpansAndWaits reads a run whose done tasks are in a span row (as
// the journal writes tasks done at their first attempt) beside task rows,
// and whose admission waits are events: the span's tasks are counted and
// listed with their runtimes and peaks, and the waits are measured.
func TestSpansAndWaits(t *testing.T) {
	j := newTestJournal(t)
	start := time.Unix(1_700_000_000, 0)
	id := j.addRun(t, runRow{started: start, ended: start.Add(10 * time.Second), kind: "map", command: "[]",
		argv: []string{"safepool", "map"}, workers: 2, memoryMode: "cgroup-v2", exitStatus: 1})
	// Tasks 1, 2, 4 and 5 done in one span; task 3 failed.
	var ids, keys, runtimes, peaks []byte
	prev := uint64(1)
	for i, seq := range []uint64{1, 2, 5, 4} {
		ids = binary.AppendVarint(ids, int64(seq-prev))
		prev = seq
		keys = append(keys, make([]byte, 16)...)
		runtimes = binary.AppendUvarint(runtimes, uint64(1000*(i+1))) // µs
		peaks = binary.AppendUvarint(peaks, uint64(1024*(i+1)))       // KiB
	}
	mustExec(t, j, `INSERT INTO span (run_id, first, count, ids, keys, runtimes, peaks, started, ended)
		VALUES (?, 1, 4, ?, ?, ?, ?, ?, ?)`, id, ids, keys, runtimes, peaks, start.UnixNano(), start.Add(time.Second).UnixNano())
	mustExec(t, j, `INSERT INTO task (run_id, id, key, input, state, attempts, cause, ended)
		VALUES (?, 3, x'00', 'three', 'failed', 1, 'exit:1', ?)`, id, start.Add(time.Second).UnixNano())
	for _, ev := range []struct {
		at   time.Duration
		kind string
	}{{2 * time.Second, "admission-wait"}, {3 * time.Second, "admission-wait-ended"}, {9 * time.Second, "admission-wait"}} {
		mustExec(t, j, `INSERT INTO event (run_id, at, kind) VALUES (?, ?, ?)`, id, start.Add(ev.at).UnixNano(), ev.kind)
	}
	r, err := report.Load(context.Background(), j.path, report.Options{})
	if err != nil {
		t.Fatal(err)
	}
	if r.Tasks != 5 || r.States["done"] != 4 || r.States["failed"] != 1 || r.Attempts != 4 {
		t.Errorf("tasks, done, failed, attempts = %d, %d, %d, %d; want 5, 4, 1, 4", r.Tasks, r.States["done"], r.States["failed"], r.Attempts)
	}
	want := map[int64]time.Duration{1: time.Millisecond, 2: 2 * time.Millisecond, 3: 0, 4: 4 * time.Millisecond, 5: 3 * time.Millisecond}
	if len(r.Rows) != 5 {
		t.Fatalf("%d rows, want 5", len(r.Rows))
	}
	for i, row := range r.Rows {
		if row.ID != int64(i+1) || row.Runtime != want[row.ID] {
			t.Errorf("row %d = task %d, runtime %v; want task %d, %v", i, row.ID, row.Runtime, i+1, want[int64(i+1)])
		}
	}
	if r.Rows[3].Peak != 4<<20 {
		t.Errorf("task 4's peak = %d, want 4 MiB", r.Rows[3].Peak)
	}
	// One wait of 1 s, one from 9 s to the run's end at 10 s.
	if r.Waits != 2 || r.Waited != 2*time.Second {
		t.Errorf("waits, waited = %d, %v; want 2, 2s", r.Waits, r.Waited)
	}
}

func mustExec(t *testing.T, j *testJournal, q string, args ...any) {
	t.Helper()
	if _, err := j.db.Exec(q, args...); err != nil {
		t.Fatal(err)
	}
}
