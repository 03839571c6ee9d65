package worker

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"syscall"
	"testing"
	"time"

	"github.com/safepool/safepool/internal/memory"
	"github.com/safepool/safepool/internal/protocol"
	"github.com/safepool/safepool/internal/testenv"
)

// startAfterDeath is the framed helper's "freedstart" task: the worker
// holds 64 MiB and exits 3, and its start frame for task id reaches the
// result pipe res only once its memory is freed. A child that shares res, in
// a process group of its own, writes the frame when a pipe that only the worker holds reaches end of
// file, which the kernel makes after it has freed the worker's memory: as
// a worker that dies right after its start frame, read late, looks.
func startAfterDeath(res *os.File, id uint64) {
	hog := make([]byte, 64<<20)
	for i := 0; i < len(hog); i += 4096 {
		hog[i] = 1
	}
	var frame bytes.Buffer
	w := protocol.NewWriter(&frame)
	w.WriteFrame(protocol.Frame{Kind: protocol.KindStart, ID: id})
	w.Flush()
	gate, held, err := os.Pipe()
	if err != nil {
		os.Exit(9)
	}
	in, fill, err := os.Pipe()
	if err != nil {
		os.Exit(9)
	}
	fill.Write(frame.Bytes()) // a few bytes: the pipe holds them
	fill.Close()
	child := exec.Command("/bin/sh", "-c", "cat <&5 >/dev/null; cat >&4")
	child.Stdin = in
	child.ExtraFiles = []*os.File{nil, res, gate}
	// Out of the worker's process group, which is killed as it dies.
	child.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := child.Start(); err != nil {
		os.Exit(9)
	}
	runtime.KeepAlive(hog)
	runtime.KeepAlive(held)
	os.Exit(3)
}

// TestSessionPeakOfAStartReadLate: a framed worker in a cgroup of its own
// whose start frame is read after it died, its memory freed, is charged
// the memory it held, not what it left in the cgroup. The session reset
// the group's peak at the start of an idle worker's task, and the reset
// then found almost nothing: a worker that died at once (a task's
// SIGKILL of itself) was said to peak at a few hundred KiB.
func TestSessionPeakOfAStartReadLate(t *testing.T) {
	m, err := memory.NewManager()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := m.Close(); err != nil {
			t.Errorf("removing the test's cgroups: %v", err)
		}
	})
	g, err := m.NewGroup("late-start", 512<<20)
	if err != nil {
		testenv.SkipOrFail(t, fmt.Sprintf("cannot make a memory cgroup: %v", err))
	}
	cfg := helperConfig("framed", IOFramed)
	cfg.Spec.Env = append(cfg.Spec.Env, "GORACE=atexit_sleep_ms=0")
	cfg.Group = g
	_, d := drive(t, cfg, []string{"freedstart"}, false, time.Minute)
	if d.Cause != ExitCause(3) || len(d.Flights) != 1 || !d.Flights[0].Started {
		t.Fatalf("Death = cause %q with %d flights, want %q with the task's (stderr %q)",
			d.Cause, len(d.Flights), ExitCause(3), d.Stderr)
	}
	if p := d.Flights[0].Outcome.PeakRSS; p < 64<<20 {
		t.Errorf("PeakRSS = %d bytes, want at least 64 MiB (%s)", p, d.Flights[0].Outcome.Message)
	}
}
