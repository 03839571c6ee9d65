package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"
)

// runStopped runs args with stdin, cancels it as Ctrl-C does once stderr is
// quiet for a moment after start (the jobs under way), and returns its exit
// status and stderr.
func runStopped(t *testing.T, args []string, stdin *os.File) (int, string) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var stdout bytes.Buffer
	var stderr syncBuffer
	done := make(chan int)
	go func() { done <- Run(ctx, args, stdin, &stdout, &stderr) }()
	time.Sleep(time.Second)
	cancel()
	select {
	case code := <-done:
		return code, stderr.String()
	case <-time.After(30 * time.Second):
		t.Fatalf("Run(%q) did not stop within 30s of the interrupt; stderr:\n%s", args, stderr.String())
	}
	return 0, ""
}

var summaryOf = regexp.MustCompile(`safepool: interrupted: .* of (\d+) tasks? in [^;\n]*(;[^\n]*)?\n`)

// TestStopSaysWhatWasNotRead: a run stopped before the end of its input
// says so in its summary, which counts only the inputs read: with the ::: arguments,
// how many were not run; with lines still to come, that the rest of the
// input was not read. It used to count only the tasks read ("72
// cancelled of 72 tasks" for a run of 100 arguments), as if that were all.
// A run that read its input to the end says nothing of it.
func TestStopSaysWhatWasNotRead(t *testing.T) {
	devNull, err := os.Open(os.DevNull)
	if err != nil {
		t.Fatal(err)
	}
	defer devNull.Close()

	jsonPath := filepath.Join(t.TempDir(), "sum.json")
	args := []string{"run", "--no-progress", "-j", "1", "--grace", "0s", "--json", jsonPath, "sleep", ":::"}
	for range 100 {
		args = append(args, "10")
	}
	code, stderr := runStopped(t, args, devNull)
	m := summaryOf.FindStringSubmatch(stderr)
	if code != exitAborted || m == nil {
		t.Fatalf("run ::: (100 arguments) = %d, want %d and the interrupted summary; stderr:\n%s", code, exitAborted, stderr)
	}
	read, _ := strconv.Atoi(m[1])
	if want := "; " + strconv.Itoa(100-read) + " more inputs not run"; m[2] != want {
		t.Errorf("run ::: (100 arguments), %d tasks read: the summary ends %q, want %q; stderr:\n%s", read, m[2], want, stderr)
	}
	var js struct {
		NotRead *int `json:"inputs_not_read"`
	}
	if b, err := os.ReadFile(jsonPath); err != nil || json.Unmarshal(b, &js) != nil || js.NotRead == nil || *js.NotRead != 100-read {
		b, _ := os.ReadFile(jsonPath)
		t.Errorf("run ::: (100 arguments), %d tasks read: the JSON summary's inputs_not_read is not %d: %s", read, 100-read, b)
	}

	for _, tc := range []struct {
		name string
		args []string
	}{
		{"run", []string{"run", "--no-progress", "-j", "1", "--grace", "0s", "sleep"}},
		{"map", []string{"map", "--no-progress", "-j", "1", "--grace", "0s", "--worker", "while read l; do sleep $l; echo $l; done"}},
		{"map --pipe", []string{"map", "--no-progress", "-j", "1", "--grace", "0s", "--pipe", "--block", "1", "--", "sh", "-c", "sleep 10; cat"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r, w, err := os.Pipe()
			if err != nil {
				t.Fatal(err)
			}
			defer r.Close()
			defer w.Close()
			if _, err := w.WriteString(strings.Repeat("10\n", 50)); err != nil {
				t.Fatal(err)
			}
			code, stderr := runStopped(t, tc.args, r) // w stays open: more lines may come
			m := summaryOf.FindStringSubmatch(stderr)
			if code != exitAborted || m == nil {
				t.Fatalf("%s = %d, want %d and the interrupted summary; stderr:\n%s", tc.name, code, exitAborted, stderr)
			}
			if want := "; the rest of the input not read"; m[2] != want {
				t.Errorf("%s with its input still open: the summary ends %q, want %q; stderr:\n%s", tc.name, m[2], want, stderr)
			}
		})
	}

	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	w.WriteString("10\n10\n")
	w.Close()
	code, stderr = runStopped(t, []string{"run", "--no-progress", "-j", "2", "--grace", "0s", "sleep"}, r)
	m = summaryOf.FindStringSubmatch(stderr)
	if code != exitAborted || m == nil || m[2] != "" {
		t.Errorf("run of 2 lines, both running when interrupted = %d, want %d and a summary with nothing more to say of the input; stderr:\n%s", code, exitAborted, stderr)
	}
}
