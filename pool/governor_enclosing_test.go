package pool_test

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/safepool/safepool/internal/testenv"
	"github.com/safepool/safepool/pool"
)

// These tests run the memory governor where workers cannot have cgroups of
// their own: a supervisor runs as nobody inside a 3 GiB memory cgroup that
// root made, as in a container. The governor plans with the cgroup's limit
// and measures each worker by the private memory of its process tree.

// rampTask is a Python one-shot worker: "rampTask MB RAMP HOLD" touches MB
// megabytes in steps of 32 MiB spread over RAMP milliseconds, then holds
// them HOLD milliseconds. A HOLD of -1 holds them until the file named by
// $SAFEPOOL_TEST_RELEASE exists (a minute at most), writes the time (Unix
// seconds) to that name with ".freeing" added, frees them, and exits.
const rampTask = `
import os, sys, time
mb, ramp, hold = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
steps = max(1, mb // 32)
keep = []
for i in range(steps):
    keep.append(b"x" * ((mb << 20) // steps))
    time.sleep(ramp / 1000 / steps)
if hold >= 0:
    time.sleep(hold / 1000)
    sys.exit(0)
release = os.environ["SAFEPOOL_TEST_RELEASE"]
end = time.time() + 60
while not os.path.exists(release) and time.time() < end:
    time.sleep(0.01)
with open(release + ".freeing", "w") as f:
    f.write(repr(time.time()))
keep = None
os._exit(0)
`

// rampLines is rampTask as a persistent line worker: each line holds
// rampTask's arguments; the worker answers "ok" and lets the memory go.
const rampLines = `
import sys, time
for line in sys.stdin:
    mb, ramp, hold = map(int, line.split())
    steps = max(1, mb // 32)
    keep = []
    for i in range(steps):
        keep.append(b"x" * ((mb << 20) // steps))
        time.sleep(ramp / 1000 / steps)
    time.sleep(hold / 1000)
    keep = None
    print("ok", flush=True)
`

// containerLimit is the memory limit of the cgroup the supervisors run in.
const containerLimit = 3 << 30

// governedIn runs the supervisor runGovContainer as nobody in a new 3 GiB
// cgroup, with the scenario and tasks given, and returns its output and
// the cgroup's oom_kill count afterwards.
func governedIn(t *testing.T, scenario string, tasks ...string) (string, uint64) {
	t.Helper()
	py := systemPython(t)
	dir := containerFor(t, containerLimit)
	text, err := superviseAsNobody(t, dir, workerEnv+"=gov-container", "SAFEPOOL_TEST_PYTHON="+py,
		"SAFEPOOL_TEST_SCENARIO="+scenario, "SAFEPOOL_TEST_TASKS="+strings.Join(tasks, ";"))
	if err != nil {
		t.Fatalf("supervisor: %v; output:\n%s", err, text)
	}
	// The oom_kill counter: cgroup v1 memory.oom_control, v2 memory.events.
	b, err := os.ReadFile(filepath.Join(dir, "memory.oom_control"))
	if err != nil {
		b, err = os.ReadFile(filepath.Join(dir, "memory.events"))
	}
	if err != nil {
		t.Fatal(err)
	}
	var kills uint64
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "oom_kill "); ok {
			kills, _ = strconv.ParseUint(v, 10, 64)
		}
	}
	return text, kills
}

// taskLines returns the supervisor's "task ..." lines by task id: the
// state, then the attempts (see runGovContainer).
func taskLines(text string) map[int]string {
	lines := map[int]string{}
	for _, line := range strings.Split(text, "\n") {
		var id int
		if _, err := fmt.Sscanf(line, "task %d ", &id); err == nil {
			lines[id] = line
		}
	}
	return lines
}

// attemptsOf returns the attempts of a "task ..." line: "oom/1", "ok/0".
func attemptsOf(line string) []string {
	_, rest, _ := strings.Cut(line, " attempts=")
	list, _, _ := strings.Cut(rest, " ")
	return strings.Split(list, ",")
}

