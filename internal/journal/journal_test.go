package journal

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/safepool/safepool/pool"
)

// feed gives w the events of one task that ends in state after one attempt.
func feed(w *Writer, id, seq uint64, key Key, input []byte, state pool.State, out []byte) {
	now := time.Now()
	w.Submit(id, seq, key, input)
	w.Observe(pool.Event{Kind: pool.EventAttemptStarted, Time: now, TaskID: id, WorkerPID: 100})
	a := pool.Attempt{Number: 1, WorkerPID: 100, Start: now, End: now, ExitCode: -1, PeakRSS: 1 << 20}
	if state != pool.Done {
		a.Cause = pool.ExitCause(1)
		a.ExitCode = 1
	}
	w.Observe(pool.Event{Kind: pool.EventAttemptEnded, Time: now, TaskID: id, WorkerPID: 100, Attempt: &a})
	w.Observe(pool.Event{Kind: pool.EventTaskEnded, Time: now, TaskID: id,
		Result: &pool.Result{ID: id, Input: input, State: state, Output: out, Attempts: []pool.Attempt{a}}})
}

func TestResume(t *testing.T) {
	path := filepath.Join(t.TempDir(), "j.db")
	j, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer j.Close()
	cmd := []string{"cat"}
	run := Run{Kind: "map", Command: CommandString(cmd), StoreOutput: true}
	w, err := j.Start(run)
	if err != nil {
		t.Fatal(err)
	}
	// Inputs a, b, a: the first a done, b failed, the second a never ends.
	feed(w, 1, 1, KeyOf([]byte("a")), []byte("a"), pool.Done, []byte("A"))
	feed(w, 2, 2, KeyOf([]byte("b")), []byte("b"), pool.Failed, nil)
	w.Submit(3, 3, KeyOf([]byte("a")), []byte("a"))
	if err := w.Close(3); err != nil {
		t.Fatal(err)
	}

	for _, tt := range []struct {
		name      string
		failedToo bool
		input     string
		want      []bool // found, input by input
	}{
		{"done only", false, "aba", []bool{true, false, false}},
		{"failed too", true, "aba", []bool{true, true, false}},
		{"reordered", false, "baa", []bool{false, true, false}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			run.Resumed, run.SkipFailed = true, tt.failedToo
			w, err := j.Start(run)
			if err != nil {
				t.Fatal(err)
			}
			defer w.Close(0)
			r, err := w.Resumer()
			if err != nil {
				t.Fatal(err)
			}
			defer r.Close()
			for i, c := range tt.input {
				f, ok, err := r.Lookup(KeyOf([]byte{byte(c)}))
				if err != nil {
					t.Fatal(err)
				}
				if ok != tt.want[i] {
					t.Errorf("Lookup(%c) #%d = %v, want %v", c, i, ok, tt.want[i])
				}
				if ok && c == 'a' && string(f.Output) != "A" {
					t.Errorf("Lookup(a).Output = %q, want A", f.Output)
				}
			}
		})
	}

	// A run without resume starts the batch over.
	run.Resumed = false
	w, err = j.Start(run)
	if err != nil {
		t.Fatal(err)
	}
	w.Close(0)
	run.Resumed, run.SkipFailed = true, true
	w, err = j.Start(run)
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close(0)
	r, err := w.Resumer()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	if _, ok, _ := r.Lookup(KeyOf([]byte("a"))); ok {
		t.Errorf("Lookup(a) after a fresh run = found, want not found")
	}
}

