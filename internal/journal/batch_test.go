package journal

import (
	"bufio"
	"bytes"
	"database/sql"
	"encoding/binary"
	"errors"
	"fmt"
	"io/fs"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/safepool/safepool/internal/protocol"
	"github.com/safepool/safepool/pool"
)

// The test binary is also the processes some tests run: a framed worker
// that takes batches, or a writer to be killed; helperEnv names which.
const helperEnv = "SAFEPOOL_JOURNAL_TEST_HELPER"

func TestMain(m *testing.M) {
	switch os.Getenv(helperEnv) {
	case "batch-worker":
		os.Exit(batchWorker())
	case "writer":
		os.Exit(killedWriter(os.Args[len(os.Args)-1]))
	}
	os.Exit(m.Run())
}

// helper returns a command that runs this test binary as helper mode.
func helper(mode string, args ...string) *exec.Cmd {
	cmd := exec.Command(os.Args[0], append([]string{"-test.run=^$", "--"}, args...)...)
	cmd.Env = append(os.Environ(), helperEnv+"="+mode)
	return cmd
}

// batchWorker is a framed/2 worker: items are lines of a batch's payload;
// it answers "ok:ITEM", fails an item "fail" with an item error, and exits
// 3 at an item "die" (the death is charged to that item).
func batchWorker() int {
	in := protocol.NewReader(os.NewFile(3, "tasks"), 0)
	out := protocol.NewWriter(os.NewFile(4, "results"))
	out.WriteFrame(protocol.Frame{Kind: protocol.KindReady, Payload: []byte(`{"version":2}`)})
	out.Flush()
	index := func(i uint32, rest []byte) []byte { return append(binary.BigEndian.AppendUint32(nil, i), rest...) }
	for {
		f, err := in.ReadFrame()
		if err != nil {
			return 0
		}
		indexes, payload, _ := protocol.ParseBatch(f.Payload)
		items := strings.Split(string(payload), "\n")
		for _, i := range indexes {
			out.WriteFrame(protocol.Frame{Kind: protocol.KindStart, ID: f.ID, Payload: index(i, nil)})
			out.Flush()
			switch items[i] {
			case "die":
				return 3
			case "fail":
				out.WriteFrame(protocol.Frame{Kind: protocol.KindItemError, ID: f.ID, Payload: index(i, []byte("no"))})
			default:
				out.WriteFrame(protocol.Frame{Kind: protocol.KindItem, ID: f.ID, Payload: index(i, []byte("ok:"+items[i]))})
			}
		}
		out.Flush()
	}
}

// runBatches journals a real pool of batch workers over batches of inputs,
// numbered from 1 across batches, and returns the writer's run id.
func runBatches(t *testing.T, j *Journal, batches ...[]string) int64 {
	t.Helper()
	w, err := j.Start(Run{Kind: "map", Command: "[]", StoreOutput: true})
	if err != nil {
		t.Fatal(err)
	}
	cmd := helper("batch-worker")
	p, err := pool.New(pool.Config{
		Command: cmd.Args, Env: cmd.Env, Protocol: pool.Framed, Workers: 2,
		Observer: func(ev pool.Event) { w.Observe(ev) },
	})
	if err != nil {
		t.Fatal(err)
	}
	go func() {
		defer p.Close()
		var seq uint64
		for _, b := range batches {
			seqs, keys, inputs := make([]uint64, len(b)), make([]Key, len(b)), make([][]byte, len(b))
			for i, in := range b {
				seq++
				seqs[i], keys[i], inputs[i] = seq, KeyOf([]byte(in)), []byte(in)
			}
			// The pool numbers a batch's items as the journal does here.
			w.SubmitBatch(seqs[0], seqs, keys, inputs)
			if _, err := p.Submit(t.Context(), pool.Task{Input: []byte(strings.Join(b, "\n")), Items: len(b)}); err != nil {
				return
			}
		}
	}()
	for range p.Results() {
	}
	if err := w.Close(0); err != nil {
		t.Fatal(err)
	}
	return w.RunID()
}

