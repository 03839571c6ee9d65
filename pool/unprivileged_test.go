package pool_test

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/safepool/safepool/internal/memory"
	"github.com/safepool/safepool/internal/testenv"
	"github.com/safepool/safepool/pool"
)

// These tests run a supervisor as the unprivileged user nobody inside a
// memory cgroup that root made, as in a container or a batch job: it can
// read the cgroup's files but cannot make cgroups of its own.

// nobodyUID is the user the unprivileged supervisors run as.
const nobodyUID = "65534"

// containerFor makes a memory cgroup limited to limit bytes, for a
// supervisor to run in as nobody, and returns its directory. It skips (or
// fails, under CI=true) where root cannot make cgroups or setpriv is
// missing. The cgroup is removed when the test ends.
func containerFor(t *testing.T, limit int64) string {
	t.Helper()
	requireCgroups(t)
	if _, err := exec.LookPath("setpriv"); err != nil {
		testenv.SkipOrFail(t, "setpriv (util-linux) is not installed")
	}
	m, err := memory.NewManager()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := m.Close(); err != nil {
			t.Errorf("removing the container's cgroup: %v", err)
		}
	})
	g, err := m.NewGroup("container", limit)
	if err != nil {
		t.Fatal(err)
	}
	return g.Path()
}

// nobodyBinary copies this test binary where nobody can run it (go test
// builds it in a directory only its owner can enter), and returns its path.
func nobodyBinary(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "safepool-nobody-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	src, err := os.Open(os.Args[0])
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	bin := filepath.Join(dir, filepath.Base(os.Args[0]))
	dst, err := os.OpenFile(bin, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o755)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.Copy(dst, src); err != nil {
		dst.Close()
		t.Fatal(err)
	}
	if err := dst.Close(); err != nil {
		t.Fatal(err)
	}
	return bin
}

// superviseAsNobody runs this test binary as nobody, inside the cgroup dir,
// as a supervisor in the mode that env selects, and returns its stdout and
// stderr. Root's shell joins the cgroup, then setpriv drops to nobody
// before the supervisor runs. The test fails if it has not ended within
// two minutes.
func superviseAsNobody(t *testing.T, dir string, env ...string) (string, error) {
	t.Helper()
	bin := nobodyBinary(t)
	cmd := exec.Command("sh", "-c",
		`echo $$ > "$0/cgroup.procs" && exec setpriv --reuid `+nobodyUID+` --regid `+nobodyUID+` --clear-groups "$1" -test.run='^$'`,
		dir, bin)
	cmd.Dir = filepath.Dir(bin)
	cmd.Env = append(os.Environ(), env...)
	var out strings.Builder
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		return out.String(), err
	case <-time.After(2 * time.Minute):
		cmd.Process.Kill()
		<-done
		t.Fatalf("the supervisor did not finish within two minutes; output:\n%s", out.String())
		return "", nil
	}
}

// TestOOMUnprivileged runs the seed scenario as nobody inside a 300 MiB
// cgroup: 40 tasks on 4 workers behind "sh -c", task 7 allocating until the
// kernel OOM-kills it. The supervisor cannot make cgroups or read the
// kernel log, but the enclosing cgroup's oom_kill counter, read around the
// death, confirms the kill: task 7 fails with oom, not a bare SIGKILL or
// the shell's 137. A task is retried once: the kernel, at so tight a
// limit, sometimes kills a second worker while the first victim's memory
// is being freed, and that kill too must be named oom.
func TestOOMUnprivileged(t *testing.T) {
	dir := containerFor(t, 300<<20)
	text, err := superviseAsNobody(t, dir, workerEnv+"=container-seed")
	if err != nil {
		t.Fatalf("supervisor: %v; output:\n%s", err, text)
	}
	if !strings.Contains(text, "task 7 failed oom attempts=oom,oom\n") || strings.Count(text, " done ") != 39 {
		t.Errorf("supervisor output:\n%s\nwant 39 tasks done and task 7 failed with oom twice", text)
	}
	for _, line := range strings.Split(text, "\n") {
		if _, causes, ok := strings.Cut(line, " attempts="); ok && strings.Trim(strings.ReplaceAll(causes, "oom", ""), ",") != "" {
			t.Errorf("%s: want every failed attempt to be oom", line)
		}
	}
	if !strings.Contains(text, "memory mode: enclosing-cgroup (") {
		t.Errorf("supervisor output:\n%s\nwant memory mode enclosing-cgroup", text)
	}
	t.Logf("supervisor output ends: %s", text[strings.LastIndex(text, "task 40"):])
}

// runContainerSeed is the supervisor of TestOOMUnprivileged: 40 tasks on 4
// line workers behind sh -c, task 7 hogs, one retry. It prints one line per
// task with the causes of its failed attempts, then the memory mode.
func runContainerSeed() int {
	cfg := pool.Config{
		Command:  []string{"sh", "-c", `"$0" -test.run='^$'`, os.Args[0]},
		Env:      workerEnvFor("line"),
		Protocol: pool.Line,
		Workers:  4,
		Retries:  1,
		Stderr:   io.Discard,
	}
	p, err := pool.New(cfg)
	if err != nil {
		fmt.Println(err)
		return 1
	}
	go func() {
		defer p.Close()
		for i := 1; i <= 40; i++ {
			in := "sleep:20"
			if i == 7 {
				in = "hog"
			}
			p.Submit(context.Background(), pool.Task{Input: []byte(in)})
		}
	}()
	for r := range p.Results() {
		var failed []string
		for _, a := range r.Attempts {
			if a.Cause != "" {
				failed = append(failed, string(a.Cause))
			}
		}
		fmt.Printf("task %d %s %s", r.ID, r.State, r.Cause())
		if len(failed) > 0 {
			fmt.Printf(" attempts=%s", strings.Join(failed, ","))
		}
		fmt.Println()
	}
	fmt.Printf("memory mode: %s (%s)\n", p.MemoryMode(), p.MemoryModeReason())
	return 0
}
