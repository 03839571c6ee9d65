package pool_test

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
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
	return runBounded(t, bin, env, "sh", "-c",
		`echo $$ > "$0/cgroup.procs" && exec `+asNobody+` "$1" -test.run='^$'`,
		dir, bin)
}

// asNobody is the command line that drops to nobody before the supervisor.
const asNobody = `setpriv --reuid ` + nobodyUID + ` --regid ` + nobodyUID + ` --clear-groups`

// runBounded runs args from bin's directory with env added, and returns
// what it wrote to stdout and stderr. The test fails if it has not ended
// within two minutes.
func runBounded(t *testing.T, bin string, env []string, args ...string) (string, error) {
	t.Helper()
	cmd := exec.Command(args[0], args[1:]...)
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
	if strings.Contains(text, "shell shim") {
		t.Errorf("supervisor output:\n%s\nwant workers started with one exec (traced to it), not through the shim", text)
	}
	t.Logf("supervisor output ends: %s", text[strings.LastIndex(text, "task 40"):])
}

// runContainerSeed is the supervisor of TestOOMUnprivileged: 40 tasks on 4
// line workers behind sh -c, task 7 hogs, one retry. It prints one line per
// task with the causes of its failed attempts, then the memory mode.
func runContainerSeed() int {
	p, err := startSeed(func(cfg *pool.Config) {
		cfg.Retries = 1
		// The test is about naming the kills under the ordinary retry
		// policy; the governor would take them as its own (see
		// TestGovernorEnclosingPoison).
		cfg.NoGovernor = true
	})
	if err != nil {
		fmt.Println(err)
		return 1
	}
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

// TestOneShotUnprivileged runs one-shot jobs as nobody, without cgroups
// of their own: each job is its own program from the start (one exec, no
// shell shim before it), so it gets its environment exactly as given (a
// shell before it drops names such as "safepool.test", or adds SHLVL),
// and what it forks at once has oom_score_adj 1000.
func TestOneShotUnprivileged(t *testing.T) {
	dir := containerFor(t, 300<<20)
	text, err := superviseAsNobody(t, dir, workerEnv+"=container-oneshot")
	if err != nil {
		t.Fatalf("supervisor: %v; output:\n%s", err, text)
	}
	for i := 1; i <= 3; i++ {
		want := fmt.Sprintf("task %d done: env=PATH safepool.test  score=1000\n", i)
		if !strings.Contains(text, want) {
			t.Errorf("supervisor output:\n%s\nwant %q", text, want)
		}
	}
	if !strings.Contains(text, "memory mode: enclosing-cgroup (") || strings.Contains(text, "shell shim") {
		t.Errorf("supervisor output:\n%s\nwant memory mode enclosing-cgroup, workers started with one exec", text)
	}
}

// runContainerOneShot is the supervisor of TestOneShotUnprivileged: three
// one-shot jobs that print the names in the environment their program was
// started with (but the pool's own SAFEPOOL_ ones), and the oom_score_adj
// of a process they fork.
func runContainerOneShot() int {
	p, err := pool.New(pool.Config{
		Command: []string{"sh", "-c", `printf 'env=%s score=%s' "$(tr '\0' '\n' </proc/$$/environ | sed 's/=.*//' | grep -v '^SAFEPOOL_' | sort | tr '\n' ' ')" "$(cat /proc/self/oom_score_adj)"`},
		Env:     []string{"safepool.test=kept", "PATH=/usr/bin:/bin"},
		Workers: 2,
		Stderr:  os.Stderr,
	})
	if err != nil {
		fmt.Println(err)
		return 1
	}
	go func() {
		defer p.Close()
		for i := 0; i < 3; i++ {
			p.Submit(context.Background(), pool.Task{Input: []byte("x")})
		}
	}()
	for r := range p.Results() {
		fmt.Printf("task %d %s: %s\n", r.ID, r.State, r.Output)
	}
	fmt.Printf("memory mode: %s (%s)\n", p.MemoryMode(), p.MemoryModeReason())
	return 0
}

// TestGoCrashUnprivileged: without a cgroup, a Go worker that its data
// size limit refuses memory dies with "fatal error: runtime: out of
// memory", followed by many KiB of goroutine stacks. It is named
// memory-limit; it used to read as any exit 2, the words out of sight of
// the last 4 KiB of stderr kept. A Go panic's message is its first line,
// not the last lines of its stack.
func TestGoCrashUnprivileged(t *testing.T) {
	dir := containerFor(t, 400<<20)
	// The jobs are a Go program built without -race, which cannot run
	// under a data size limit; nobody must be able to run it.
	bin := filepath.Join(filepath.Dir(nobodyBinary(t)), "gocrash")
	build := exec.Command("go", "build", "-o", bin, "./testdata/gocrash")
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build ./testdata/gocrash: %v\n%s", err, out)
	}
	text, err := superviseAsNobody(t, dir, workerEnv+"=container-gocrash", "GOCRASH="+bin)
	if err != nil {
		t.Fatalf("supervisor: %v; output:\n%s", err, text)
	}
	for _, want := range []string{
		"task 1 failed memory-limit: over the memory limit of 256 MiB\n",
		"task 2 failed exit:2: panic: gopanic: deep enough\n",
		"memory mode: enclosing-cgroup (",
	} {
		if !strings.Contains(text, want) {
			t.Errorf("supervisor output:\n%s\nwant %q", text, want)
		}
	}
}

