package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestCannotStartCountsInputsNotRun: a run whose command cannot start runs
// none of its inputs, and its JSON summary says how many it did not run,
// as for any run stopped before the end of its input. It said nothing of
// them: tasks.submitted 0 and no inputs_not_read read as a run without
// input.
func TestCannotStartCountsInputsNotRun(t *testing.T) {
	dir := t.TempDir()
	for _, tt := range []struct {
		name string
		args []string
		want int64
	}{
		{"arguments", []string{"no-such-program-here", "{}", ":::", "a", "b", "c"}, 3},
		{"lines", []string{"no-such-program-here", "{}"}, -1},
	} {
		t.Run(tt.name, func(t *testing.T) {
			path := filepath.Join(dir, tt.name+".json")
			var stdout, stderr bytes.Buffer
			code := Run(context.Background(), append([]string{"run", "--json", path}, tt.args...),
				strings.NewReader("a\nb\n"), &stdout, &stderr)
			if code != exitUsage {
				t.Fatalf("Run = %d, want %d; stderr:\n%s", code, exitUsage, stderr.String())
			}
			b, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			var got struct {
				Tasks struct {
					Submitted int `json:"submitted"`
				} `json:"tasks"`
				NotRead *int64 `json:"inputs_not_read"`
			}
			if err := json.Unmarshal(b, &got); err != nil {
				t.Fatalf("%v: %s", err, b)
			}
			if got.Tasks.Submitted != 0 || got.NotRead == nil || *got.NotRead != tt.want {
				t.Errorf("JSON summary %s: want tasks.submitted 0 and inputs_not_read %d", b, tt.want)
			}
		})
	}
}
