package cli

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/safepool/safepool/internal/testenv"
)

// The documents whose line-worker examples TestDocExamples runs.
var exampleDocs = []string{"../../README.md", "../../docs/cli.md", "../../docs/protocol.md"}

// lineWorker is a line-worker example found in the documents or the help.
type lineWorker struct {
	where   string // where it was found, for messages
	command string // the --worker command line
	script  string // a program the command runs as script.py, if any
}

// TestDocExamples runs every line worker that the README, docs/cli.md,
// docs/protocol.md and map --help show, as a user on Debian's defaults would:
// awk is mawk, and PYTHONUNBUFFERED is not set. Each must answer each line
// as it comes, while its stdin stays open; a worker that buffers its input
// or its output answers only at end of file, and fails here.
//
// A --worker 'python3 -u NAME.py' example runs a NAME.py that prints its
// answers without flushing them, as a first script would: the example's
// flags must make it work.
func TestDocExamples(t *testing.T) {
	mawk, err := exec.LookPath("mawk")
	if err != nil {
		testenv.SkipOrFail(t, "mawk is not installed (test.sh installs it: apt-get install mawk)")
	}
	if _, err := exec.LookPath("python3"); err != nil {
		testenv.SkipOrFail(t, "python3 is not installed")
	}
	workers := docLineWorkers(t)
	if len(workers) < 4 {
		t.Fatalf("found %d line-worker examples, want at least 4: %v", len(workers), workers)
	}

	// awk is mawk, as on Debian, and Python buffers its stdout.
	bin := t.TempDir()
	if err := os.Symlink(mawk, filepath.Join(bin, "awk")); err != nil {
		t.Fatal(err)
	}
	t.Setenv("PATH", bin+string(os.PathListSeparator)+os.Getenv("PATH"))
	t.Setenv("PYTHONUNBUFFERED", "")
	os.Unsetenv("PYTHONUNBUFFERED")

	for _, w := range workers {
		t.Run(w.where+": "+w.command, func(t *testing.T) {
			dir := t.TempDir()
			t.Chdir(dir)
			if m := regexp.MustCompile(`(\S+)\.py\b`).FindStringSubmatch(w.command); m != nil {
				script := w.script
				if script == "" {
					script = naiveLineWorker
				}
				if err := os.WriteFile(filepath.Join(dir, m[1]+".py"), []byte(script), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			if err := answersEachLine(w.command); err != nil {
				t.Errorf("--worker %q: %v", w.command, err)
			}
		})
	}
}

// naiveLineWorker is the script a user writes first: it does not flush.
const naiveLineWorker = `import sys
for line in sys.stdin:
    print(line.rstrip("\n").upper())
`

// docLineWorkers collects the line-worker examples: every --worker 'CMD' of
// the documents and of map --help, and the awk and Python line workers
// shown as code blocks.
func docLineWorkers(t *testing.T) []lineWorker {
	var help bytes.Buffer
	if code := Run(context.Background(), []string{"map", "--help"}, nil, &help, io.Discard); code != 0 {
		t.Fatalf("map --help = %d", code)
	}
	texts := map[string]string{"map --help": help.String()}
	for _, path := range exampleDocs {
		data, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		texts[filepath.Base(path)] = string(data)
	}
	single := regexp.MustCompile(`--worker '([^']*)'`)
	double := regexp.MustCompile(`--worker "((?:[^"\\]|\\.)*)"`)
	block := regexp.MustCompile("(?s)```(sh|python)\n(.*?)```")
	unescape := strings.NewReplacer(`\$`, `$`, `\"`, `"`, `\\`, `\`, "\\`", "`")
	var workers []lineWorker
	seen := map[string]bool{}
	add := func(w lineWorker) {
		if !seen[w.command+w.script] {
			seen[w.command+w.script] = true
			workers = append(workers, w)
		}
	}
	for where, text := range texts {
		for _, m := range single.FindAllStringSubmatch(text, -1) {
			add(lineWorker{where: where, command: m[1]})
		}
		for _, m := range double.FindAllStringSubmatch(text, -1) {
			add(lineWorker{where: where, command: unescape.Replace(m[1])})
		}
		for _, m := range block.FindAllStringSubmatch(text, -1) {
			switch lang, code := m[1], m[2]; {
			case lang == "sh":
				for _, line := range strings.Split(code, "\n") {
					if f := strings.Fields(line); len(f) > 0 && strings.HasSuffix(f[0], "awk") {
						add(lineWorker{where: where, command: line})
					}
				}
			case lang == "python" && strings.Contains(code, "sys.stdin"):
				add(lineWorker{where: where, command: "python3 worker.py", script: dedent(code)})
			}
		}
	}
	var runnable []lineWorker
	for _, w := range workers {
		prog := strings.Fields(w.command)[0]
		if prog == "CMD" {
			continue // the synopsis
		}
		if _, err := exec.LookPath(prog); err != nil {
			// gawk, or the user's own ./classify: not on this machine.
			t.Logf("%s: --worker %q: %s is not installed here; not run", w.where, w.command, prog)
			continue
		}
		runnable = append(runnable, w)
	}
	return runnable
}

// dedent removes the indentation that every line of code shares, as a code
// block in a Markdown list has.
func dedent(code string) string {
	lines := strings.Split(code, "\n")
	indent := -1
	for _, l := range lines {
		if strings.TrimSpace(l) == "" {
			continue
		}
		if n := len(l) - len(strings.TrimLeft(l, " ")); indent < 0 || n < indent {
			indent = n
		}
	}
	for i, l := range lines {
		if len(l) >= indent && indent > 0 {
			lines[i] = l[indent:]
		}
	}
	return strings.Join(lines, "\n")
}

// exampleDeadline is how long a worker may take to answer a line. A worker
// that buffers never answers while its stdin is open: this bounds the wait.
const exampleDeadline = 30 * time.Second

// answersEachLine runs command as the only worker of safepool map, with one
// line in flight at a time, and reports an error unless it answers two lines
// while its stdin is still open.
func answersEachLine(command string) error {
	in, feed := io.Pipe()
	out := &lineCounter{want: 2, done: make(chan struct{})}
	var stderr syncBuffer
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	ended := make(chan int, 1)
	go func() {
		ended <- Run(ctx, []string{"map", "-j", "1", "--pipeline", "1", "--no-governor", "--worker", command}, in, out, &stderr)
	}()
	go feed.Write([]byte("hello\nworld\n")) // ends when the pipe is closed
	var err error
	select {
	case <-out.done:
	case code := <-ended:
		feed.Close()
		return fmt.Errorf("exited %d before answering; stderr:\n%s", code, stderr.String())
	case <-time.After(exampleDeadline):
		// It waits for more input or holds its answer in a buffer, and
		// safepool waits for the answer: stop it.
		err = fmt.Errorf("no answer to each line within %v while stdin was open (the worker buffers); output %q", exampleDeadline, out.String())
		cancel()
	}
	feed.Close()
	if code := <-ended; code != 0 && err == nil {
		err = fmt.Errorf("exit status %d; stderr:\n%s", code, stderr.String())
	}
	return err
}

// syncBuffer is a bytes.Buffer that workers' stderr copiers and the test
// may use at once.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// lineCounter collects output and closes done when it holds want lines.
type lineCounter struct {
	mu   sync.Mutex
	b    bytes.Buffer
	want int
	done chan struct{}
}

func (l *lineCounter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.b.Write(p)
	if l.want > 0 && bytes.Count(l.b.Bytes(), []byte("\n")) >= l.want {
		l.want = 0
		close(l.done)
	}
	return len(p), nil
}

func (l *lineCounter) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}