// runContainerGoCrash is the supervisor of TestGoCrashUnprivileged: two
// one-shot jobs of $GOCRASH under a 256 MiB limit, one allocating 4 GiB
// of Go memory at once, one panicking deep in its stack.
func runContainerGoCrash() int {
	p, err := pool.New(pool.Config{
		Command:  []string{os.Getenv("GOCRASH"), "{}"},
		Protocol: pool.OneShot,
		Workers:  2,
		MemLimit: 256 << 20,
		Stderr:   io.Discard,
	})
	if err != nil {
		fmt.Println(err)
		return 1
	}
	go func() {
		defer p.Close()
		for _, in := range []string{"huge", "panic"} {
			p.Submit(context.Background(), pool.Task{Input: []byte(in)})
		}
	}()
	for r := range p.Results() {
		msg := ""
		if n := len(r.Attempts); n > 0 {
			msg = r.Attempts[n-1].Message
		}
		fmt.Printf("task %d %s %s: %s\n", r.ID, r.State, r.Cause(), msg)
	}
	fmt.Printf("memory mode: %s (%s)\n", p.MemoryMode(), p.MemoryModeReason())
	return 0
}

// TestFatStartUnprivileged: six line workers that each hold 100 MiB
// before their first task, in a 400 MiB container, as nobody. They used to
// start together, be OOM-killed together at start-up, and the pool gave
// up with nothing done (exit 2 on the command line). The memory governor
// now starts them one after another while memory is short, and only as
// many as fit: every task is done.
func TestFatStartUnprivileged(t *testing.T) {
	dir := containerFor(t, 400<<20)
	text, err := superviseAsNobody(t, dir, workerEnv+"=container-fatstart")
	if err != nil {
		t.Fatalf("supervisor: %v; output:\n%s", err, text)
	}
	t.Log(text)
	if !strings.Contains(text, "done 30 of 30, err <nil>\n") {
		t.Errorf("supervisor output:\n%s\nwant every task done", text)
	}
}

