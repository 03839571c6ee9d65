package report_test

import (
	"bufio"
	"bytes"
	"context"
	"database/sql"
	"errors"
	"fmt"
	"html"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/safepool/safepool/internal/report"
)

// TestRecordedRun loads the journal of a real run and checks that the
// report reads what happened: the OOM kills and the retry, the causes, the
// peaks and the samples.
func TestRecordedRun(t *testing.T) {
	j, id := recordRun(t)
	r, err := report.Load(context.Background(), j.path, report.Options{})
	if err != nil {
		t.Fatal(err)
	}
	if r.ID != id || r.Tasks != 30 || len(r.Rows) != 30 || r.RowsLeftOut != 0 {
		t.Errorf("run %d: %d tasks, %d rows, %d left out; want run %d, 30, 30, 0", r.ID, r.Tasks, len(r.Rows), r.RowsLeftOut, id)
	}
	if r.States["done"] != 29 || r.States["failed"] != 1 {
		t.Errorf("States = %v, want 29 done and 1 failed", r.States)
	}
	causes := map[string]report.CauseCount{}
	for _, c := range r.Causes {
		causes[c.Cause] = c
	}
	if c := causes["oom"]; c.Attempts != 3 || c.Tasks != 1 {
		t.Errorf("oom = %+v, want 3 attempts (task 8 once, task 17 twice) and 1 task", c)
	}
	if c := causes["exit:3"]; c.Attempts != 1 || c.Tasks != 0 {
		t.Errorf("exit:3 = %+v, want 1 attempt and no task", c)
	}
	if r.MarkCounts["oom"] != 3 || r.MarkCounts["retry"] != 3 {
		t.Errorf("MarkCounts = %v, want 3 oom and 3 retry", r.MarkCounts)
	}
	hog := r.Rows[16]
	if hog.ID != 17 || hog.State != "failed" || hog.Cause != "oom" || hog.Attempts != 2 || hog.Peak < 100<<20 {
		t.Errorf("task 17 = %+v, want failed with oom after 2 attempts, peak near the 160 MiB limit", hog)
	}
	if len(r.Total) == 0 || len(r.Running) == 0 || len(r.Allowed) == 0 || len(r.WorkerSeries) == 0 {
		t.Errorf("series: %d total, %d running, %d allowed, %d workers; want samples in each",
			len(r.Total), len(r.Running), len(r.Allowed), len(r.WorkerSeries))
	}
	if r.Limit != 160<<20 || r.Budget != 320<<20 {
		t.Errorf("Limit, Budget = %d, %d; want 160 MiB and 320 MiB", r.Limit, r.Budget)
	}
	if os.Getenv("REPORT_OUT") != "" {
		var b bytes.Buffer
		if err := report.Write(&b, r, report.Options{}); err != nil {
			t.Fatal(err)
		}
		os.WriteFile(os.Getenv("REPORT_OUT"), b.Bytes(), 0o644)
	}
}

