package cli

import (
	"bufio"
	"bytes"
	"database/sql"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/safepool/safepool/internal/journal"
)

// buildSafepool builds cmd/safepool into a temporary directory.
func buildSafepool(t *testing.T) string {
	t.Helper()
	goBin, err := exec.LookPath("go")
	if err != nil {
		t.Skipf("no go command to build safepool with: %v", err)
	}
	bin := filepath.Join(t.TempDir(), "safepool")
	out, err := exec.Command(goBin, "build", "-o", bin, "github.com/safepool/safepool/cmd/safepool").CombinedOutput()
	if err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	return bin
}

// TestKillResume SIGKILLs the supervisor at random moments of a run, 20
// times, resumes it with --resume each time, and checks that every task was
// done once by the journal's count and that the output is that of an
// uninterrupted run: for map -k, the last run's output whole (outputs of
// earlier runs are replayed from the journal); for run, which does not
// produce skipped tasks' output again, every run's output together. Tasks
// running, or ended but not yet committed, when the supervisor is killed
// run again: their effects (a line each appends to a file) may be there
// more than once, but every task's is there.
func TestKillResume(t *testing.T) {
	if testing.Short() {
		t.Skip("kills 40 supervisors")
	}
	bin := buildSafepool(t)
	for _, tt := range []struct {
		name   string
		inputs int
		args   func(effects string) []string
	}{
		{"run", 240, func(effects string) []string {
			return []string{"run", "-k", "-j", "4", "--", "sh", "-c",
				`sleep 0.0$(($1 % 5 + 1)); echo "$1" >> ` + effects + `; echo "out $1"`, "sh", "{}"}
		}},
		{"map -k", 240, func(effects string) []string {
			return []string{"map", "-k", "-j", "3", "--pipeline", "4", "--worker",
				`while read l; do sleep 0.0$(($l % 5 + 1)); echo "$l" >> ` + effects + `; echo "out $l"; done`}
		}},
		// Lines in blocks: most lines are quick, so that blocks grow to
		// hundreds of lines; a few sleep, so that kills find them running.
		{"map -k blocks", 60000, func(effects string) []string {
			return []string{"map", "-k", "-j", "3", "--worker",
				`while read l; do case $l in *000) sleep 0.05;; esac; echo "$l" >> ` + effects + `; echo "out $l"; done`}
		}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			var in bytes.Buffer
			for i := range tt.inputs {
				// A repeated input is a task of its own, done as often
				// as it comes.
				fmt.Fprintf(&in, "%d\n", i%(tt.inputs-10))
			}
			dir := t.TempDir()
			effects := filepath.Join(dir, "effects")
			db := filepath.Join(dir, "journal.db")
			var want bytes.Buffer
			for l := range strings.Lines(in.String()) {
				fmt.Fprintf(&want, "out %s", l)
			}
			rng := rand.New(rand.NewPCG(1, uint64(time.Now().UnixNano())))
			var all bytes.Buffer // every run's stdout
			kills, ended := 0, 0
			for i := 0; ; i++ {
				var stdout, stderr bytes.Buffer
				joblog := filepath.Join(dir, fmt.Sprintf("joblog.%d", i))
				args := append([]string{tt.args(effects)[0], "--journal", db, "--resume", "--joblog", joblog}, tt.args(effects)[1:]...)
				cmd := exec.Command(bin, args...)
				cmd.Stdin = bytes.NewReader(in.Bytes())
				cmd.Stdout, cmd.Stderr = &stdout, &stderr
				if err := cmd.Start(); err != nil {
					t.Fatal(err)
				}
				last := i == 20
				if !last {
					time.Sleep(time.Duration(20+rng.IntN(300)) * time.Millisecond)
					if cmd.Process.Signal(syscall.SIGKILL) == nil {
						kills++
					}
				}
				err := cmd.Wait()
				if ws, ok := cmd.ProcessState.Sys().(syscall.WaitStatus); ok && !ws.Signaled() {
					ended++ // it finished before the kill came
				}
				all.Write(stdout.Bytes())
				if last {
					if err != nil {
						t.Fatalf("last run: %v\n%s", err, stderr.String())
					}
					if tt.name != "run" && stdout.String() != want.String() {
						t.Errorf("last run's output =\n%s\nwant\n%s", stdout.String(), want.String())
					}
					break
				}
				checkJoblog(t, db, joblog)
			}
			t.Logf("%d supervisors killed, %d runs ended", kills, ended)
			checkDoneOnce(t, db, tt.args(effects)[0], in.Bytes(), ended)

			// Every task's effect is there; more than once only for
			// tasks that a kill interrupted.
			data, err := os.ReadFile(effects)
			if err != nil {
				t.Fatal(err)
			}
			if got, wantN := countLines(string(data)), countLines(in.String()); !containsAll(got, wantN) {
				t.Errorf("effects = %v, want at least %v", got, wantN)
			} else {
				t.Logf("%d effects for %d tasks", len(strings.Split(strings.TrimSpace(string(data)), "\n")), tt.inputs)
			}
			if tt.name == "run" {
				// Each task's output is printed by the run that did it;
				// a task that a kill interrupted may print it twice.
				got := countLines(all.String())
				for l, n := range countLines(want.String()) {
					if got[l] < n {
						t.Errorf("the runs printed %q %d times, want at least %d", l, got[l], n)
					}
				}
				for l := range got {
					if _, ok := countLines(want.String())[l]; !ok {
						t.Errorf("the runs printed %q, which an uninterrupted run does not", l)
					}
				}
			}
		})
	}
}

