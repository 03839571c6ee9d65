package worker

import (
	"bytes"
	"os"
	"strings"
	"syscall"
	"testing"
)

// TestStdinMemoryFile checks that a Stdin reaches each of a task's
// processes whole, from its start, as a regular file they can read but
// not change, without exec.Cmd's copier; that a process after the first
// reads from the start even while an earlier one still holds the file;
// that a pipe filled by exec.Cmd takes its place where no memory file can
// be made; and that a want of files is said as such.
func TestStdinMemoryFile(t *testing.T) {
	// Larger than a pipe holds, and not a whole number of pages.
	data := bytes.Repeat([]byte("0123456789abcdef\n"), 70_000)
	in, err := NewStdin(data)
	if err != nil {
		t.Fatal(err)
	}
	defer in.Close()

	script := `stat -L -c %F /dev/stdin >&2; cat; if echo changed >&0 2>/dev/null; then echo WROTE; fi`
	for attempt := 1; attempt <= 2; attempt++ {
		p, e, out := startShell(t, Spec{IO: IONone, Stdin: in, Stderr: &bytes.Buffer{}}, script)
		if p.cmd.Process != nil {
			t.Errorf("attempt %d started through exec.Cmd, want forkExec: a memory file needs no copier", attempt)
		}
		if e.Code != 0 || out != string(data) {
			t.Errorf("attempt %d: Exit = %+v, stdout of %d bytes, want code 0 and the %d bytes given", attempt, e, len(out), len(data))
		}
		if tail := strings.TrimSpace(p.StderrTail()); tail != "regular file" {
			t.Errorf("attempt %d: stdin seen as %q, want a regular file", attempt, tail)
		}
	}

	// An earlier process that read half of it and lives on does not move
	// where the next one starts.
	f, owned, _, err := in.forProcess()
	if err != nil || !owned {
		t.Fatalf("forProcess = %v, owned %v; want a description of its own", err, owned)
	}
	half := make([]byte, len(data)/2)
	if _, err := f.Read(half); err != nil {
		t.Fatal(err)
	}
	f.Close()
	if _, _, out := startShell(t, Spec{IO: IONone, Stdin: in}, `cat`); out != string(data) {
		t.Errorf("after another reader took half, stdout of %d bytes, want the %d given", len(out), len(data))
	}

	// No /proc to open it again: the bytes, read back, through a pipe.
	savedReopen := reopenReadOnly
	reopenReadOnly = func(*os.File) (*os.File, error) { return nil, syscall.ENOENT }
	p, e, out := startShell(t, Spec{IO: IONone, Stdin: in}, `cat`)
	reopenReadOnly = savedReopen
	if p.cmd.Process == nil || e.Code != 0 || out != string(data) {
		t.Errorf("without /proc: cmd.Process = %v, Exit = %+v, stdout of %d bytes, want exec.Cmd, code 0 and the %d bytes given", p.cmd.Process, e, len(out), len(data))
	}

	// No memory files: a pipe, through exec.Cmd's copier.
	saved := memfdCreate
	defer func() { memfdCreate = saved }()
	memfdCreate = func(string, int) (int, error) { return -1, syscall.ENOSYS }
	piped, err := NewStdin(data)
	if err != nil {
		t.Fatal(err)
	}
	for attempt := 1; attempt <= 2; attempt++ {
		p, e, out := startShell(t, Spec{IO: IONone, Stdin: piped, Stderr: &bytes.Buffer{}}, `stat -L -c %F /dev/stdin >&2; cat`)
		if p.cmd.Process == nil || e.Code != 0 || out != string(data) {
			t.Errorf("attempt %d: cmd.Process = %v, Exit = %+v, stdout of %d bytes, want exec.Cmd, code 0 and the %d bytes given", attempt, p.cmd.Process, e, len(out), len(data))
		}
		if tail := strings.TrimSpace(p.StderrTail()); tail != "fifo" {
			t.Errorf("attempt %d: stdin seen as %q, want a pipe (fifo)", attempt, tail)
		}
	}

	// Out of files: said as such, so that the start waits for some.
	memfdCreate = func(string, int) (int, error) { return -1, syscall.EMFILE }
	if _, err := NewStdin(data); !ShortOfFiles(err) {
		t.Errorf("NewStdin with memfd_create failing with EMFILE = %v, want an error that says so", err)
	}

	// Closed: the start fails rather than give the process nothing.
	in.Close()
	if _, err := Start(Spec{Args: []string{"/bin/true"}, IO: IONone, Stdin: in}); err == nil || !strings.Contains(err.Error(), os.ErrClosed.Error()) {
		t.Errorf("Start with a closed Stdin = %v, want it to say so", err)
	}
}
