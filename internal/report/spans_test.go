package report_test

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/safepool/safepool/internal/report"
)

// TestSpansAndWaits reads a run whose done tasks are in a span row (as
// the journal writes tasks done at their first attempt) beside task rows,
// and whose admission waits are events: the span's tasks are counted and
// listed with their runtimes and peaks (a part of several tasks shares
// its time out), and the waits are measured.
func TestSpansAndWaits(t *testing.T) {
	j := newTestJournal(t)
	start := time.Unix(1_700_000_000, 0)
	id := addSpanRun(t, j, start)
	// Tasks 1, 2, 4 and 5 done in one span, in runs 1-2, 5, 4; 1 and 2
	// ran as one part of 3 ms; task 3 failed.
	var ids, parts []byte
	for _, r := range [][2]int64{{0, 2}, {2, 1}, {-2, 1}} {
		ids = binary.AppendVarint(ids, r[0])
		ids = binary.AppendUvarint(ids, uint64(r[1]))
	}
	for _, p := range [][3]uint64{{2, 3000, 2048}, {1, 3000, 3072}, {1, 4000, 4096}} { // tasks, µs, KiB
		for _, v := range p {
			parts = binary.AppendUvarint(parts, v)
		}
	}
	mustExec(t, j, `INSERT INTO span (run_id, first, count, ids, parts, started, ended, data_at, data_size, data_crc)
		VALUES (?, 1, 4, ?, ?, ?, ?, 0, 0, 0)`, id, ids, parts, start.UnixNano(), start.Add(time.Second).UnixNano())
	checkSpanRun(t, j, map[int64]time.Duration{1: 1500 * time.Microsecond, 2: 1500 * time.Microsecond, 3: 0,
		4: 4 * time.Millisecond, 5: 3 * time.Millisecond})

	// Tasks 6 to 8 skipped as done in an earlier run, in a skip row, are
	// counted as skipped.
	ids = binary.AppendUvarint(binary.AppendVarint(nil, 0), 3)
	mustExec(t, j, `INSERT INTO skip (run_id, first, count, ids, ended) VALUES (?, 6, 3, ?, ?)`, id, ids, start.UnixNano())
	r, err := report.Load(context.Background(), j.path, report.Options{})
	if err != nil {
		t.Fatal(err)
	}
	if r.Tasks != 8 || r.States["skipped"] != 3 || r.States["done"] != 4 {
		t.Errorf("tasks, skipped, done = %d, %d, %d; want 8, 3, 4", r.Tasks, r.States["skipped"], r.States["done"])
	}
}

// TestSpansVersion2 reads the span rows of a journal of schema version 2,
// which held each task's runtime and peak.
func TestSpansVersion2(t *testing.T) {
	j := newTestJournal(t)
	mustExec(t, j, `DROP TABLE span`)
	mustExec(t, j, `CREATE TABLE span (run_id INTEGER NOT NULL, first INTEGER NOT NULL, count INTEGER NOT NULL,
		ids BLOB NOT NULL, keys BLOB NOT NULL, runtimes BLOB NOT NULL, peaks BLOB NOT NULL, lengths BLOB, output BLOB,
		started INTEGER NOT NULL, ended INTEGER NOT NULL, worker_pid INTEGER, peak INTEGER)`)
	mustExec(t, j, `PRAGMA user_version = 2`)
	start := time.Unix(1_700_000_000, 0)
	id := addSpanRun(t, j, start)
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
	checkSpanRun(t, j, map[int64]time.Duration{1: time.Millisecond, 2: 2 * time.Millisecond, 3: 0,
		4: 4 * time.Millisecond, 5: 3 * time.Millisecond})
}

// addSpanRun adds the run of the span tests, with its failed task 3 and
// its admission waits, and returns its id.
func addSpanRun(t *testing.T, j *testJournal, start time.Time) int64 {
	id := j.addRun(t, runRow{started: start, ended: start.Add(10 * time.Second), kind: "map", command: "[]",
		argv: []string{"safepool", "map"}, workers: 2, memoryMode: "cgroup-v2", exitStatus: 1})
	mustExec(t, j, `INSERT INTO task (run_id, id, key, input, state, attempts, cause, ended)
		VALUES (?, 3, x'00', 'three', 'failed', 1, 'exit:1', ?)`, id, start.Add(time.Second).UnixNano())
	for _, ev := range []struct {
		at   time.Duration
		kind string
	}{{2 * time.Second, "admission-wait"}, {3 * time.Second, "admission-wait-ended"}, {9 * time.Second, "admission-wait"}} {
		mustExec(t, j, `INSERT INTO event (run_id, at, kind) VALUES (?, ?, ?)`, id, start.Add(ev.at).UnixNano(), ev.kind)
	}
	return id
}

