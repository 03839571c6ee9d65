package memory

import (
	"encoding/binary"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// requireTracedStart returns a Shim that starts workers traced to their
// exec, with dataLimit; where the host forbids it (a tracer of the test, a
// seccomp filter) the test is skipped, or fails under CI=true.
func requireTracedStart(t *testing.T, dataLimit int64) Shim {
	t.Helper()
	if err := probeTracedStart(); err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("workers cannot start traced here, and that is required under CI=true: %v", err)
		}
		t.Skipf("workers cannot start traced here: %v", err)
	}
	return Shim{DataLimit: dataLimit, traced: true}
}

// spawnOutput starts cmd through s.Spawn with its stdout on a pipe, and
// returns what it wrote once it has ended.
func spawnOutput(t *testing.T, s Shim, cmd *exec.Cmd) (string, error) {
	t.Helper()
	var out strings.Builder
	cmd.Stdout = &out
	if _, err := s.Spawn(cmd, StartCmd); err != nil {
		return "", err
	}
	err := waitTimeout(t, cmd, time.Minute)
	return out.String(), err
}

// TestTracedStartFailsClosed: when the worker cannot be readied at its
// exec, its program does not run, the start fails with the cause, and no
// process is left, not even a zombie.
func TestTracedStartFailsClosed(t *testing.T) {
	requireTracedStart(t, 0)
	mark := filepath.Join(t.TempDir(), "ran")
	cmd := exec.Command("sh", "-c", `echo >"$1"`, "worker", mark)
	refused := errors.New("refused for the test")
	var stopped int
	pid, err := startTraced(cmd, StartCmd, func(pid int) error {
		stopped = pid
		return refused
	})
	if !errors.Is(err, refused) || pid != 0 {
		t.Fatalf("startTraced = %d, %v; want 0 and the refusal", pid, err)
	}
	if stopped == 0 {
		t.Fatal("atStop was not called")
	}
	if _, err := os.Stat(mark); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the worker's program ran (stat %s: %v)", mark, err)
	}
	if err := unix.Kill(stopped, 0); !errors.Is(err, unix.ESRCH) {
		t.Errorf("kill(%d, 0) = %v, want ESRCH: the process (or its zombie) is left", stopped, err)
	}
}

// TestShimKeepsPrivilegedProgramsUntraced: a program that gains privileges
// at its exec (set-user-ID, set-group-ID, file capabilities) would lose
// them traced, so it starts through the shim; other programs start traced.
func TestShimKeepsPrivilegedProgramsUntraced(t *testing.T) {
	s := requireTracedStart(t, 0)
	dir := t.TempDir()
	prog := func(name string, mode os.FileMode) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte("#!/bin/sh\necho ran\n"), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(p, mode); err != nil {
			t.Fatal(err)
		}
		return p
	}
	plain := prog("plain", 0o755)
	setuid := prog("setuid", 0o755|os.ModeSetuid)
	setgid := prog("setgid", 0o755|os.ModeSetgid)
	capable := prog("capable", 0o755)
	// A version 2 file capability set: cap_net_raw permitted.
	caps := make([]byte, 20)
	binary.LittleEndian.PutUint32(caps[0:], 0x02000000)
	binary.LittleEndian.PutUint32(caps[4:], 1<<13)
	capsSet := unix.Setxattr(capable, "security.capability", caps, 0) == nil
	if !capsSet && os.Getenv("CI") == "true" {
		t.Errorf("cannot give %s file capabilities (root is required under CI=true)", capable)
	}
	for _, tc := range []struct {
		path   string
		traced bool
		skip   bool
	}{
		{path: plain, traced: true},
		{path: setuid},
		{path: setgid},
		{path: capable, skip: !capsSet},
		{path: "plain", traced: true}, // relative to the worker's directory
	} {
		if tc.skip {
			continue
		}
		cmd := &exec.Cmd{Path: tc.path, Args: []string{"prog"}, Dir: dir}
		gains := gainsPrivileges(cmd)
		out, err := spawnOutput(t, s, cmd)
		if err != nil || out != "ran\n" {
			t.Errorf("%s: output %q, %v; want it run", tc.path, out, err)
		}
		shimmed := cmd.Path != tc.path
		if gains == tc.traced || shimmed == tc.traced {
			t.Errorf("%s: started through the shim = %v, want %v", tc.path, shimmed, !tc.traced)
		}
	}
}