// TestGovernorEnclosingBatch: twelve tasks that each grow to 768 MiB over a
// second, on twelve workers, in a 3 GiB container. Without the governor
// they all start at once and the kernel OOM-kills some; with it, every one
// is done, fewer run at once, and the start-up line says that the governor
// is on and measures private memory against the cgroup's limit. The same
// holds for persistent line workers, which keep their process between
// tasks.
func TestGovernorEnclosingBatch(t *testing.T) {
	var tasks []string
	for i := 0; i < 12; i++ {
		tasks = append(tasks, "768 1000 200")
	}
	t.Run("static", func(t *testing.T) {
		text, kills := governedIn(t, "static", tasks...)
		lost := 12 - strings.Count(text, " done ")
		if kills == 0 {
			t.Errorf("supervisor output:\n%s\nwant the kernel to OOM-kill workers without the governor (oom_kill 0, %d tasks lost)", text, lost)
		}
		t.Logf("without the governor: %d tasks lost, %d OOM kills", lost, kills)
	})
	for _, scenario := range []string{"batch", "batch-line"} {
		t.Run(scenario, func(t *testing.T) { governedBatch(t, scenario, tasks) })
	}
}

// governedBatch runs the tasks of TestGovernorEnclosingBatch under the
// governor in the scenario given.
func governedBatch(t *testing.T, scenario string, tasks []string) {
	text, kills := governedIn(t, scenario, tasks...)
	if n := strings.Count(text, " done "); n != 12 {
		t.Errorf("supervisor output:\n%s\nwant 12 tasks done, got %d", text, n)
	}
	if !strings.Contains(text, "memory mode: enclosing-cgroup (") {
		t.Errorf("supervisor output:\n%s\nwant memory mode enclosing-cgroup", text)
	}
	_, gov, _ := strings.Cut(text, "governor: ")
	gov, _, _ = strings.Cut("governor: "+gov, "\n")
	for _, want := range []string{"governor: memory governor on", "private memory", "enclosing cgroup's limit of 3 GiB"} {
		if !strings.Contains(gov, want) {
			t.Errorf("%s: want the governor's line to say %q", gov, want)
		}
	}
	var most, allows int
	for _, line := range strings.Split(text, "\n") {
		fmt.Sscanf(line, "most at once %d, memory allows %d", &most, &allows)
	}
	if most < 2 || most >= 12 {
		t.Errorf("supervisor output:\n%s\nwant between 2 and 11 attempts at once, got %d", text, most)
	}
	t.Logf("with the governor: %d OOM kills, at most %d at once, memory allows %d", kills, most, allows)
}

// TestGovernorEnclosingOOMRetry: a task that jumps to 2 GiB starts beside
// one that holds 1.2 GiB, because the governor was told (MemPerTask) that
// tasks need 256 MiB and preemption is off. The kernel OOM-kills the
// larger in the 3 GiB container; the enclosing cgroup's counter confirms
// the kill, and the governor runs the task again only once the memory
// beside it goes, where it succeeds.
//
// The neighbour holds its memory, however slowly either grows on a loaded
// machine, until the big task's retry starts or 2 s after its first
// attempt ended. The retry must start after the neighbour began to free
// its memory, not after its process ended: the governor admits by memory,
// and a neighbour takes a while to free 1.2 GiB and exit on a loaded
// machine.
func TestGovernorEnclosingOOMRetry(t *testing.T) {
	text, kills := governedIn(t, "oom-retry", "1200 300 -1", "2048 200 500")
	lines := taskLines(text)
	if !strings.HasPrefix(lines[1], "task 1 done ") {
		t.Errorf("supervisor output:\n%s\nwant task 1 done", text)
	}
	big := lines[2]
	list := attemptsOf(big)
	if !strings.HasPrefix(big, "task 2 done ") || len(list) < 2 || list[0] != "oom/1" || !strings.HasPrefix(list[len(list)-1], "ok/") {
		t.Fatalf("supervisor output:\n%s\nwant task 2 OOM-killed beside task 1 (oom/1), then done", text)
	}
	if !strings.Contains(text, "retry after the neighbour began to free its memory: true\n") {
		t.Errorf("supervisor output:\n%s\nwant task 2's retry to start after task 1 began to free its memory", text)
	}
	if kills == 0 {
		t.Errorf("the container's oom_kill counter did not rise")
	}
	t.Logf("supervisor output:\n%s", text)
}

