package cli

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
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
	const inputs = 240
	var in bytes.Buffer
	for i := range inputs {
		// A repeated input is a task of its own, done as often as it
		// comes.
		fmt.Fprintf(&in, "%d\n", i%(inputs-10))
	}
	for _, tt := range []struct {
		name string
		args func(effects string) []string
	}{
		{"run", func(effects string) []string {
			return []string{"run", "-k", "-j", "4", "--", "sh", "-c",
				`sleep 0.0$(($1 % 5 + 1)); echo "$1" >> ` + effects + `; echo "out $1"`, "sh", "{}"}
		}},
		{"map -k", func(effects string) []string {
			return []string{"map", "-k", "-j", "3", "--pipeline", "4", "--worker",
				`while read l; do sleep 0.0$(($l % 5 + 1)); echo "$l" >> ` + effects + `; echo "out $l"; done`}
		}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			effects := filepath.Join(dir, "effects")
			db := filepath.Join(dir, "journal.db")
			var want bytes.Buffer
			for l := range strings.Lines(in.String()) {
				fmt.Fprintf(&want, "out %s", l)
			}
			rng := rand.New(rand.NewPCG(1, uint64(time.Now().UnixNano())))
			var all bytes.Buffer // every run's stdout
			kills := 0
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
				all.Write(stdout.Bytes())
				if last {
					if err != nil {
						t.Fatalf("last run: %v\n%s", err, stderr.String())
					}
					if tt.name == "map -k" && stdout.String() != want.String() {
						t.Errorf("last run's output =\n%s\nwant\n%s", stdout.String(), want.String())
					}
					break
				}
				checkJoblog(t, db, joblog)
			}
			t.Logf("%d supervisors killed", kills)
			checkDoneOnce(t, db, tt.args(effects)[0], in.Bytes())

			// Every task's effect is there; more than once only for
			// tasks that a kill interrupted.
			data, err := os.ReadFile(effects)
			if err != nil {
				t.Fatal(err)
			}
			if got, wantN := countLines(string(data)), countLines(in.String()); !containsAll(got, wantN) {
				t.Errorf("effects = %v, want at least %v", got, wantN)
			} else {
				t.Logf("%d effects for %d tasks", len(strings.Split(strings.TrimSpace(string(data)), "\n")), inputs)
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
// often as it comes, over all the runs.
func checkDoneOnce(t *testing.T, db, kind string, input []byte) {
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
	if runs < 2 || runs > 21 || ended != 1 {
		t.Errorf("runs, ended runs = %d, %d, want 2 to 21, 1", runs, ended)
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