// checkDoneOnce checks that the journal has each input done exactly as
// often as it comes, over all the runs, and that the runs that ended
// (wantEnded: the last, and any that finished before its kill came) have
// their end in the journal.
func checkDoneOnce(t *testing.T, db, kind string, input []byte, wantEnded int) {
	t.Helper()
	j, err := journal.Open(db)
	if err != nil {
		t.Fatal(err)
	}
	defer j.Close()
	lines := map[journal.Key]string{}
	for l := range strings.Lines(string(input)) {
		lines[journal.KeyOf([]byte(strings.TrimSuffix(l, "\n")))] = l
	}
	got := map[string]int{}
	err = j.EachDone(func(_ int64, _ uint64, k journal.Key) error {
		got[lines[k]]++
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if want := countLines(string(input)); fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("tasks done in the journal = %v, want %v", got, want)
	}
	var runs, ended int
	j.DB().QueryRow(`SELECT count(*), count(ended) FROM run WHERE kind = ?`, kind).Scan(&runs, &ended)
	// A supervisor killed before it added its run has no row.
	if runs < 2 || runs > 21 || ended != wantEnded {
		t.Errorf("runs, ended runs = %d, %d, want 2 to 21, %d", runs, ended, wantEnded)
	}
}

// checkJoblog checks that the job log of a killed run has a row for every
// task that its journal says is done: rows are written as attempts end.
// The run is the one whose command line names the job log; a supervisor
// killed before it added its run, or before it made its job log, did
// nothing.
func checkJoblog(t *testing.T, db string, path string) {
	t.Helper()
	rows := map[string]bool{}
	if f, err := os.Open(path); err == nil {
		sc := bufio.NewScanner(f)
		for sc.Scan() {
			cols := strings.Split(sc.Text(), "\t")
			if len(cols) == len(joblogColumns) && cols[8] == "-" {
				rows[cols[0]] = true
			}
		}
		f.Close()
	} else if !os.IsNotExist(err) {
		t.Fatal(err)
	}
	j, err := journal.Open(db)
	if err != nil {
		t.Fatal(err)
	}
	defer j.Close()
	var run int64
	arg, _ := json.Marshal(path)
	if err := j.DB().QueryRow(`SELECT id FROM run WHERE instr(argv, ?) > 0`, string(arg)).Scan(&run); err != nil {
		return // killed before it added its run
	}
	err = j.EachDone(func(r int64, id uint64, _ journal.Key) error {
		if r == run && !rows[strconv.FormatUint(id, 10)] {
			t.Errorf("run %d: task %d is done in the journal but has no row in the job log", run, id)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

func countLines(s string) map[string]int {
	m := map[string]int{}
	for l := range strings.Lines(s) {
		m[l]++
	}
	return m
}

func containsAll(got, want map[string]int) bool {
	keys := slices.Collect(func(yield func(string) bool) {
		for k := range want {
			if !yield(k) {
				return
			}
		}
	})
	for _, k := range keys {
		if got[k] < want[k] {
			return false
		}
	}
	return true
}

// lineReadsWorker is a line worker, the fixture line-reads REC FAIL
// FIXED: it answers each line l with "r l", exits with status 3 at the
// line FAIL unless the file FIXED exists, and writes to REC the most whole
// lines it got in one read of its stdin, each time that grows: lines sent
// as one block come in one read, lines sent as tasks of their own do not.
func lineReadsWorker(rec, fail, fixed string) int {
	buf := make([]byte, 1<<20)
	var part []byte // a line not whole yet
	out := bufio.NewWriter(os.Stdout)
	most := 0
	for {
		n, err := os.Stdin.Read(buf)
		data := append(part, buf[:n]...)
		lines := 0
		for {
			k := bytes.IndexByte(data, '\n')
			if k < 0 {
				break
			}
			line := string(data[:k])
			data = data[k+1:]
			lines++
			if line == fail {
				if _, err := os.Stat(fixed); err != nil {
					out.Flush()
					return 3
				}
			}
			fmt.Fprintf(out, "r %s\n", line)
		}
		part = append(part[:0:0], data...)
		if err := out.Flush(); err != nil {
			return 1
		}
		if lines > most {
			most = lines
			if err := os.WriteFile(rec, []byte(strconv.Itoa(most)), 0o644); err != nil {
				return 1
			}
		}
		if err != nil {
			return 0
		}
	}
}

// TestResumeBlocks checks that map with a journal moves lines in blocks,
// and that --resume does too: an extended and reordered input skips the
// lines an earlier run finished, line by line, and runs the rest in
// blocks (whole blocks come to the worker in one read, hundreds of lines
// where tasks of a line each come a few dozen at most); a line failing
// inside a block gets a task row of its own, the lines done with it go to
// span rows, and --resume-failed runs it alone again.
func TestResumeBlocks(t *testing.T) {
	bin := buildSafepool(t)
	dir := t.TempDir()
	db := filepath.Join(dir, "journal.db")
	fixed := filepath.Join(dir, "fixed")
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	fixture := filepath.Join(dir, "fixture")
	if err := os.Symlink(self, fixture); err != nil {
		t.Fatal(err)
	}
	lines := func(from, to, step int) []int {
		var ls []int
		for i := from; i != to; i += step {
			ls = append(ls, i)
		}
		return ls
	}
	type summary struct {
		Tasks struct {
			Submitted, Done, Failed, Skipped int
			SkippedFailed                    int `json:"skipped_failed"`
		}
	}
	// mapRun runs map over in, and returns its output, its summary and the
	// most lines its workers got in one read.
	mapRun := func(name string, in []int, flags ...string) (string, summary, int) {
		t.Helper()
		var stdin, stdout, stderr bytes.Buffer
		for _, l := range in {
			fmt.Fprintf(&stdin, "%d\n", l)
		}
		js := filepath.Join(dir, name+".json")
		// One path for every run: it is in the command, which resume
		// matches.
		rec := filepath.Join(dir, "reads")
		os.Remove(rec)
		args := append([]string{"map", "-k", "-j", "2", "--journal", db, "--json", js}, flags...)
		cmd := exec.Command(bin, append(args, "--", fixture, "line-reads", rec, "1500", fixed)...)
		cmd.Stdin, cmd.Stdout, cmd.Stderr = &stdin, &stdout, &stderr
		err := cmd.Run()
		t.Logf("%s: %v: %s", name, err, strings.TrimSpace(stderr.String()))
		data, rerr := os.ReadFile(js)
		if rerr != nil {
			t.Fatalf("%s: %v\n%s", name, rerr, stderr.String())
		}
		var s summary
		if err := json.Unmarshal(data, &s); err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		data, _ = os.ReadFile(rec)
		most, _ := strconv.Atoi(string(data))
		return stdout.String(), s, most
	}
	want := func(in []int, skip int) string {
		var b strings.Builder
		for _, l := range in {
			if l != skip {
				fmt.Fprintf(&b, "r %d\n", l)
			}
		}
		return b.String()
	}
	count := func(query string, args ...any) int {
		t.Helper()
		j, err := journal.Open(db)
		if err != nil {
			t.Fatal(err)
		}
		defer j.Close()
		var n int
		if err := j.DB().QueryRow(query, args...).Scan(&n); err != nil {
			t.Fatalf("%s: %v", query, err)
		}
		return n
	}
	lastRun := func() int { return count(`SELECT max(id) FROM run`) }
	// A read of more lines than a pipeline of one-line tasks sends (32)
	// shows blocks. Blocks are sized to a few ms of work by the time per
	// line seen, so on a loaded machine they may hold fewer than 100.
	const inBlocks = 33

	// The first 3000 lines; line 1500 fails (its worker exits).
	in1 := lines(0, 3000, 1)
	out, s, most := mapRun("1", in1)
	if out != want(in1, 1500) {
		t.Errorf("run 1's output is not every line but 1500's, in order")
	}
	if s.Tasks.Done != 2999 || s.Tasks.Failed != 1 || most < inBlocks {
		t.Errorf("run 1: %+v, at most %d lines in a read; want 2999 done, 1 failed, in blocks (%d lines or more in a read)", s, most, inBlocks)
	}
	run := lastRun()
	if n := count(`SELECT count(*) FROM task WHERE run_id = ? AND state = 'failed' AND input = CAST('1500' AS BLOB)`, run); n != 1 {
		t.Errorf("run 1: %d task rows of line 1500 failed, want 1", n)
	}
	if n := count(`SELECT count(*) FROM task WHERE run_id = ? AND state = 'done'`, run); n > 30 {
		t.Errorf("run 1: %d task rows done, want the lines done at once in span rows", n)
	}
	if n := count(`SELECT coalesce(sum(count), 0) FROM span WHERE run_id = ?`, run) +
		count(`SELECT count(*) FROM task WHERE run_id = ? AND state = 'done'`, run); n != 2999 {
		t.Errorf("run 1: %d lines done in span and task rows, want 2999", n)
	}

	// Extended and reordered: the new lines first, then the old ones.
	in2 := lines(4999, -1, -1)
	out, s, most = mapRun("2", in2, "--resume")
	if out != want(in2, 1500) {
		t.Errorf("run 2's output is not every line but 1500's, in order")
	}
	if s.Tasks.Submitted != 2000 || s.Tasks.Done != 2000 || s.Tasks.Skipped != 3000 || s.Tasks.SkippedFailed != 1 || most < inBlocks {
		t.Errorf("run 2: %+v, at most %d lines in a read; want 2000 done in blocks (%d lines or more in a read), 3000 skipped, 1 of them failed", s, most, inBlocks)
	}
	if n := count(`SELECT coalesce(sum(count), 0) FROM span WHERE run_id = ?`, lastRun()); n != 2000 {
		t.Errorf("run 2: %d lines in span rows, want 2000", n)
	}

	// --resume-failed runs line 1500 again, and only it.
	if err := os.WriteFile(fixed, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	out, s, _ = mapRun("3", in2, "--resume-failed")
	if out != want(in2, -1) {
		t.Errorf("run 3's output is not every line in order")
	}
	if s.Tasks.Submitted != 1 || s.Tasks.Done != 1 || s.Tasks.Skipped != 4999 {
		t.Errorf("run 3: %+v, want 1 done, 4999 skipped", s)
	}
	j, err := journal.Open(db)
	if err != nil {
		t.Fatal(err)
	}
	defer j.Close()
	done := map[journal.Key]int{}
	if err := j.EachDone(func(_ int64, _ uint64, k journal.Key) error { done[k]++; return nil }); err != nil {
		t.Fatal(err)
	}
	for _, l := range in2 {
		if k := journal.KeyOf([]byte(strconv.Itoa(l))); done[k] != 1 {
			t.Errorf("line %d done %d times in the journal, want 1", l, done[k])
		}
	}
}

// TestResumeLostSpans cuts the span file of a map's journal short, as a
// crash of the system that lost its tail from the page cache would: map
// --resume runs the lines of the spans whose data are gone again, skips
// the others, and its output is that of an uninterrupted run. (It also
// caught, about one run in twenty, a result of -k written before outputs
// replayed ahead of it that still waited in their channel.)
func TestResumeLostSpans(t *testing.T) {
	bin := buildSafepool(t)
	dir := t.TempDir()
	db := filepath.Join(dir, "journal.db")
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	fixture := filepath.Join(dir, "fixture")
	if err := os.Symlink(self, fixture); err != nil {
		t.Fatal(err)
	}
	const n = 30000
	var stdin, want strings.Builder
	for i := range n {
		fmt.Fprintf(&stdin, "%d\n", i)
		fmt.Fprintf(&want, "r %d\n", i)
	}
	type summary struct {
		Tasks struct{ Submitted, Done, Skipped int }
	}
	mapRun := func(name string, flags ...string) (string, summary) {
		t.Helper()
		var stdout, stderr bytes.Buffer
		js := filepath.Join(dir, name+".json")
		args := append([]string{"map", "-k", "-j", "2", "--journal", db, "--json", js}, flags...)
		cmd := exec.Command(bin, append(args, "--", fixture, "line-reads", filepath.Join(dir, "reads"), "-1", "none")...)
		cmd.Stdin, cmd.Stdout, cmd.Stderr = strings.NewReader(stdin.String()), &stdout, &stderr
		if err := cmd.Run(); err != nil {
			t.Fatalf("%s: %v: %s", name, err, stderr.String())
		}
		var s summary
		data, err := os.ReadFile(js)
		if err == nil {
			err = json.Unmarshal(data, &s)
		}
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		return stdout.String(), s
	}
	if out, _ := mapRun("1"); out != want.String() {
		t.Fatalf("run 1's output is not every line in order")
	}
	// Cut the span file in the middle of its last span's data: the lines
	// of that span are lost, those before it kept.
	j, err := journal.Open(db)
	if err != nil {
		t.Fatal(err)
	}
	var spans, lastCount int
	var lastAt, lastSize int64
	err = j.DB().QueryRow(`SELECT (SELECT count(*) FROM span), count, data_at, data_size FROM span ORDER BY data_at DESC LIMIT 1`).
		Scan(&spans, &lastCount, &lastAt, &lastSize)
	j.Close()
	if err != nil {
		t.Fatal(err)
	}
	if spans < 2 {
		t.Fatalf("%d span rows for %d lines, want several", spans, n)
	}
	if err := os.Truncate(journal.SpanFile(db), lastAt+lastSize/2); err != nil {
		t.Fatal(err)
	}
	out, s := mapRun("2", "--resume")
	if out != want.String() {
		got, w := strings.Split(out, "\n"), strings.Split(want.String(), "\n")
		i := 0
		for i < min(len(got), len(w)) && got[i] == w[i] {
			i++
		}
		t.Errorf("run 2's output is not every line in order: %d lines, want %d; line %d is %q, want %q",
			len(got), len(w), i, got[min(i, len(got)-1)], w[min(i, len(w)-1)])
	}
	if s.Tasks.Done != lastCount || s.Tasks.Skipped != n-lastCount {
		t.Errorf("run 2: %+v; want the %d lines of the lost span done again, the %d others skipped", s.Tasks, lastCount, n-lastCount)
	}
}

// pipeBlockWorker is a map --pipe command, the fixture pipe-block LOG
// STALL FAIL FIXED: it reads its block of lines and writes "p LINE" for
// each, then appends the block's first line to LOG, one line a run of it
// that succeeded. Unless the file FIXED exists, a block holding the line
// STALL waits for FIXED and then exits with status 1, and one holding
// FAIL exits with status 3, both writing nothing.
func pipeBlockWorker(log, stall, fail, fixed string) int {
	in, err := io.ReadAll(os.Stdin)
	if err != nil {
		return 1
	}
	lines := strings.Split(strings.TrimSuffix(string(in), "\n"), "\n")
	if _, err := os.Stat(fixed); err != nil {
		for _, l := range lines {
			switch l {
			case stall:
				for {
					if _, err := os.Stat(fixed); err == nil {
						return 1
					}
					time.Sleep(20 * time.Millisecond)
				}
			case fail:
				return 3
			}
		}
	}
	var out bytes.Buffer
	for _, l := range lines {
		fmt.Fprintf(&out, "p %s\n", l)
	}
	if _, err := os.Stdout.Write(out.Bytes()); err != nil {
		return 1
	}
	f, err := os.OpenFile(log, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o644)
	if err != nil {
		return 1
	}
	if _, err := f.WriteString(lines[0] + "\n"); err != nil {
		return 1
	}
	return closeOK(f)
}

// pipeInput is the input of the map --pipe resume tests: n lines of
// width bytes, numbered, which --block 100*width cuts into blocks of 100
// lines, and what the fixture pipe-block makes of it.
func pipeInput(n, width int) (in, want []byte) {
	var ib, wb bytes.Buffer
	for i := range n {
		fmt.Fprintf(&ib, "%s\n", pipeLine(i, width))
		fmt.Fprintf(&wb, "p %s\n", pipeLine(i, width))
	}
	return ib.Bytes(), wb.Bytes()
}

// pipeLine is the i-th line of pipeInput, without its newline.
func pipeLine(i, width int) string { return fmt.Sprintf("%0*d", width-1, i) }

// blocksRun reads the fixture pipe-block's log: the blocks that ran, by
// the number of their first line, in the order they ended.
func blocksRun(t *testing.T, log string) []string {
	t.Helper()
	data, err := os.ReadFile(log)
	if err != nil && !os.IsNotExist(err) {
		t.Fatal(err)
	}
	var blocks []string
	for _, f := range strings.Fields(string(data)) {
		n, err := strconv.Atoi(f)
		if err != nil {
			t.Fatalf("log %s: %v", log, err)
		}
		blocks = append(blocks, strconv.Itoa(n))
	}
	return blocks
}

// TestResumePipe SIGKILLs map -k --pipe --block while a block stalls, the
// blocks before it done and their outputs written, then resumes it with
// --resume: the output is that of an uninterrupted run, and the blocks
// done before are not run again, their outputs replayed from the journal.
//
// Blocks of 7-byte lines make outputs that wait in the output's buffer;
// blocks of 1000-byte lines make outputs longer than it, written out at
// once, which the journal must learn of as soon.
func TestResumePipe(t *testing.T) {
	bin := buildSafepool(t)
	for _, width := range []int{7, 1000} {
		t.Run(fmt.Sprintf("lines of %d bytes", width), func(t *testing.T) { testResumePipe(t, bin, width) })
	}
}

func testResumePipe(t *testing.T, bin string, width int) {
	dir := t.TempDir()
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	fixture := filepath.Join(dir, "fixture")
	if err := os.Symlink(self, fixture); err != nil {
		t.Fatal(err)
	}
	db, log, fixed := filepath.Join(dir, "journal.db"), filepath.Join(dir, "log"), filepath.Join(dir, "fixed")
	in, want := pipeInput(3000, width) // 30 blocks of 100 lines
	args := func(flags ...string) []string {
		a := append([]string{"map", "-k", "-j", "2", "--pipe", "--block", strconv.Itoa(100 * width), "--journal", db}, flags...)
		return append(a, "--", fixture, "pipe-block", log, pipeLine(1500, width), "none", fixed)
	}
	cmd := exec.Command(bin, args()...)
	cmd.Stdin = bytes.NewReader(in)
	var stdout1, stderr1 bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout1, &stderr1
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	// Blocks 0 to 14 end; block 15 stalls, and -k holds the outputs of
	// those after it.
	for deadline := time.Now().Add(60 * time.Second); len(blocksRun(t, log)) < 15; time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			cmd.Process.Kill()
			cmd.Wait()
			t.Fatalf("blocks run: %v; stderr:\n%s", blocksRun(t, log), stderr1.String())
		}
	}
	// Their outputs are written and committed within a few FlushEvery.
	time.Sleep(10 * journal.FlushEvery)
	if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	cmd.Wait()
	if err := os.WriteFile(fixed, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if !bytes.HasPrefix(want, stdout1.Bytes()) || stdout1.Len() < 1500*(width+2) {
		t.Fatalf("the killed run wrote %d bytes, want the output of the first 15 blocks at least", stdout1.Len())
	}
	before := blocksRun(t, log)
	t.Logf("before the kill, %d blocks ran: %v", len(before), before)

	cmd = exec.Command(bin, args("--resume")...)
	cmd.Stdin = bytes.NewReader(in)
	var stdout2, stderr2 bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout2, &stderr2
	if err := cmd.Run(); err != nil {
		t.Fatalf("resumed run: %v\n%s", err, stderr2.String())
	}
	if !bytes.Equal(stdout2.Bytes(), want) {
		t.Errorf("the resumed run's output (%d bytes) is not an uninterrupted run's (%d bytes)", stdout2.Len(), len(want))
	}
	again := blocksRun(t, log)[len(before):]
	for _, b := range again {
		if n, _ := strconv.Atoi(b); n < 1500 {
			t.Errorf("block %s ran again, though done before the kill", b)
		}
	}
	ran := map[string]bool{}
	for _, b := range blocksRun(t, log) {
		ran[b] = true
	}
	if len(ran) != 30 {
		t.Errorf("%d blocks ran in all, want 30", len(ran))
	}
	if !strings.Contains(stderr2.String(), "15 skipped") && !strings.Contains(stderr2.String(), "skipped, done") {
		t.Errorf("the resumed run's summary says nothing of skipped blocks:\n%s", stderr2.String())
	}
	t.Logf("resumed: %d blocks ran: %v; %s", len(again), again, strings.TrimSpace(stderr2.String()))
}

// TestResumePipeFailed checks that map --pipe --resume skips a block that
// failed, and --resume-failed runs it again, alone, writing the outputs of
// the others from the journal.
func TestResumePipeFailed(t *testing.T) {
	bin := buildSafepool(t)
	dir := t.TempDir()
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	fixture := filepath.Join(dir, "fixture")
	if err := os.Symlink(self, fixture); err != nil {
		t.Fatal(err)
	}
	db, log, fixed := filepath.Join(dir, "journal.db"), filepath.Join(dir, "log"), filepath.Join(dir, "fixed")
	in, want := pipeInput(1000, 7) // 10 blocks of 100 lines
	run := func(name string, flags ...string) (string, error) {
		t.Helper()
		args := append([]string{"map", "-j", "2", "--pipe", "--block", "700", "--journal", db}, flags...)
		cmd := exec.Command(bin, append(args, "--", fixture, "pipe-block", log, "none", pipeLine(500, 7), fixed)...)
		cmd.Stdin = bytes.NewReader(in)
		var stdout, stderr bytes.Buffer
		cmd.Stdout, cmd.Stderr = &stdout, &stderr
		err := cmd.Run()
		t.Logf("%s: %v: %s", name, err, strings.TrimSpace(stderr.String()))
		return stdout.String(), err
	}
	sorted := func(s string) string {
		ls := strings.SplitAfter(s, "\n")
		slices.Sort(ls)
		return strings.Join(ls, "")
	}
	wantBut5 := strings.Replace(string(want), string(want[500*9:600*9]), "", 1)

	out, err := run("first")
	if err == nil {
		t.Fatal("the first run succeeded, though block 5 fails")
	}
	if sorted(out) != sorted(wantBut5) {
		t.Errorf("first run's output is not every block's but block 5's")
	}
	if n := len(blocksRun(t, log)); n != 9 {
		t.Fatalf("%d blocks ran, want 9", n)
	}
	if err := os.WriteFile(fixed, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	// --resume skips the failed block too, as GNU parallel's does.
	out, err = run("resume", "--resume")
	if sorted(out) != sorted(wantBut5) {
		t.Errorf("--resume's output is not every block's but block 5's")
	}
	if n := len(blocksRun(t, log)); n != 9 {
		t.Errorf("--resume ran %d blocks, want none", n-9)
	}
	if err == nil {
		t.Errorf("--resume succeeded, though it skipped a failed block")
	}
	out, err = run("resume-failed", "--resume-failed")
	if err != nil {
		t.Errorf("--resume-failed: %v", err)
	}
	if sorted(out) != sorted(string(want)) {
		t.Errorf("--resume-failed's output is not every block's")
	}
	if again := blocksRun(t, log)[9:]; !slices.Equal(again, []string{"500"}) {
		t.Errorf("--resume-failed ran blocks %v, want only 500", again)
	}
}

// TestResumePipeLongOutput checks that map --pipe with a journal keeps a
// block's output over the pool's memory (3 MB, over --block) but not one
// over maxJournalOutput, which it says, and which --resume runs again,
// the output whole either way.
func TestResumePipeLongOutput(t *testing.T) {
	bin := buildSafepool(t)
	dir := t.TempDir()
	db, log := filepath.Join(dir, "journal.db"), filepath.Join(dir, "log")
	long := strconv.Itoa(maxJournalOutput + 1)
	script := `b=$(cat); case $b in a) head -c ` + long + ` /dev/zero;; b) head -c 3000000 /dev/zero;; esac; echo $b >> ` + log
	run := func(flags ...string) (int, string) {
		t.Helper()
		args := append([]string{"map", "-k", "-j", "2", "--pipe", "--block", "2", "--journal", db}, flags...)
		cmd := exec.Command(bin, append(args, "--", "sh", "-c", script)...)
		cmd.Stdin = strings.NewReader("a\nb\n")
		var stderr bytes.Buffer
		out, err := cmd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		cmd.Stderr = &stderr
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		n, _ := io.Copy(io.Discard, out)
		if err := cmd.Wait(); err != nil {
			t.Fatalf("%v: %v\n%s", flags, err, stderr.String())
		}
		return int(n), stderr.String()
	}
	want := maxJournalOutput + 1 + 3000000
	n, stderr := run()
	if n != want || !strings.Contains(stderr, "the journal does not keep it") {
		t.Errorf("first run: %d bytes of output, want %d; stderr:\n%s", n, want, stderr)
	}
	n, stderr = run("--resume")
	if n != want || !strings.Contains(stderr, "1 skipped, done in an earlier run") {
		t.Errorf("resumed run: %d bytes of output, want %d; stderr:\n%s", n, want, stderr)
	}
	if got := blocksLog(t, log); !slices.Equal(got, []string{"a", "b", "a"}) && !slices.Equal(got, []string{"b", "a", "a"}) {
		t.Errorf("blocks run: %v, want a and b, then a again", got)
	}
}

// blocksLog reads a log of words, one a line.
func blocksLog(t *testing.T, path string) []string {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return strings.Fields(string(data))
}

// TestKeepOrderJournalsHeldLines: map -k holds the lines done behind one
// that still runs, to write them in order (as many as the pool keeps
// undelivered); the journal has them done all the same, with their
// outputs, so that a kill loses none of them. The journal learnt of a
// task only once its output was written out, which -k delays until every
// line before it is done: the lines done behind a slow first line were in
// no row, and a SIGKILL lost them all (with tasks of minutes, the hours
// of work of dozens of lines). --resume skips them, and replays their
// outputs in their places.
func TestKeepOrderJournalsHeldLines(t *testing.T) {
	bin := buildSafepool(t)
	dir := t.TempDir()
	db := filepath.Join(dir, "journal.db")
	release := filepath.Join(dir, "release")
	var in, want bytes.Buffer
	in.WriteString("slow\n")
	want.WriteString("out slow\n")
	for i := 1; i <= 200; i++ {
		fmt.Fprintf(&in, "%d\n", i)
		fmt.Fprintf(&want, "out %d\n", i)
	}
	// Lines one at a time (--pipeline 1): the pool keeps dozens of them
	// done and undelivered behind the first (MaxPending).
	const held = 10
	worker := `while read l; do if [ "$l" = slow ]; then while [ ! -e ` + release + ` ]; do sleep 0.01; done; fi; echo "out $l"; done`
	mapRun := func(extra ...string) *exec.Cmd {
		args := append([]string{"map", "-k", "-j", "2", "--pipeline", "1", "--journal", db, "--json", filepath.Join(dir, "sum.json")}, extra...)
		cmd := exec.Command(bin, append(args, "--worker", worker)...)
		cmd.Stdin = bytes.NewReader(in.Bytes())
		return cmd
	}
	done := func() int {
		ro, err := sql.Open("sqlite", "file:"+db+"?mode=ro")
		if err != nil {
			t.Fatal(err)
		}
		defer ro.Close()
		var n int
		if err := ro.QueryRow(`SELECT (SELECT coalesce(sum(count), 0) FROM span) + (SELECT count(*) FROM task WHERE state = 'done')`).Scan(&n); err != nil {
			return -1 // not made yet
		}
		return n
	}

	first := mapRun()
	var stderr bytes.Buffer
	first.Stderr = &stderr
	if err := first.Start(); err != nil {
		t.Fatal(err)
	}
	n := 0
	for deadline := time.Now().Add(15 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		if n = done(); n >= held {
			break
		}
	}
	first.Process.Signal(syscall.SIGKILL)
	first.Wait()
	if n < held {
		t.Fatalf("while the first line ran, the journal had %d lines done, want the %d or more done behind it; stderr: %s", n, held, stderr.String())
	}

	if err := os.WriteFile(release, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	var stdout bytes.Buffer
	stderr.Reset()
	resumed := mapRun("--resume")
	resumed.Stdout, resumed.Stderr = &stdout, &stderr
	if err := resumed.Run(); err != nil {
		t.Fatalf("resumed: %v: %s", err, stderr.String())
	}
	if stdout.String() != want.String() {
		t.Errorf("resumed output =\n%s\nwant every line in order", stdout.String())
	}
	var sum struct {
		Tasks struct{ Submitted, Done, Skipped int }
	}
	data, err := os.ReadFile(filepath.Join(dir, "sum.json"))
	if err == nil {
		err = json.Unmarshal(data, &sum)
	}
	if err != nil {
		t.Fatal(err)
	}
	if sum.Tasks.Skipped < n || sum.Tasks.Submitted+sum.Tasks.Skipped != 201 || sum.Tasks.Done != sum.Tasks.Submitted {
		t.Errorf("resumed: %+v; want the %d lines the journal had done skipped, and the others done", sum.Tasks, n)
	}
}

// TestResumeHeap checks that a resumed map of lines lets its heap grow to
// about twice what is live, Go's default, not four times as a map of
// lines without a journal does: a resumed run holds the keys of every task
// earlier runs finished, 300,000 here, some 30 MiB live (a batch of 20
// million lines holds 2 GiB). The collector's trace gives each
// collection's live heap and the next goal.
func TestResumeHeap(t *testing.T) {
	bin := buildSafepool(t)
	dir := t.TempDir()
	db := filepath.Join(dir, "journal.db")
	var in strings.Builder
	for i := range 300000 {
		fmt.Fprintf(&in, "%d\n", i)
	}
	mapRun := func(env []string, flags ...string) string {
		t.Helper()
		var stderr bytes.Buffer
		cmd := exec.Command(bin, append([]string{"map", "-j", "2", "--journal", db}, append(flags, "--worker", "cat")...)...)
		cmd.Env = append(os.Environ(), env...)
		cmd.Stdin, cmd.Stdout, cmd.Stderr = strings.NewReader(in.String()), io.Discard, &stderr
		if err := cmd.Run(); err != nil {
			t.Fatalf("map %v: %v: %s", flags, err, stderr.String())
		}
		return stderr.String()
	}
	mapRun([]string{"GOGC="})
	trace := mapRun([]string{"GOGC=", "GODEBUG=gctrace=1"}, "--resume")
	// gc 7 @3.558s 4%: ..., 682->706->210 MB, 878 MB goal, ...: the goal
	// of a line is that of its collection, set at the end of the one
	// before, with the live heap that one left.
	gc := regexp.MustCompile(`\d+->\d+->(\d+) MB, (\d+) MB goal`)
	seen, live := 0, 0
	for _, m := range gc.FindAllStringSubmatch(trace, -1) {
		goal, _ := strconv.Atoi(m[2])
		// Below 16 MB live, the heap's minimum goal (4 MB) and stacks
		// weigh too much.
		if live >= 16 {
			seen++
			if goal > 3*live {
				t.Errorf("a collection left %d MB live and the next one's goal was %d MB, want at most 3 times it", live, goal)
			}
		}
		live, _ = strconv.Atoi(m[1])
	}
	if seen == 0 {
		t.Fatalf("no collection with 16 MB live or more in the resumed run's trace:\n%s", trace)
	}
}