// TestGovernorEnclosingPoison: a task that grows without end, among small
// ones, in a 3 GiB container, is killed for memory, retried with the whole
// budget, killed again while alone, and ends poison; the others are done.
func TestGovernorEnclosingPoison(t *testing.T) {
	text, _ := governedIn(t, "poison", "64 100 300", "8192 4000 0", "64 100 300", "64 100 300", "64 100 300")
	lines := taskLines(text)
	for id, line := range lines {
		if id != 2 && !strings.Contains(line, " done ") {
			t.Errorf("%s: want done", line)
		}
	}
	if len(lines) != 5 {
		t.Errorf("supervisor output:\n%s\nwant 5 tasks", text)
	}
	hog := lines[2]
	if !strings.HasPrefix(hog, "task 2 poison oom ") || !strings.Contains(hog, "running alone with the whole memory budget") {
		t.Fatalf("supervisor output:\n%s\nwant task 2 poison after an OOM kill while alone with the whole budget", text)
	}
	if n := strings.Count(strings.Join(attemptsOf(hog), ","), "oom/"); n > 3 {
		t.Errorf("%s: %d OOM kills, want at most 3 (it needs the whole budget, then runs alone)", hog, n)
	}
	t.Logf("supervisor output:\n%s", text)
}

// TestGovernorEnclosingOutsideKill: one worker in a 600 MiB container,
// beside a process that is not a worker and holds 400 MiB. A task that
// grows to 300 MiB, well within the budget, is OOM-killed because of that
// process, while it runs alone. That says nothing of what the task needs
// beyond the budget: it is not poison, but retried, and once the other
// process is gone (it ends as the first attempt ends), it is done.
func TestGovernorEnclosingOutsideKill(t *testing.T) {
	py := systemPython(t)
	dir := containerFor(t, 600<<20)
	text, err := superviseAsNobody(t, dir, workerEnv+"=gov-container", "SAFEPOOL_TEST_PYTHON="+py,
		"SAFEPOOL_TEST_SCENARIO=outside-hog", "SAFEPOOL_TEST_TASKS=300 300 200")
	if err != nil {
		t.Fatalf("supervisor: %v; output:\n%s", err, text)
	}
	task := taskLines(text)[1]
	list := attemptsOf(task)
	if !strings.HasPrefix(task, "task 1 done ") || list[0] != "oom/0" {
		t.Fatalf("supervisor output:\n%s\nwant task 1 OOM-killed alone (oom/0), then done", text)
	}
	t.Logf("supervisor output:\n%s", text)
}

// TestGovernorEnclosingClientHeld: one worker in a 600 MiB container,
// beside a process that is not a worker and holds 360 MiB for the whole
// run, as a program that uses the pool holds its own data. A task that
// grows to 300 MiB, half the limit and well within the budget, is
// OOM-killed even while it runs alone. It is not poison (it would fit in
// the budget): it fails, and its message says that the others held the
// memory it lacked, how much, and what that left it.
func TestGovernorEnclosingClientHeld(t *testing.T) {
	py := systemPython(t)
	dir := containerFor(t, 600<<20)
	text, err := superviseAsNobody(t, dir, workerEnv+"=gov-container", "SAFEPOOL_TEST_PYTHON="+py,
		"SAFEPOOL_TEST_SCENARIO=client-hog", "SAFEPOOL_TEST_HOG_MB=360", "SAFEPOOL_TEST_TASKS=300 300 200")
	if err != nil {
		t.Fatalf("supervisor: %v; output:\n%s", err, text)
	}
	checkCrowdedOut(t, text)
}

// TestGovernorEnclosingClientBeside: as TestGovernorEnclosingClientHeld,
// but the process that holds 360 MiB runs in the container's cgroup and the
// supervisor in a cgroup of its own below it, without a limit, as when the
// program that uses the pool started it in a cgroup of its own: the
// container's limit binds both, and the supervisor's own cgroup does not
// hold the other's memory. The governor must still see it.
func TestGovernorEnclosingClientBeside(t *testing.T) {
	py := systemPython(t)
	dir := containerFor(t, 600<<20)
	sup := filepath.Join(dir, "supervisor")
	if err := os.Mkdir(sup, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.Remove(sup) }) // before containerFor's cleanup removes dir
	hog := exec.Command("sh", "-c", `echo $$ > "$0/cgroup.procs" && exec "$1" -c "$2"`, dir, py, hogScript)
	hog.Stderr = os.Stderr
	in, err := hog.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	out, err := hog.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	hog.Env = append(os.Environ(), "SAFEPOOL_TEST_HOG_MB=360")
	if err := hog.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		hog.Process.Kill()
		in.Close()
		hog.Wait()
	})
	if line, err := bufio.NewReader(out).ReadString('\n'); line != "ready\n" {
		t.Fatalf("the process beside the supervisor did not start: %q %v", line, err)
	}
	text, err := superviseAsNobody(t, sup, workerEnv+"=gov-container", "SAFEPOOL_TEST_PYTHON="+py,
		"SAFEPOOL_TEST_SCENARIO=client-beside", "SAFEPOOL_TEST_TASKS=300 300 200")
	if err != nil {
		t.Fatalf("supervisor: %v; output:\n%s", err, text)
	}
	checkCrowdedOut(t, text)
}

