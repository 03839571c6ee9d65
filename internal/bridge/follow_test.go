package bridge

import (
	"encoding/binary"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/safepool/safepool/pool"
)

// TestClientStoppedPausesPool: while the client process is stopped, the
// pool's workers are stopped too (state T) and make no progress, and the
// time stopped counts against no task's timeout; once the client is
// continued, the tasks end done. The workers used to run on while the
// client, stopped by Ctrl-Z, looked suspended. The pool clock stands still
// meanwhile.
func TestClientStoppedPausesPool(t *testing.T) {
	// The work is short beside the timeout, so that a worker slowed down
	// many times over by a loaded machine (the race detector's build of
	// this binary, beside the compiles of other packages' tests, ticked
	// every 200 ms) still ends in time; the pause is longer than the
	// timeout, so that a timeout that counted it would end the tasks.
	const timeout, pause = 4 * time.Second, 4500 * time.Millisecond
	for _, tt := range []struct {
		name string
		stop syscall.Signal
	}{
		{"SIGTSTP", syscall.SIGTSTP},
		{"SIGSTOP", syscall.SIGSTOP},
	} {
		t.Run(tt.name, func(t *testing.T) {
			client := exec.Command("sleep", "60")
			// A process group of its own whose parent (this test) is in
			// another group of the session, as a shell makes for a job:
			// the kernel stops it on SIGTSTP (an orphaned group ignores it).
			client.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
			if err := client.Start(); err != nil {
				t.Fatal(err)
			}
			defer func() {
				client.Process.Kill()
				client.Wait()
			}()
			dir := t.TempDir()
			clockPath := filepath.Join(dir, "clock")
			if err := os.WriteFile(clockPath, make([]byte, ClockSize), 0o600); err != nil {
				t.Fatal(err)
			}
			s := startOpts(t, Hello{Workers: 2, Clock: clockPath}, "1", Options{Client: client.Process.Pid})
			s.next() // ready
			files := []string{filepath.Join(dir, "a"), filepath.Join(dir, "b")}
			// tickCount ticks of 50 ms: 0.6 s of work, timed out at 4 s.
			meta := []byte(fmt.Sprintf(`{"timeout":%g}`, timeout.Seconds()))
			for i, f := range files {
				p := binary.BigEndian.AppendUint32(nil, uint32(len(meta)))
				s.send(KindTaskMeta, uint64(i+1), append(append(p, meta...), "tick:"+f...))
			}
			s.send(KindClose, 0, nil)
			ticks := func(f string) (n, pid int) {
				b, _ := os.ReadFile(f)
				lines := strings.Fields(string(b))
				if len(lines) > 0 {
					pid, _ = strconv.Atoi(lines[0])
				}
				return len(lines), pid
			}
			waitFor(t, "both tasks ticking", func() bool {
				na, _ := ticks(files[0])
				nb, _ := ticks(files[1])
				return na >= 3 && nb >= 3
			})
			if err := client.Process.Signal(tt.stop); err != nil {
				t.Fatal(err)
			}
			waitFor(t, "client stopped", func() bool { return procState(client.Process.Pid) == 'T' })
			for _, f := range files {
				_, pid := ticks(f)
				waitFor(t, "worker "+strconv.Itoa(pid)+" stopped", func() bool { return procState(pid) == 'T' })
			}
			na, _ := ticks(files[0])
			nb, _ := ticks(files[1])
			if na >= tickCount || nb >= tickCount {
				t.Fatalf("a task ended (%d and %d ticks) before the client stopped: nothing to check", na, nb)
			}
			paused, r1 := readClock(t, clockPath)
			if !paused {
				t.Errorf("the pool clock runs while the pool is paused")
			}
			// Longer than the tasks' timeout, and than their whole work.
			time.Sleep(pause)
			if _, r2 := readClock(t, clockPath); r2 != r1 {
				t.Errorf("the pool clock moved %v while the pool was paused, want 0", time.Duration(r2-r1))
			}
			if ga, _ := ticks(files[0]); ga != na {
				t.Errorf("task a ticked %d times while its client was stopped, want none", ga-na)
			}
			if gb, _ := ticks(files[1]); gb != nb {
				t.Errorf("task b ticked %d times while its client was stopped, want none", gb-nb)
			}
			if err := client.Process.Signal(syscall.SIGCONT); err != nil {
				t.Fatal(err)
			}
			waitFor(t, "the pool clock running", func() bool { p, _ := readClock(t, clockPath); return !p })
			if _, r3 := readClock(t, clockPath); r3 < r1 || r3-r1 > int64(time.Second) {
				t.Errorf("the pool clock went on %v after the pause, want from where it stood", time.Duration(r3-r1))
			}
			got, _ := s.results(2)
			for id, m := range got {
				if m.State != "done" {
					t.Errorf("task %d = %+v, want done: the time stopped counts against no timeout", id, m)
				}
			}
			for _, f := range files {
				if n, _ := ticks(f); n != tickCount {
					t.Errorf("%s: %d ticks, want %d", filepath.Base(f), n, tickCount)
				}
			}
			if f := s.next(); f.kind != KindEnd {
				t.Errorf("last frame kind = %d, want end", f.kind)
			}
		})
	}
}

