package memory

import (
	"encoding/binary"
	"errors"
	"fmt"
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

// TestTracedStartWithoutCgroup: a worker without a cgroup of its own
// started through a traced Shim runs its own program with one exec (no
// shell before it), and what it forks at once has oom_score_adj 1000 and
// the data size limit, soft and hard.
func TestTracedStartWithoutCgroup(t *testing.T) {
	for _, tc := range []struct {
		name  string
		limit int64
		want  string // Max data size in /proc/self/limits
	}{
		{name: "no limit", want: "unlimited"},
		{name: "200 MiB", limit: 200 * mib, want: fmt.Sprint(200 * mib)},
		{name: "rounded up", limit: 200*mib + 1, want: fmt.Sprint(200*mib + 1024)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := requireTracedStart(t, tc.limit)
			// The worker's own command line, then its child's reports.
			cmd := exec.Command("sh", "-c", `tr '\0' ' ' </proc/$$/cmdline; echo; cat /proc/self/oom_score_adj /proc/self/limits; exit 0`, "worker")
			path := cmd.Path
			out, err := spawnOutput(t, s, cmd)
			if err != nil {
				t.Fatalf("traced start: %v", err)
			}
			if cmd.Path != path {
				t.Errorf("Spawn ran %s, want %s itself (no shim)", cmd.Path, path)
			}
			argv, rest, _ := strings.Cut(out, "\n")
			if !strings.HasPrefix(argv, "sh -c tr ") {
				t.Errorf("the worker's command line = %q, want its own sh -c (one exec, no shim)", argv)
			}
			adj, limits, _ := strings.Cut(rest, "\n")
			if adj != "1000" {
				t.Errorf("oom_score_adj of the worker's child = %q, want 1000", adj)
			}
			var data []string
			for _, line := range strings.Split(limits, "\n") {
				if f, ok := strings.CutPrefix(line, "Max data size"); ok {
					data = strings.Fields(f)
				}
			}
			if len(data) < 2 || data[0] != tc.want || data[1] != tc.want {
				t.Errorf("data size limit (soft, hard) = %q, want %s for both", data, tc.want)
			}
		})
	}
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
