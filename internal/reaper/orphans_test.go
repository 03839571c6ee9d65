package reaper_test

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/safepool/safepool/internal/bridge"
	"github.com/safepool/safepool/internal/memory"
	"github.com/safepool/safepool/internal/protocol"
)

// These tests hold safepool to its promise that nothing it starts outlives
// it: whatever the tasks do to escape (setsid, a double fork, an empty
// environment, killing their worker) and however the supervisor ends (the
// end of the run, SIGKILL, SIGTERM, SIGHUP, SIGPIPE), as root with worker
// cgroups and as an unprivileged user without. The supervisors are this
// test binary: the CLI, a program on the Go API, and the Python client's
// bridge.

// escapes returns the escape flags for one task: a setsid'd child and a
// double-forked grandchild and, where the supervisor has worker cgroups to
// catch it, a child with an empty environment. It also returns how many
// processes the task reports.
func escapes(u user) (string, int) {
	if u == self && cgroupsWork() {
		return "-setsid 1 -doublefork 1 -envcleared 1", 3
	}
	return "-setsid 1 -doublefork 1", 2
}

// cgroupsWork reports whether this process can make worker cgroups.
func cgroupsWork() bool {
	m, err := memory.NewManager()
	if err != nil {
		return false
	}
	defer m.Close()
	return m.Mode().PerWorker()
}

// startSupervisor starts the test binary as a Go API supervisor of tasks
// and returns it with its stdout.
func startSupervisor(t *testing.T, s *scene, proto string, workers int, tasks ...string) (*exec.Cmd, *bufio.Reader, io.WriteCloser) {
	t.Helper()
	cmd := s.command("reapertest-supervise", append([]string{proto, fmt.Sprint(workers)}, tasks...)...)
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stderr strings.Builder
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
		if t.Failed() {
			t.Logf("supervisor stderr:\n%s", stderr.String())
		}
	})
	return cmd, bufio.NewReader(stdout), stdin
}

// checkCgroupGone fails the test if dir, a supervisor's worker cgroups,
// is still there after a bounded wait.
func checkCgroupGone(t *testing.T, dir string) {
	t.Helper()
	if dir == "" {
		return
	}
	if !waitGone(dir) {
		t.Errorf("the worker cgroups %s remain after the supervisor ended", dir)
	}
}

// killed ends a supervisor with SIGKILL and waits for it.
func killed(t *testing.T, cmd *exec.Cmd) {
	t.Helper()
	cmd.Process.Signal(syscall.SIGKILL)
	cmd.Wait()
}

func TestSupervisorKilled(t *testing.T) {
	for _, u := range users() {
		for _, proto := range []string{"oneshot", "framed"} {
			t.Run(u.name()+"/"+proto, func(t *testing.T) {
				s := newScene(t, u)
				flags, n := escapes(u)
				cmd, _, _ := startSupervisor(t, s, proto, 2, flags+" -hang", flags+" -hang")
				reported := s.waitPIDs(2 * n)
				dir := cgroupDirOf(cmd.Process.Pid)
				if u == self && cgroupsWork() && dir == "" {
					t.Errorf("found no worker cgroups of supervisor %d", cmd.Process.Pid)
				}
				killed(t, cmd)
				s.assertNoneLeft(reported)
				checkCgroupGone(t, dir)
			})
		}
	}
}

func TestNormalEndLeavesNothing(t *testing.T) {
	for _, u := range users() {
		for _, proto := range []string{"oneshot", "framed"} {
			t.Run(u.name()+"/"+proto, func(t *testing.T) {
				s := newScene(t, u)
				flags, n := escapes(u)
				cmd, out, stdin := startSupervisor(t, s, proto, 2, flags, flags, flags)
				line, err := out.ReadString('\n')
				if line != "ended\n" {
					t.Fatalf("supervisor said %q, %v; want ended", line, err)
				}
				reported := s.waitPIDs(3 * n)
				// At once, not after a wait: the run has returned.
				if left := s.live(reported, cmd.Process.Pid); len(left) > 0 {
					t.Errorf("%d processes outlived the run: %s", len(left), describe(left))
				}
				stdin.Close()
				if err := cmd.Wait(); err != nil {
					t.Errorf("supervisor: %v", err)
				}
			})
		}
	}
}

func TestTaskKillsItsWorker(t *testing.T) {
	for _, u := range users() {
		for _, proto := range []string{"oneshot", "framed"} {
			t.Run(u.name()+"/"+proto, func(t *testing.T) {
				s := newScene(t, u)
				flags, n := escapes(u)
				cmd, out, stdin := startSupervisor(t, s, proto, 2, flags+" -killparent", flags+" -killparent")
				line, err := out.ReadString('\n')
				if line != "ended\n" {
					t.Fatalf("supervisor said %q, %v; want ended", line, err)
				}
				reported := s.waitPIDs(2 * n)
				if left := s.live(reported, cmd.Process.Pid); len(left) > 0 {
					t.Errorf("%d processes outlived the run: %s", len(left), describe(left))
				}
				stdin.Close()
				cmd.Wait()
			})
		}
	}
}

// waitExit waits for cmd, a bounded time, and returns how it ended.
func waitExit(t *testing.T, cmd *exec.Cmd) error {
	t.Helper()
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		return err
	case <-time.After(time.Minute):
		cmd.Process.Kill()
		<-done
		t.Fatal("the supervisor did not end within a minute")
		return nil
	}
}