// runContainerFatStart is the supervisor of TestFatStartUnprivileged.
func runContainerFatStart() int {
	cfg := config(pool.Line, 6)
	cfg.Env = append(workerEnvFor("fat-start"), "FAT_MB=100")
	cfg.Stderr = io.Discard
	p, err := pool.New(cfg)
	if err != nil {
		fmt.Println(err)
		return 1
	}
	go func() {
		defer p.Close()
		for i := 0; i < 30; i++ {
			p.Submit(context.Background(), pool.Task{Input: []byte("sleep:50")})
		}
	}()
	done := 0
	for r := range p.Results() {
		if r.State == pool.Done {
			done++
		} else {
			fmt.Printf("task %d %s %s: %s\n", r.ID, r.State, r.Cause(), r.Err())
		}
	}
	fmt.Printf("done %d of 30, err %v\n", done, p.Err())
	fmt.Printf("memory mode: %s (%s); started %d workers\n", p.MemoryMode(), p.MemoryModeReason(), p.Stats().WorkersStarted)
	return 0
}

// TestLeftoversUnprivileged: without a cgroup per worker, a daemon that a
// one-shot job starts (setsid, out of its process group) ends soon after
// its job, while the pool goes on, as it does where the job's cgroup is
// emptied at its end. It used to live until the pool's end: one more
// process with every job of a long run.
func TestLeftoversUnprivileged(t *testing.T) {
	for _, c := range []struct{ name, mode string }{
		{"one-shot", "container-leftovers"},
		// Persistent workers replaced after each task: a daemon a task
		// started goes soon after its worker.
		{"persistent", "container-leftovers-persistent"},
	} {
		t.Run(c.name, func(t *testing.T) {
			dir := containerFor(t, 300<<20)
			text, err := superviseAsNobody(t, dir, workerEnv+"="+c.mode)
			if err != nil {
				t.Fatalf("supervisor: %v; output:\n%s", err, text)
			}
			if n := strings.Count(text, "daemon gone "); n != 4 || strings.Contains(text, "daemon alive ") {
				t.Errorf("supervisor output:\n%s\nwant the daemons of the 4 ended jobs gone while the pool still runs", text)
			}
			if !strings.Contains(text, "memory mode: enclosing-cgroup (") {
				t.Errorf("supervisor output:\n%s\nwant memory mode enclosing-cgroup", text)
			}
		})
	}
}

// runContainerLeftovers is the supervisor of TestLeftoversUnprivileged:
// four one-shot jobs (or, persistent, four tasks of line workers replaced
// after each task) that each start a daemon and print its pid, then, with
// the pool still running a slow task, whether each daemon is alive 3 s
// after its job or worker ended.
func runContainerLeftovers(persistent bool) int {
	cfg := pool.Config{
		Command: []string{"sh", "-c", `if [ "$0" = slow ]; then exec sleep 30; fi; setsid sleep 300 </dev/null >/dev/null 2>&1 & echo $!; sleep 0.5`},
		Workers: 2,
		Stderr:  os.Stderr,
	}
	if persistent {
		cfg.Protocol = pool.Line
		cfg.MaxTasksPerWorker = 1
		cfg.Command = []string{"sh", "-c", `while read -r x; do if [ "$x" = slow ]; then sleep 30; fi; setsid sleep 300 </dev/null >/dev/null 2>&1 & d=$!; sleep 0.5; echo $d; done`}
	}
	p, err := pool.New(cfg)
	if err != nil {
		fmt.Println(err)
		return 1
	}
	for _, in := range []string{"a", "b", "c", "d"} {
		p.Submit(context.Background(), pool.Task{Input: []byte(in)})
	}
	var pids []int
	for len(pids) < 4 {
		r := <-p.Results()
		pid, err := strconv.Atoi(strings.TrimSpace(string(r.Output)))
		if r.State != pool.Done || err != nil {
			fmt.Printf("task %d %s %s: %q\n", r.ID, r.State, r.Cause(), r.Output)
			return 1
		}
		pids = append(pids, pid)
	}
	p.Submit(context.Background(), pool.Task{Input: []byte("slow")})
	time.Sleep(3 * time.Second)
	for _, pid := range pids {
		state := "gone"
		if syscall.Kill(pid, 0) == nil {
			if b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid)); err == nil && strings.HasPrefix(string(b), "sleep\x00300") {
				state = "alive"
			}
		}
		fmt.Printf("daemon %s %d\n", state, pid)
	}
	fmt.Printf("memory mode: %s (%s)\n", p.MemoryMode(), p.MemoryModeReason())
	p.Abort(nil)
	p.Abort(nil)
	for range p.Results() {
	}
	return 0
}