// checkCrowdedOut checks that task 1, in a 600 MiB container where others
// hold 360 MiB, failed for memory after a few attempts, not poison, with a
// message that says why.
func checkCrowdedOut(t *testing.T, text string) {
	t.Helper()
	task := taskLines(text)[1]
	if !strings.HasPrefix(task, "task 1 failed oom ") {
		t.Fatalf("supervisor output:\n%s\nwant task 1 failed (oom), not poison: the others held the memory it lacked", text)
	}
	if !strings.Contains(task, " crowded=true ") {
		t.Errorf("%s: want its last attempt marked Crowded", task)
	}
	for _, want := range []string{"processes other than the pool's workers held ", " of the enclosing cgroup's limit of 600 MiB",
		" left it ", "within the memory budget of 536 MiB"} {
		if !strings.Contains(task, want) {
			t.Errorf("%s: want the message to say %q", task, want)
		}
	}
	if list := attemptsOf(task); len(list) > 3 {
		t.Errorf("%s: %d attempts, want at most 3", task, len(list))
	}
	// What they held: the 360 MiB, the supervisor and the Python around
	// them, not the task's own memory (less 10 MiB for a sample a little
	// late with a worker's figure).
	var held float64
	if _, rest, ok := strings.Cut(task, " workers held "); ok {
		fmt.Sscanf(rest, "%g MiB", &held)
	}
	if held < 350 || held > 500 {
		t.Errorf("%s: want the others said to hold between 350 and 500 MiB, got %g", task, held)
	}
	t.Logf("supervisor output:\n%s", text)
}

// hogScript is a Python program that holds $SAFEPOOL_TEST_HOG_MB MiB,
// says "ready", and holds them until its stdin ends.
const hogScript = `import os, sys; b = b"x" * (int(os.environ["SAFEPOOL_TEST_HOG_MB"]) << 20); print("ready", flush=True); sys.stdin.read()`

// TestGovernorEnclosingNoBudget: a reserve larger than the container's
// limit leaves the workers nothing: the governor says so plainly (it used
// to say "a budget of 1 B"), and the tasks run one at a time, all done.
func TestGovernorEnclosingNoBudget(t *testing.T) {
	text, _ := governedIn(t, "no-budget", "8 10 100", "8 10 100", "8 10 100")
	want := "governor: memory governor on: no memory left for the workers (the enclosing cgroup's limit of 3 GiB, and the reserve is 4 GiB): tasks run one at a time, each worker measured by the private memory of its process tree"
	if !strings.Contains(text, want) {
		t.Errorf("supervisor output:\n%s\nwant %q", text, want)
	}
	if n := strings.Count(text, " done "); n != 3 || !strings.Contains(text, "most at once 1,") {
		t.Errorf("supervisor output:\n%s\nwant 3 tasks done, one at a time", text)
	}
}

// TestGovernorEnclosingPreemption: two tasks that each grow to 1 GiB, in a
// 3 GiB container whose preemption watermark is lowered to half its limit,
// while the governor was told (MemPerTask) they need 8 MiB. Together they
// cross the watermark, measured by the enclosing cgroup's usage: the
// younger is stopped, requeued without charge, and completes later.
func TestGovernorEnclosingPreemption(t *testing.T) {
	text, _ := governedIn(t, "preempt", "1024 200 1500", "1024 200 1500")
	lines := taskLines(text)
	preempted := 0
	for id := 1; id <= 2; id++ {
		line := lines[id]
		if !strings.Contains(line, " done ") || !strings.Contains(line, " number=1 ") {
			t.Errorf("%q: want done at its first charged attempt (number=1)", line)
		}
		preempted += strings.Count(strings.Join(attemptsOf(line), ","), "preempted/")
	}
	if preempted == 0 || !strings.Contains(text, fmt.Sprintf("preempted=%d\n", preempted)) {
		t.Errorf("supervisor output:\n%s\nwant a preempted attempt, counted in Stats", text)
	}
	t.Logf("supervisor output:\n%s", text)
}

