package pool_test

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"regexp"
	"strconv"
	"syscall"
	"testing"

	"github.com/safepool/safepool/pool"
)

// TestOneShotPeakNotTheSupervisors: without a cgroup per worker, a job too
// short-lived to be sampled is not reported with the supervisor's memory
// as its peak. Its maxrss from wait4, the fallback, starts at exec from the
// peak of the memory it was forked with: the supervisor's. A "true" under
// a supervisor that holds 64 MiB was reported with a peak of 64 MiB and
// more, and the governor planned with it. And a job that grows fast and
// ends before its second sample is reported with its own peak, not with
// what its one sample, 5 ms after its start, found.
func TestOneShotPeakNotTheSupervisors(t *testing.T) {
	dir := containerFor(t, 300<<20)
	text, err := superviseAsNobody(t, dir, workerEnv+"=container-peak")
	if err != nil {
		t.Fatalf("supervisor: %v; output:\n%s", err, text)
	}
	m := regexp.MustCompile(`(?m)^task \d+ done: peak (\d+)$`).FindAllStringSubmatch(text, -1)
	if len(m) != 3 {
		t.Fatalf("supervisor output:\n%s\nwant 3 tasks done with their peaks", text)
	}
	for _, g := range m {
		if peak, _ := strconv.ParseInt(g[1], 10, 64); peak >= 32<<20 {
			t.Errorf("a one-shot true's peak = %d bytes, want under 32 MiB (unknown, 0, or its own); the supervisor holds 64 MiB\n%s", peak, text)
		}
	}
	// A job that grows to 64 MiB and ends at once was sampled once, 5 ms
	// after its start, and reported with what it held then, a few MiB.
	g := regexp.MustCompile(`(?m)^grow done: peak (\d+)$`).FindStringSubmatch(text)
	if g == nil {
		t.Fatalf("supervisor output:\n%s\nwant the growing job done with its peak", text)
	}
	if peak, _ := strconv.ParseInt(g[1], 10, 64); peak < 64<<20 {
		t.Errorf("a one-shot job that grew to 64 MiB: peak %d bytes, want at least 64 MiB\n%s", peak, text)
	}
	// One that held 5 MiB for a moment was reported with its one early
	// sample, 1.5 MiB; its peak is unknown (0) or its own.
	g = regexp.MustCompile(`(?m)^small done: peak (\d+)$`).FindStringSubmatch(text)
	if g == nil {
		t.Fatalf("supervisor output:\n%s\nwant the small job done with its peak", text)
	}
	if peak, _ := strconv.ParseInt(g[1], 10, 64); peak != 0 && peak < 5<<20 {
		t.Errorf("a one-shot job that held 5 MiB: peak %d bytes, want unknown (0) or at least 5 MiB\n%s", peak, text)
	}
}

// runContainerPeak is the supervisor of TestOneShotPeakNotTheSupervisors:
// it holds 64 MiB and runs three jobs of "true", which hold next to
// nothing, one at a time; before, when it held little, one job that grows
// to 64 MiB and ends.
func runContainerPeak() int {
	cmd := append(workerCmd("oneshot"), "{}")
	p, err := pool.New(pool.Config{Command: cmd, Env: workerEnvFor("oneshot"), Workers: 1, Stderr: os.Stderr})
	if err != nil {
		fmt.Println(err)
		return 1
	}
	go func() {
		defer p.Close()
		p.Submit(context.Background(), pool.Task{Input: []byte("grow:64")})
	}()
	for r := range p.Results() {
		a := r.Attempts[len(r.Attempts)-1]
		fmt.Printf("grow %s: peak %d\n%s", r.State, a.PeakRSS, a.Message)
	}

	// A job that holds 5 MiB for a moment and ends: sampled once, early.
	if py, err := exec.LookPath("python3"); err == nil {
		p, err = pool.New(pool.Config{Command: []string{py, "-c", "b = bytearray(5 << 20)"}, Workers: 1, Stderr: os.Stderr})
		if err != nil {
			fmt.Println(err)
			return 1
		}
		go func() {
			defer p.Close()
			p.Submit(context.Background(), pool.Task{Input: []byte("x")})
		}()
		for r := range p.Results() {
			fmt.Printf("small %s: peak %d\n", r.State, r.Attempts[len(r.Attempts)-1].PeakRSS)
		}
	}

	hold := make([]byte, 64<<20)
	for i := range hold {
		hold[i] = 1
	}
	tr, err := exec.LookPath("true")
	if err != nil {
		fmt.Println(err)
		return 1
	}
	p, err = pool.New(pool.Config{Command: []string{tr}, Workers: 1, Stderr: os.Stderr})
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
		fmt.Printf("task %d %s: peak %d\n", r.ID, r.State, r.Attempts[len(r.Attempts)-1].PeakRSS)
	}
	fmt.Printf("memory mode: %s, held %d\n", p.MemoryMode(), len(hold))

	return 0
}

// TestOneShotLatePeakUnprivileged: without a cgroup per worker, a one-shot
// job that grows only in its last moment, after samples of a few MiB, is
// reported with what it grew to, not with its samples: it holds 256 MiB
// only between its last sample and its exit, which its maxrss (less what
// the last sample found of shared memory and file pages) shows. It was
// reported at a few MiB. The job grows far past what the supervisor
// holds: a maxrss at or below the supervisor's own cannot be told from the
// one a job inherits at its fork, and a supervisor built with the race
// detector on a loaded machine may hold several times its usual size.
func TestOneShotLatePeakUnprivileged(t *testing.T) {
	dir := containerFor(t, 1<<30)
	text, err := superviseAsNobody(t, dir, workerEnv+"=container-late-peak")
	if err != nil {
		t.Fatalf("supervisor: %v; output:\n%s", err, text)
	}
	m := regexp.MustCompile(`(?m)^lategrow done: peak (\d+)$`).FindAllStringSubmatch(text, -1)
	if len(m) != 3 {
		t.Fatalf("supervisor output:\n%s\nwant 3 late-growing jobs done with their peaks", text)
	}
	for _, g := range m {
		if peak, _ := strconv.ParseInt(g[1], 10, 64); peak < 256<<20 {
			t.Errorf("a one-shot job that grew to 256 MiB after 400 ms: peak %d bytes, want at least 256 MiB\n%s", peak, text)
		}
	}
	t.Logf("supervisor output:\n%s", text)
}

// runContainerLatePeak is the supervisor of
// TestOneShotLatePeakUnprivileged: it runs three jobs, one at a time, that
// sleep 400 ms, then grow to 256 MiB and end, and says what it holds itself.
func runContainerLatePeak() int {
	cmd := append(workerCmd("oneshot"), "{}")
	p, err := pool.New(pool.Config{Command: cmd, Env: workerEnvFor("oneshot"), Workers: 1, Stderr: os.Stderr})
	if err != nil {
		fmt.Println(err)
		return 1
	}
	go func() {
		defer p.Close()
		for range 3 {
			p.Submit(context.Background(), pool.Task{Input: []byte("lategrow:256")})
		}
	}()
	for r := range p.Results() {
		a := r.Attempts[len(r.Attempts)-1]
		fmt.Printf("lategrow %s: peak %d\n%s", r.State, a.PeakRSS, a.Message)
	}
	fmt.Printf("memory mode: %s (%s)\n", p.MemoryMode(), p.MemoryModeReason())
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	fmt.Printf("supervisor's maxrss: %d\n", ru.Maxrss*1024)
	return 0
}
