package cli

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// TestResumeAbortNamesInput checks that a resumed run stopped by
// --on-worker-death abort names the task it stopped for by its input's
// number, as its summary's list, the job log and the JSON summary's
// failed list do. It named the pool's own number of the task, which skips
// the inputs an earlier run finished: "aborted because task 2 failed" over
// "task 4 (input '4') exit:1 after 1 attempt".
func TestResumeAbortNamesInput(t *testing.T) {
	bin := buildSafepool(t)
	for _, mode := range []string{"run", "map"} {
		t.Run(mode, func(t *testing.T) {
			dir := t.TempDir()
			jdb, js := filepath.Join(dir, "j.db"), filepath.Join(dir, "s.json")
			// Input 4 fails; the first run does inputs 1 and 2 only.
			var cmd []string
			if mode == "run" {
				cmd = []string{"--", "sh", "-c", `[ "$1" != 4 ]`, "sh", "{}"}
			} else {
				cmd = []string{"--worker", `while read -r l; do [ "$l" != 4 ] || exit 3; echo "$l"; done`}
			}
			args := []string{mode, "--no-progress", "-j", "1", "--on-worker-death", "abort", "--journal", jdb, "--json", js}
			out := runThenResume(t, bin, args, cmd)
			if !strings.Contains(out, "task 4 (input '4')") {
				t.Fatalf("the summary does not list task 4 as failed:\n%s", out)
			}
			if want := "aborted because task 4 failed"; !strings.Contains(out, want) {
				t.Errorf("the summary does not say %q:\n%s", want, out)
			}
			data, err := os.ReadFile(js)
			if err != nil {
				t.Fatal(err)
			}
			var s struct {
				AbortReason string `json:"abort_reason"`
			}
			if err := json.Unmarshal(data, &s); err != nil {
				t.Fatalf("the JSON summary: %v\n%s", err, data)
			}
			if !strings.HasPrefix(s.AbortReason, "task 4 failed") {
				t.Errorf("abort_reason = %q, want it to start with %q", s.AbortReason, "task 4 failed")
			}
		})
	}
}

// TestResumeStallNamesInput checks that the notice of a worker that holds a
// line unanswered names the line's task by its input's number in a resumed
// map, as the summary does: it named the pool's own number, which skips the
// inputs an earlier run finished ("task 2" for the fourth input).
func TestResumeStallNamesInput(t *testing.T) {
	bin := buildSafepool(t)
	dir := t.TempDir()
	jdb := filepath.Join(dir, "j.db")
	// At line 4 the worker reads on without answering it, as a worker
	// that does not flush its output does.
	worker := `while read -r l; do if [ "$l" = 4 ]; then cat >/dev/null; fi; echo "$l"; done`
	args := []string{"map", "--no-progress", "-j", "1", "--stall-timeout", "2s", "--journal", jdb}
	out := runThenResume(t, bin, args, []string{"--worker", worker})
	if !strings.Contains(out, "read the line of task 4 but") {
		t.Fatalf("the stall notice does not name task 4:\n%s", out)
	}
	if !strings.Contains(out, "task 4 (input '4')") {
		t.Errorf("the summary does not list task 4 as failed:\n%s", out)
	}
}

// runThenResume runs bin with args and cmd over the inputs 1 and 2, then
// again with --resume over the inputs 1 to 5, and returns what the second
// run wrote on stdout and stderr.
func runThenResume(t *testing.T, bin string, args, cmd []string) string {
	t.Helper()
	sp := func(input string, flags ...string) string {
		t.Helper()
		argv := append(append(slices.Clone(args), flags...), cmd...)
		c := exec.Command(bin, argv...)
		c.Stdin = strings.NewReader(input)
		out, err := c.CombinedOutput()
		if _, ok := err.(*exec.ExitError); err != nil && !ok {
			t.Fatalf("safepool %s: %v\n%s", strings.Join(argv, " "), err, out)
		}
		return string(out)
	}
	sp("1\n2\n")
	return sp("1\n2\n3\n4\n5\n", "--resume")
}
