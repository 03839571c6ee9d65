package cli

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/safepool/safepool/internal/memory"
	"github.com/safepool/safepool/internal/testenv"
)

// needWorkerCgroups skips t, or fails it under CI=true, unless safepool
// makes a memory cgroup per worker here (root, or a delegated subtree):
// the tests below need the files those cgroups take.
func needWorkerCgroups(t *testing.T) {
	t.Helper()
	m, err := memory.NewManager()
	if err != nil {
		testenv.SkipOrFail(t, "memory cgroups: "+err.Error())
		return
	}
	mode, reason := m.Mode(), m.Reason()
	if err := m.Close(); err != nil {
		t.Fatal(err)
	}
	if !mode.PerWorker() {
		testenv.SkipOrFail(t, "memory cgroups: "+reason)
	}
}

// runWithFiles runs bin with args under an open-file limit of limit
// (ulimit -n, soft and hard), stdin seq 1..n, and returns its exit status
// and stderr.
func runWithFiles(t *testing.T, bin string, limit, n int, args ...string) (int, string) {
	t.Helper()
	var in bytes.Buffer
	for i := 1; i <= n; i++ {
		fmt.Fprintf(&in, "%d\n", i)
	}
	cmd := exec.Command("sh", append([]string{"-c", `ulimit -n "$0" && exec "$@"`, fmt.Sprint(limit), bin}, args...)...)
	var stderr bytes.Buffer
	cmd.Stdin, cmd.Stderr = &in, &stderr
	err := cmd.Run()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatal(err)
	}
	return code, stderr.String()
}

// TestFewFilesAbortNoPanic: a pool that aborts at once, before the input's
// feeder has begun (here a worker's cgroup that cannot be made for want of
// files), ends with its reason, exit 3. The feeder closed the channel of
// replayed outputs through the variable the results loop sets to nil as it
// stops reading it: "panic: close of nil channel" in about half the runs.
func TestFewFilesAbortNoPanic(t *testing.T) {
	needWorkerCgroups(t)
	bin := buildSafepool(t)
	aborted := 0
	for i := range 20 {
		// 9 or 10 files are open as the pool starts: one or two more let
		// it start, and no worker's cgroup be made.
		limit := 10 + i%2
		code, stderr := runWithFiles(t, bin, limit, 200, "run", "-j", "8", "--no-progress", "--", "true")
		if strings.Contains(stderr, "panic") {
			t.Fatalf("ulimit -n %d: exit %d, and it panicked:\n%s", limit, code, stderr)
		}
		if code == exitAborted && strings.Contains(stderr, "too many open files") {
			aborted++
		}
	}
	if aborted == 0 {
		t.Fatalf("no run aborted for want of files: the limits no longer reach the case")
	}
}

// TestFewFilesStartNotCharged: a job whose process cannot start for want
// of files while none of the pool's run (a limit too low for one worker)
// is not charged for it, as the task's own failure with cause exit:127:
// the run aborts with the reason (exit 2, no job ran), every task
// cancelled, so that --resume runs them all. Each task used to fail in
// turn, "exit:127", as if its command could not be found.
func TestFewFilesStartNotCharged(t *testing.T) {
	needWorkerCgroups(t)
	bin := buildSafepool(t)
	dir := t.TempDir()
	reached := 0
	// How many files the supervisor holds before its first job varies a
	// little with the machine, so the limits span a range: below it the
	// pool cannot be made, above it the jobs run. Each limit's outcome is
	// kept for the message when none reaches the case.
	var outcomes []string
	for limit := 11; limit <= 24; limit++ {
		js := filepath.Join(dir, fmt.Sprintf("%d.json", limit))
		code, stderr := runWithFiles(t, bin, limit, 20, "run", "-j", "4", "--no-progress", "--json", js, "--", "sh", "-c", "echo {}")
		lines := strings.Split(strings.TrimSpace(stderr), "\n")
		outcomes = append(outcomes, fmt.Sprintf("ulimit -n %d: exit %d: %s", limit, code, lines[len(lines)-1]))
		if !strings.Contains(stderr, "cannot start") || !strings.Contains(stderr, "too many open files") {
			continue // another limit: the pool could not be made, or the jobs ran
		}
		data, err := os.ReadFile(js)
		if err != nil {
			t.Fatalf("ulimit -n %d: %v; stderr:\n%s", limit, err, stderr)
		}
		var s struct {
			Tasks taskCounts
		}
		if err := json.Unmarshal(data, &s); err != nil {
			t.Fatal(err)
		}
		// Whether or not some job ran first, a job that could not start
		// for want of files is never charged with it.
		if s.Tasks.Failed != 0 || strings.Contains(stderr, "exit:127") {
			t.Errorf("ulimit -n %d: exit %d, tasks %+v; want no task failed (the supervisor lacked files, not the jobs); stderr:\n%s",
				limit, code, s.Tasks, stderr)
		}
		if s.Tasks.Done > 0 {
			continue // a job ran before the files ran out: not the case below
		}
		reached++
		if code != exitUsage {
			t.Errorf("ulimit -n %d: exit %d with no job run; want %d; stderr:\n%s", limit, code, exitUsage, stderr)
		}
	}
	if reached == 0 {
		t.Fatalf("no limit from 11 to 24 made the first job unable to start for want of files:\n%s", strings.Join(outcomes, "\n"))
	}
}

