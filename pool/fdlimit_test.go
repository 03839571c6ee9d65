package pool_test

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/safepool/safepool/pool"
)

// TestFileLimitCapsWorkers runs a supervisor whose open-file limit is 128
// with 100 one-shot workers asked for: it runs fewer at once, says so, and
// every job completes instead of failing with exit:127 "too many open
// files".
func TestFileLimitCapsWorkers(t *testing.T) {
	text, err := testCommand("fdcap").CombinedOutput()
	if err != nil {
		t.Fatalf("supervisor: %v; output:\n%s", err, text)
	}
	if !strings.Contains(string(text), "done=200 other=0") {
		t.Errorf("supervisor output:\n%s\nwant all 200 tasks done", text)
	}
	if !strings.Contains(string(text), "notice: running ") || !strings.Contains(string(text), "instead of 100: the open-file limit (ulimit -n) is 128") {
		t.Errorf("supervisor output:\n%s\nwant a notice that fewer workers run, and why", text)
	}
	t.Logf("supervisor output:\n%s", text)
}

// TestFileLimitRequeues runs a supervisor that, once its pool of 20
// workers has started, opens files until only about enough for two
// workers to start at once are left: the
// processes that cannot start for want of files wait for the running
// ones to end, uncharged, and every job completes.
func TestFileLimitRequeues(t *testing.T) {
	text, err := testCommand("fdsqueeze").CombinedOutput()
	if err != nil {
		t.Fatalf("supervisor: %v; output:\n%s", err, text)
	}
	if !strings.Contains(string(text), "done=100 other=0") || !strings.Contains(string(text), "attempts=100") {
		t.Errorf("supervisor output:\n%s\nwant all 100 tasks done after one attempt each", text)
	}
	t.Logf("supervisor output:\n%s", text)
}

// runFileLimit is the supervisor of TestFileLimitCapsWorkers ("fdcap") and
// TestFileLimitRequeues ("fdsqueeze"). It lowers its own open-file limit,
// runs short sleeps, and prints the pool's notices and how the tasks ended.
func runFileLimit(mode string) int {
	limit, workers, tasks := uint64(128), 100, 200
	if mode == "fdsqueeze" {
		limit, workers, tasks = 256, 20, 100
	}
	if err := unix.Setrlimit(unix.RLIMIT_NOFILE, &unix.Rlimit{Cur: limit, Max: limit}); err != nil {
		fmt.Println(err)
		return 1
	}
	sleep, err := exec.LookPath("sleep")
	if err != nil {
		fmt.Println(err)
		return 1
	}
	p, err := pool.New(pool.Config{Command: []string{sleep, "{}"}, Workers: workers})
	if err != nil {
		fmt.Println(err)
		return 1
	}
	for _, n := range p.Notices() {
		fmt.Println("notice:", n)
	}
	fmt.Println("workers:", p.Workers())
	if mode == "fdsqueeze" {
		// Leave room for the eight files each worker keeps open for its
		// two cgroups, and for about two workers starting at once.
		var held []*os.File
		for {
			f, err := os.Open("/dev/null")
			if err != nil {
				fmt.Println("cannot squeeze:", err)
				return 1
			}
			held = append(held, f)
			if entries, _ := os.ReadDir("/proc/self/fd"); len(entries) >= int(limit)-8*workers-20 {
				break
			}
		}
		defer func() {
			for _, f := range held {
				f.Close()
			}
		}()
	}
	go func() {
		defer p.Close()
		for i := 0; i < tasks; i++ {
			p.Submit(context.Background(), pool.Task{Input: []byte("0.02")})
		}
	}()
	done, other := 0, 0
	for r := range p.Results() {
		if r.State == pool.Done {
			done++
			continue
		}
		other++
		if other <= 3 {
			fmt.Printf("task %d %s %s: %s\n", r.ID, r.State, r.Cause(), r.Attempts[len(r.Attempts)-1].Message)
		}
	}
	fmt.Printf("done=%d other=%d attempts=%d\n", done, other, p.Stats().Attempts)
	return 0
}