func TestRowsWritten(t *testing.T) {
	j, w := startRun(t)
	feed(w, 1, 1, KeyOf([]byte("x")), []byte("x"), pool.Done, nil)
	w.Submit(2, 2, KeyOf([]byte("y")), []byte("y"))
	time.Sleep(2 * FlushEvery) // the second task is written as pending
	feed(w, 3, 3, KeyOf([]byte("z")), []byte("z"), pool.Failed, nil)
	// Skipped as done: ids 4, and 10 to 19 but 15, in a skip row; skipped
	// after a failure: a task row with the cause.
	w.Skip(4, KeyOf([]byte("w")), []byte("w"), "")
	for i := uint64(10); i < 20; i++ {
		if i != 15 {
			w.Skip(i, KeyOf([]byte("v")), []byte("v"), "")
		}
	}
	w.Skip(5, KeyOf([]byte("u")), []byte("u"), "exit:1")
	if err := w.Close(1); err != nil {
		t.Fatal(err)
	}
	got := map[string]int{}
	rows, err := j.DB().Query(`SELECT state, count(*) FROM task GROUP BY state
		UNION ALL SELECT 'done', sum(count) FROM span
		UNION ALL SELECT 'skipped', sum(count) FROM skip`)
	if err != nil {
		t.Fatal(err)
	}
	for rows.Next() {
		var s string
		var n int
		rows.Scan(&s, &n)
		got[s] += n
	}
	rows.Close()
	want := map[string]int{"done": 1, "pending": 1, "failed": 1, "skipped": 11}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("tasks by state = %v, want %v", got, want)
	}
	// A commit between the skips (the writer's timer, on a loaded machine)
	// splits them over two skip rows; together they hold every id once.
	var skipped []uint64
	rows, err = j.DB().Query(`SELECT first, count, ids FROM skip ORDER BY first`)
	if err != nil {
		t.Fatal(err)
	}
	for rows.Next() {
		var first uint64
		var n int
		var ids []byte
		if err = rows.Scan(&first, &n, &ids); err != nil {
			break
		}
		var part []uint64
		if part, err = SpanIDs(first, n, ids); err != nil {
			break
		}
		skipped = append(skipped, part...)
	}
	rows.Close()
	var cause string
	j.DB().QueryRow(`SELECT cause FROM task WHERE state = 'skipped'`).Scan(&cause)
	if want := []uint64{4, 10, 11, 12, 13, 14, 16, 17, 18, 19}; err != nil || !slices.Equal(skipped, want) || cause != "exit:1" {
		t.Errorf("skip row's ids = %v, %v, task row's cause %q; want %v, exit:1", skipped, err, cause, want)
	}
	var attempts, status int
	j.DB().QueryRow(`SELECT count(*) FROM attempt`).Scan(&attempts)
	j.DB().QueryRow(`SELECT exit_status FROM run`).Scan(&status)
	// The done task's attempt is in its span row.
	if attempts != 1 || status != 1 {
		t.Errorf("attempts, exit status = %d, %d, want 1, 1", attempts, status)
	}
}

// cpuTime is the process's CPU time so far, user and system.
func cpuTime(tb testing.TB) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		tb.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// BenchmarkWriter measures the writer's cost per task of one attempt, each
// task on its own (map's line protocol today): the events a pool gives,
// the key of its input, through the commit. cpu-ns/task is the process's
// CPU time, which counts the writer's goroutine and SQLite.
func BenchmarkWriter(b *testing.B) {
	j, err := Open(filepath.Join(b.TempDir(), "j.db"))
	if err != nil {
		b.Fatal(err)
	}
	defer j.Close()
	w, err := j.Start(Run{Kind: "map", Command: "[]", StoreOutput: true})
	if err != nil {
		b.Fatal(err)
	}
	cpu := cpuTime(b)
	for i := range b.N {
		in := strconv.AppendInt(nil, int64(i), 10)
		feed(w, uint64(i+1), uint64(i+1), KeyOf(in), in, pool.Done, in)
	}
	if err := w.Close(0); err != nil {
		b.Fatal(err)
	}
	b.ReportMetric(float64(cpuTime(b)-cpu)/float64(b.N), "cpu-ns/task")
}

// BenchmarkWriterBatch measures the writer's cost per item when tasks come
// in batches of 4096 items (Task.Items), as map's blocks of lines: one
// SubmitBatch and one Result per batch, each input keyed with KeyOf, the
// outputs kept for replay. Compare items/s with the rate the pool reaches,
// and cpu-ns/item with the pool's own cost per item.
func BenchmarkWriterBatch(b *testing.B) {
	const items = 4096
	j, err := Open(filepath.Join(b.TempDir(), "j.db"))
	if err != nil {
		b.Fatal(err)
	}
	defer j.Close()
	w, err := j.Start(Run{Kind: "map", Command: "[]", StoreOutput: true})
	if err != nil {
		b.Fatal(err)
	}
	// The inputs and outputs, made once: numbers, as seq makes them.
	lines := make([][]byte, items)
	for i := range lines {
		lines[i] = strconv.AppendInt(nil, int64(1000000+i), 10)
	}
	// The pool's part, made once: what a Result of a batch carries.
	done := make([]pool.Item, items)
	for i := range done {
		done[i] = pool.Item{Index: i, Output: lines[i]}
	}
	cpu := cpuTime(b)
	start := time.Now()
	n := 0
	for id := uint64(1); n < b.N; id += items {
		// The CLI's part: the batch's inputs, their numbers and keys.
		seqs := make([]uint64, items)
		keys := make([]Key, items)
		for i := range items {
			seqs[i] = id + uint64(i)
			keys[i] = KeyOf(lines[i])
		}
		w.SubmitBatch(id, seqs, keys, slices.Clone(lines))
		now := time.Now()
		w.Observe(pool.Event{Kind: pool.EventAttemptStarted, Time: now, TaskID: id, WorkerPID: 100})
		res := &pool.Result{ID: id, State: pool.Done, Items: done,
			Attempts: []pool.Attempt{{Number: 1, WorkerPID: 100, Start: now, End: now, ExitCode: -1}}}
		w.Observe(pool.Event{Kind: pool.EventTaskEnded, Time: now, TaskID: id, Result: res})
		n += items
	}
	if err := w.Close(0); err != nil {
		b.Fatal(err)
	}
	b.ReportMetric(float64(cpuTime(b)-cpu)/float64(n), "cpu-ns/item")
	b.ReportMetric(float64(n)/time.Since(start).Seconds(), "items/s")
}

