package cli

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/safepool/safepool/pool"
)

// TestSummaryTextOnlyKeepsFew: without --json, the summary keeps only the
// failed tasks its text shows, the lowest ids whatever order they end in,
// not thousands of them with their messages; it counts the rest.
func TestSummaryTextOnlyKeepsFew(t *testing.T) {
	s := &summary{wall: time.Second, textOnly: true}
	msg := strings.Repeat("e", 4096)
	const n = 1000
	for i := range n {
		id := uint64(i*7919%n + 1) // each of 1..n once, in a mixed order
		addResults(s, &pool.Result{ID: id, State: pool.Failed, Input: []byte("i"),
			Attempts: []pool.Attempt{{Number: 1, Cause: "exit:1", ExitCode: 1, Message: msg}}})
	}
	if len(s.Failed) > summaryListMax {
		t.Errorf("summary without --json keeps %d failed tasks, want at most %d", len(s.Failed), summaryListMax)
	}
	var b strings.Builder
	s.writeText(&b, false)
	lines := strings.Split(strings.TrimSuffix(b.String(), "\n"), "\n")
	if len(lines) != 1+summaryListMax+1 {
		t.Fatalf("summary has %d lines, want %d:\n%s", len(lines), 1+summaryListMax+1, b.String())
	}
	for i := 1; i <= summaryListMax; i++ {
		if want := fmt.Sprintf("  task %d (input 'i') exit:1", i); !strings.HasPrefix(lines[i], want) {
			t.Errorf("line %d = %q, want it to start %q", i, lines[i], want)
		}
	}
	if want := fmt.Sprintf("  and %d more failed tasks", n-summaryListMax); !strings.HasPrefix(lines[len(lines)-1], want) {
		t.Errorf("last line = %q, want it to start %q", lines[len(lines)-1], want)
	}
}
