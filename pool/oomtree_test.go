package pool_test

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/safepool/safepool/internal/testenv"
	"github.com/safepool/safepool/pool"
)

// TestOOMChildNoCgroup runs, as root, a supervisor that cannot use
// cgroups: the cgroup filesystem is unmounted in its own mount namespace,
// so its mode is no-cgroup and only the kernel log confirms OOM kills. It
// runs two one-shot jobs behind "sh -c" at once. The first starts a child
// that, after 300 ms, joins a 64 MiB memory cgroup the test made (through
// the test's own view of the file system, /proc/PID/root) and allocates
// until the kernel OOM-kills it; the shell exits 137. The second sleeps while that
// happens, then exits 137 itself. The first is oom, naming the child; the
// second, whose tree no kill touched, is exit:137.
func TestOOMChildNoCgroup(t *testing.T) {
	dir := containerFor(t, 64<<20)
	if _, err := os.Stat("/dev/kmsg"); err != nil {
		testenv.SkipOrFail(t, "no kernel log: "+err.Error())
	}
	if _, err := exec.LookPath("unshare"); err != nil {
		testenv.SkipOrFail(t, "unshare (util-linux) is not installed")
	}
	mount := memoryMount(t)
	bin, err := filepath.Abs(os.Args[0])
	if err != nil {
		t.Fatal(err)
	}
	cgroup := fmt.Sprintf("/proc/%d/root%s", os.Getpid(), dir)
	text, err := runBounded(t, bin, []string{workerEnv + "=oom-tree", "SAFEPOOL_TEST_CGROUP=" + cgroup},
		"unshare", "--mount", "--propagation", "private", "sh", "-c", `umount -l "$0" && exec "$1" -test.run='^$'`, mount, bin)
	if err != nil {
		t.Fatalf("supervisor: %v; output:\n%s", err, text)
	}
	if !strings.Contains(text, "memory mode: no-cgroup (") {
		t.Fatalf("supervisor output:\n%s\nwant memory mode no-cgroup", text)
	}
	name := filepath.Base(bin)
	victim := regexp.MustCompile(`task 1 failed oom: the OOM killer killed process \d+ \(` +
		regexp.QuoteMeta(name[:min(len(name), 15)]) + `\) of the worker's tree \(confirmed by the kernel log\); the worker exited with 137`)
	if !victim.MatchString(text) {
		t.Errorf("supervisor output:\n%s\nwant %q", text, victim)
	}
	if !strings.Contains(text, "task 2 failed exit:137") {
		t.Errorf("supervisor output:\n%s\nwant task 2 failed exit:137", text)
	}
}

// runOOMTree is the supervisor of TestOOMChildNoCgroup.
func runOOMTree() int {
	hog := workerEnv + `=oom-tree-hog "$0" -test.run='^$'; exit $?`
	p, err := pool.New(pool.Config{
		Command:    []string{"sh", "-c", "{}", os.Args[0]},
		Workers:    2,
		NoGovernor: true,
		Stderr:     os.Stderr,
	})
	if err != nil {
		fmt.Println(err)
		return 1
	}
	go func() {
		defer p.Close()
		for _, script := range []string{hog, "sleep 2; exit 137"} {
			p.Submit(context.Background(), pool.Task{Input: []byte(script)})
		}
	}()
	for r := range p.Results() {
		fmt.Printf("task %d %s %s", r.ID, r.State, r.Cause())
		if n := len(r.Attempts); n > 0 {
			fmt.Printf(": %s", r.Attempts[n-1].Message)
		}
		fmt.Println()
	}
	fmt.Printf("memory mode: %s (%s)\n", p.MemoryMode(), p.MemoryModeReason())
	return 0
}

// runOOMTreeHog is the child of TestOOMChildNoCgroup's first job. It
// waits long enough to be seen in its worker's tree (its ancestry, read as
// the kill is, usually says so alone, but not when its parent reaped it
// first), joins the cgroup $SAFEPOOL_TEST_CGROUP and allocates until the
// kernel OOM-kills it.
func runOOMTreeHog() int {
	time.Sleep(300 * time.Millisecond)
	cgroup := os.Getenv("SAFEPOOL_TEST_CGROUP")
	if err := os.WriteFile(filepath.Join(cgroup, "cgroup.procs"), []byte(strconv.Itoa(os.Getpid())), 0); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	_, err := behave("hog")
	fmt.Fprintln(os.Stderr, err)
	return 1
}
