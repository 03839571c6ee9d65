package cli

import (
	"context"
	"io"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// TestInterruptWithStuckStdout: when the reader of stdout has stopped
// reading (a pager left waiting, a stuck consumer), safepool blocks in a
// write to the full pipe. SIGTERM, and SIGTERM again, still end it within
// --grace and a little: it used to stay blocked in that write for as long
// as the reader did, its workers killed, however many signals came. The
// jobs whose output was given up are not counted done.
func TestInterruptWithStuckStdout(t *testing.T) {
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	defer w.Close()
	ctx, cancel := context.WithCancelCause(context.Background())
	defer cancel(nil)
	var stderr syncBuffer
	ended := make(chan int, 1)
	go func() {
		ended <- Run(ctx, []string{"run", "-j", "2", "--no-progress", "--grace", "500ms", "--",
			"sh", "-c", "head -c 100000 /dev/zero"}, strings.NewReader(strings.Repeat("x\n", 1000)), w, &stderr)
	}()
	// Wait until the pipe is full: safepool's write of the next output
	// then blocks.
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		n, err := unix.IoctlGetInt(int(r.Fd()), unix.TIOCINQ) // FIONREAD
		if err != nil {
			t.Fatal(err)
		}
		if n >= 64<<10 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the pipe holds %d bytes after 10s, want it full; stderr:\n%s", n, stderr.String())
		}
	}
	time.Sleep(200 * time.Millisecond)
	start := time.Now()
	cancel(&SignalError{Signal: syscall.SIGTERM})
	select {
	case code := <-ended:
		if code != exitAborted {
			t.Errorf("Run = %d, want %d", code, exitAborted)
		}
		if took := time.Since(start); took > 5*time.Second {
			t.Errorf("Run ended %v after SIGTERM, want within --grace (500ms) and a little", took.Round(time.Millisecond))
		}
	case <-time.After(10 * time.Second):
		r.Close() // the write fails, and Run ends
		code := <-ended
		t.Fatalf("Run did not end within 10s of SIGTERM while its stdout was not read (it did, %d, once the reader went away); stderr:\n%s", code, stderr.String())
	}
	// No job's output was written whole (the pipe took 64 KiB of the
	// first one's 100000 bytes): none is done, as none would be in a
	// journal, and --resume would run them all again. Those whose output
	// was given up used to be counted done.
	out := stderr.String()
	for _, want := range []string{
		"safepool: interrupted by SIGTERM",
		"safepool: writing output: ",
		"safepool: interrupted: 0 done, 0 failed, ",
		" output not written",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("stderr does not say %q:\n%s", want, out)
		}
	}
}

// TestInterruptWithIdleInput: SIGTERM ends a run whose input is open but
// idle (tail -f log | safepool run ...), where the feeder is blocked
// reading it. It used to wait for the next line or the end of the input,
// however many signals came.
func TestInterruptWithIdleInput(t *testing.T) {
	for _, args := range [][]string{
		{"run", "--no-progress", "echo"},
		{"map", "--no-progress", "--worker", "cat"},
	} {
		t.Run(args[0], func(t *testing.T) {
			in, feed := io.Pipe()
			defer feed.Close()
			out := &lineCounter{want: 1, done: make(chan struct{})}
			var stderr syncBuffer
			ctx, cancel := context.WithCancelCause(context.Background())
			defer cancel(nil)
			ended := make(chan int, 1)
			go func() { ended <- Run(ctx, args, in, out, &stderr) }()
			go feed.Write([]byte("first\n")) // ends when the pipe is closed
			select {
			case <-out.done:
			case code := <-ended:
				t.Fatalf("Run = %d before the first line's output; stderr:\n%s", code, stderr.String())
			case <-time.After(10 * time.Second):
				t.Fatalf("no output for the first line within 10s; stderr:\n%s", stderr.String())
			}
			cancel(&SignalError{Signal: syscall.SIGTERM})
			select {
			case code := <-ended:
				if code != exitAborted {
					t.Errorf("Run = %d, want %d; stderr:\n%s", code, exitAborted, stderr.String())
				}
			case <-time.After(10 * time.Second):
				feed.Close() // the feeder reads end of file, and Run ends
				code := <-ended
				t.Fatalf("Run did not end within 10s of SIGTERM while its input was idle (it did, %d, at the input's end); stderr:\n%s", code, stderr.String())
			}
			if want := "safepool: interrupted: 1 done"; !strings.Contains(stderr.String(), want) {
				t.Errorf("stderr does not say %q:\n%s", want, stderr.String())
			}
		})
	}
}

// TestInterruptWithStuckStderr: when the reader of stderr has stopped
// reading (2> >(a logger that hangs), a pager), safepool blocks writing a
// job's stderr to the full pipe. SIGTERM still ends it within --grace and a
// little. It used to stay blocked for as long as the reader did, however
// many signals came: the interrupt's own message waited for that write
// before the run was told to stop.
func TestInterruptWithStuckStderr(t *testing.T) {
	for _, args := range [][]string{
		{"run", "-j", "2", "--no-progress", "--grace", "500ms", "--",
			"sh", "-c", "head -c 100000 /dev/zero >&2"},
		{"map", "-j", "2", "--no-progress", "--grace", "500ms", "--",
			"sh", "-c", "while read l; do head -c 100000 /dev/zero >&2; echo $l; done"},
	} {
		t.Run(args[0], func(t *testing.T) {
			r, w, err := os.Pipe()
			if err != nil {
				t.Fatal(err)
			}
			defer r.Close()
			defer w.Close()
			ctx, cancel := context.WithCancelCause(context.Background())
			defer cancel(nil)
			ended := make(chan int, 1)
			go func() {
				ended <- Run(ctx, args, strings.NewReader(strings.Repeat("x\n", 1000)), io.Discard, w)
			}()
			// Wait until the pipe is full: safepool's next write to
			// stderr then blocks.
			for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(20 * time.Millisecond) {
				n, err := unix.IoctlGetInt(int(r.Fd()), unix.TIOCINQ) // FIONREAD
				if err != nil {
					t.Fatal(err)
				}
				if n >= 64<<10 {
					break
				}
				if time.Now().After(deadline) {
					t.Fatalf("the pipe holds %d bytes after 10s, want it full", n)
				}
			}
			time.Sleep(200 * time.Millisecond)
			start := time.Now()
			cancel(&SignalError{Signal: syscall.SIGTERM})
			select {
			case code := <-ended:
				if code != exitAborted {
					t.Errorf("Run = %d, want %d", code, exitAborted)
				}
				if took := time.Since(start); took > 5*time.Second {
					t.Errorf("Run ended %v after SIGTERM, want within --grace (500ms) and a little", took.Round(time.Millisecond))
				}
			case <-time.After(10 * time.Second):
				r.Close() // the writes fail, and Run ends
				code := <-ended
				t.Fatalf("Run did not end within 10s of SIGTERM while its stderr was not read (it did, %d, once the reader went away)", code)
			}
		})
	}
}
