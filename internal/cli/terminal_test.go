package cli

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// openPTY returns the two ends of a new pseudo-terminal: what is written
// to master is read from slave as typed on a terminal.
func openPTY(t *testing.T) (master, slave *os.File) {
	t.Helper()
	m, err := os.OpenFile("/dev/ptmx", os.O_RDWR|unix.O_NOCTTY, 0)
	if err != nil {
		t.Skipf("no pseudo-terminal: %v", err)
	}
	t.Cleanup(func() { m.Close() })
	if err := unix.IoctlSetPointerInt(int(m.Fd()), unix.TIOCSPTLCK, 0); err != nil {
		t.Fatalf("unlocking the pseudo-terminal: %v", err)
	}
	n, err := unix.IoctlGetInt(int(m.Fd()), unix.TIOCGPTN)
	if err != nil {
		t.Fatalf("naming the pseudo-terminal: %v", err)
	}
	s, err := os.OpenFile(fmt.Sprintf("/dev/pts/%d", n), os.O_RDWR|unix.O_NOCTTY, 0)
	if err != nil {
		t.Fatalf("opening the pseudo-terminal: %v", err)
	}
	t.Cleanup(func() { s.Close() })
	return m, s
}

// TestTerminalNotice: inputs read from a terminal (a command line that
// forgot its ::: or -a) are announced on stderr, so that safepool is not
// taken for hung; they are still read, up to Ctrl-D. Inputs from elsewhere
// are not announced.
func TestTerminalNotice(t *testing.T) {
	for _, tc := range []struct {
		name   string
		args   []string
		notice string // "" when none is due
		out    string
	}{
		{"run", []string{"run", "-q", "-k", "echo", "x"}, "reading inputs from the terminal until Ctrl-D (give them after ::: or with -a FILE", "x a\nx b\n"},
		{"run -a -", []string{"run", "-q", "-k", "-a", "-", "echo", "x"}, "reading inputs from the terminal", "x a\nx b\n"},
		{"run :::", []string{"run", "-q", "echo", "x", ":::", "c"}, "", "x c\n"},
		{"run dry-run", []string{"run", "--dry-run", "echo"}, "reading inputs from the terminal", "echo a\necho b\n"},
		{"map", []string{"map", "-q", "-k", "cat"}, "reading input lines from the terminal until Ctrl-D", "a\nb\n"},
		{"map --pipe", []string{"map", "-q", "--pipe", "cat"}, "reading the input from the terminal until Ctrl-D", "a\nb\n"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			master, slave := openPTY(t)
			var stdout, stderr bytes.Buffer
			done := make(chan int, 1)
			go func() { done <- Run(context.Background(), tc.args, slave, &stdout, &stderr) }()
			if tc.notice != "" {
				// Typed once safepool reads: a line and then Ctrl-D at the
				// start of a line, the terminal's end of input.
				if _, err := master.WriteString("a\nb\n\x04"); err != nil {
					t.Fatal(err)
				}
			}
			select {
			case code := <-done:
				if code != 0 {
					t.Fatalf("Run(%q) = %d, want 0; stderr:\n%s", tc.args, code, stderr.String())
				}
			case <-time.After(20 * time.Second):
				master.WriteString("\x04\x04")
				<-done
				t.Fatalf("Run(%q) did not end at Ctrl-D; stderr:\n%s", tc.args, stderr.String())
			}
			if stdout.String() != tc.out {
				t.Errorf("Run(%q) stdout = %q, want %q", tc.args, stdout.String(), tc.out)
			}
			got := strings.Contains(stderr.String(), "from the terminal")
			if tc.notice == "" && got {
				t.Errorf("Run(%q) stderr = %q, want no notice: the inputs are not read from the terminal", tc.args, stderr.String())
			}
			if tc.notice != "" && !strings.Contains(stderr.String(), "safepool: "+tc.notice) {
				t.Errorf("Run(%q) stderr = %q, want the notice %q", tc.args, stderr.String(), tc.notice)
			}
		})
	}
}

// endlessLines is an input that never ends.
type endlessLines struct{}

func (endlessLines) Read(p []byte) (int, error) {
	for i := range p {
		p[i] = "x\n"[i%2]
	}
	return len(p), nil
}