// TestGovernorNoCgroup runs the batch of TestGovernorEnclosingBatch with
// the cgroup filesystem out of the supervisor's sight (its own mount
// namespace, where root unmounted it before dropping to nobody): the mode
// is no-cgroup, the governor plans with the host's available memory at
// start, or with MemBudget, and measures the workers' private memory. The
// kernel still holds the container to 3 GiB; with a budget of 2 GiB every
// task is done.
func TestGovernorNoCgroup(t *testing.T) {
	var tasks []string
	for i := 0; i < 12; i++ {
		tasks = append(tasks, "768 1000 200")
	}
	py := systemPython(t)
	dir := containerFor(t, containerLimit)
	text := superviseBlind(t, dir, workerEnv+"=gov-container", "SAFEPOOL_TEST_PYTHON="+py,
		"SAFEPOOL_TEST_SCENARIO=no-cgroup", "SAFEPOOL_TEST_TASKS="+strings.Join(tasks, ";"))
	if !strings.Contains(text, "memory mode: no-cgroup (") {
		t.Fatalf("supervisor output:\n%s\nwant memory mode no-cgroup", text)
	}
	for _, want := range []string{
		"governor: memory governor on: a budget of 2 GiB (as given), each worker measured by the private memory of its process tree",
		"governor without a budget: memory governor on: a budget of ",
		" (the host's available memory at start less a reserve), each worker measured by the private memory of its process tree",
	} {
		if !strings.Contains(text, want) {
			t.Errorf("supervisor output:\n%s\nwant %q", text, want)
		}
	}
	if n := strings.Count(text, " done "); n != 12 {
		t.Errorf("supervisor output:\n%s\nwant 12 tasks done, got %d", text, n)
	}
	t.Logf("supervisor output:\n%s", text)
}

// superviseBlind runs this test binary as nobody inside the cgroup dir, as
// superviseAsNobody does, but in a mount namespace of its own where the
// cgroup filesystem that holds the memory controller is unmounted, and
// returns its output. The test fails if the supervisor fails or has not
// ended within two minutes.
func superviseBlind(t *testing.T, dir string, env ...string) string {
	t.Helper()
	if _, err := exec.LookPath("unshare"); err != nil {
		testenv.SkipOrFail(t, "unshare (util-linux) is not installed")
	}
	mount := memoryMount(t)
	bin := nobodyBinary(t)
	// The outer shell joins the cgroup; unshare gives the inner one a
	// mount namespace whose changes stay its own.
	const inner = `umount -l "$0" && exec ` + asNobody + ` "$1" -test.run='^$'`
	out, err := runBounded(t, bin, env, "sh", "-c",
		`echo $$ > "$0/cgroup.procs" && exec unshare --mount --propagation private sh -c "$3" "$2" "$1"`,
		dir, bin, mount, inner)
	if err != nil {
		t.Fatalf("supervisor: %v; output:\n%s", err, out)
	}
	return out
}

// memoryMount returns where the cgroup filesystem that holds the memory
// controller is mounted: the v1 memory hierarchy, or the unified one.
func memoryMount(t *testing.T) string {
	t.Helper()
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	unified := ""
	for _, line := range strings.Split(string(b), "\n") {
		fields := strings.Fields(line)
		_, post, ok := strings.Cut(line, " - ")
		if !ok || len(fields) < 5 {
			continue
		}
		tail := strings.Fields(post) // fstype, source, super options
		switch {
		case len(tail) >= 3 && tail[0] == "cgroup" && slices.Contains(strings.Split(tail[2], ","), "memory"):
			return fields[4]
		case len(tail) >= 1 && tail[0] == "cgroup2" && unified == "":
			unified = fields[4]
		}
	}
	if unified == "" {
		t.Fatal("no cgroup filesystem mounted in /proc/self/mountinfo")
	}
	return unified
}

