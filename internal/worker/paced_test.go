package worker

import (
	"bytes"
	"fmt"
	"os"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// runLarge runs script with Spec.LargeStdout into a buffer, waits for it
// and for CloseIO(linger), and returns the process, what it wrote and how
// long CloseIO took.
func runLarge(t *testing.T, script string, linger time.Duration) (*Process, string, time.Duration) {
	t.Helper()
	var out bytes.Buffer
	p, err := Start(Spec{IO: IONone, Args: []string{"/bin/sh", "-c", script}, Stdout: &out, LargeStdout: true, Stderr: &bytes.Buffer{}})
	if err != nil {
		t.Fatal(err)
	}
	if p.paced == nil {
		t.Fatal("LargeStdout gave no paced pipe")
	}
	awaitEnd(t, p, 30*time.Second)
	start := time.Now()
	p.CloseIO(linger)
	return p, out.String(), time.Since(start)
}

// TestLargeStdout checks that a stdout read through a paced pipe reaches
// its writer whole and in order, whether the process writes fast, in
// pieces larger than the pipe, or slowly, a line now and then; that the
// process sees a pipe; and that a descendant holding the pipe without
// writing keeps CloseIO no longer than its linger and one wait.
func TestLargeStdout(t *testing.T) {
	want := func(n int) string {
		var b strings.Builder
		for i := 1; i <= n; i++ {
			b.WriteString(strconv.Itoa(i))
			b.WriteByte('\n')
		}
		return b.String()
	}

	// Fast, about 3 MB: several times the pipe.
	p, out, _ := runLarge(t, `stat -L -c %F /dev/stdout >&2; seq 1 400000`, time.Second)
	if out != want(400000) {
		t.Errorf("fast writer: %d bytes, want the %d of seq 1 400000", len(out), len(want(400000)))
	}
	if tail := strings.TrimSpace(p.StderrTail()); tail != "fifo" {
		t.Errorf("stdout seen as %q, want a pipe (fifo)", tail)
	}

	// Slow: a line every few milliseconds, each read alone or a few at
	// once; through the poller, and after the copier left it.
	_, out, _ = runLarge(t, `i=1; while [ $i -le 60 ]; do echo $i; sleep 0.003; i=$((i+1)); done`, time.Second)
	if out != want(60) {
		t.Errorf("slow writer: got %q, want 1 to 60, one per line", out)
	}
	_, out, _ = runLarge(t, `seq 1 20000; i=20001; while [ $i -le 20060 ]; do echo $i; sleep 0.003; i=$((i+1)); done`, time.Second)
	if out != want(20060) {
		t.Errorf("slow writer past %d bytes: got %d bytes, want the %d of 1 to 20060", pacedAfter, len(out), len(want(20060)))
	}

	// A descendant keeps the pipe open, writing nothing: the copier stops
	// when CloseIO asks, past the linger, whether it still read through
	// the poller (a short output) or had left it (a long one).
	const linger = 200 * time.Millisecond
	for _, lines := range []int{1, 30000} {
		p, out, took := runLarge(t, fmt.Sprintf(`setsid sleep 30 </dev/null 2>/dev/null & echo $! >&2; seq 1 %d; sleep 0.2`, lines), linger)
		if pid, err := strconv.Atoi(strings.TrimSpace(p.StderrTail())); err == nil {
			syscall.Kill(pid, syscall.SIGKILL)
		} else {
			t.Errorf("no pid of the descendant on stderr: %q", p.StderrTail())
		}
		if out != want(lines) {
			t.Errorf("%d lines with a descendant holding the pipe: got %d bytes, want %d", lines, len(out), len(want(lines)))
		}
		if limit := linger + pacedIdle + time.Second; took > limit {
			t.Errorf("%d lines: CloseIO took %v with a descendant holding the pipe, want at most %v", lines, took, limit)
		}
	}
}

// TestLargeStdoutNoDuplicate checks that a copier that cannot duplicate
// the pipe's descriptor to leave the poller reads on through it, and
// loses nothing.
func TestLargeStdoutNoDuplicate(t *testing.T) {
	saved := dupFD
	defer func() { dupFD = saved }()
	dupFD = func(uintptr) (int, error) { return -1, syscall.EMFILE }
	_, out, _ := runLarge(t, `seq 1 100000`, time.Second)
	want := make([]byte, 0, 600000)
	for i := 1; i <= 100000; i++ {
		want = strconv.AppendInt(want, int64(i), 10)
		want = append(want, '\n')
	}
	if out != string(want) {
		t.Errorf("without a duplicate: %d bytes, want the %d of seq 1 100000", len(out), len(want))
	}
}

// TestLargeStdoutFile checks that a file given as Stdout with LargeStdout
// is handed to the process as it is, without a pipe.
func TestLargeStdoutFile(t *testing.T) {
	p, _, out := startShell(t, Spec{IO: IONone, LargeStdout: true}, `echo hello`)
	if p.paced != nil {
		t.Error("a file as Stdout got a paced pipe")
	}
	if out != "hello\n" {
		t.Errorf("got %q, want %q", out, "hello\n")
	}
}

// TestLargeStdoutPipeSize checks that a paced pipe is as large as asked
// and the system lets it be: as root, the size asked up to pacedPipeSize
// and pipe-max-size.
func TestLargeStdoutPipeSize(t *testing.T) {
	sysMax := pacedPipeSize
	if b, err := os.ReadFile("/proc/sys/fs/pipe-max-size"); err == nil {
		fmt.Sscan(string(b), &sysMax)
	}
	for _, c := range []struct{ ask, want int }{
		{0, pacedPipeSize},
		{256 << 10, 256 << 10},
		{4 << 20, pacedPipeSize},
	} {
		pp, w, err := newPacedPipe(c.ask)
		if err != nil {
			t.Fatal(err)
		}
		want := min(c.want, sysMax)
		if os.Geteuid() == 0 && pp.size != want {
			t.Errorf("asked %d: a pipe of %d bytes as root, want %d", c.ask, pp.size, want)
		}
		if pp.size <= 0 || pp.size > want {
			t.Errorf("asked %d: a pipe of %d bytes, want at most %d", c.ask, pp.size, want)
		}
		w.Close()
		pp.close()
	}
}
