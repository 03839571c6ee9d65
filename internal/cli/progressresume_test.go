package cli

import (
	"bytes"
	"context"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
)

// TestProgressCountsSkippedInputs resumes a run of eight ::: arguments of
// which an earlier run did six: the bar counts those six as done before
// the run, so that it reaches its end with the two that run. It used to
// count only the tasks of the resumed run against all eight inputs, and
// stopped at a quarter, with an ETA for eight tasks.
func TestProgressCountsSkippedInputs(t *testing.T) {
	journal := filepath.Join(t.TempDir(), "jobs.db")
	done := []string{"0.01", "0.02", "0.03", "0.04", "0.05", "0.06"}
	var stdout, stderr bytes.Buffer
	args := append([]string{"run", "-j", "1", "--journal", journal, "sleep", ":::"}, done...)
	if code := Run(context.Background(), args, strings.NewReader(""), &stdout, &stderr); code != exitOK {
		t.Fatalf("first run = %d, stderr:\n%s", code, stderr.String())
	}
	stderr.Reset()
	// Each of the two left runs 1.5 s: the bar, drawn every 200 ms, is
	// drawn several times between the first's end and the second's.
	args = append([]string{"run", "-j", "1", "--journal", journal, "--resume", "--progress", "sleep", ":::"},
		append(done, "1.5", "1.6")...)
	if code := Run(context.Background(), args, strings.NewReader(""), &stdout, &stderr); code != exitOK {
		t.Fatalf("resumed run = %d, stderr:\n%s", code, stderr.String())
	}
	if !strings.Contains(stderr.String(), "safepool: 2 tasks done in ") || !strings.Contains(stderr.String(), "6 skipped") {
		t.Fatalf("resumed run's stderr has no summary of 2 tasks done and 6 skipped:\n%q", stderr.String())
	}
	most := -1
	for _, m := range regexp.MustCompile(`(\d+)% \|`).FindAllStringSubmatch(stderr.String(), -1) {
		n, _ := strconv.Atoi(m[1])
		most = max(most, n)
	}
	// 7 of 8 inputs done once the first task has ended: 87%.
	if most < 85 {
		t.Errorf("the bar went up to %d%%, want 87%% once 6 inputs skipped and 1 task done of 8; stderr:\n%q", most, stderr.String())
	}
}
