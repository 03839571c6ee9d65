package cli

import (
	"bytes"
	"context"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestOutputOverInput names an input file as the job log, the JSON summary
// or the journal, however spelt, and the job log and the JSON summary as
// one file: a usage error, nothing runs and the input file is left as it
// was. The job log used to be created over the input file before its first
// line was read: the run read the job log's header as its only input, ran
// it, exited 0, and the inputs were lost; a JSON summary on the job log's
// file left no job log.
func TestOutputOverInput(t *testing.T) {
	dir := t.TempDir()
	in := filepath.Join(dir, "in.txt")
	const inputs = "a\nb\n"
	if err := os.WriteFile(in, []byte(inputs), 0o644); err != nil {
		t.Fatal(err)
	}
	link := filepath.Join(dir, "link.json")
	if err := os.Symlink(in, link); err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(dir, "out")
	tests := []struct {
		name  string
		args  []string
		stdin bool // the input file is standard input
		want  string
	}{
		{"job log over an -a file", []string{"run", "-a", in, "--joblog", dir + "/./in.txt", "echo"}, false,
			"--joblog " + dir + "/./in.txt would overwrite the input file " + in + ", which holds the inputs"},
		{"job log over standard input", []string{"run", "--joblog", in, "echo"}, true,
			"would overwrite the file on standard input, which holds the inputs"},
		{"JSON through a link to an -a file", []string{"run", "-a", "-", "-a", in, "--json", link, "echo"}, false,
			"--json " + link + " would overwrite the input file " + in},
		{"journal over an -a file", []string{"run", "-a", in, "--journal", in, "echo"}, false,
			"--journal " + in + " would overwrite the input file " + in},
		{"map job log over an -a file", []string{"map", "-a", in, "--joblog", in, "cat"}, false,
			"--joblog " + in + " would overwrite the input file " + in},
		{"map --pipe job log over standard input", []string{"map", "--pipe", "--joblog", in, "cat"}, true,
			"would overwrite the file on standard input"},
		{"job log and JSON summary in one file", []string{"run", "-a", in, "--joblog", out, "--json", dir + "/./out", "echo"}, false,
			"--joblog " + out + " and --json " + dir + "/./out are the same file"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var stdin io.Reader = strings.NewReader("")
			if tt.stdin {
				f, err := os.Open(in)
				if err != nil {
					t.Fatal(err)
				}
				defer f.Close()
				stdin = f
			}
			var stdout, stderr bytes.Buffer
			args := append([]string{tt.args[0], "--no-progress"}, tt.args[1:]...)
			code := Run(context.Background(), args, stdin, &stdout, &stderr)
			if code != exitUsage || !strings.Contains(stderr.String(), tt.want) {
				t.Errorf("Run(%q) = %d, stderr %q; want %d and %q", tt.args, code, stderr.String(), exitUsage, tt.want)
			}
			if stdout.Len() > 0 {
				t.Errorf("Run(%q) ran jobs: stdout %q", tt.args, stdout.String())
			}
			if b, err := os.ReadFile(in); err != nil || string(b) != inputs {
				t.Fatalf("after Run(%q) the input file holds %q (%v), want %q", tt.args, b, err, inputs)
			}
		})
	}

	// A device is no file to lose: /dev/null may be an input and both
	// outputs.
	devnull, err := os.Open(os.DevNull)
	if err != nil {
		t.Fatal(err)
	}
	defer devnull.Close()
	var stderr bytes.Buffer
	args := []string{"run", "--no-progress", "--joblog", os.DevNull, "--json", os.DevNull, "echo"}
	if code := Run(context.Background(), args, devnull, io.Discard, &stderr); code != exitOK {
		t.Errorf("Run(%q) = %d, want %d; stderr %q", args, code, exitOK, stderr.String())
	}
}
