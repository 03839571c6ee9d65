package memory

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"
)

// The shim is tested here without cgroups: its "cgroup.procs" is a plain
// file, which takes the pid the same way.

func TestShimPreservesArgvAndEnv(t *testing.T) {
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	if err := os.Symlink(exe, filepath.Join(dir, "worker-link")); err != nil {
		t.Fatal(err)
	}
	env := []string{helperEnv + "=report", "A=1", "SPACED=a b", "QUOTED=\"'$x", "SHLVL=2", "GORACE=atexit_sleep_ms=0"}
	for _, tc := range []struct {
		name      string
		path      string
		argv0     string
		dir       string
		bash      string
		wantArgv0 string // "" for argv0
	}{
		{name: "argv0 is path", path: exe, argv0: exe, bash: bashPath()},
		{name: "argv0 differs", path: exe, argv0: "my worker", bash: bashPath()},
		{name: "relative path", path: "worker-link", argv0: "worker-link", dir: dir, bash: bashPath()},
		{name: "no bash", path: exe, argv0: "my worker", bash: "", wantArgv0: exe},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if tc.bash == "" && tc.wantArgv0 == "" {
				t.Skip("no bash on this host")
			}
			cmd := &exec.Cmd{Path: tc.path, Args: append([]string{tc.argv0}, trickyArgs...), Env: env, Dir: tc.dir}
			want := slices.Clone(cmd.Args)
			if tc.wantArgv0 != "" {
				want[0] = tc.wantArgv0
			}
			procs := filepath.Join(t.TempDir(), "cgroup.procs")
			wrapInShim(cmd, shimSpec{procs: procs}, tc.bash)
			var stdout, stderr bytes.Buffer
			cmd.Stdout, cmd.Stderr = &stdout, &stderr
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			if err := waitTimeout(t, cmd, time.Minute); err != nil {
				t.Fatalf("shim: %v; stderr: %s", err, stderr.String())
			}
			var r report
			if err := json.Unmarshal(stdout.Bytes(), &r); err != nil {
				t.Fatalf("report %q: %v", stdout.String(), err)
			}
			if !slices.Equal(r.Args, want) {
				t.Errorf("worker argv = %q, want %q", r.Args, want)
			}
			// Shells keep the environment but not its order.
			if got, want := slices.Sorted(slices.Values(r.Env)), slices.Sorted(slices.Values(env)); !slices.Equal(got, want) {
				t.Errorf("worker env = %q, want %q", got, want)
			}
			if r.OOMScoreAdj != "1000" {
				t.Errorf("worker oom_score_adj = %q, want 1000", r.OOMScoreAdj)
			}
			if got, _ := os.ReadFile(procs); strings.TrimSpace(string(got)) != fmt.Sprint(cmd.Process.Pid) {
				t.Errorf("shim wrote %q to cgroup.procs, want the worker's pid %d", got, cmd.Process.Pid)
			}
		})
	}
}

// TestShimFailsClosed checks that a worker that cannot join its cgroup
// never runs.
func TestShimFailsClosed(t *testing.T) {
	cmd := helperCommand(t, "report")
	wrapInShim(cmd, shimSpec{procs: "/nonexistent/group/cgroup.procs"}, bashPath())
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	if code := cmd.ProcessState.ExitCode(); code != shimExitCode {
		t.Errorf("shim exit = %v (code %d), want %d", err, code, shimExitCode)
	}
	if !strings.Contains(stderr.String(), "safepool: cannot move process") {
		t.Errorf("shim stderr = %q, want the reason", stderr.String())
	}
	if stdout.Len() != 0 {
		t.Errorf("worker ran outside its cgroup: %q", stdout.String())
	}
}

func TestShimKeepsSysProcAttr(t *testing.T) {
	g := &Group{m: &Manager{}, ctrl: cgroupV1{bash: bashPath()}, path: t.TempDir()}
	attr := &syscall.SysProcAttr{Setpgid: true}
	cmd := exec.Command("/bin/true")
	cmd.SysProcAttr = attr
	if err := g.Prepare(cmd); err != nil {
		t.Fatal(err)
	}
	g.Started()
	if cmd.Path != "/bin/sh" || cmd.Args[len(cmd.Args)-1] != "/bin/true" {
		t.Errorf("Prepare(/bin/true) = %s %q, want a /bin/sh shim running /bin/true", cmd.Path, cmd.Args)
	}
	if !cmd.SysProcAttr.Setpgid {
		t.Errorf("Prepare dropped SysProcAttr.Setpgid")
	}

	failed := exec.Command("no-such-program-anywhere")
	if err := g.Prepare(failed); err == nil || failed.Path != "no-such-program-anywhere" {
		t.Errorf("Prepare(cmd whose lookup failed) = %v, Path %q; want the lookup error, cmd untouched", err, failed.Path)
	}
}

// TestShimWithoutCgroup: a worker without a cgroup of its own, and what it
// forks, get oom_score_adj 1000 and the data size limit before any of its
// code runs: through the shell shim, and started traced to its exec, which
// runs the worker's own program with one exec.
func TestShimWithoutCgroup(t *testing.T) {
	for _, tc := range []struct {
		name  string
		limit int64
		want  string // Max data size in /proc/self/limits
	}{
		{name: "no limit", want: "unlimited"},
		{name: "200 MiB", limit: 200 * mib, want: fmt.Sprint(200 * mib)},
		{name: "rounded up", limit: 200*mib + 1, want: fmt.Sprint(200*mib + 1024)},
	} {
		for _, traced := range []bool{false, true} {
			name := tc.name + ", shim"
			if traced {
				name = tc.name + ", traced"
			}
			t.Run(name, func(t *testing.T) {
				// The worker's own command line, then its child's reports:
				// it was forked after the worker was readied.
				cmd := exec.Command("sh", "-c", `tr '\0' ' ' </proc/$$/cmdline; echo; cat /proc/self/oom_score_adj /proc/self/limits; exit 0`, "worker")
				path := cmd.Path
				var out []byte
				var err error
				if traced {
					var s string
					s, err = spawnOutput(t, requireTracedStart(t, tc.limit), cmd)
					out = []byte(s)
				} else {
					if err := (Shim{DataLimit: tc.limit}).Prepare(cmd); err != nil {
						t.Fatal(err)
					}
					out, err = cmd.Output()
				}
				if err != nil {
					t.Fatalf("start: %v", err)
				}
				argv, rest, _ := strings.Cut(string(out), "\n")
				if traced && (cmd.Path != path || !strings.HasPrefix(argv, "sh -c tr ")) {
					t.Errorf("ran %s as %q, want %s itself (one exec, no shim)", cmd.Path, argv, path)
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
}

func TestDataKiB(t *testing.T) {
	const inf = ^uint64(0)
	for _, tc := range []struct {
		limit int64
		hard  uint64
		want  int64
	}{
		{0, inf, 0},
		{1, inf, 1},
		{232 * mib, inf, 232 * 1024},
		{232*mib + 1, inf, 232*1024 + 1},
		{232 * mib, 100 * mib, 100 * 1024},
		{232 * mib, 100*mib + 1000, 100 * 1024},
		{232 * mib, 300 * mib, 232 * 1024},
	} {
		if got := dataKiB(tc.limit, tc.hard); got != tc.want {
			t.Errorf("dataKiB(%d, %d) = %d, want %d", tc.limit, tc.hard, got, tc.want)
		}
	}
}