// TestDryRunInterrupted: Ctrl-C (a cancelled context) stops --dry-run
// with exit 3, as it stops a run: while it prints the commands of an input
// without end, and while it waits for an input that does not come. It
// used to go on until killed.
func TestDryRunInterrupted(t *testing.T) {
	idleR, idleW, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer idleR.Close()
	for _, tc := range []struct {
		name  string
		stdin io.Reader
	}{
		{"busy", endlessLines{}},
		{"idle", idleR},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithCancel(context.Background())
			var stderr bytes.Buffer
			done := make(chan int, 1)
			go func() { done <- Run(ctx, []string{"run", "--dry-run", "echo"}, tc.stdin, io.Discard, &stderr) }()
			time.Sleep(200 * time.Millisecond)
			cancel()
			select {
			case code := <-done:
				if code != exitAborted {
					t.Errorf("Run = %d after the interrupt, want %d; stderr:\n%s", code, exitAborted, stderr.String())
				}
				if !strings.Contains(stderr.String(), "safepool: interrupted") {
					t.Errorf("stderr = %q, want it to say the dry run was interrupted", stderr.String())
				}
			case <-time.After(10 * time.Second):
				idleW.Close()
				t.Fatal("--dry-run went on after the interrupt")
			}
		})
	}
	idleW.Close() // the reader of the idle input ends
}

// TestInterruptOpeningInput: Ctrl-C (a cancelled context) stops run and
// map with exit 3 while they open an input file that blocks: a named pipe
// whose writer has not come. The signal was caught and nothing heeded it
// until a writer came.
func TestInterruptOpeningInput(t *testing.T) {
	for _, args := range [][]string{
		{"run", "echo"},
		{"map", "cat"},
		{"map", "--pipe", "cat"},
	} {
		t.Run(strings.Join(args, " "), func(t *testing.T) {
			fifo := t.TempDir() + "/inputs"
			if err := unix.Mkfifo(fifo, 0o600); err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithCancel(context.Background())
			var stderr bytes.Buffer
			done := make(chan int, 1)
			go func() {
				done <- Run(ctx, append([]string{args[0], "-a", fifo}, args[1:]...), strings.NewReader(""), io.Discard, &stderr)
			}()
			time.Sleep(200 * time.Millisecond)
			cancel()
			ended := false
			select {
			case code := <-done:
				ended = true
				if code != exitAborted || !strings.Contains(stderr.String(), "safepool: interrupted") {
					t.Errorf("Run = %d after the interrupt, stderr %q; want %d and a word about it", code, stderr.String(), exitAborted)
				}
			case <-time.After(10 * time.Second):
				t.Error("still opening the input after the interrupt")
			}
			// The writer comes: the open that was left ends.
			w, err := os.OpenFile(fifo, os.O_WRONLY, 0)
			if err != nil {
				t.Fatal(err)
			}
			w.Close()
			if !ended {
				<-done
			}
		})
	}
}

// TestNoBarWhileTyping: while the inputs are typed on the terminal that
// stderr also is, no progress bar is drawn unless --progress asks for
// one: redrawn five times a second, with a carriage return and an erase
// to the end of the line, it wiped out the line being typed.
func TestNoBarWhileTyping(t *testing.T) {
	for _, tc := range []struct {
		name string
		args []string
		bar  bool
	}{
		{"run", []string{"run", "-k", "echo"}, false},
		{"run -a -", []string{"run", "-k", "-a", "-", "echo"}, false},
		{"map", []string{"map", "-k", "cat"}, false},
		{"map --pipe", []string{"map", "--pipe", "cat"}, false},
		{"run --progress", []string{"run", "--progress", "-k", "echo"}, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			master, slave := openPTY(t)
			chunks := make(chan string, 64)
			go func() { // ends when master is closed (the test's cleanup)
				buf := make([]byte, 4096)
				for {
					n, err := master.Read(buf)
					if n > 0 {
						chunks <- string(buf[:n])
					}
					if err != nil {
						close(chunks)
						return
					}
				}
			}()
			var stdout bytes.Buffer
			done := make(chan int, 1)
			go func() { done <- Run(context.Background(), tc.args, slave, &stdout, slave) }()
			// A line typed, a pause while the next one is typed (long
			// enough for several of the bar's redraws), then Ctrl-D.
			if _, err := master.WriteString("a\n"); err != nil {
				t.Fatal(err)
			}
			time.Sleep(1500 * time.Millisecond)
			if _, err := master.WriteString("b\n\x04"); err != nil {
				t.Fatal(err)
			}
			var code int
			select {
			case code = <-done:
			case <-time.After(30 * time.Second):
				master.WriteString("\x04\x04")
				<-done
				t.Fatalf("Run(%q) did not end at Ctrl-D", tc.args)
			}
			// What the terminal shows: read until it is quiet.
			var shown strings.Builder
			for quiet := false; !quiet; {
				select {
				case c, ok := <-chunks:
					if !ok {
						quiet = true
					}
					shown.WriteString(c)
				case <-time.After(500 * time.Millisecond):
					quiet = true
				}
			}
			if code != 0 {
				t.Fatalf("Run(%q) = %d, want 0; the terminal shows:\n%q", tc.args, code, shown.String())
			}
			if got := strings.Contains(shown.String(), "running "); got != tc.bar {
				t.Errorf("Run(%q): bar drawn = %v, want %v; the terminal shows:\n%q", tc.args, got, tc.bar, shown.String())
			}
		})
	}
}