// checkSpanRun loads the run of addSpanRun and checks its counts, its
// tasks' runtimes (want), task 4's peak and the waits.
func checkSpanRun(t *testing.T, j *testJournal, want map[int64]time.Duration) {
	t.Helper()
	r, err := report.Load(context.Background(), j.path, report.Options{})
	if err != nil {
		t.Fatal(err)
	}
	// Five attempts: the span's four, and failed task 3's, which its row
	// counts (it has no attempt row).
	if r.Tasks != 5 || r.States["done"] != 4 || r.States["failed"] != 1 || r.Attempts != 5 {
		t.Errorf("tasks, done, failed, attempts = %d, %d, %d, %d; want 5, 4, 1, 5", r.Tasks, r.States["done"], r.States["failed"], r.Attempts)
	}
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

// TestSpanRowsBounded: a run whose tasks are both in task rows (failed,
// done after a retry) and in span rows fills the table up to MaxRows and
// no further, every task that did not end done first. The table held
// MaxRows plus the task rows done after a retry: 2059 rows for a run of
// 50,000 tasks whose page said "up to 2000".
func TestSpanRowsBounded(t *testing.T) {
	j := newTestJournal(t)
	start := time.Unix(1_700_000_000, 0)
	id := j.addRun(t, runRow{started: start, ended: start.Add(time.Minute), kind: "run", command: "work {}",
		argv: []string{"safepool", "run", "work", "{}"}, workers: 4, memoryMode: "cgroup-v2", exitStatus: 1})
	// Tasks 1 to 6 have rows: 1 to 3 failed, 4 to 6 done at attempt 2.
	for i := 1; i <= 6; i++ {
		state, cause := "failed", any("exit:1")
		if i > 3 {
			state, cause = "done", nil
		}
		mustExec(t, j, `INSERT INTO task (run_id, id, key, input, state, attempts, cause, peak, ended)
			VALUES (?, ?, x'00', ?, ?, 2, ?, ?, ?)`, id, i, fmt.Sprint(i), state, cause, int64(i)<<20, start.Add(time.Second).UnixNano())
	}
	// Tasks 7 to 106 are done in one span, each its own part.
	const spanned = 100
	ids := binary.AppendUvarint(binary.AppendVarint(nil, 0), spanned)
	var parts []byte
	for i := range spanned {
		for _, v := range []uint64{1, uint64(1000 * (i + 1)), uint64(1024 * (spanned - i))} { // tasks, µs, KiB
			parts = binary.AppendUvarint(parts, v)
		}
	}
	mustExec(t, j, `INSERT INTO span (run_id, first, count, ids, parts, started, ended, data_at, data_size, data_crc)
		VALUES (?, 7, ?, ?, ?, ?, ?, 0, 0, 0)`, id, spanned, ids, parts, start.UnixNano(), start.Add(time.Minute).UnixNano())

	for _, maxRows := range []int{10, 50} {
		r, err := report.Load(context.Background(), j.path, report.Options{MaxRows: maxRows})
		if err != nil {
			t.Fatal(err)
		}
		if r.Tasks != 6+spanned {
			t.Fatalf("MaxRows %d: %d tasks, want %d", maxRows, r.Tasks, 6+spanned)
		}
		if len(r.Rows) != maxRows || r.RowsLeftOut != r.Tasks-maxRows {
			t.Errorf("MaxRows %d: %d rows, %d left out; want %d and %d", maxRows, len(r.Rows), r.RowsLeftOut, maxRows, r.Tasks-maxRows)
		}
		failed := 0
		for _, row := range r.Rows {
			if row.State == "failed" {
				failed++
			}
		}
		if failed != 3 {
			t.Errorf("MaxRows %d: %d failed tasks in the table, want all 3", maxRows, failed)
		}
	}
}

// TestResumedCauses: in a resumed run, the causes count the tasks of
// this run whose last attempt ended so, not the tasks it skipped because
// they had failed in an earlier run (whose rows keep that cause): the
// table said 600 tasks' last attempt ended exit:1 in a run of 497 failed
// tasks and no attempt of the 103 skipped ones.
func TestResumedCauses(t *testing.T) {
	j := newTestJournal(t)
	start := time.Unix(1_700_000_000, 0)
	id := j.addRun(t, runRow{started: start, ended: start.Add(time.Minute), kind: "run", command: "work {}",
		argv: []string{"safepool", "run", "--resume", "work", "{}"}, workers: 4, memoryMode: "cgroup-v2", exitStatus: 1})
	rows := []struct {
		id       int
		state    string
		attempts int
	}{{1, "skipped", 0}, {2, "skipped", 0}, {3, "failed", 2}}
	for _, row := range rows {
		mustExec(t, j, `INSERT INTO task (run_id, id, key, input, state, attempts, cause, ended)
			VALUES (?, ?, x'00', ?, ?, ?, 'exit:1', ?)`, id, row.id, fmt.Sprint(row.id), row.state, row.attempts, start.Add(time.Second).UnixNano())
	}
	for n := 1; n <= 2; n++ {
		mustExec(t, j, `INSERT INTO attempt (run_id, task_id, number, worker_pid, started, ended, cause, exit_code)
			VALUES (?, 3, ?, 100, ?, ?, 'exit:1', 1)`, id, n, start.UnixNano(), start.Add(time.Second).UnixNano())
	}
	r, err := report.Load(context.Background(), j.path, report.Options{})
	if err != nil {
		t.Fatal(err)
	}
	want := []report.CauseCount{{Cause: "exit:1", Attempts: 2, Tasks: 1}}
	if !slices.Equal(r.Causes, want) {
		t.Errorf("Causes = %+v, want %+v", r.Causes, want)
	}
	if r.States["skipped"] != 2 || r.States["failed"] != 1 {
		t.Errorf("States = %v, want 2 skipped and 1 failed", r.States)
	}
}

// TestCancelledCauses: tasks cancelled before they ever ran have no last
// attempt, and the causes do not count them: a run stopped by SIGTERM
// said 80 tasks' last attempt was cancelled, of 4 cancelled attempts.
func TestCancelledCauses(t *testing.T) {
	j := newTestJournal(t)
	start := time.Unix(1_700_000_000, 0)
	id := j.addRun(t, runRow{started: start, ended: start.Add(time.Minute), kind: "run", command: "work {}",
		argv: []string{"safepool", "run", "work", "{}"}, workers: 4, memoryMode: "cgroup-v2", exitStatus: 3})
	for i, attempts := range []int{1, 0, 0} {
		mustExec(t, j, `INSERT INTO task (run_id, id, key, input, state, attempts, cause, ended)
			VALUES (?, ?, x'00', ?, 'cancelled', ?, 'cancelled', ?)`, id, i+1, fmt.Sprint(i+1), attempts, start.Add(time.Second).UnixNano())
	}
	mustExec(t, j, `INSERT INTO attempt (run_id, task_id, number, worker_pid, started, ended, cause)
		VALUES (?, 1, 1, 100, ?, ?, 'cancelled')`, id, start.UnixNano(), start.Add(time.Second).UnixNano())
	r, err := report.Load(context.Background(), j.path, report.Options{})
	if err != nil {
		t.Fatal(err)
	}
	want := []report.CauseCount{{Cause: "cancelled", Attempts: 1, Tasks: 1}}
	if !slices.Equal(r.Causes, want) {
		t.Errorf("Causes = %+v, want %+v", r.Causes, want)
	}
	if r.States["cancelled"] != 3 || r.Attempts != 1 {
		t.Errorf("cancelled, attempts = %d, %d; want 3, 1", r.States["cancelled"], r.Attempts)
	}
}

// TestUnlistedAndNoInput: the table's note tells the tasks a resumed run
// skipped as done, which the journal only counts, from tasks left out
// for room; and a task whose input the journal did not keep says so.
// The page said of a resumed run "5 of 8 tasks: every task that did not
// end done, then the longest-running and the largest of the rest. 3 are
// left out", and showed the inputs of tasks done at once as blanks.
func TestUnlistedAndNoInput(t *testing.T) {
	j := newTestJournal(t)
	start := time.Unix(1_700_000_000, 0)
	id := addSpanRun(t, j, start) // task 3 failed, with its input
	ids := binary.AppendUvarint(binary.AppendVarint(nil, 0), 2)
	ids = binary.AppendUvarint(binary.AppendVarint(ids, 1), 2) // 1-2, 4-5
	var parts []byte
	for range 4 {
		parts = binary.AppendUvarint(binary.AppendUvarint(binary.AppendUvarint(parts, 1), 1000), 1024)
	}
	mustExec(t, j, `INSERT INTO span (run_id, first, count, ids, parts, started, ended, data_at, data_size, data_crc)
		VALUES (?, 1, 4, ?, ?, ?, ?, 0, 0, 0)`, id, ids, parts, start.UnixNano(), start.Add(time.Second).UnixNano())
	skipped := binary.AppendUvarint(binary.AppendVarint(nil, 0), 3)
	mustExec(t, j, `INSERT INTO skip (run_id, first, count, ids, ended) VALUES (?, 6, 3, ?, ?)`, id, skipped, start.UnixNano())
	r, err := report.Load(context.Background(), j.path, report.Options{})
	if err != nil {
		t.Fatal(err)
	}
	if r.Tasks != 8 || len(r.Rows) != 5 || r.RowsLeftOut != 0 || r.Unlisted != 3 {
		t.Errorf("tasks, rows, left out, unlisted = %d, %d, %d, %d; want 8, 5, 0, 3", r.Tasks, len(r.Rows), r.RowsLeftOut, r.Unlisted)
	}
	for _, row := range r.Rows {
		if row.NoInput != (row.ID != 3) {
			t.Errorf("task %d: NoInput %v, want %v", row.ID, row.NoInput, row.ID != 3)
		}
	}
	var b bytes.Buffer
	if err := report.Write(&b, r, report.Options{}); err != nil {
		t.Fatal(err)
	}
	page := b.String()
	for _, want := range []string{
		"5 of 8 tasks. 3 tasks skipped as done in an earlier run are not listed",
		`<td class="input mono" data-v="three">three</td>`,
		`>not kept</span></td>`,
	} {
		if !strings.Contains(page, want) {
			t.Errorf("the page does not say %q", want)
		}
	}
	if strings.Contains(page, "are left out") {
		t.Errorf("the page says tasks are left out of the table for room")
	}
}
