package worker

import (
	"os/exec"
	"testing"
	"time"

	"github.com/safepool/safepool/internal/testenv"
)

// start starts args as a line worker and ends it when the test ends.
func start(t *testing.T, args ...string) *Process {
	t.Helper()
	p, err := Start(Spec{Args: args, IO: IOLine})
	if err != nil {
		t.Fatalf("Start(%q) = %v", args, err)
	}
	t.Cleanup(func() {
		p.Kill()
		<-p.Done()
		p.CloseIO(0)
	})
	return p
}

// eventually polls cond for up to 10 seconds and returns the last
// activity seen.
func eventually(t *testing.T, p *Process, cond func(Activity) bool) (Activity, bool) {
	t.Helper()
	var a Activity
	for end := time.Now().Add(10 * time.Second); time.Now().Before(end); time.Sleep(10 * time.Millisecond) {
		var err error
		if a, err = p.Observe(); err != nil {
			t.Fatalf("Observe() = %v", err)
		}
		if cond(a) {
			return a, true
		}
	}
	return a, false
}

// epollReader reads its stdin in one thread while another waits in epoll
// on an eventfd or on a pipe (its argument).
const epollReader = `
import os, select, sys, threading
fd = os.eventfd(0) if sys.argv[1] == "eventfd" else os.pipe()[0]
ep = select.epoll()
ep.register(fd, select.EPOLLIN)
threading.Thread(target=lambda: ep.poll(3600), daemon=True).start()
sys.stdin.buffer.raw.read(1)
`

func TestObserve(t *testing.T) {
	tests := []struct {
		name  string
		args  []string
		cond  func(Activity) bool
		stall bool
	}{
		// cat blocks reading its stdin: the task pipe.
		{"reads stdin", []string{"cat"}, func(a Activity) bool { return a.Readers == 1 }, true},
		// The shell waits for its child, which reads the shell's stdin.
		{"child reads stdin", []string{"sh", "-c", "cat; exit 0"}, func(a Activity) bool { return a.Readers == 1 && a.Parked == 1 }, true},
		// A sleep is neither reading nor idle.
		{"sleeps", []string{"sleep", "60"}, func(a Activity) bool { return a.Blocked == 1 && a.Readers == 0 }, false},
		// A child that sleeps while another reads rules a stall out.
		{"reads and sleeps", []string{"sh", "-c", "sleep 60 & cat; exit 0"}, func(a Activity) bool { return a.Readers == 1 && a.Blocked == 1 }, false},
		{"busy", []string{"sh", "-c", "while :; do :; done"}, func(a Activity) bool { return a.Running == 1 }, false},
		// A thread in epoll on an eventfd alone waits for a timeout or
		// for its own process, as the Go runtime's idle poller does: it
		// is parked, and does not rule a stall out...
		{"reads and waits on a timer", []string{"python3", "-c", epollReader, "eventfd"},
			func(a Activity) bool { return a.Readers == 1 && a.Parked >= 1 && a.Pollers == 0 }, true},
		// ...but epoll on a pipe may be the task's work.
		{"reads and polls a pipe", []string{"python3", "-c", epollReader, "pipe"},
			func(a Activity) bool { return a.Readers == 1 && a.Pollers == 1 }, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := exec.LookPath(tt.args[0]); err != nil {
				testenv.SkipOrFail(t, tt.args[0]+" is not installed")
			}
			p := start(t, tt.args...)
			a, ok := eventually(t, p, tt.cond)
			if !ok {
				t.Fatalf("Observe() = %+v, never as wanted", a)
			}
			if got := a.StallsOnInput(); got != tt.stall {
				t.Errorf("%+v.StallsOnInput() = %v, want %v", a, got, tt.stall)
			}
		})
	}
}

// TestObserveThreadsComeAndGo: a thread that ends while the worker is
// looked at (its /proc entry listed, then gone: ENOENT or ESRCH) is skipped,
// not an error that leaves the stall watch blind.
func TestObserveThreadsComeAndGo(t *testing.T) {
	if _, err := exec.LookPath("python3"); err != nil {
		testenv.SkipOrFail(t, "python3 is not installed")
	}
	p := start(t, "python3", "-c", `
import sys, threading
def churn():
    while True:
        ts = [threading.Thread(target=lambda: None) for _ in range(8)]
        for t in ts: t.start()
        for t in ts: t.join()
threading.Thread(target=churn, daemon=True).start()
sys.stdin.readline()
`)
	for i := 0; i < 2000; i++ {
		if _, err := p.Observe(); err != nil {
			t.Fatalf("Observe() #%d = %v", i, err)
		}
	}
}

func TestObserveCPU(t *testing.T) {
	p := start(t, "sh", "-c", "while :; do :; done")
	a, _ := eventually(t, p, func(a Activity) bool { return true })
	b, ok := eventually(t, p, func(b Activity) bool { return b.CPU > a.CPU })
	if !ok {
		t.Errorf("CPU stayed at %d ticks while the worker was busy", b.CPU)
	}
}

func TestPipes(t *testing.T) {
	p := start(t, "sh", "-c", "read x; echo answer; exec 0<&-; sleep 60")
	if n, err := Backlog(p.Tasks); n != 0 || err != nil {
		t.Errorf("Backlog(tasks) = %d, %v before writing, want 0, nil", n, err)
	}
	if _, err := p.Tasks.Write([]byte("line\nmore\n")); err != nil {
		t.Fatal(err)
	}
	// The shell reads one line, byte by byte, and answers.
	buf := make([]byte, 7)
	if _, err := p.Results.Read(buf); err != nil {
		t.Fatal(err)
	}
	if n, err := Backlog(p.Tasks); n != len("more\n") || err != nil {
		t.Errorf("Backlog(tasks) = %d, %v after one line was read, want %d, nil", n, err, len("more\n"))
	}
	if _, ok := eventually(t, p, func(Activity) bool { return ReaderGone(p.Tasks) }); !ok {
		t.Errorf("ReaderGone(tasks) = false after the worker closed its stdin")
	}
	if n, err := Backlog(p.Results); n != 0 || err != nil {
		t.Errorf("Backlog(results) = %d, %v, want 0, nil", n, err)
	}
}