// TestLoadErrors: a missing file, a file that is not a journal, a journal
// of a newer safepool, a journal cut short, and a run that is not in the
// journal are errors that say so.
func TestLoadErrors(t *testing.T) {
	j := newTestJournal(t)
	notJournal := filepath.Join(t.TempDir(), "notes.txt")
	os.WriteFile(notJournal, []byte("not a database at all, longer than a header of one hundred bytes "+strings.Repeat("x", 100)), 0o644)
	// A journal of a newer safepool is one: the error says so, not that
	// the file is no journal at all.
	newer := newTestJournal(t)
	mustExec(t, newer, `PRAGMA user_version = 9`)
	// A journal cut short (a copy that stopped half way): SQLite finds it
	// malformed, which the error names as damage.
	mustExec(t, j, `PRAGMA wal_checkpoint(TRUNCATE)`)
	whole, err := os.ReadFile(j.path)
	if err != nil {
		t.Fatal(err)
	}
	cut := filepath.Join(t.TempDir(), "cut.db")
	if err := os.WriteFile(cut, whole[:len(whole)/2], 0o644); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		path string
		run  int64
		want error
	}{
		{"missing file", filepath.Join(t.TempDir(), "none.db"), 0, os.ErrNotExist},
		{"not a journal", notJournal, 0, report.ErrNotJournal},
		{"newer journal", newer.path, 0, report.ErrNewerSchema},
		{"journal cut short", cut, 0, report.ErrDamaged},
		{"empty journal", j.path, 0, report.ErrNoRun},
		{"no such run", j.path, 7, report.ErrNoRun},
		// Not files: a FIFO kept Load waiting for ever to open it, deaf
		// to Ctrl-C, a directory was "disk I/O error", and a pipe
		// (<(cat jobs.db)) "unable to open database file".
		{"directory", t.TempDir(), 0, report.ErrNotJournal},
		{"FIFO", fifo(t), 0, report.ErrNotJournal},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			done := make(chan error, 1)
			go func() {
				_, err := report.Load(context.Background(), tt.path, report.Options{RunID: tt.run})
				done <- err
			}()
			select {
			case err := <-done:
				if !errors.Is(err, tt.want) {
					t.Errorf("Load(%s, run %d) = %v, want %v", tt.name, tt.run, err, tt.want)
				}
			case <-time.After(30 * time.Second):
				t.Errorf("Load(%s) did not return in 30s", tt.name)
			}
		})
	}
	// Nothing is left beside the damaged journal: SQLite's last
	// connection did not remove the WAL and shared memory it made there.
	for _, name := range []string{"-wal", "-shm"} {
		if _, err := os.Lstat(cut + name); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("cut.db%s is left beside the damaged journal: %v", name, err)
		}
	}
}