// sharedReader maps the file named by its first argument shared, reads
// every page of it, holds it a while and prints the sum of what it read.
const sharedReader = `
import mmap, sys, time
with open(sys.argv[1], "rb") as f:
    m = mmap.mmap(f.fileno(), 0, mmap.MAP_SHARED, mmap.PROT_READ)
s = 0
for i in range(0, len(m), 4096):
    s += m[i]
time.sleep(0.4)
print(s)
`

// systemPython returns a python3 that nobody can run: /usr/bin/python3,
// not one under root's home.
func systemPython(t *testing.T) string {
	t.Helper()
	const py = "/usr/bin/python3"
	if _, err := os.Stat(py); err != nil {
		testenv.SkipOrFail(t, py+" is not installed")
	}
	return py
}

// blockFile writes a file of size bytes, 'x' throughout, that nobody can
// read, in dir, and returns its path. It is removed when the test ends.
func blockFile(t *testing.T, dir string, size int64) string {
	t.Helper()
	f, err := os.CreateTemp(dir, "safepool-block-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.Remove(f.Name()) })
	chunk := []byte(strings.Repeat("x", 1<<20))
	for n := int64(0); n < size; n += int64(len(chunk)) {
		if _, err := f.Write(chunk); err != nil {
			f.Close()
			t.Fatal(err)
		}
	}
	if err := f.Chmod(0o644); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	return f.Name()
}

// TestSharedBlockUnprivileged runs 8 workers as nobody, without cgroups of
// their own, each mapping a 400 MiB block shared and reading all of it,
// under a 200 MiB limit per worker. The block is shared memory or a file's
// pages, held once by the kernel: no worker holds it alone, so none is over
// its limit. Every task ends done, and its peak is the worker's private
// memory, far below the block.
func TestSharedBlockUnprivileged(t *testing.T) {
	py := systemPython(t)
	for _, tc := range []struct{ name, dir string }{
		{"shared memory", "/dev/shm"},
		{"mapped file", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := tc.dir
			if dir == "" {
				dir = filepath.Dir(nobodyBinary(t)) // a directory nobody may enter
			}
			block := blockFile(t, dir, 400<<20)
			cgroup := containerFor(t, 2<<30)
			text, err := superviseAsNobody(t, cgroup, workerEnv+"=shared-block", "SAFEPOOL_TEST_PYTHON="+py, "SAFEPOOL_TEST_BLOCK="+block)
			if err != nil {
				t.Fatalf("supervisor: %v; output:\n%s", err, text)
			}
			if strings.Count(text, " done ") != 16 {
				t.Errorf("supervisor output:\n%s\nwant 16 tasks done", text)
			}
			for _, line := range strings.Split(text, "\n") {
				var id, peak int64
				var state, cause string
				if n, _ := fmt.Sscanf(line, "task %d %s %s peak %d", &id, &state, &cause, &peak); n < 4 {
					continue
				}
				if peak <= 0 || peak >= 100<<20 {
					t.Errorf("%s: want a peak of private memory, above 0 and far below the 400 MiB block", line)
				}
			}
		})
	}
}

// runSharedBlock is the supervisor of TestSharedBlockUnprivileged: 16
// one-shot tasks on 8 workers, each reading the block, limited to 200 MiB.
func runSharedBlock() int {
	cfg := pool.Config{
		Command:  []string{os.Getenv("SAFEPOOL_TEST_PYTHON"), "-c", sharedReader, os.Getenv("SAFEPOOL_TEST_BLOCK")},
		Protocol: pool.OneShot,
		Workers:  8,
		MemLimit: 200 << 20,
	}
	p, err := pool.New(cfg)
	if err != nil {
		fmt.Println(err)
		return 1
	}
	go func() {
		defer p.Close()
		for i := 1; i <= 16; i++ {
			p.Submit(context.Background(), pool.Task{})
		}
	}()
	for r := range p.Results() {
		a := r.Attempts[len(r.Attempts)-1]
		fmt.Printf("task %d %s %s peak %d\n", r.ID, r.State, cause(r), a.PeakRSS)
	}
	fmt.Printf("memory mode: %s (%s)\n", p.MemoryMode(), p.MemoryModeReason())
	return 0
}