// TestPythonSchema checks that the Python client's copy of the schema is
// schema.sql.
func TestPythonSchema(t *testing.T) {
	py, err := os.ReadFile(filepath.Join("..", "..", "python", "safepool", "journal_schema.sql"))
	if err != nil {
		t.Fatal(err)
	}
	if string(py) != schema {
		t.Errorf("python/safepool/journal_schema.sql differs from internal/journal/schema.sql: copy it")
	}
}

// TestPoolRun journals a real pool: two tasks that sleep, one that fails,
// and memory samples while they run.
func TestPoolRun(t *testing.T) {
	j, err := Open(filepath.Join(t.TempDir(), "j.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer j.Close()
	w, err := j.Start(Run{Kind: "run", Command: "[]"})
	if err != nil {
		t.Fatal(err)
	}
	p, err := pool.New(pool.Config{
		Command:  []string{"sh", "-c", `sleep 0.4; test "$1" != bad`, "sh", "{}"},
		Workers:  2,
		Observer: func(ev pool.Event) { w.Observe(ev) },
	})
	if err != nil {
		t.Fatal(err)
	}
	var budget int64
	if st, ok := p.Memory(); ok {
		budget = st.Budget
	}
	w.Describe(p.Workers(), p.MemoryMode(), budget)
	w.Watch(func() int { return p.Stats().RunningAttempts })
	for i, in := range []string{"a", "bad", "c"} {
		w.Submit(uint64(i+1), uint64(i+1), KeyOf([]byte(in)), []byte(in))
		if _, err := p.Submit(t.Context(), pool.Task{Input: []byte(in)}); err != nil {
			t.Fatal(err)
		}
	}
	p.Close()
	for range p.Results() {
	}
	if err := w.Close(1); err != nil {
		t.Fatal(err)
	}
	var done, failed, attempts, started int
	db := j.DB()
	// Tasks that outlive a commit are written as pending, then updated:
	// these have task rows; quicker ones are in span rows.
	db.QueryRow(`SELECT (SELECT count(*) FROM task WHERE state = 'done') + (SELECT coalesce(sum(count), 0) FROM span)`).Scan(&done)
	db.QueryRow(`SELECT count(*) FROM task WHERE state = 'failed' AND cause = 'exit:1' AND CAST(input AS TEXT) = 'bad'`).Scan(&failed)
	db.QueryRow(`SELECT count(*) FROM attempt WHERE worker_pid > 0 AND ended >= started`).Scan(&attempts)
	var spanAttempts int
	db.QueryRow(`SELECT coalesce(sum(count), 0) FROM span WHERE worker_pid > 0 AND ended >= started`).Scan(&spanAttempts)
	attempts += spanAttempts
	db.QueryRow(`SELECT count(*) FROM event WHERE kind = 'worker-started'`).Scan(&started)
	var mode string
	db.QueryRow(`SELECT memory_mode FROM run`).Scan(&mode)
	if mode != p.MemoryMode() {
		t.Errorf("run.memory_mode = %q, want %q", mode, p.MemoryMode())
	}
	if done != 2 || failed != 1 || attempts != 3 || started != 3 {
		t.Errorf("done, failed, attempts, workers started = %d, %d, %d, %d, want 2, 1, 3, 3", done, failed, attempts, started)
	}
	if _, governed := p.Memory(); !governed {
		t.Log("no memory governor here: no samples to check")
		return
	}
	series := map[string]int{}
	rows, err := db.Query(`SELECT series, count(*) FROM sample GROUP BY series`)
	if err != nil {
		t.Fatal(err)
	}
	for rows.Next() {
		var s string
		var n int
		rows.Scan(&s, &n)
		series[s] = n
	}
	rows.Close()
	for _, s := range []string{"total", "budget", "allowed", "running", "worker"} {
		if series[s] == 0 {
			t.Errorf("no samples of series %q (samples: %v)", s, series)
		}
	}
}

// TestSamplesWithoutGovernor journals a pool without a memory governor:
// the writer samples the workers' memory itself, and the attempts running.
func TestSamplesWithoutGovernor(t *testing.T) {
	j, err := Open(filepath.Join(t.TempDir(), "j.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer j.Close()
	w, err := j.Start(Run{Kind: "run", Command: "[]"})
	if err != nil {
		t.Fatal(err)
	}
	p, err := pool.New(pool.Config{
		Command:    []string{"sleep", "{}"},
		Workers:    2,
		NoGovernor: true,
		Observer:   func(ev pool.Event) { w.Observe(ev) },
	})
	if err != nil {
		t.Fatal(err)
	}
	if _, governed := p.Memory(); governed {
		t.Fatal("NoGovernor: the pool has a governor")
	}
	w.Describe(p.Workers(), p.MemoryMode(), 0)
	w.Watch(func() int { return p.Stats().RunningAttempts })
	for i, in := range []string{"0.6", "0.6"} {
		w.Submit(uint64(i+1), uint64(i+1), KeyOf([]byte(in)), []byte(in))
		if _, err := p.Submit(t.Context(), pool.Task{Input: []byte(in)}); err != nil {
			t.Fatal(err)
		}
	}
	p.Close()
	for range p.Results() {
	}
	if err := w.Close(0); err != nil {
		t.Fatal(err)
	}
	var workers, totals, running int
	var most int64
	db := j.DB()
	db.QueryRow(`SELECT count(*) FROM sample WHERE series = 'worker' AND worker_pid > 0 AND value > 0`).Scan(&workers)
	db.QueryRow(`SELECT count(*), coalesce(max(value), 0) FROM sample WHERE series = 'total'`).Scan(&totals, &most)
	db.QueryRow(`SELECT count(*) FROM sample WHERE series = 'running' AND value = 2`).Scan(&running)
	if workers == 0 || totals == 0 || most <= 0 || running == 0 {
		t.Errorf("worker samples, total samples, highest total, samples of 2 running = %d, %d, %d, %d; want each above 0", workers, totals, most, running)
	}
}

// TestPageSize checks that a new journal has the 64 KiB pages its DSN asks
// for, in WAL mode, and keeps both when opened again.
func TestPageSize(t *testing.T) {
	path := filepath.Join(t.TempDir(), "j.db")
	for i := range 2 {
		j, err := Open(path)
		if err != nil {
			t.Fatal(err)
		}
		var size int
		var mode string
		if err := j.DB().QueryRow("PRAGMA page_size").Scan(&size); err != nil {
			t.Fatal(err)
		}
		if err := j.DB().QueryRow("PRAGMA journal_mode").Scan(&mode); err != nil {
			t.Fatal(err)
		}
		if size != 65536 || mode != "wal" {
			t.Errorf("open %d: page_size %d, journal_mode %s; want 65536, wal", i+1, size, mode)
		}
		if err := j.Close(); err != nil {
			t.Fatal(err)
		}
	}
}

// TestLongOutputs writes tasks of their own whose outputs are megabytes
// long, as map --pipe's blocks make them, more of them than the writer
// queues at once, and checks that resume gives each its output back.
func TestLongOutputs(t *testing.T) {
	path := filepath.Join(t.TempDir(), "j.db")
	j, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer j.Close()
	out := func(i int) []byte {
		return slices.Repeat([]byte{byte('a' + i)}, 3<<20+i)
	}
	const n = 16 // 48 MiB, over maxQueuedBytes
	w, err := j.Start(Run{Kind: "map", Command: "long", StoreOutput: true})
	if err != nil {
		t.Fatal(err)
	}
	for i := range n {
		in := []byte(strconv.Itoa(i))
		feed(w, uint64(i+1), uint64(i+1), KeyOf(in), in, pool.Done, out(i))
	}
	if err := w.Close(0); err != nil {
		t.Fatal(err)
	}
	w, err = j.Start(Run{Kind: "map", Command: "long", StoreOutput: true, Resumed: true})
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close(0)
	rs, err := w.Resumer()
	if err != nil {
		t.Fatal(err)
	}
	defer rs.Close()
	for i := range n {
		f, ok, err := rs.Lookup(KeyOf([]byte(strconv.Itoa(i))))
		if err != nil || !ok || f.State != "done" || !slices.Equal(f.Output, out(i)) {
			t.Errorf("task %d: %v, %v, %s, %d bytes of output; want done, its %d bytes", i, ok, err, f.State, len(f.Output), len(out(i)))
		}
	}
}

// TestPendingToSpan checks that a task written as pending, which then
// ends done at its first attempt, ends in a span row with its output, its
// task row gone, as a block of map --pipe that runs for seconds does.
func TestPendingToSpan(t *testing.T) {
	j, err := Open(filepath.Join(t.TempDir(), "j.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer j.Close()
	w, err := j.Start(Run{Kind: "map", Command: "pending", StoreOutput: true})
	if err != nil {
		t.Fatal(err)
	}
	key := KeyOf([]byte("block"))
	w.Submit(1, 1, key, []byte("bytes 0-4"))
	time.Sleep(3 * FlushEvery) // written as pending
	var pending int
	j.DB().QueryRow(`SELECT count(*) FROM task WHERE state = 'pending'`).Scan(&pending)
	now := time.Now()
	a := pool.Attempt{Number: 1, WorkerPID: 100, Start: now, End: now, ExitCode: 0}
	w.Observe(pool.Event{Kind: pool.EventTaskEnded, Time: now, TaskID: 1,
		Result: &pool.Result{ID: 1, State: pool.Done, Output: []byte("out"), Attempts: []pool.Attempt{a}}})
	if err := w.Close(0); err != nil {
		t.Fatal(err)
	}
	var tasks, spans int
	j.DB().QueryRow(`SELECT count(*) FROM task`).Scan(&tasks)
	j.DB().QueryRow(`SELECT coalesce(sum(count), 0) FROM span`).Scan(&spans)
	if pending != 1 || tasks != 0 || spans != 1 {
		t.Errorf("pending rows while it ran, task rows, span tasks = %d, %d, %d; want 1, 0, 1", pending, tasks, spans)
	}
	w, err = j.Start(Run{Kind: "map", Command: "pending", StoreOutput: true, Resumed: true})
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close(0)
	rs, err := w.Resumer()
	if err != nil {
		t.Fatal(err)
	}
	defer rs.Close()
	if f, ok, err := rs.Lookup(key); err != nil || !ok || string(f.Output) != "out" {
		t.Errorf("resume: %v, %v, output %q; want done, out", ok, err, f.Output)
	}
}

// TestRetryEvents: every retry is an event, also of a task whose
// attempts could not start a worker (an argument holding a NUL byte):
// its retries had no event, as a retry was marked when its worker
// started, and a report counted 96 retries of a run that made 98.
func TestRetryEvents(t *testing.T) {
	j, err := Open(filepath.Join(t.TempDir(), "j.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer j.Close()
	w, err := j.Start(Run{Kind: "run", Command: "[]"})
	if err != nil {
		t.Fatal(err)
	}
	p, err := pool.New(pool.Config{
		Command: []string{"sh", "-c", "exit 3", "sh", "{}"},
		Workers: 2,
		Retries: 2,
		Backoff: time.Millisecond,
		// Not to abort the pool: the failures to start are its point.
		StartupFailures: 100,
		Observer:        func(ev pool.Event) { w.Observe(ev) },
	})
	if err != nil {
		t.Fatal(err)
	}
	w.Describe(p.Workers(), p.MemoryMode(), 0)
	for i, in := range []string{"runs", "nul\x00byte"} {
		w.Submit(uint64(i+1), uint64(i+1), KeyOf([]byte(in)), []byte(in))
		if _, err := p.Submit(t.Context(), pool.Task{Input: []byte(in)}); err != nil {
			t.Fatal(err)
		}
	}
	p.Close()
	for range p.Results() {
	}
	if err := w.Close(1); err != nil {
		t.Fatal(err)
	}
	rows, err := j.DB().Query(`SELECT task_id, COUNT(*) FROM event WHERE kind = 'retry' GROUP BY task_id ORDER BY task_id`)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	got := map[int]int{}
	for rows.Next() {
		var id, n int
		if err := rows.Scan(&id, &n); err != nil {
			t.Fatal(err)
		}
		got[id] = n
	}
	if got[1] != 2 || got[2] != 2 {
		t.Errorf("retry events by task = %v, want 2 for each of tasks 1 and 2", got)
	}
	var attempts int
	j.DB().QueryRow(`SELECT COUNT(*) FROM attempt WHERE task_id = 2`).Scan(&attempts)
	if attempts != 3 {
		t.Errorf("task 2 has %d attempts, want 3 (it cannot start, and is retried twice)", attempts)
	}
}

// TestIncompleteJournal makes the journal fail to write mid-run (its span
// file turned into a directory, as a full disk would fail it): Close
// returns the error, and records in the run's row an exit status of at
// least 1 and an IncompleteEvent, so that a reader does not take what
// the journal holds for the whole run. The run was recorded as ended with
// the exit status it was given, 0, as if complete.
func TestIncompleteJournal(t *testing.T) {
	path := filepath.Join(t.TempDir(), "j.db")
	j, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer j.Close()
	w, err := j.Start(Run{Kind: "map", Command: "[]"})
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(SpanFile(path)); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(SpanFile(path), 0o755); err != nil {
		t.Fatal(err)
	}
	for i := uint64(1); i <= 3; i++ {
		in := []byte(strconv.FormatUint(i, 10))
		feed(w, i, i, KeyOf(in), in, pool.Done, in)
	}
	if err := w.Close(0); err == nil {
		t.Fatal("Close = nil after the span file could not be written")
	}
	var exit, events int
	var detail string
	if err := j.DB().QueryRow(`SELECT exit_status FROM run`).Scan(&exit); err != nil {
		t.Fatal(err)
	}
	if err := j.DB().QueryRow(`SELECT count(*), coalesce(max(detail), '') FROM event WHERE kind = ?`, IncompleteEvent).Scan(&events, &detail); err != nil {
		t.Fatal(err)
	}
	if exit != 1 || events != 1 || detail == "" {
		t.Errorf("exit status %d, %d %s events (detail %q); want 1, and 1 with the error", exit, events, IncompleteEvent, detail)
	}
}

// TestDamagedSpanTable: a --resume on a journal whose span table is
// damaged (a journal that opens, as its first pages are whole) is refused
// as damaged, and adds no run: it added the row of a run that never ran,
// after which safepool report showed that empty run, exit 0, and not the
// damage.
func TestDamagedSpanTable(t *testing.T) {
	path := filepath.Join(t.TempDir(), "j.db")
	j, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	run := Run{Kind: "map", Command: "cat", StoreOutput: true}
	w, err := j.Start(run)
	if err != nil {
		t.Fatal(err)
	}
	feed(w, 1, 1, KeyOf([]byte("a")), []byte("a"), pool.Done, []byte("A"))
	if err := w.Close(0); err != nil {
		t.Fatal(err)
	}
	var root, pageSize int64
	if err := j.DB().QueryRow(`SELECT rootpage FROM sqlite_master WHERE name = 'span'`).Scan(&root); err != nil {
		t.Fatal(err)
	}
	if err := j.DB().QueryRow(`PRAGMA page_size`).Scan(&pageSize); err != nil {
		t.Fatal(err)
	}
	if _, err := j.DB().Exec(`PRAGMA wal_checkpoint(TRUNCATE)`); err != nil {
		t.Fatal(err)
	}
	j.Close()
	f, err := os.OpenFile(path, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	// The span table's root page's header: its kind of page, zeroed.
	if _, err := f.WriteAt(make([]byte, 16), (root-1)*pageSize); err != nil {
		t.Fatal(err)
	}
	f.Close()

	j, err = Open(path)
	if err != nil {
		t.Fatalf("Open() = %v; the first pages are whole", err)
	}
	defer j.Close()
	run.Resumed = true
	if w, err := j.Start(run); err == nil || !strings.Contains(err.Error(), "is damaged") {
		if err == nil {
			w.Close(0)
		}
		t.Fatalf("Start(resumed) = %v, want the journal damaged", err)
	}
	var runs int
	if err := j.DB().QueryRow(`SELECT count(*) FROM run`).Scan(&runs); err != nil {
		t.Fatal(err)
	}
	if runs != 1 {
		t.Errorf("%d runs in the journal, want 1: the refused run adds none", runs)
	}
}