// tickCount is how many times a "tick:FILE" task of the test worker
// ticks, 50 ms apart.
const tickCount = 12

// readClock reads the pool clock of the file at path as a client does:
// whether it stands still, and its reading in nanoseconds.
func readClock(t *testing.T, path string) (paused bool, reading int64) {
	t.Helper()
	now := monotonic()
	b, err := os.ReadFile(path)
	if err != nil || len(b) < ClockSize {
		t.Fatalf("reading the pool clock: %v (%d bytes)", err, len(b))
	}
	w := binary.NativeEndian.Uint64(b)
	return w&ClockPaused != 0, clockReading(w, now)
}

// TestPoolClock: the pool clock stands still from pause to resume, and
// goes on from where it stood; a second pause or resume does nothing.
func TestPoolClock(t *testing.T) {
	f, err := os.CreateTemp(t.TempDir(), "clock")
	if err != nil {
		t.Fatal(err)
	}
	f.Write(make([]byte, ClockSize))
	f.Close()
	c, err := openClock(f.Name())
	if err != nil {
		t.Fatal(err)
	}
	defer c.close()
	word := func() uint64 { return binary.NativeEndian.Uint64(c.m) }
	steps := []struct {
		name     string
		do       func()
		now      int64 // CLOCK_MONOTONIC of the reading
		want     int64 // the reading
		wantStop bool
	}{
		{"never paused", func() {}, 1000, 1000, false},
		{"resumed unpaused", func() { c.resume(1500) }, 2000, 2000, false},
		{"paused", func() { c.pause(3000) }, 3500, 3000, true},
		{"paused twice", func() { c.pause(4000) }, 5000, 3000, true},
		{"resumed", func() { c.resume(6000) }, 6000, 3000, false},
		{"running on", func() {}, 7000, 4000, false},
		{"resumed twice", func() { c.resume(7500) }, 8000, 5000, false},
		{"paused again", func() { c.pause(9000) }, 9999, 6000, true},
		{"resumed again", func() { c.resume(10000) }, 12000, 8000, false},
	}
	for _, st := range steps {
		st.do()
		w := word()
		if got := clockReading(w, st.now); got != st.want || (w&ClockPaused != 0) != st.wantStop {
			t.Errorf("%s: clockReading(%#x, %d) = %d (paused %v), want %d (paused %v)",
				st.name, w, st.now, got, w&ClockPaused != 0, st.want, st.wantStop)
		}
	}
	var nilClock *poolClock
	nilClock.pause(1) // does nothing
	nilClock.resume(2)
	nilClock.close()
	if _, err := openClock(filepath.Join(t.TempDir(), "none")); err == nil {
		t.Errorf("openClock(missing file) = nil error")
	}
	short := filepath.Join(t.TempDir(), "short")
	os.WriteFile(short, []byte{0}, 0o600)
	if _, err := openClock(short); err == nil {
		t.Errorf("openClock(1-byte file) = nil error")
	}
}

// TestProcState: the state letter follows the last ')' of /proc/PID/stat,
// whatever the command name holds.
func TestProcState(t *testing.T) {
	dir := t.TempDir()
	// A command name with a space and a parenthesis, as a program may be
	// named.
	name := filepath.Join(dir, "a) b")
	if err := os.Symlink("/bin/sleep", name); err != nil {
		t.Fatal(err)
	}
	c := exec.Command(name, "60")
	if err := c.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() {
		c.Process.Kill()
		c.Wait()
	}()
	waitFor(t, "sleep sleeping", func() bool { return procState(c.Process.Pid) == 'S' })
	c.Process.Signal(syscall.SIGSTOP)
	waitFor(t, "sleep stopped", func() bool { return procState(c.Process.Pid) == 'T' })
	if st := procState(1 << 30); st != 0 {
		t.Errorf("procState(no such process) = %q, want 0", st)
	}
}

// TestIdle: a pool is idle when it has counted every item sent to it and
// ended them all.
func TestIdle(t *testing.T) {
	tests := []struct {
		name string
		st   pool.Stats
		sent int64
		want bool
	}{
		{"nothing sent", pool.Stats{}, 0, true},
		{"sent, not counted yet", pool.Stats{}, 3, false},
		{"counted in part", pool.Stats{Submitted: 2, Done: 2}, 3, false},
		{"running", pool.Stats{Submitted: 3, Done: 1, Running: 1}, 3, false},
		{"all ended", pool.Stats{Submitted: 5, Done: 2, Failed: 1, Cancelled: 1, Poison: 1}, 5, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := idle(tt.st, tt.sent); got != tt.want {
				t.Errorf("idle(%+v, %d) = %v, want %v", tt.st, tt.sent, got, tt.want)
			}
		})
	}
}

// waitFor waits for cond, 10 s at most (a bound against hangs, not a
// speed requirement).
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); !cond(); time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within 10s", what)
		}
	}
}

// BenchmarkProcState: what one look at the client's state costs.
func BenchmarkProcState(b *testing.B) {
	pid := os.Getppid()
	for b.Loop() {
		procState(pid)
	}
}