// fifo makes a FIFO for the test.
func fifo(t *testing.T) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "jobs.db")
	if err := syscall.Mkfifo(path, 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

// syntheticRun writes a run of n tasks to j with samples every step over
// the run's length, from workers workers, and returns its id. It is not a
// real run: it is big, to check the bounds.
func syntheticRun(t *testing.T, j *testJournal, n, workers int, length, step time.Duration) int64 {
	t.Helper()
	start := time.Unix(1_700_000_000, 0)
	id := j.addRun(t, runRow{started: start, ended: start.Add(length), kind: "run", command: "sh -c work {}",
		argv: []string{"safepool", "run", "-j", fmt.Sprint(workers), "sh", "-c", "work {}"}, workers: workers,
		memoryMode: "cgroup-v2", budget: 8 << 30, exitStatus: 1})
	tx, err := j.db.Begin()
	if err != nil {
		t.Fatal(err)
	}
	for i := 1; i <= n; i++ {
		at := start.Add(length * time.Duration(i) / time.Duration(n+1))
		state, cause := "done", any(nil)
		if i%97 == 0 {
			state, cause = "failed", "exit:1"
		}
		if _, err := tx.Exec(`INSERT INTO task (run_id, id, key, input, state, attempts, cause, peak, ended)
			VALUES (?, ?, ?, ?, ?, 1, ?, ?, ?)`, id, i, taskKey("work", []byte(fmt.Sprint(i))),
			[]byte(fmt.Sprintf("input-%d", i)), state, cause, int64(i%1000)<<20, at.UnixNano()); err != nil {
			t.Fatal(err)
		}
		c := ""
		if cause != nil {
			c = "exit:1"
		}
		if _, err := tx.Exec(`INSERT INTO attempt (run_id, task_id, number, worker_pid, started, ended, cause, peak)
			VALUES (?, ?, 1, ?, ?, ?, ?, ?)`, id, i, 1000+i%workers, at.Add(-time.Duration(i%50)*time.Millisecond).UnixNano(),
			at.UnixNano(), c, int64(i%1000)<<20); err != nil {
			t.Fatal(err)
		}
	}
	insert, err := tx.Prepare(`INSERT INTO sample (run_id, at, worker_pid, series, value) VALUES (?, ?, ?, ?, ?)`)
	if err != nil {
		t.Fatal(err)
	}
	defer insert.Close()
	k := 0
	for at := start; at.Before(start.Add(length)); at = at.Add(step) {
		k++
		var total int64
		for w := 0; w < workers; w++ {
			v := int64((k*7+w*13)%200) << 20
			total += v
			insert.Exec(id, at.UnixNano(), 1000+w, "worker", v)
		}
		for series, v := range map[string]int64{"total": total, "budget": 8 << 30, "running": int64(k % (workers + 1)), "allowed": int64(workers)} {
			insert.Exec(id, at.UnixNano(), 0, series, v)
		}
	}
	if err := tx.Commit(); err != nil {
		t.Fatal(err)
	}
	return id
}

// TestBounds: a run of many tasks, workers and samples is read within the
// bounds, and the failed tasks are all in the table.
func TestBounds(t *testing.T) {
	j := newTestJournal(t)
	syntheticRun(t, j, 1000, 60, 2*time.Minute, 500*time.Millisecond)
	opt := report.Options{MaxRows: 300, MaxPoints: 200, MaxWorkers: 10}
	r, err := report.Load(context.Background(), j.path, opt)
	if err != nil {
		t.Fatal(err)
	}
	if len(r.Rows) != 300 || r.RowsLeftOut != 700 {
		t.Errorf("%d rows, %d left out; want 300 and 700", len(r.Rows), r.RowsLeftOut)
	}
	failed := 0
	for _, row := range r.Rows {
		if row.State == "failed" {
			failed++
		}
	}
	if failed != 1000/97 {
		t.Errorf("%d failed tasks in the table, want all %d", failed, 1000/97)
	}
	if len(r.WorkerSeries) != 10 || r.WorkersLeftOut != 50 {
		t.Errorf("%d worker series, %d left out; want 10 and 50", len(r.WorkerSeries), r.WorkersLeftOut)
	}
	for name, pts := range map[string][]report.Point{"total": r.Total, "running": r.Running, "worker": r.WorkerSeries[0].Points} {
		if len(pts) < 100 || len(pts) > 200 {
			t.Errorf("%s: %d points, want 100 to 200 (240 samples in 200 spans)", name, len(pts))
		}
	}
	var b bytes.Buffer
	if err := report.Write(&b, r, opt); err != nil {
		t.Fatal(err)
	}
	if b.Len() > 1<<20 {
		t.Errorf("page is %d bytes, want under 1 MiB", b.Len())
	}
}

// writerEnv makes the test binary a journal writer that is killed in the
// middle of its work: it writes a run and its tasks in WAL mode, says
// "ready" and waits, without closing the database or checkpointing.
const writerEnv = "SAFEPOOL_REPORT_TEST_WRITER"

// killedWriter is the writer that writerEnv asks for; it never returns
// but by an error, as it is killed while it waits.
func killedWriter(path string) int {
	db, err := sql.Open("sqlite", path+"?_pragma=journal_mode(WAL)&_pragma=wal_autocheckpoint(0)")
	if err == nil {
		_, err = db.Exec(`INSERT INTO run (id, started, kind, command, argv, workers, memory_mode)
			VALUES (1, 1000000000, 'run', 'work', '[]', 2, 'cgroup-v2')`)
	}
	for i := 1; err == nil && i <= 100; i++ {
		_, err = db.Exec(`INSERT INTO task (run_id, id, key, input, state, ended) VALUES (1, ?, ?, 'x', 'done', ?)`,
			i, fmt.Sprint(i), 1000000000+int64(i)*10000000)
	}
	if err != nil {
		fmt.Println(err)
		return 1
	}
	fmt.Println("ready")
	time.Sleep(time.Minute)
	return 0
}

// TestLoadAfterWriterKilled: a journal whose writer was SIGKILLed before
// it checkpointed its WAL is read whole, and the run, which never ended,
// ends at its last record.
func TestLoadAfterWriterKilled(t *testing.T) {
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
	if _, err := os.Stat(j.path + "-wal"); err != nil {
		t.Fatalf("no WAL left behind: %v", err)
	}
	r, err := report.Load(context.Background(), j.path, report.Options{})
	if err != nil {
		t.Fatal(err)
	}
	if r.Tasks != 100 || r.EndKnown() || r.Span() != time.Second {
		t.Errorf("%d tasks, end known %v, span %v; want 100, false, 1s (the last task's end)", r.Tasks, r.EndKnown(), r.Span())
	}
}

// TestInputPreview: the table shows an input's first bytes, cut between
// two characters, and says with "…" that there is more; it showed 120
// bytes of a longer input as if they were all of it, and a character
// the cut split as U+FFFD.
func TestInputPreview(t *testing.T) {
	j := newTestJournal(t)
	start := time.Unix(1_700_000_000, 0)
	id := j.addRun(t, runRow{started: start, ended: start.Add(time.Minute), kind: "run", command: "work {}",
		argv: []string{"safepool", "run", "work", "{}"}, workers: 4, memoryMode: "cgroup-v2", exitStatus: 1})
	inputs := []string{
		strings.Repeat("L", 120),       // all of it
		strings.Repeat("L", 121),       // one byte more
		"x" + strings.Repeat("é", 200), // é is two bytes: byte 120 is half of one
		"bad \xff\xfe\x00 end",         // not UTF-8, and a control character
	}
	want := []string{
		strings.Repeat("L", 120),
		strings.Repeat("L", 120) + "…",
		"x" + strings.Repeat("é", 59) + "…",
		"bad \ufffd\ufffd· end",
	}
	for i, in := range inputs {
		mustExec(t, j, `INSERT INTO task (run_id, id, key, input, state, attempts, cause)
			VALUES (?, ?, x'00', ?, 'failed', 1, 'exit:1')`, id, i+1, []byte(in))
	}
	r, err := report.Load(context.Background(), j.path, report.Options{})
	if err != nil {
		t.Fatal(err)
	}
	if len(r.Rows) != len(want) {
		t.Fatalf("%d rows, want %d", len(r.Rows), len(want))
	}
	for i, row := range r.Rows {
		if row.Input != want[i] {
			t.Errorf("input of task %d = %q, want %q", row.ID, row.Input, want[i])
		}
	}
}

// TestPageAsText: the page read as text, by a text browser, a screen
// reader or a copy, keeps its words apart: the summary read "50000tasks"
// and the legend "all workersbudgetper-worker limit", and one task, one
// wait were "1 tasks", "1 waits for memory".
func TestPageAsText(t *testing.T) {
	j := newTestJournal(t)
	workersRun(t, j, 300<<20, 80<<20)
	start := time.Unix(1_700_000_000, 0)
	mustExec(t, j, `INSERT INTO task (run_id, id, key, input, state, attempts, cause) VALUES (1, 1, x'00', 'one', 'failed', 1, 'exit:1')`)
	mustExec(t, j, `INSERT INTO event (run_id, at, kind) VALUES (1, ?, 'admission-wait')`, start.Add(time.Second).UnixNano())
	mustExec(t, j, `INSERT INTO event (run_id, at, kind) VALUES (1, ?, 'admission-wait-ended')`, start.Add(2*time.Second).UnixNano())
	r, err := report.Load(context.Background(), j.path, report.Options{})
	if err != nil {
		t.Fatal(err)
	}
	var b bytes.Buffer
	if err := report.Write(&b, r, report.Options{}); err != nil {
		t.Fatal(err)
	}
	page := b.String()
	page = page[strings.Index(page, "<body>"):]
	page = regexp.MustCompile(`(?s)<script>.*?</script>`).ReplaceAllString(page, "")
	text := strings.Join(strings.Fields(regexp.MustCompile(`<[^>]*>`).ReplaceAllString(page, "")), " ")
	for _, want := range []string{"Summary 1 task 1 failed 1 attempt 0 OOM kills 0 preemptions 0 retries 0 poisoned 1 wait for memory, 1s in all",
		"one worker each all workers budget per-worker limit"} {
		if !strings.Contains(text, want) {
			t.Errorf("the page as text does not say %q:\n%s", want, text)
		}
	}
}

// TestCommandShown: the page gives the command line as a shell reads it,
// each argument quoted where it must be, and only its first kilobyte or
// so when it is long. It joined the arguments with spaces, so that
// "sh -c 'exit 3'" read "sh -c exit 3", and gave the whole of a command
// line of 100,000 inputs after :::, 790 KB at the top of the page.
func TestCommandShown(t *testing.T) {
	j := newTestJournal(t)
	start := time.Unix(1_700_000_000, 0)
	quoted := j.addRun(t, runRow{started: start, ended: start.Add(time.Minute), kind: "run", command: "[]",
		argv: []string{"safepool", "run", "-j", "2", "--", "sh", "-c", `echo "$1" it's`, "sh", "{}", "", "a{b,c}"}, workers: 2, memoryMode: "cgroup-v2", exitStatus: 0})
	long := []string{"safepool", "run", "--", "true", ":::"}
	for i := range 100_000 {
		long = append(long, fmt.Sprint(i+1))
	}
	big := j.addRun(t, runRow{started: start, ended: start.Add(time.Minute), kind: "run", command: "[]",
		argv: long, workers: 2, memoryMode: "cgroup-v2", exitStatus: 0})
	command := regexp.MustCompile(`<div class="command mono">([^<]*)</div>`)
	shown := func(run int64) (string, int) {
		r, err := report.Load(context.Background(), j.path, report.Options{RunID: run})
		if err != nil {
			t.Fatal(err)
		}
		var b bytes.Buffer
		if err := report.Write(&b, r, report.Options{}); err != nil {
			t.Fatal(err)
		}
		m := command.FindStringSubmatch(b.String())
		if m == nil {
			t.Fatalf("run %d: no command in the page", run)
		}
		return html.UnescapeString(m[1]), b.Len()
	}
	if got, _ := shown(quoted); got != `safepool run -j 2 -- sh -c 'echo "$1" it'\''s' sh {} '' 'a{b,c}'` {
		t.Errorf("command shown as %s", got)
	}
	got, size := shown(big)
	if !strings.HasPrefix(got, "safepool run -- true ::: 1 2 3 ") || len(got) > 1200 || !regexp.MustCompile(` … and 99\d{3} more arguments$`).MatchString(got) {
		t.Errorf("command of 100,005 arguments shown as %d bytes: %.80q ... %q", len(got), got, got[max(0, len(got)-60):])
	}
	if size > 200<<10 {
		t.Errorf("the page of a run with a long command line is %d bytes", size)
	}
}

// TestExitStatusSaid: the page says what a run's exit status means, as
// docs/cli.md does; "exit status 3" of a run stopped by a signal said
// nothing of why 80 of its tasks were cancelled.
func TestExitStatusSaid(t *testing.T) {
	j := newTestJournal(t)
	start := time.Unix(1_700_000_000, 0)
	tests := []struct {
		kind   string
		status int
		want   string
	}{
		{"run", 0, "exit status 0 (every task succeeded)"},
		{"map", 1, "exit status 1 (some tasks failed, a map worker got out of step, or the journal, job log or JSON summary could not be written in full)"},
		{"run", 2, "exit status 2 (a usage error, or the command could not start)"},
		{"run", 3, "exit status 3 (stopped before the end)"},
		{"python", 1, "exit status 1 -j 2"}, // Python's statuses are its own
	}
	tag := regexp.MustCompile(`<[^>]*>`)
	for _, tt := range tests {
		id := j.addRun(t, runRow{started: start, ended: start.Add(time.Minute), kind: tt.kind, command: "work",
			argv: []string{"Python"}, workers: 2, memoryMode: "cgroup-v2", exitStatus: tt.status})
		r, err := report.Load(context.Background(), j.path, report.Options{RunID: id})
		if err != nil {
			t.Fatal(err)
		}
		var b bytes.Buffer
		if err := report.Write(&b, r, report.Options{}); err != nil {
			t.Fatal(err)
		}
		text := strings.Join(strings.Fields(tag.ReplaceAllString(b.String(), " ")), " ")
		if !strings.Contains(text, tt.want) {
			i := strings.Index(text, "exit status")
			t.Errorf("%s run of exit status %d: the page says %q, want %q", tt.kind, tt.status, text[i:min(len(text), i+70)], tt.want)
		}
	}
}
