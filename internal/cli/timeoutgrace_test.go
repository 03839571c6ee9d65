package cli

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestTimeoutGrace: a job that runs past --timeout gets SIGTERM and
// --timeout-grace to clean up before SIGKILL. A job that traps SIGTERM runs
// its handler (it writes a file) and exits 5; one that ignores it is
// SIGKILLed after the grace; both are timeout in the job log. With
// --timeout-grace 0 the job is SIGKILLed at once and its handler never
// runs. The same for map's line worker, which is ended with its line.
func TestTimeoutGrace(t *testing.T) {
	const script = `case $1 in trap) trap 'echo cleaned > "$0"; exit 5' TERM;; ignore) trap '' TERM;; esac; sleep 30`
	const mapScript = `trap 'echo cleaned > "$0"; exit 5' TERM; while read l; do sleep 30; done`
	tests := []struct {
		name  string
		args  func(marker string) []string
		stdin string
		rows  []string // the job log's exit_status, signal and cause of each task
		clean bool     // the SIGTERM handler ran
	}{
		{name: "run", args: func(m string) []string {
			return []string{"run", "-j", "2", "--timeout", "300ms", "--timeout-grace", "1500ms", "--", "sh", "-c", script, m, "{}", ":::", "trap", "ignore"}
		}, rows: []string{"5\t-\ttimeout", "-\tSIGKILL\ttimeout"}, clean: true},
		{name: "run grace 0", args: func(m string) []string {
			return []string{"run", "--timeout", "300ms", "--timeout-grace", "0", "--", "sh", "-c", script, m, "{}", ":::", "trap"}
		}, rows: []string{"-\tSIGKILL\ttimeout"}},
		{name: "map", args: func(m string) []string {
			return []string{"map", "-j", "1", "--timeout", "300ms", "--timeout-grace", "1500ms", "--", "sh", "-c", mapScript, m}
		}, stdin: "a\n", rows: []string{"5\t-\ttimeout"}, clean: true},
		{name: "map grace 0", args: func(m string) []string {
			return []string{"map", "-j", "1", "--timeout", "300ms", "--timeout-grace", "0", "--", "sh", "-c", mapScript, m}
		}, stdin: "a\n", rows: []string{"-\tSIGKILL\ttimeout"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			marker, joblog := filepath.Join(dir, "cleaned"), filepath.Join(dir, "joblog")
			args := tt.args(marker)
			args = append(args[:1], append([]string{"--no-progress", "--joblog", joblog}, args[1:]...)...)
			var stdout, stderr bytes.Buffer
			code := Run(context.Background(), args, strings.NewReader(tt.stdin), &stdout, &stderr)
			if code != exitFailed {
				t.Errorf("Run = %d, want %d; stderr:\n%s", code, exitFailed, stderr.String())
			}
			b, err := os.ReadFile(joblog)
			if err != nil {
				t.Fatal(err)
			}
			lines := strings.Split(strings.TrimSpace(string(b)), "\n")[1:]
			if len(lines) != len(tt.rows) {
				t.Fatalf("job log:\n%s\nwant %d rows", b, len(tt.rows))
			}
			for _, l := range lines {
				cols := strings.Split(l, "\t")
				id := cols[0][0] - '1'
				if got := strings.Join(cols[6:9], "\t"); got != tt.rows[id] {
					t.Errorf("task %s: exit_status, signal, cause = %q, want %q", cols[0], got, tt.rows[id])
				}
			}
			b, err = os.ReadFile(marker)
			if cleaned := err == nil && string(b) == "cleaned\n"; cleaned != tt.clean {
				t.Errorf("the SIGTERM handler ran: %v, want %v (%q, %v)", cleaned, tt.clean, b, err)
			}
		})
	}
}