// cause is r's cause, or "-" when it has none, so that lines have a field
// for it.
func cause(r pool.Result) string {
	if c := r.Cause(); c != "" {
		return string(c)
	}
	return "-"
}

// readmeExample is the task of the README's --mem-limit example: task 7
// builds a 300 MiB string at once, the others nothing.
const readmeExample = `import sys; x = "x" * ((300 << 20) * (sys.argv[1] == "7"))`

// TestMemLimitUnprivileged runs the README's example, ten tasks under a
// 200 MiB --mem-limit of which task 7 takes 300 MiB at once, twenty times
// as nobody, without cgroups of its own. Sampling alone missed task 7 in
// some runs: its string is built and dropped between two samples. The
// data size limit refuses it the memory every time, and the failure is
// named memory-limit.
func TestMemLimitUnprivileged(t *testing.T) {
	py := systemPython(t)
	cgroup := containerFor(t, 2<<30)
	text, err := superviseAsNobody(t, cgroup, workerEnv+"=readme-example", "SAFEPOOL_TEST_PYTHON="+py)
	if err != nil {
		t.Fatalf("supervisor: %v; output:\n%s", err, text)
	}
	runs := strings.Count(text, "run ")
	named := strings.Count(text, ": 9 done, task 7 failed memory-limit (")
	if runs != 20 || named != 20 {
		t.Errorf("supervisor output:\n%s\nwant task 7 failed with memory-limit and the others done in 20 of 20 runs, got %d of %d", text, named, runs)
	}
	// The data size limit is what catches it, and NoDataLimit takes it off.
	for _, want := range []string{"data limit: 243269632 243269632\n", "data limit without: unlimited unlimited\n"} {
		if !strings.Contains(text, want) {
			t.Errorf("supervisor output:\n%s\nwant %q", text, want)
		}
	}
	t.Logf("supervisor output starts: %s", text[:strings.Index(text, "run 3:")])
}

// TestDeviceOOMUnprivileged: without a cgroup per worker, under
// --mem-limit, a job that fails because a GPU ran out of its memory
// ("CUDA out of memory", as PyTorch, the CUDA runtime, CuPy and ROCm say
// it) fails with its own cause, exit:1, not memory-limit "over the memory
// limit of 209715200 bytes": no limit of the worker's was involved. A job
// the data size limit refuses its memory (MemoryError) is still
// memory-limit.
func TestDeviceOOMUnprivileged(t *testing.T) {
	py := systemPython(t)
	dir := containerFor(t, 1<<30)
	text, err := superviseAsNobody(t, dir, workerEnv+"=container-device-oom", "SAFEPOOL_TEST_PYTHON="+py)
	if err != nil {
		t.Fatalf("supervisor: %v; output:\n%s", err, text)
	}
	want := []string{
		"task 1 failed exit:1\n",
		"task 2 failed exit:1\n",
		"task 3 failed exit:1\n",
		"task 4 failed exit:1\n",
		"task 5 failed memory-limit\n",
		"memory mode: enclosing-cgroup",
	}
	for _, w := range want {
		if !strings.Contains(text, w) {
			t.Errorf("supervisor output:\n%s\nwant %q", text, w)
		}
	}
}