// TestBatchRows journals batches of a real pool: the items done at the
// first attempt go into span rows, many to a row; an item that failed and
// one whose worker died keep a task row each, with their attempts and
// causes; and a resumed run finds each input by its content, line by line,
// in another order and with inputs added.
func TestBatchRows(t *testing.T) {
	j, err := Open(filepath.Join(t.TempDir(), "j.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer j.Close()
	runBatches(t, j, []string{"a", "b", "fail", "c"}, []string{"d", "die", "e"}, []string{"a"})

	db := j.DB()
	var spans, inSpans int
	db.QueryRow(`SELECT count(*), coalesce(sum(count), 0) FROM span`).Scan(&spans, &inSpans)
	if inSpans != 6 || spans < 1 || spans > 3 {
		t.Errorf("span rows, tasks in them = %d, %d, want 1 to 3, 6", spans, inSpans)
	}
	type row struct {
		id              int64
		input, state    string
		cause           string
		attempts, tries int
	}
	var got []row
	rows, err := db.Query(`SELECT id, CAST(input AS TEXT), state, coalesce(cause, ''), attempts,
		(SELECT count(*) FROM attempt a WHERE a.run_id = t.run_id AND a.task_id = t.id) FROM task t ORDER BY id`)
	if err != nil {
		t.Fatal(err)
	}
	for rows.Next() {
		var r row
		rows.Scan(&r.id, &r.input, &r.state, &r.cause, &r.attempts, &r.tries)
		got = append(got, r)
	}
	rows.Close()
	want := []row{
		{3, "fail", "failed", "task-error", 1, 1},
		{6, "die", "failed", "exit:3", 1, 1},
	}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("task rows = %v, want %v", got, want)
	}
	var ids []uint64
	if err := j.EachDone(func(_ int64, id uint64, _ Key) error { ids = append(ids, id); return nil }); err != nil {
		t.Fatal(err)
	}
	slices.Sort(ids)
	if fmt.Sprint(ids) != "[1 2 4 5 7 8]" {
		t.Errorf("done ids = %v, want [1 2 4 5 7 8]", ids)
	}

	// Resume: reordered, with a new input and one more a than was done.
	w, err := j.Start(Run{Kind: "map", Command: "[]", StoreOutput: true, Resumed: true})
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close(0)
	r, err := w.Resumer()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	for _, tt := range []struct {
		in    string
		found bool
	}{
		{"e", true}, {"a", true}, {"x", false}, {"fail", false}, {"a", true}, {"a", false}, {"c", true}, {"die", false}, {"b", true},
	} {
		f, ok, err := r.Lookup(KeyOf([]byte(tt.in)))
		if err != nil {
			t.Fatal(err)
		}
		if ok != tt.found || ok && string(f.Output) != "ok:"+tt.in {
			t.Errorf("Lookup(%s) = %q, %v, want %q, %v", tt.in, f.Output, ok, "ok:"+tt.in, tt.found)
		}
	}
}

// TestSpanReplay writes spans of many tasks with outputs and resumes them
// in another order: every output comes back whole, across span rows and
// the Resumer's cache of them.
func TestSpanReplay(t *testing.T) {
	j, err := Open(filepath.Join(t.TempDir(), "j.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer j.Close()
	run := Run{Kind: "map", Command: "[]", StoreOutput: true}
	w, err := j.Start(run)
	if err != nil {
		t.Fatal(err)
	}
	const n = 3*maxSpan + 100
	input := func(i int) []byte { return []byte("line " + strconv.Itoa(i)) }
	output := func(i int) []byte { return []byte(strings.Repeat("o", i%7) + strconv.Itoa(i)) }
	for i := 1; i <= n; i++ {
		feed(w, uint64(i), uint64(i), KeyOf(input(i)), input(i), pool.Done, output(i))
	}
	if err := w.Close(0); err != nil {
		t.Fatal(err)
	}
	var spans int
	j.DB().QueryRow(`SELECT count(*) FROM span`).Scan(&spans)
	if spans < 4 {
		t.Errorf("%d span rows for %d tasks, want at least 4", spans, n)
	}
	run.Resumed = true
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
	order := rand.Perm(n)
	for _, i := range order {
		i++
		f, ok, err := r.Lookup(KeyOf(input(i)))
		if err != nil {
			t.Fatal(err)
		}
		if !ok || string(f.Output) != string(output(i)) {
			t.Fatalf("Lookup(%s) = %q, %v, want %q, true", input(i), f.Output, ok, output(i))
		}
	}
}

// killedWriter writes batches of done items into the journal at path as
// fast as it can, and says on stdout how many it has given the writer,
// until it is killed.
func killedWriter(path string) int {
	j, err := Open(path)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	w, err := j.Start(Run{Kind: "map", Command: "[]", StoreOutput: true})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	const items = 4096
	out := bufio.NewWriter(os.Stdout)
	for id := uint64(1); ; id += items {
		seqs, keys, inputs := make([]uint64, items), make([]Key, items), make([][]byte, items)
		res := pool.Result{ID: id, State: pool.Done, Items: make([]pool.Item, items)}
		now := time.Now()
		for i := range items {
			in := strconv.AppendUint(nil, id+uint64(i), 10)
			seqs[i], keys[i], inputs[i] = id+uint64(i), KeyOf(in), in
			res.Items[i] = pool.Item{ID: id + uint64(i), Index: i, Output: in, Start: now, End: now}
		}
		res.Attempts = []pool.Attempt{{Number: 1, WorkerPID: 1, Start: now, End: now, ExitCode: -1}}
		w.SubmitBatch(id, seqs, keys, inputs)
		w.Observe(pool.Event{Kind: pool.EventTaskEnded, Time: now, TaskID: id, Result: &res})
		fmt.Fprintln(out, id+items-1)
		out.Flush()
	}
}

// TestKillDuringSpans kills a process that writes span rows as fast as it
// can, at random moments, five times into one journal: the file is never
// corrupt, every span row is whole, and what was given to the writer more
// than two seconds before the kill is in the journal (typically all but the
// last few tens of milliseconds are).
func TestKillDuringSpans(t *testing.T) {
	path := filepath.Join(t.TempDir(), "j.db")
	for round := range 5 {
		cmd := helper("writer", path)
		stdout, err := cmd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		cmd.Stderr = os.Stderr
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		type given struct {
			at time.Time
			n  uint64
		}
		lines := make(chan given, 1024)
		go func() {
			defer close(lines)
			sc := bufio.NewScanner(stdout)
			for sc.Scan() {
				n, _ := strconv.ParseUint(sc.Text(), 10, 64)
				lines <- given{time.Now(), n}
			}
		}()
		deadline := time.After(time.Duration(700+rand.IntN(800)) * time.Millisecond)
		var log []given
	wait:
		for {
			select {
			case g := <-lines:
				log = append(log, g)
			case <-deadline:
				break wait
			}
		}
		cmd.Process.Signal(syscall.SIGKILL)
		killed := time.Now()
		for g := range lines {
			log = append(log, g)
		}
		cmd.Wait()

		j, err := Open(path)
		if err != nil {
			t.Fatalf("round %d: opening the journal after the kill: %v", round, err)
		}
		var check string
		j.DB().QueryRow(`PRAGMA integrity_check`).Scan(&check)
		if check != "ok" {
			t.Errorf("round %d: integrity_check = %q, want ok", round, check)
		}
		var run int64
		j.DB().QueryRow(`SELECT max(id) FROM run`).Scan(&run)
		var done uint64
		if err := j.EachDone(func(r int64, _ uint64, _ Key) error {
			if r == run {
				done++
			}
			return nil
		}); err != nil {
			t.Errorf("round %d: reading the spans: %v", round, err)
		}
		// The writer commits every FlushEvery what it was given; what
		// waits in its queue (maxQueued) and the commit itself take
		// longer on a loaded machine, and under the race detector. The
		// bound says that commits go on during the run, not only at its
		// end; the log shows how much was lost.
		lost := 2 * time.Second
		if raceEnabled {
			lost = 5 * time.Second
		}
		var want uint64
		for _, g := range log {
			if killed.Sub(g.at) > lost {
				want = g.n
			}
		}
		if done < want {
			t.Errorf("round %d: %d tasks done in the journal, want at least %d (given to the writer more than %v before the kill)", round, done, want, lost)
		}
		var last uint64 // none when the kill came before the first batch
		if len(log) > 0 {
			last = log[len(log)-1].n
		}
		t.Logf("round %d: %d items given, %d in the journal", round, last, done)
		j.Close()
	}
}

// TestSpanFileLost writes spans of many tasks, with ids out of order, and
// then damages the span file as a crash of the system can (its tail cut
// short, a page in the middle not what was written): the damaged spans'
// tasks are not found by resume (they run again), every other task's
// output comes back whole, EachDone reports the loss, and a run appended
// after the torn tail is resumed whole.
func TestSpanFileLost(t *testing.T) {
	path := filepath.Join(t.TempDir(), "j.db")
	j, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer j.Close()
	run := Run{Kind: "map", Command: "[]", StoreOutput: true}
	w, err := j.Start(run)
	if err != nil {
		t.Fatal(err)
	}
	const n = 3*maxSpan + 100
	input := func(i int) []byte { return []byte("line " + strconv.Itoa(i)) }
	output := func(i int) []byte { return []byte(strings.Repeat("o", i%7) + strconv.Itoa(i)) }
	// Runs of consecutive ids, and ids alone, in a shuffled order.
	order := make([]int, 0, n)
	for i := 1; i <= n; i += 10 {
		order = append(order, i)
	}
	rand.Shuffle(len(order), func(a, b int) { order[a], order[b] = order[b], order[a] })
	var seqs []int
	for _, first := range order {
		for i := first; i < first+10 && i <= n; i++ {
			if i%10 == 3 {
				continue
			}
			seqs = append(seqs, i)
		}
	}
	for i := 1; i <= n; i += 10 {
		seqs = append(seqs, i+2)
	}
	for k, i := range seqs {
		feed(w, uint64(k+1), uint64(i), KeyOf(input(i)), input(i), pool.Done, output(i))
	}
	if err := w.Close(0); err != nil {
		t.Fatal(err)
	}
	// Every id is in the spans once.
	got := map[uint64]int{}
	if err := j.EachDone(func(_ int64, id uint64, k Key) error {
		got[id]++
		if k != KeyOf(input(int(id))) {
			t.Errorf("task %d has the key of another input", id)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if len(got) != n {
		t.Fatalf("EachDone gave %d tasks, want %d", len(got), n)
	}

	// Damage the first span's data in the middle, and cut the last one's.
	type spanRow struct {
		first    uint64
		count    int
		ids      []byte
		at, size int64
	}
	var spans []spanRow
	rows, err := j.DB().Query(`SELECT first, count, ids, data_at, data_size FROM span ORDER BY data_at`)
	if err != nil {
		t.Fatal(err)
	}
	for rows.Next() {
		var s spanRow
		if err := rows.Scan(&s.first, &s.count, &s.ids, &s.at, &s.size); err != nil {
			t.Fatal(err)
		}
		spans = append(spans, s)
	}
	rows.Close()
	if len(spans) < 3 {
		t.Fatalf("%d span rows, want at least 3", len(spans))
	}
	lost := map[uint64]bool{}
	for _, s := range []spanRow{spans[0], spans[len(spans)-1]} {
		ids, err := SpanIDs(s.first, s.count, s.ids)
		if err != nil {
			t.Fatal(err)
		}
		for _, id := range ids {
			lost[id] = true
		}
	}
	f, err := os.OpenFile(SpanFile(path), os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	// Flip the byte's bits: a constant written there may be the byte that
	// was there already (the spans' layout follows the shuffle above), and
	// then nothing would be damaged.
	b := make([]byte, 1)
	mid := spans[0].at + spans[0].size/2
	if _, err := f.ReadAt(b, mid); err != nil {
		t.Fatal(err)
	}
	b[0] ^= 0xff
	if _, err := f.WriteAt(b, mid); err != nil {
		t.Fatal(err)
	}
	last := spans[len(spans)-1]
	if err := f.Truncate(last.at + last.size/2); err != nil {
		t.Fatal(err)
	}
	f.Close()
	if err := j.EachDone(func(int64, uint64, Key) error { return nil }); !errors.Is(err, ErrSpanLost) {
		t.Errorf("EachDone over a damaged span file: %v, want ErrSpanLost", err)
	}

	// Resume finds every task but the lost ones, with its output.
	// The Resumer counts the lost tasks, for the CLI to say so.
	resume := func(want func(i int) bool, lostTasks int) {
		t.Helper()
		run.Resumed = true
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
		if got, why := r.Lost(); got != lostTasks || (got > 0) != errors.Is(why, ErrSpanLost) {
			t.Errorf("Lost() = %d, %v; want %d", got, why, lostTasks)
		}
		for i := 1; i <= n; i++ {
			f, ok, err := r.Lookup(KeyOf(input(i)))
			if err != nil {
				t.Fatal(err)
			}
			if ok != want(i) || ok && string(f.Output) != string(output(i)) {
				t.Fatalf("Lookup(%s) = %q, %v; want found %v", input(i), f.Output, ok, want(i))
			}
		}
	}
	resume(func(i int) bool { return !lost[uint64(i)] }, len(lost))

	// A new run appends after the torn tail; resumed, it is whole.
	run.Resumed = false
	w, err = j.Start(run)
	if err != nil {
		t.Fatal(err)
	}
	for i := 1; i <= n; i++ {
		feed(w, uint64(i), uint64(i), KeyOf(input(i)), input(i), pool.Done, output(i))
	}
	if err := w.Close(0); err != nil {
		t.Fatal(err)
	}
	// The new run, not resumed, starts the batch over: the first run's
	// lost spans are not looked at.
	resume(func(int) bool { return true }, 0)
}

// TestOlderSchema opens a journal of schema version 2: it is refused with
// ErrOlderSchema, and left as it was.
func TestOlderSchema(t *testing.T) {
	path := filepath.Join(t.TempDir(), "j.db")
	j, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := j.DB().Exec(`PRAGMA user_version = 2`); err != nil {
		t.Fatal(err)
	}
	j.Close()
	if j, err := Open(path); !errors.Is(err, ErrOlderSchema) {
		if err == nil {
			j.Close()
		}
		t.Fatalf("Open of a version 2 journal: %v, want ErrOlderSchema", err)
	}
	db, err := sql.Open("sqlite", path)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	var v int
	if err := db.QueryRow(`PRAGMA user_version`).Scan(&v); err != nil || v != 2 {
		t.Errorf("user_version after the refusal = %d, %v; want 2", v, err)
	}
}

// TestSpanOutputKinds keeps outputs of every kind in span rows and
// replays them on resume: a whole block of lines at once (its answer
// lines as they came), lines of a block settled in several Results, and
// then, in the same span, a framed batch's outputs, which may hold
// newlines (the span's outputs then go with their lengths).
func TestSpanOutputKinds(t *testing.T) {
	j, err := Open(filepath.Join(t.TempDir(), "j.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer j.Close()
	run := Run{Kind: "map", Command: "[]", StoreOutput: true}
	want := map[string]string{}
	now := time.Now()
	// submit gives w a batch of inputs from seq on, with pool ids from id.
	submit := func(w *Writer, id, seq uint64, inputs ...string) {
		seqs, keys := make([]uint64, len(inputs)), make([]Key, len(inputs))
		var block []byte
		for i, in := range inputs {
			seqs[i], keys[i] = seq+uint64(i), KeyOf([]byte(in))
			block = append(append(block, in...), '\n')
		}
		w.SubmitLines(id, seqs, keys, block)
	}
	// end settles the items of batch id done: index and output, in turn;
	// lines says they are a line batch's, whose Result.Output holds them.
	end := func(w *Writer, id uint64, lines bool, inputs []string, settled ...any) {
		res := pool.Result{ID: id, State: pool.Done,
			Attempts: []pool.Attempt{{Number: 1, WorkerPID: 7, Start: now, End: now.Add(time.Millisecond), ExitCode: -1}}}
		for k := 0; k < len(settled); k += 2 {
			i, out := settled[k].(int), settled[k+1].(string)
			res.Items = append(res.Items, pool.Item{ID: id + uint64(i), Index: i, Output: []byte(out)})
			if lines {
				res.Output = append(append(res.Output, out...), '\n')
			}
			want[inputs[i]] = out
		}
		w.Observe(pool.Event{Kind: pool.EventTaskEnded, Time: now, TaskID: id, Result: &res})
	}
	w, err := j.Start(run)
	if err != nil {
		t.Fatal(err)
	}
	b1 := []string{"l1", "l2", "l3"}
	submit(w, 1, 1, b1...)
	end(w, 1, true, b1, 0, "a", 1, "bb", 2, "")
	b2 := []string{"m1", "m2"}
	submit(w, 4, 4, b2...)
	end(w, 4, true, b2, 1, "q")
	end(w, 4, true, b2, 0, "p")
	b3 := []string{"f1", "f2", "f3"}
	submit(w, 6, 6, b3...)
	end(w, 6, false, b3, 2, "x\ny", 0, "", 1, "z\n")
	if err := w.Close(0); err != nil {
		t.Fatal(err)
	}
	var spans, tasks int
	j.DB().QueryRow(`SELECT count(*), sum(count) FROM span`).Scan(&spans, &tasks)
	if spans != 1 || tasks != 8 {
		t.Errorf("%d span rows of %d tasks, want 1 of 8", spans, tasks)
	}
	run.Resumed = true
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
	for in, out := range want {
		f, ok, err := r.Lookup(KeyOf([]byte(in)))
		if err != nil || !ok || string(f.Output) != out {
			t.Errorf("Lookup(%s) = %q, %v, %v; want %q", in, f.Output, ok, err, out)
		}
	}
}

// TestSpanDataOfAnother points a span row at another row's data, whole
// and with their checksum, as a row whose data a crash lost could find a
// later run's data where its own were: the data name their row, so the
// row's tasks are not found by resume (they run again), and EachDone
// reports the loss.
func TestSpanDataOfAnother(t *testing.T) {
	j, err := Open(filepath.Join(t.TempDir(), "j.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer j.Close()
	run := Run{Kind: "map", Command: "[]", StoreOutput: true}
	w, err := j.Start(run)
	if err != nil {
		t.Fatal(err)
	}
	const n = maxSpan + 10
	input := func(i int) []byte { return []byte("line " + strconv.Itoa(i)) }
	for i := 1; i <= n; i++ {
		feed(w, uint64(i), uint64(i), KeyOf(input(i)), input(i), pool.Done, input(i))
	}
	if err := w.Close(0); err != nil {
		t.Fatal(err)
	}
	// The second row gets the first's data.
	res, err := j.DB().Exec(`UPDATE span SET (data_at, data_size, data_crc) =
		(SELECT data_at, data_size, data_crc FROM span WHERE first = 1) WHERE first > 1`)
	if err != nil {
		t.Fatal(err)
	}
	if k, _ := res.RowsAffected(); k != 1 {
		t.Fatalf("%d span rows after the first, want 1", k)
	}
	if err := j.EachDone(func(int64, uint64, Key) error { return nil }); !errors.Is(err, ErrSpanLost) {
		t.Errorf("EachDone: %v, want ErrSpanLost", err)
	}
	run.Resumed = true
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
	for i := 1; i <= n; i++ {
		f, ok, err := r.Lookup(KeyOf(input(i)))
		if err != nil {
			t.Fatal(err)
		}
		if want := i <= maxSpan; ok != want || ok && string(f.Output) != string(input(i)) {
			t.Fatalf("Lookup(%s) = %q, %v; want found %v", input(i), f.Output, ok, want)
		}
	}
}

// TestForeignDatabase opens, as a journal, a SQLite database that another
// program made: it is refused with ErrNotJournal and left as it was, with
// no table of the journal's added and its journal mode unchanged.
func TestForeignDatabase(t *testing.T) {
	path := filepath.Join(t.TempDir(), "customers.db")
	db, err := sql.Open("sqlite", path)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	if _, err := db.Exec(`CREATE TABLE customers (name TEXT); INSERT INTO customers VALUES ('a')`); err != nil {
		t.Fatal(err)
	}
	if j, err := Open(path); !errors.Is(err, ErrNotJournal) {
		if err == nil {
			j.Close()
		}
		t.Fatalf("Open of another program's database: %v, want ErrNotJournal", err)
	}
	var names []string
	rows, err := db.Query(`SELECT name FROM sqlite_master ORDER BY name`)
	if err != nil {
		t.Fatal(err)
	}
	for rows.Next() {
		var n string
		if err := rows.Scan(&n); err != nil {
			t.Fatal(err)
		}
		names = append(names, n)
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(names, []string{"customers"}) {
		t.Errorf("tables after the refusal = %q, want [customers]", names)
	}
	var mode string
	if err := db.QueryRow(`PRAGMA journal_mode`).Scan(&mode); err != nil || mode != "delete" {
		t.Errorf("journal_mode after the refusal = %q, %v; want delete", mode, err)
	}
	// An empty file is a new journal, as a missing one is.
	empty := filepath.Join(t.TempDir(), "empty.db")
	if err := os.WriteFile(empty, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	j, err := Open(empty)
	if err != nil {
		t.Fatalf("Open of an empty file: %v", err)
	}
	j.Close()
}

// TestNotAFile: --journal naming something other than a regular file (a
// device such as /dev/null, a FIFO, a directory) is refused with the
// reason, and nothing is made beside it: SQLite made FILE-journal there
// (in /dev, for /dev/null) before it failed with "disk I/O error".
func TestNotAFile(t *testing.T) {
	dir := t.TempDir()
	fifo := filepath.Join(dir, "fifo")
	if err := syscall.Mkfifo(fifo, 0o644); err != nil {
		t.Fatal(err)
	}
	sub := filepath.Join(dir, "sub")
	if err := os.Mkdir(sub, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, path := range []string{fifo, sub} {
		j, err := Open(path)
		if err == nil {
			j.Close()
			t.Errorf("Open(%s) succeeded", path)
			continue
		}
		if !strings.Contains(err.Error(), "not a regular file") {
			t.Errorf("Open(%s) = %v, want it to say it is not a regular file", path, err)
		}
	}
	entries, _ := os.ReadDir(dir)
	for _, e := range entries {
		if e.Name() != "fifo" && e.Name() != "sub" {
			t.Errorf("made %s", e.Name())
		}
	}
}

// TestJournalThroughALink: a journal named through a symbolic link has
// the span file, and so the spans and the lock, of its file's own name
// (as SQLite follows the link for the WAL): a run through the link made a
// span file of its own beside it, where it found none of the outputs
// runs through the file's name had recorded, nor their lock, and ran
// their tasks again, alongside them. A journal file with more than one
// name (hard links), whose span file would differ by name, is refused.
func TestJournalThroughALink(t *testing.T) {
	dir := t.TempDir()
	if err := os.Mkdir(filepath.Join(dir, "sub"), 0o755); err != nil {
		t.Fatal(err)
	}
	path, link := filepath.Join(dir, "sub", "j.db"), filepath.Join(dir, "link.db")
	if err := os.Symlink(filepath.Join("sub", "j.db"), link); err != nil {
		t.Fatal(err)
	}
	open := func(p string) *Journal {
		t.Helper()
		j, err := Open(p)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { j.Close() })
		return j
	}
	first := open(path)
	if got, want := SpanFile(link), path+"-spans"; got != want {
		t.Errorf("SpanFile(link) = %q, want %q", got, want)
	}
	w, err := first.Start(Run{Kind: "run", Command: `["work"]`})
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close(0)
	if w2, err := open(link).Start(Run{Kind: "run", Command: `["work"]`, Resumed: true}); !errors.Is(err, ErrInUse) {
		if err == nil {
			w2.Close(0)
		}
		t.Errorf("a run through a link while a run of the command goes on: %v, want ErrInUse", err)
	}
	if _, err := os.Lstat(link + "-spans"); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("a span file beside the link: %v", err)
	}

	hard := filepath.Join(dir, "hard.db")
	if err := os.Link(path, hard); err != nil {
		t.Fatal(err)
	}
	for name, p := range map[string]string{"the link": hard, "the first name": path} {
		if j, err := Open(p); !errors.Is(err, ErrLinked) {
			if err == nil {
				j.Close()
			}
			t.Errorf("Open(%s) of a file with two names = %v, want ErrLinked", name, err)
		}
	}
}

// TestOneRunOfACommandAtOnce: a second supervisor that starts a run of
// the same kind and command in a journal while the first goes on is
// refused: two supervisors resuming the same run each ran every task the
// journal did not have as done, and a run started beside a fresh one
// made the other's work invisible to the next --resume (which reads back
// to the last run without it). Runs of other commands share the journal
// as before, and the command is free again once its run has ended (or
// its supervisor died: the lock is the process's).
func TestOneRunOfACommandAtOnce(t *testing.T) {
	path := filepath.Join(t.TempDir(), "j.db")
	open := func() *Journal {
		t.Helper()
		j, err := Open(path)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { j.Close() })
		return j
	}
	first, second := open(), open()
	w, err := first.Start(Run{Kind: "run", Command: `["work"]`})
	if err != nil {
		t.Fatal(err)
	}
	if w2, err := second.Start(Run{Kind: "run", Command: `["work"]`, Resumed: true}); !errors.Is(err, ErrInUse) {
		if err == nil {
			w2.Close(0)
		}
		t.Errorf("a second run of the command while the first goes on: %v, want ErrInUse", err)
	}
	other, err := second.Start(Run{Kind: "map", Command: `["work"]`})
	if err != nil {
		t.Errorf("a run of another kind of the same command: %v", err)
	} else {
		other.Close(0)
	}
	if err := w.Close(0); err != nil {
		t.Fatal(err)
	}
	w2, err := second.Start(Run{Kind: "run", Command: `["work"]`, Resumed: true})
	if err != nil {
		t.Fatalf("once the first run ended: %v", err)
	}
	w2.Close(0)
	var runs int
	if err := second.DB().QueryRow(`SELECT count(*) FROM run`).Scan(&runs); err != nil {
		t.Fatal(err)
	}
	if runs != 3 {
		t.Errorf("%d runs in the journal, want 3: the refused one adds none", runs)
	}
}

// TestOpenExplains opens journals that cannot be: the error says why, as
// SQLite's own ("unable to open database file (14)") does not.
func TestOpenExplains(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "file")
	if err := os.WriteFile(file, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name, path, want string
	}{
		{"no directory", filepath.Join(dir, "missing", "j.db"), "the directory " + filepath.Join(dir, "missing") + " does not exist"},
		{"a file for a directory", filepath.Join(file, "j.db"), file + " is not a directory"},
	}
	// A journal whose first page was written over, and a file of text.
	damaged := filepath.Join(dir, "damaged.db")
	j, err := Open(damaged)
	if err != nil {
		t.Fatal(err)
	}
	w, err := j.Start(Run{Kind: "run", Command: `["true"]`, Workers: 1})
	if err != nil {
		t.Fatal(err)
	}
	w.Close(0)
	j.Close()
	f, err := os.OpenFile(damaged, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt(bytes.Repeat([]byte{0xff}, 12), 100); err != nil { // page 1's b-tree header
		t.Fatal(err)
	}
	f.Close()
	text := filepath.Join(dir, "inputs.txt")
	if err := os.WriteFile(text, bytes.Repeat([]byte("an input line\n"), 100), 0o644); err != nil {
		t.Fatal(err)
	}
	tests = append(tests, []struct{ name, path, want string }{
		{"a damaged journal", damaged, damaged + " is damaged"},
		{"a text file", text, text + " is no SQLite database"},
	}...)
	if os.Geteuid() != 0 { // root writes whatever the mode
		ro := filepath.Join(dir, "ro")
		if err := os.Mkdir(ro, 0o555); err != nil {
			t.Fatal(err)
		}
		tests = append(tests, struct{ name, path, want string }{
			"a directory that cannot be written", filepath.Join(ro, "j.db"), "no file can be made in " + ro})
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			j, err := Open(tt.path)
			if err == nil {
				j.Close()
				t.Fatalf("Open(%s) succeeded", tt.path)
			}
			if !strings.Contains(err.Error(), tt.want) {
				t.Errorf("Open(%s) = %v, want it to say %q", tt.path, err, tt.want)
			}
		})
	}
}

// TestJournalNameWithURICharacters: a journal named with characters that
// a SQLite URI gives a meaning ('?', '#', '%') is the file of that name:
// "night?1.db" and "night?2.db" were both the file "night", each with a
// span file of its own, and "b%41.db" was "bA.db".
func TestJournalNameWithURICharacters(t *testing.T) {
	dir := t.TempDir()
	for _, name := range []string{"night?1.db", "night?2.db", "a#1.db", "b%41.db", "x.db?mode=memory"} {
		path := filepath.Join(dir, name)
		j, err := Open(path)
		if err != nil {
			t.Fatalf("Open(%q): %v", name, err)
		}
		w, err := j.Start(Run{Kind: "run", Command: `["work"]`})
		if err != nil {
			t.Fatalf("Start in %q: %v", name, err)
		}
		w.Close(0)
		j.Close()
		if fi, err := os.Stat(path); err != nil || fi.Size() == 0 {
			t.Errorf("%q: %v, want the journal in the file of that name", name, err)
		}
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		if n := e.Name(); n == "night" || n == "a" || n == "bA.db" || n == "x.db" {
			t.Errorf("a file %q was made for another name", n)
		}
	}
}

// TestCloseUnused: a journal file that Open made and to which no run
// could be added (its span file is a directory) is removed as it closes,
// with its WAL and shared memory, and the directory is left; a journal
// that holds a run is left whole.
func TestCloseUnused(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "j.db")
	if err := os.Mkdir(SpanFile(path), 0o755); err != nil {
		t.Fatal(err)
	}
	j, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	if w, err := j.Start(Run{Kind: "run", Command: `["work"]`}); err == nil {
		w.Close(0)
		t.Fatal("Start with a directory as the span file succeeded")
	}
	if err := j.CloseUnused(); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{path, path + "-wal", path + "-shm"} {
		if _, err := os.Lstat(p); !errors.Is(err, fs.ErrNotExist) {
			t.Errorf("%s is left: %v", filepath.Base(p), err)
		}
	}
	if fi, err := os.Stat(SpanFile(path)); err != nil || !fi.IsDir() {
		t.Errorf("the directory in the span file's place: %v, want it left", err)
	}
	if err := os.Remove(SpanFile(path)); err != nil {
		t.Fatal(err)
	}

	// A journal with a run in it stays, whatever the next run meets.
	if j, err = Open(path); err != nil {
		t.Fatal(err)
	}
	w, err := j.Start(Run{Kind: "run", Command: `["work"]`})
	if err != nil {
		t.Fatal(err)
	}
	w.Close(0)
	j.Close()
	if j, err = Open(path); err != nil {
		t.Fatal(err)
	}
	if err := j.CloseUnused(); err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Stat(path); err != nil || fi.Size() == 0 {
		t.Errorf("a journal holding a run: %v after CloseUnused, want it left", err)
	}
}

// TestWithdraw: a task recorded by Submit that the pool then refused (it
// was stopping) is no task of the run, whether a commit wrote it as
// pending already or not: an interrupted run's report listed one pending
// task more than its summary counted.
func TestWithdraw(t *testing.T) {
	j, w := startRun(t)
	feed(w, 1, 1, KeyOf([]byte("x")), []byte("x"), pool.Done, nil)
	w.Submit(2, 2, KeyOf([]byte("y")), []byte("y"))
	time.Sleep(3 * FlushEvery) // written as pending
	w.Withdraw(2)
	w.Submit(3, 3, KeyOf([]byte("z")), []byte("z"))
	w.Withdraw(3) // at once
	w.SubmitLines(4, []uint64{4, 5}, []Key{KeyOf([]byte("a")), KeyOf([]byte("b"))}, []byte("a\nb\n"))
	w.Withdraw(4)
	if err := w.Close(3); err != nil {
		t.Fatal(err)
	}
	var tasks, done int
	if err := j.DB().QueryRow(`SELECT (SELECT count(*) FROM task), (SELECT coalesce(sum(count), 0) FROM span)`).Scan(&tasks, &done); err != nil {
		t.Fatal(err)
	}
	if tasks != 0 || done != 1 {
		t.Errorf("%d task rows and %d done in spans, want none and the 1 done", tasks, done)
	}
}

// startRun opens a new journal and starts a run of kind run in it; the
// journal is closed at the test's end.
func startRun(t *testing.T) (*Journal, *Writer) {
	t.Helper()
	j, err := Open(filepath.Join(t.TempDir(), "j.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { j.Close() })
	w, err := j.Start(Run{Kind: "run", Command: "[]"})
	if err != nil {
		t.Fatal(err)
	}
	return j, w
}