// pidsHierarchy returns where the cgroup v1 pids hierarchy is mounted and
// this process's cgroup in it, or skips t (fails it under CI=true).
func pidsHierarchy(t *testing.T) (mount, path string) {
	t.Helper()
	if os.Geteuid() != 0 {
		testenv.SkipOrFail(t, "making a pids cgroup needs root")
		return "", ""
	}
	mi, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(string(mi), "\n") {
		pre, post, ok := strings.Cut(l, " - ")
		f, g := strings.Fields(pre), strings.Fields(post)
		if !ok || len(f) < 5 || len(g) < 3 || g[0] != "cgroup" || f[3] != "/" || !slices.Contains(strings.Split(g[2], ","), "pids") {
			continue
		}
		mount = f[4]
	}
	if mount == "" {
		testenv.SkipOrFail(t, "no cgroup v1 pids hierarchy is mounted whole")
		return "", ""
	}
	cg, err := os.ReadFile("/proc/self/cgroup")
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(string(cg), "\n") {
		if f := strings.SplitN(l, ":", 3); len(f) == 3 && slices.Contains(strings.Split(f[1], ","), "pids") {
			return mount, f[2]
		}
	}
	testenv.SkipOrFail(t, "this process is in no pids cgroup")
	return "", ""
}

// TestPidsLimitCapsWorkers runs safepool run -j 64 in a pids cgroup that
// allows 40 processes and threads: it runs fewer workers at once, says so,
// and every job completes. Each worker takes a process and a thread of the
// supervisor's (that waits for it); past the limit the Go runtime could
// not make a thread and aborted the supervisor ("pthread_create failed",
// a dump of every goroutine, exit 2), where xargs -P 64 finishes.
func TestPidsLimitCapsWorkers(t *testing.T) {
	mount, path := pidsHierarchy(t)
	bin := buildSafepool(t)
	dir := filepath.Join(mount, path, fmt.Sprintf("safepool-test-%d", os.Getpid()))
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		// The supervisor's workers may take a moment to leave it.
		for i := 0; ; i++ {
			err := os.Remove(dir)
			if err == nil || i == 100 {
				if err != nil {
					t.Errorf("removing the pids cgroup: %v", err)
				}
				return
			}
			time.Sleep(100 * time.Millisecond)
		}
	})
	if err := os.WriteFile(filepath.Join(dir, "pids.max"), []byte("40"), 0o644); err != nil {
		t.Fatal(err)
	}
	args := []string{"-c", `echo $$ > "$0/cgroup.procs" && shift && exec "$@"`, dir, "x",
		bin, "run", "-j", "64", "--no-progress", "--", "sh", "-c", "exec sleep 0.05", ":::"}
	for i := 1; i <= 300; i++ {
		args = append(args, strconv.Itoa(i))
	}
	var stdout, stderr bytes.Buffer
	cmd := exec.Command("sh", args...)
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	if err != nil || !strings.Contains(stderr.String(), "safepool: 300 tasks done in ") {
		t.Fatalf("safepool run -j 64 under pids.max 40: %v, want exit 0 and every task done; stderr:\n%s", err, stderr.String())
	}
	checkCapNotice(t, stderr.String(), 64, `running (1 worker|[0-9]+ workers) at once instead of 64: the pids cgroup `+regexp.QuoteMeta(dir)+
		` allows (40) processes and threads \(pids\.max\), ([0-9]+) are in use and safepool keeps ([0-9]+) for its threads and what the jobs start, which leaves ([0-9]+) for the workers, and each worker takes ([0-9]+) \(its process and a thread of safepool's\)`)
}