// runGovContainer is the supervisor of the tests above. The scenario
// (SAFEPOOL_TEST_SCENARIO) sets the pool's configuration; the tasks
// (SAFEPOOL_TEST_TASKS, separated by ";") are rampTask's arguments. It
// prints the memory mode and the governor's line, one line per task
// ("task ID STATE CAUSE attempts=C/N,...", where C is an attempt's cause,
// "ok" for none, and N the most other attempts that ran beside it; then the
// last attempt's number and message), how many ran at once, and how many
// attempts were preempted.
func runGovContainer() int {
	var release string // oom-retry: the file that lets task 1 free its memory
	var stop func()    // outside-hog: ends the process that is not a worker
	cfg := pool.Config{
		Command: []string{os.Getenv("SAFEPOOL_TEST_PYTHON"), "-c", rampTask, "{}"},
		Workers: 12,
		Stderr:  io.Discard,
	}
	switch os.Getenv("SAFEPOOL_TEST_SCENARIO") {
	case "static":
		cfg.NoGovernor = true
	case "batch":
	case "batch-line":
		cfg.Protocol = pool.Line
		cfg.Command = cfg.Command[:3]
		cfg.Command[2] = rampLines
	case "oom-retry":
		cfg.Workers = 2
		cfg.MemPerTask = 256 << 20
		cfg.PreemptAbove, cfg.PreemptPSI = -1, -1
		dir, err := os.MkdirTemp("", "safepool-release-")
		if err != nil {
			fmt.Println(err)
			return 1
		}
		defer os.RemoveAll(dir)
		release = filepath.Join(dir, "release")
		cfg.Env = append(os.Environ(), "SAFEPOOL_TEST_RELEASE="+release)
	case "poison":
		cfg.Workers = 2
	case "no-budget":
		cfg.Workers = 2
		cfg.MemReserve = 4 << 30
	case "no-cgroup":
		cfg.MemBudget = 2 << 30
		// Say what a pool without the budget would plan with.
		c := cfg
		c.MemBudget = 0
		q, err := pool.New(c)
		if err != nil {
			fmt.Println(err)
			return 1
		}
		fmt.Printf("governor without a budget: %s\n", q.MemoryGovernor())
		q.Close()
		for range q.Results() {
		}
	case "client-beside":
		// The test runs the process that is not a worker.
		cfg.Workers = 1
		cfg.PreemptAbove, cfg.PreemptPSI = -1, -1
	case "outside-hog", "client-hog":
		// A process that is not a worker holds 400 MiB of the container
		// until task 1's first attempt ends (outside-hog), or
		// $SAFEPOOL_TEST_HOG_MB for the whole run (client-hog).
		cfg.Workers = 1
		cfg.PreemptAbove, cfg.PreemptPSI = -1, -1
		hog := exec.Command(cfg.Command[0], "-c", hogScript)
		hog.Stderr = os.Stderr
		if os.Getenv("SAFEPOOL_TEST_HOG_MB") == "" {
			hog.Env = append(os.Environ(), "SAFEPOOL_TEST_HOG_MB=400")
		}
		in, err := hog.StdinPipe()
		if err != nil {
			fmt.Println(err)
			return 1
		}
		out, err := hog.StdoutPipe()
		if err != nil {
			fmt.Println(err)
			return 1
		}
		if err := hog.Start(); err != nil {
			fmt.Println(err)
			return 1
		}
		var once sync.Once
		end := func() {
			once.Do(func() {
				hog.Process.Kill()
				in.Close()
				hog.Wait()
			})
		}
		defer end()
		if os.Getenv("SAFEPOOL_TEST_SCENARIO") == "outside-hog" {
			stop = end
		}
		if line, err := bufio.NewReader(out).ReadString('\n'); line != "ready\n" {
			fmt.Printf("the hog did not start: %q %v\n", line, err)
			return 1
		}
	case "preempt":
		cfg.Workers = 2
		cfg.MemPerTask = 8 << 20
		cfg.PreemptAbove, cfg.PreemptPSI = 0.5, -1
	default:
		fmt.Println("unknown scenario")
		return 2
	}
	var n neighbours
	cfg.Observer = n.observe
	if release != "" {
		// Task 1 holds its memory until task 2's retry starts, which a
		// governor that heeds the kill does not let happen, or until 2 s
		// after task 2's first attempt ended.
		var once sync.Once
		free := func() { once.Do(func() { os.WriteFile(release, nil, 0o644) }) }
		var ended atomic.Bool
		cfg.Observer = func(e pool.Event) {
			n.observe(e)
			switch {
			case e.TaskID != 2:
			case e.Kind == pool.EventAttemptEnded && ended.CompareAndSwap(false, true):
				time.AfterFunc(2*time.Second, free)
			case e.Kind == pool.EventAttemptStarted && ended.Load():
				free()
			}
		}
	}
	if stop != nil {
		cfg.Observer = func(e pool.Event) {
			n.observe(e)
			if e.Kind == pool.EventAttemptEnded {
				stop()
			}
		}
	}
	p, err := pool.New(cfg)
	if err != nil {
		fmt.Println(err)
		return 1
	}
	fmt.Printf("memory mode: %s (%s)\n", p.MemoryMode(), p.MemoryModeReason())
	fmt.Printf("governor: %s\n", p.MemoryGovernor())
	go func() {
		defer p.Close()
		for _, in := range strings.Split(os.Getenv("SAFEPOOL_TEST_TASKS"), ";") {
			if cfg.Protocol == pool.Line {
				p.Submit(context.Background(), pool.Task{Input: []byte(in)})
				continue
			}
			// rampTask takes its arguments as separate words.
			p.Submit(context.Background(), pool.Task{Args: append(cfg.Command[:3:3], strings.Fields(in)...)})
		}
	}()
	var retry time.Time // the start of task 2's last attempt, if it ran more than once
	for r := range p.Results() {
		var list []string
		for i, a := range r.Attempts {
			c := string(a.Cause)
			if c == "" {
				c = "ok"
			}
			list = append(list, fmt.Sprintf("%s/%d", c, n.beside(r.ID, i)))
		}
		var last pool.Attempt
		if len(r.Attempts) > 0 {
			last = r.Attempts[len(r.Attempts)-1]
		}
		fmt.Printf("task %d %s %s attempts=%s number=%d crowded=%v %q\n", r.ID, r.State, cause(r), strings.Join(list, ","), last.Number, last.Crowded, last.Message)
		if r.ID == 2 && len(r.Attempts) > 1 {
			retry = last.Start
		}
	}
	if release != "" {
		fmt.Printf("retry after the neighbour began to free its memory: %v\n", retryAfterFree(release, retry))
	}
	st, _ := p.Memory()
	fmt.Printf("most at once %d, memory allows %d\n", n.most, st.Allows)
	fmt.Printf("preempted=%d\n", p.Stats().Preempted)
	return 0
}

