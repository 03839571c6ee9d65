package cli

import (
	"context"
	"encoding/json"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// TestLaterPipeOpenedWhenReached: a named pipe after other -a files is
// opened when the reading reaches it, not before the run starts: the jobs
// of the files before it run while it waits for its writer, its lines are
// read once the writer comes, and Ctrl-C while it waits ends the run
// (exit 3), as on an idle input. (map --pipe reads the files as one
// stream: the block of the first file's lines waits for the pipe's.)
func TestLaterPipeOpenedWhenReached(t *testing.T) {
	for _, args := range [][]string{
		{"run", "-k", "echo"},
		{"map", "-k", "cat"},
		{"map", "--pipe", "-k", "cat"},
	} {
		t.Run(strings.Join(args, " "), func(t *testing.T) {
			dir := t.TempDir()
			first, fifo := filepath.Join(dir, "first"), filepath.Join(dir, "fifo")
			if err := os.WriteFile(first, []byte("a\nb\n"), 0o600); err != nil {
				t.Fatal(err)
			}
			if err := unix.Mkfifo(fifo, 0o600); err != nil {
				t.Fatal(err)
			}
			argv := append([]string{args[0], "-a", first, "-a", fifo}, args[1:]...)
			pipe := args[1] == "--pipe"
			// firstRan waits until the first file's jobs have run (with
			// --pipe, until the run waits for the pipe).
			firstRan := func(stdout *lockedBuffer) {
				t.Helper()
				if pipe {
					time.Sleep(300 * time.Millisecond)
					return
				}
				deadline := time.Now().Add(20 * time.Second)
				for stdout.String() != "a\nb\n" {
					if time.Now().After(deadline) {
						t.Fatalf("stdout %q: the first file's jobs did not run while the pipe waited for its writer", stdout.String())
					}
					time.Sleep(20 * time.Millisecond)
				}
			}

			// The writer comes once the first file's jobs have run.
			stdout := &lockedBuffer{}
			done := make(chan int, 1)
			go func() { done <- Run(context.Background(), argv, strings.NewReader(""), stdout, io.Discard) }()
			firstRan(stdout)
			w, err := os.OpenFile(fifo, os.O_WRONLY, 0)
			if err != nil {
				t.Fatal(err)
			}
			w.WriteString("c\n")
			w.Close()
			if code := <-done; code != exitOK || stdout.String() != "a\nb\nc\n" {
				t.Errorf("Run = %d, stdout %q; want %d and a, b, c", code, stdout.String(), exitOK)
			}

			// Ctrl-C while the pipe waits for its writer.
			ctx, cancel := context.WithCancel(context.Background())
			var stderr lockedBuffer
			stdout = &lockedBuffer{}
			go func() { done <- Run(ctx, argv, strings.NewReader(""), stdout, &stderr) }()
			firstRan(stdout)
			cancel()
			select {
			case code := <-done:
				if code != exitAborted || !strings.Contains(stderr.String(), "safepool: interrupted") {
					t.Errorf("Run = %d after the interrupt, stderr %q; want %d and a word about it", code, stderr.String(), exitAborted)
				}
			case <-time.After(20 * time.Second):
				t.Error("the run went on after the interrupt")
			}
			// The writer comes: the open that was left ends.
			w, err = os.OpenFile(fifo, os.O_WRONLY, 0)
			if err != nil {
				t.Fatal(err)
			}
			w.Close()
		})
	}
}

// TestInterruptedBeforeInputOpened: Ctrl-C while the only input, a named
// pipe, waits for its writer ends the run as any interrupted run ends: exit
// 3, the job log, the JSON summary (interrupted, no input read) and the
// summary. It ended with exit 3 and a word, but without the job log and
// the JSON summary, which a script that reads them after a cancelled run
// then did not find. With --nats, the run's set-up, under way as the
// interrupt came, failed with "context canceled" and exit 2.
func TestInterruptedBeforeInputOpened(t *testing.T) {
	url := startNatsServer(t, buildSafepool(t), t.TempDir())
	for _, args := range [][]string{
		{"run", "echo"},
		{"map", "cat"},
		{"map", "--pipe", "cat"},
		{"run", "--nats", "", "echo"},
		{"map", "--nats", "", "cat"},
	} {
		t.Run(strings.Join(args, " "), func(t *testing.T) {
			remote := args[1] == "--nats"
			if remote {
				args = slices.Clone(args)
				args[2] = url
			}
			dir := t.TempDir()
			fifo, joblog, js := filepath.Join(dir, "fifo"), filepath.Join(dir, "j.tsv"), filepath.Join(dir, "s.json")
			if err := unix.Mkfifo(fifo, 0o600); err != nil {
				t.Fatal(err)
			}
			argv := append([]string{args[0], "-a", fifo, "--joblog", joblog, "--json", js}, args[1:]...)
			ctx, cancel := context.WithCancel(context.Background())
			var stderr lockedBuffer
			done := make(chan int, 1)
			go func() { done <- Run(ctx, argv, strings.NewReader(""), io.Discard, &stderr) }()
			time.Sleep(300 * time.Millisecond)
			cancel()
			select {
			case code := <-done:
				if code != exitAborted {
					t.Errorf("Run = %d after the interrupt, want %d; stderr %q", code, exitAborted, stderr.String())
				}
			case <-time.After(20 * time.Second):
				t.Fatal("the run went on after the interrupt")
			}
			// The writer comes: the open that was left ends.
			if w, err := os.OpenFile(fifo, os.O_WRONLY, 0); err == nil {
				w.Close()
			}
			if want := "0 tasks"; remote && !strings.Contains(stderr.String(), "interrupted") ||
				!remote && !strings.Contains(stderr.String(), want) {
				t.Errorf("stderr %q: no summary", stderr.String())
			}
			log, err := os.ReadFile(joblog)
			if err != nil || !strings.HasPrefix(string(log), "task_id\t") {
				t.Errorf("the job log: %q, %v; want its header", log, err)
			}
			data, err := os.ReadFile(js)
			if err != nil {
				t.Fatalf("the JSON summary: %v", err)
			}
			var sum struct {
				ExitStatus    int  `json:"exit_status"`
				Interrupted   bool `json:"interrupted"`
				InputsNotRead int  `json:"inputs_not_read"`
			}
			if err := json.Unmarshal(data, &sum); err != nil {
				t.Fatalf("the JSON summary: %v\n%s", err, data)
			}
			if sum.ExitStatus != exitAborted || !sum.Interrupted || sum.InputsNotRead != -1 {
				t.Errorf("the JSON summary says %+v, want exit status %d, interrupted, inputs not read -1\n%s", sum, exitAborted, data)
			}
		})
	}
}

// TestInputFilesCheckedNotHeld: every input file is checked up front, and
// none but the first is open when the run starts.
func TestInputFilesCheckedNotHeld(t *testing.T) {
	dir := t.TempDir()
	var names []string
	for i := range 50 {
		name := filepath.Join(dir, "f"+string(rune('a'+i%26))+strings.Repeat("x", i/26))
		if err := os.WriteFile(name, []byte(name+"\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		names = append(names, name)
	}
	before := countOpenFiles(t)
	fs, err := openFiles(names, nil, '\n', 0, "")
	if err != nil {
		t.Fatal(err)
	}
	if n := countOpenFiles(t) - before; n != 1 {
		t.Errorf("%d files open after openFiles of %d, want 1", n, len(names))
	}
	for i, name := range names {
		line, err := fs.next()
		if err != nil || string(line) != name {
			t.Fatalf("input %d = %q, %v; want %q", i+1, line, err, name)
		}
		if n := countOpenFiles(t) - before; n > 1 {
			t.Fatalf("%d files open while input %d is read, want 1", n, i+1)
		}
	}
	if _, err := fs.next(); err != io.EOF {
		t.Errorf("after the last input: %v, want io.EOF", err)
	}
	fs.close()
	if n := countOpenFiles(t) - before; n != 0 {
		t.Errorf("%d files left open after close", n)
	}

	// A missing file, anywhere in the list, is said at once.
	_, err = openFiles(append(names[:2:2], filepath.Join(dir, "missing"), names[2]), nil, '\n', 0, "")
	if err == nil || !strings.Contains(err.Error(), "cannot open input file "+filepath.Join(dir, "missing")+": no such file or directory") {
		t.Errorf("openFiles with a missing file: %v", err)
	}
	if n := countOpenFiles(t) - before; n != 0 {
		t.Errorf("%d files left open after the refusal", n)
	}
}

// countOpenFiles counts this process's open files.
func countOpenFiles(t *testing.T) int {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Skipf("cannot count open files: %v", err)
	}
	return len(ents)
}