// TestNprocLimitCapsWorkers runs safepool run -j 64 as a user of its own
// under a limit on that user's processes and threads (ulimit -u, as a
// batch system or a login's limits.conf may set): it runs fewer workers at
// once, says so, and every job completes. Under a limit that leaves too
// little for safepool's own threads it refuses to run, with the reason.
// Both used to go on and hope: the Go runtime aborted the supervisor, or
// its guard, when it could not make a thread ("pthread_create failed", a
// dump of every goroutine).
func TestNprocLimitCapsWorkers(t *testing.T) {
	if os.Getuid() != 0 {
		testenv.SkipOrFail(t, "needs root to run safepool as a user of its own")
	}
	for _, tool := range []string{"setpriv", "prlimit"} {
		if _, err := exec.LookPath(tool); err != nil {
			testenv.SkipOrFail(t, tool+" (util-linux) is not installed")
		}
	}
	bin, dir := buildSafepoolForAll(t)
	// A user no other process has: the limit counts every thread of the
	// user's.
	uid := strconv.Itoa(40000 + os.Getpid()%20000)
	run := func(limit string, inputs int) (string, error) {
		args := []string{"--nproc=" + limit, "--", "setpriv", "--reuid", uid, "--regid", uid, "--clear-groups",
			bin, "run", "-j", "64", "--no-progress", "--", "sh", "-c", "exec sleep 0.05", ":::"}
		for i := 1; i <= inputs; i++ {
			args = append(args, strconv.Itoa(i))
		}
		cmd := exec.Command("prlimit", args...)
		cmd.Dir = dir
		out, err := cmd.CombinedOutput()
		return string(out), err
	}
	out, err := run("40", 300)
	if err != nil || !strings.Contains(out, "safepool: 300 tasks done in ") {
		t.Fatalf("safepool run -j 64 under ulimit -u 40: %v, want exit 0 and every task done; output:\n%s", err, out)
	}
	checkCapNotice(t, out, 64, `running (1 worker|[0-9]+ workers) at once instead of 64: the limit on processes and threads of user `+uid+
		` \(ulimit -u\) is (40), ([0-9]+) are in use and safepool keeps ([0-9]+) for its threads and what the jobs start, which leaves ([0-9]+) for the workers, and each worker takes ([0-9]+) \(its process and a thread of safepool's\)`)

	out, err = run("10", 3)
	var exit *exec.ExitError
	if !errors.As(err, &exit) || exit.ExitCode() != 2 || !strings.Contains(out, "safepool: too few processes left to run: the limit on processes and threads of user "+uid+" (ulimit -u) is 10 and ") {
		t.Errorf("safepool run under ulimit -u 10: %v, want exit 2 and the reason; output:\n%s", err, out)
	}
	if strings.Contains(out, "goroutine ") {
		t.Errorf("output holds a Go stack dump:\n%s", out)
	}
}

// TestFileLimitNotice runs safepool run -j 8 under open-file limits that
// leave room for one worker and for three: the notice that says so counts
// one worker in the singular, and its figures add up (the files safepool
// keeps for itself used to be left out of it).
func TestFileLimitNotice(t *testing.T) {
	bin := buildSafepool(t)
	for _, limit := range []string{"64", "100"} {
		out, err := exec.Command("sh", "-c", `ulimit -n "$0" && exec "$@"`, limit,
			bin, "run", "-j", "8", "--no-progress", "true", ":::", "1", "2").CombinedOutput()
		if err != nil || !strings.Contains(string(out), "safepool: 2 tasks done in ") {
			t.Fatalf("ulimit -n %s; safepool run -j 8: %v, want every task done; output:\n%s", limit, err, out)
		}
		checkCapNotice(t, string(out), 8, `running (1 worker|[0-9]+ workers) at once instead of 8: the open-file limit \(ulimit -n\) is (`+limit+
			`), ([0-9]+) files are open and safepool keeps ([0-9]+) for itself, which leaves ([0-9]+) for the workers, and each worker needs up to ([0-9]+)`)
	}
}

// checkCapNotice checks that text, of a run with -j asked, has a line
// "safepool: " + pattern,
// whose groups are the workers, the limit, what is in use, what safepool
// keeps, what is left and what each worker takes, and that its figures
// add up: the limit less the rest is what is left, and as many workers as
// fit in that run.
func checkCapNotice(t *testing.T, text string, asked int, pattern string) {
	t.Helper()
	m := regexp.MustCompile(`(?m)^safepool: ` + pattern + `$`).FindStringSubmatch(text)
	if m == nil {
		t.Errorf("output:\n%s\nwant a line matching %q", text, pattern)
		return
	}
	n := map[string]int{}
	for i, name := range []string{"workers", "limit", "inUse", "kept", "left", "per"} {
		n[name], _ = strconv.Atoi(strings.Fields(m[i+1])[0])
	}
	if n["limit"]-n["inUse"]-n["kept"] != n["left"] {
		t.Errorf("notice %q: %d - %d - %d is not %d", m[0], n["limit"], n["inUse"], n["kept"], n["left"])
	}
	if want := max(1, min(asked, n["left"]/n["per"])); n["workers"] != want {
		t.Errorf("notice %q: %d workers, want %d", m[0], n["workers"], want)
	}
}