// neighbours is an Observer that records, for each attempt, the most
// other attempts that ran beside it.
type neighbours struct {
	mu      sync.Mutex
	running map[uint64]int   // task id -> most others beside its running attempt
	ended   map[uint64][]int // task id -> the same for its ended attempts
	most    int              // most attempts at once
}

func (n *neighbours) observe(e pool.Event) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.running == nil {
		n.running, n.ended = map[uint64]int{}, map[uint64][]int{}
	}
	switch e.Kind {
	case pool.EventAttemptStarted:
		n.running[e.TaskID] = len(n.running)
		for id, k := range n.running {
			n.running[id] = max(k, len(n.running)-1)
		}
		n.most = max(n.most, len(n.running))
	case pool.EventAttemptEnded:
		n.ended[e.TaskID] = append(n.ended[e.TaskID], n.running[e.TaskID])
		delete(n.running, e.TaskID)
	}
}

// beside returns the most attempts that ran beside attempt i of task id.
func (n *neighbours) beside(id uint64, i int) int {
	n.mu.Lock()
	defer n.mu.Unlock()
	if i < len(n.ended[id]) {
		return n.ended[id][i]
	}
	return -1
}

// retryAfterFree reports whether the retry started after the time the
// neighbour wrote to release+".freeing" as it began to free its memory.
func retryAfterFree(release string, retry time.Time) bool {
	b, err := os.ReadFile(release + ".freeing")
	if err != nil {
		return false
	}
	sec, err := strconv.ParseFloat(strings.TrimSpace(string(b)), 64)
	if err != nil {
		return false
	}
	return retry.After(time.Unix(0, int64(sec*1e9)))
}