// deviceOOMs are what a job writes on stderr when a GPU runs out of its
// memory, then it exits 1.
var deviceOOMs = []string{
	"torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total capacity of 7.79 GiB of which 1.06 GiB is free.",
	"RuntimeError: CUDA error: out of memory",
	"cupy.cuda.memory.OutOfMemoryError: Out of memory allocating 1,024 bytes (allocated so far: 0 bytes).",
	"torch.OutOfMemoryError: HIP out of memory. Tried to allocate 20.00 MiB.",
}

// runDeviceOOM is the supervisor of TestDeviceOOMUnprivileged: one-shot
// jobs under a 200 MiB limit, the first ones failing as deviceOOMs say,
// the last one asking Python for 300 MiB at once. It prints each task's
// state and cause, then the memory mode.
func runDeviceOOM() int {
	p, err := pool.New(pool.Config{
		Command:  []string{os.Getenv("SAFEPOOL_TEST_PYTHON"), "-c", "import sys\nif sys.argv[1] == 'host': x = bytearray(300 << 20)\nsys.exit(sys.argv[1])", "{}"},
		Protocol: pool.OneShot,
		MemLimit: 200 << 20,
		Workers:  2,
		Stderr:   io.Discard,
	})
	if err != nil {
		fmt.Println(err)
		return 1
	}
	go func() {
		defer p.Close()
		for _, in := range append(deviceOOMs[:len(deviceOOMs):len(deviceOOMs)], "host") {
			p.Submit(context.Background(), pool.Task{Input: []byte(in)})
		}
	}()
	for r := range p.Results() {
		fmt.Printf("task %d %s %s\n", r.ID, r.State, cause(r))
	}
	fmt.Printf("memory mode: %s (%s)\n", p.MemoryMode(), p.MemoryModeReason())
	return 0
}

// runReadmeExample is the supervisor of TestMemLimitUnprivileged: the
// README's example twenty times, one line per run.
func runReadmeExample() int {
	for run := 1; run <= 20; run++ {
		cfg := pool.Config{
			Command:  []string{os.Getenv("SAFEPOOL_TEST_PYTHON"), "-c", readmeExample, "{}"},
			Protocol: pool.OneShot,
			MemLimit: 200 << 20,
		}
		p, err := pool.New(cfg)
		if err != nil {
			fmt.Println(err)
			return 1
		}
		go func() {
			defer p.Close()
			for i := 1; i <= 10; i++ {
				p.Submit(context.Background(), pool.Task{Input: []byte(fmt.Sprint(i))})
			}
		}()
		done, other := 0, []string{}
		for r := range p.Results() {
			if r.State == pool.Done {
				done++
				continue
			}
			a := r.Attempts[len(r.Attempts)-1]
			other = append(other, fmt.Sprintf("task %d %s %s", r.ID, r.State, cause(r)))
			if r.ID == 7 {
				other[len(other)-1] += fmt.Sprintf(" (peak %d, %q)", a.PeakRSS, a.Message)
			}
		}
		fmt.Printf("run %d: %d done, %s\n", run, done, strings.Join(other, ", "))
		if run == 1 {
			fmt.Printf("memory mode: %s (%s)\n", p.MemoryMode(), p.MemoryModeReason())
		}
	}
	// The workers' data size limit (soft, hard), with and without it.
	for _, without := range []bool{false, true} {
		cfg := pool.Config{
			Command:     []string{"sh", "-c", `grep "^Max data size" /proc/self/limits`},
			Protocol:    pool.OneShot,
			MemLimit:    200 << 20,
			NoDataLimit: without,
		}
		p, err := pool.New(cfg)
		if err != nil {
			fmt.Println(err)
			return 1
		}
		go func() {
			defer p.Close()
			p.Submit(context.Background(), pool.Task{})
		}()
		for r := range p.Results() {
			f := strings.Fields(string(r.Output))
			if len(f) < 5 {
				fmt.Printf("data limit: %q\n", r.Output)
				continue
			}
			label := "data limit:"
			if without {
				label = "data limit without:"
			}
			fmt.Println(label, f[3], f[4])
		}
	}
	return 0
}
