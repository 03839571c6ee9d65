package cli

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/safepool/safepool/internal/memory"
	"github.com/safepool/safepool/internal/testenv"
)

// TestDemoUnprivileged runs README's first command, safepool demo, as a
// user without root in a 600 MiB memory cgroup that root made, as in a
// container: nobody cannot make cgroups, so the data size limit stops task
// 7's worker, which must be named memory-limit and retried. The demo's
// worker used to grow on the Go heap, whose refusal reads "fatal error:
// runtime: out of memory" followed by some 10 KiB of goroutine stacks: the
// demo failed, calling the death exit:2, and printed the stacks.
func TestDemoUnprivileged(t *testing.T) {
	if _, err := exec.LookPath("setpriv"); err != nil {
		testenv.SkipOrFail(t, "setpriv (util-linux) is not installed")
	}
	m, err := memory.NewManager()
	if err != nil {
		testenv.SkipOrFail(t, "memory cgroups: "+err.Error())
		return
	}
	defer func() {
		if err := m.Close(); err != nil {
			t.Errorf("removing the container's cgroup: %v", err)
		}
	}()
	if !m.Mode().PerWorker() {
		testenv.SkipOrFail(t, "memory cgroups: "+m.Reason())
		return
	}
	g, err := m.NewGroup("container", 600<<20)
	if err != nil {
		t.Fatal(err)
	}
	bin, dir := buildSafepoolForAll(t)
	cmd := exec.Command("sh", "-c",
		`echo $$ > "$0/cgroup.procs" && exec setpriv --reuid 65534 --regid 65534 --clear-groups "$1" demo --no-progress`,
		g.Path(), bin)
	cmd.Dir = dir
	var stdout, stderr strings.Builder
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err = cmd.Run()
	out := stdout.String() + stderr.String()
	if err != nil {
		t.Fatalf("safepool demo as nobody: %v; output:\n%s", err, out)
	}
	for _, want := range []string{"task  7: failed (memory-limit)\n", "\nAs designed:"} {
		if !strings.Contains(stdout.String(), want) {
			t.Errorf("stdout:\n%s\nwant %q", stdout.String(), want)
		}
	}
	if strings.Contains(out, "goroutine ") {
		t.Errorf("output holds a Go stack dump:\n%s", out)
	}
}

// buildSafepoolForAll builds safepool in a directory of its own that every
// user may read and enter, removed at the test's end, and returns the
// binary and the directory. go test's directories are for their owner
// only: other users run a safepool built where they may.
func buildSafepoolForAll(t *testing.T) (bin, dir string) {
	t.Helper()
	dir, err := os.MkdirTemp("", "safepool-for-all-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	bin = filepath.Join(dir, "safepool")
	if err := os.Rename(buildSafepool(t), bin); err != nil {
		t.Fatal(err)
	}
	return bin, dir
}
