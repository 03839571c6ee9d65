package worker

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// startShell starts `sh -c script` as spec says, with its stdout in a file,
// waits for it and returns the process, its exit and its stdout.
func startShell(t *testing.T, spec Spec, script string) (*Process, Exit, string) {
	t.Helper()
	out, err := os.Create(filepath.Join(t.TempDir(), "stdout"))
	if err != nil {
		t.Fatal(err)
	}
	defer out.Close()
	spec.Args = []string{"/bin/sh", "-c", script}
	spec.Stdout = out
	p, err := Start(spec)
	if err != nil {
		t.Fatal(err)
	}
	awaitEnd(t, p, 10*time.Second)
	p.CloseIO(time.Second)
	b, err := os.ReadFile(out.Name())
	if err != nil {
		t.Fatal(err)
	}
	return p, p.Exit(), string(b)
}

// TestStartForkExec checks that a process whose streams are all files is
// started without exec.Cmd (forkExec), with the environment, working
// directory, exit status and signal exec.Cmd would have given it.
func TestStartForkExec(t *testing.T) {
	t.Setenv("SAFEPOOL_FORKEXEC_TEST", "inherited")
	dir, err := filepath.EvalSymlinks(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}

	p, e, out := startShell(t, Spec{IO: IONone}, `echo "$SAFEPOOL_FORKEXEC_TEST"; exit 7`)
	if p.cmd.Process != nil {
		t.Errorf("started through exec.Cmd (cmd.Process = %v), want syscall.ForkExec", p.cmd.Process)
	}
	if e.Code != 7 || e.Signal != 0 || e.MaxRSS <= 0 {
		t.Errorf("Exit = %+v, want code 7, no signal, a peak RSS", e)
	}
	if got := strings.TrimSpace(out); got != "inherited" {
		t.Errorf("stdout = %q, want the supervisor's environment (inherited)", got)
	}

	// With Dir and the supervisor's environment, exec.Cmd sets PWD.
	p, e, out = startShell(t, Spec{IO: IONone, Dir: dir}, `echo "$PWD $(pwd -P) $SAFEPOOL_FORKEXEC_TEST"`)
	if p.cmd.Process != nil || e.Code != 0 {
		t.Errorf("cmd.Process = %v, Exit = %+v, want syscall.ForkExec, code 0", p.cmd.Process, e)
	}
	if want := dir + " " + dir + " inherited"; strings.TrimSpace(out) != want {
		t.Errorf("stdout = %q, want %q", strings.TrimSpace(out), want)
	}

	// An explicit environment is the process's whole environment.
	_, _, out = startShell(t, Spec{IO: IONone, Env: []string{"A=1", "A=2"}}, `echo "$A $SAFEPOOL_FORKEXEC_TEST"`)
	if got := strings.TrimSpace(out); got != "2" {
		t.Errorf("stdout = %q, want the last A of the given environment only (2)", got)
	}

	_, e, _ = startShell(t, Spec{IO: IONone}, `kill -9 $$`)
	if e.Code != -1 || e.Signal != syscall.SIGKILL {
		t.Errorf("Exit = %+v, want code -1, SIGKILL", e)
	}

	if _, err := Start(Spec{Args: []string{"/nonexistent/program"}, Path: "/nonexistent/program", IO: IONone}); err == nil ||
		!strings.Contains(err.Error(), "fork/exec /nonexistent/program") {
		t.Errorf("Start(/nonexistent/program) = %v, want a fork/exec error naming it", err)
	}
}

// slowWriter keeps what is written to it, taking delay over each Write.
type slowWriter struct {
	delay time.Duration
	mu    sync.Mutex
	n     int
}

func (w *slowWriter) Write(b []byte) (int, error) {
	time.Sleep(w.delay)
	w.mu.Lock()
	w.n += len(b)
	w.mu.Unlock()
	return len(b), nil
}

func (w *slowWriter) written() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.n
}

// TestCloseIOSlowCopier: a process that wrote more than its pipe holds
// and died is done while its pipe still holds up to 64 KiB; a copier
// whose writes are slow (a busy disk, a busy machine) takes longer than
// CloseIO's linger to read it. CloseIO must wait for it rather than cut
// the output, as it did (the copier had 163840 of the 200000 bytes). The
// same holds for a paced pipe (Spec.LargeStdout), 1 MiB, whose copier
// has left the poller.
func TestCloseIOSlowCopier(t *testing.T) {
	for _, c := range []struct {
		name  string
		size  int
		delay time.Duration
		large bool
	}{
		{"plain pipe", 200000, 300 * time.Millisecond, false},
		{"paced pipe", 2000000, 100 * time.Millisecond, true},
	} {
		t.Run(c.name, func(t *testing.T) {
			w := &slowWriter{delay: c.delay}
			script := fmt.Sprintf("head -c %d /dev/zero", c.size)
			p, err := Start(Spec{IO: IONone, Args: []string{"/bin/sh", "-c", script}, Stdout: w, LargeStdout: c.large})
			if err != nil {
				t.Fatal(err)
			}
			awaitEnd(t, p, 30*time.Second)
			p.CloseIO(linger)
			if got := w.written(); got != c.size {
				t.Errorf("the copier wrote %d of the %d bytes the process wrote before it died", got, c.size)
			}
		})
	}
}

// awaitEnd waits up to d for p to end, and kills it and fails the test if
// it does not.
func awaitEnd(t *testing.T, p *Process, d time.Duration) {
	t.Helper()
	select {
	case <-p.Done():
	case <-time.After(d):
		p.Kill()
		t.Fatal("the process did not end")
	}
}