func TestCLISignals(t *testing.T) {
	for _, u := range users() {
		for _, sig := range []syscall.Signal{syscall.SIGTERM, syscall.SIGHUP} {
			t.Run(u.name()+"/"+strings.ToUpper(sig.String()), func(t *testing.T) {
				s := newScene(t, u)
				flags, n := escapes(u)
				args := append([]string{"run", "-j", "2", "--", s.exe, "reapertest-escape"}, strings.Fields(flags+" -hang")...)
				cmd := s.command("reapertest-cli", append(args, ":::", "1", "2")...)
				var stderr strings.Builder
				cmd.Stderr = &stderr
				if err := cmd.Start(); err != nil {
					t.Fatal(err)
				}
				reported := s.waitPIDs(2 * n)
				dir := cgroupDirOf(cmd.Process.Pid)
				cmd.Process.Signal(sig)
				err := waitExit(t, cmd)
				t.Logf("safepool run ended by %v: %v", sig, err)
				s.assertNoneLeft(reported)
				checkCgroupGone(t, dir)
				if t.Failed() {
					t.Logf("stderr:\n%s", stderr.String())
				}
			})
		}
	}
}

// TestCLIBrokenPipe is "safepool run ... | head -1": the reader of the
// output goes away while tasks run.
func TestCLIBrokenPipe(t *testing.T) {
	for _, u := range users() {
		t.Run(u.name(), func(t *testing.T) {
			s := newScene(t, u)
			flags, n := escapes(u)
			args := append([]string{"run", "-j", "2", "--", s.exe, "reapertest-escape", "-delay", "{}"}, strings.Fields(flags)...)
			cmd := s.command("reapertest-cli", append(args, ":::", "0s", "2s", "2s", "2s")...)
			r, w, err := os.Pipe()
			if err != nil {
				t.Fatal(err)
			}
			cmd.Stdout = w
			var stderr strings.Builder
			cmd.Stderr = &stderr
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			w.Close()
			line, err := bufio.NewReader(r).ReadString('\n')
			r.Close()
			if line != "out\n" {
				cmd.Process.Kill()
				t.Fatalf("first line %q, %v; want out", line, err)
			}
			// The first task reported its processes before its output.
			s.waitPIDs(n)
			dir := cgroupDirOf(cmd.Process.Pid)
			err = waitExit(t, cmd)
			t.Logf("safepool run ended: %v", err)
			reported := s.waitPIDs(n)
			s.assertNoneLeft(reported)
			checkCgroupGone(t, dir)
			if t.Failed() {
				t.Logf("stderr:\n%s", stderr.String())
			}
		})
	}
}

// TestBridgeKilled SIGKILLs the Python client's supervisor, "safepool
// __bridge", while its tasks run.
func TestBridgeKilled(t *testing.T) {
	for _, u := range users() {
		t.Run(u.name(), func(t *testing.T) {
			s := newScene(t, u)
			flags, n := escapes(u)
			inR, inW, err := os.Pipe()
			if err != nil {
				t.Fatal(err)
			}
			outR, outW, err := os.Pipe()
			if err != nil {
				t.Fatal(err)
			}
			cmd := s.command("reapertest-cli", "__bridge", "--in-fd", "3", "--out-fd", "4")
			cmd.ExtraFiles = []*os.File{inR, outW}
			var stderr strings.Builder
			cmd.Stderr = &stderr
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			inR.Close()
			outW.Close()
			defer inW.Close()
			defer outR.Close()
			go io.Copy(io.Discard, outR) // Ready, and the End it never sends

			hello, _ := json.Marshal(map[string]any{
				"version": bridge.Version, "command": []string{s.exe, "reapertest-framed"}, "workers": 2, "pipeline": 1,
			})
			sendFrame(t, inW, 1, 0, hello)
			sendFrame(t, inW, 2, 1, []byte(flags+" -hang"))
			sendFrame(t, inW, 2, 2, []byte(flags+" -hang"))
			reported := s.waitPIDs(2 * n)
			dir := cgroupDirOf(cmd.Process.Pid)
			killed(t, cmd)
			s.assertNoneLeft(reported)
			checkCgroupGone(t, dir)
			if t.Failed() {
				t.Logf("stderr:\n%s", stderr.String())
			}
		})
	}
}

// sendFrame writes one bridge frame (docs/protocol.md).
func sendFrame(t *testing.T, w io.Writer, kind byte, id uint64, payload []byte) {
	t.Helper()
	if _, err := w.Write(protocol.AppendFrame(nil, kind, id, payload)); err != nil {
		t.Fatal(err)
	}
}

// TestLargeTree ends a task's 200 daemons, when the supervisor is killed
// and at the end of the run.
func TestLargeTree(t *testing.T) {
	const daemons = 200
	t.Run("killed", func(t *testing.T) {
		s := newScene(t, self)
		cmd, _, _ := startSupervisor(t, s, "oneshot", 1, fmt.Sprintf("-setsid %d -hang", daemons))
		reported := s.waitPIDs(daemons)
		killed(t, cmd)
		s.assertNoneLeft(reported)
	})
	t.Run("end", func(t *testing.T) {
		s := newScene(t, self)
		cmd, out, stdin := startSupervisor(t, s, "oneshot", 1, fmt.Sprintf("-setsid %d", daemons))
		if line, err := out.ReadString('\n'); line != "ended\n" {
			t.Fatalf("supervisor said %q, %v; want ended", line, err)
		}
		reported := s.waitPIDs(daemons)
		if left := s.live(reported, cmd.Process.Pid); len(left) > 0 {
			t.Errorf("%d processes outlived the run: %s", len(left), describe(left))
		}
		stdin.Close()
		if err := cmd.Wait(); err != nil && !errors.Is(err, os.ErrProcessDone) {
			t.Errorf("supervisor: %v", err)
		}
	})
}
