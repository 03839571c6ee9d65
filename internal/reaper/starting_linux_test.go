package reaper

import (
	"os/exec"
	"syscall"
	"testing"
	"time"
)

// TestThreadWatch: the guardian's look at the supervisor's threads sees a
// process that runs or sleeps as not stuck and a stopped one as stuck, and
// reads the threads' stat files through descriptors it keeps from one
// look to the next, so that four looks a second open no file.
func TestThreadWatch(t *testing.T) {
	cmd := exec.Command("sleep", "100")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() {
		cmd.Process.Kill()
		cmd.Wait()
	}()
	pid := cmd.Process.Pid
	w := newThreadWatch(pid)
	until := func(want bool) {
		t.Helper()
		deadline := time.Now().Add(10 * time.Second)
		for w.stuck() != want {
			if time.Now().After(deadline) {
				t.Fatalf("stuck() of process %d is not %v within 10s", pid, want)
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	until(false)
	kept := map[int]int{}
	for tid, fd := range w.fds {
		kept[tid] = fd
	}
	if len(kept) == 0 {
		t.Fatal("no thread's stat file kept open")
	}
	if err := syscall.Kill(pid, syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	until(true)
	if err := syscall.Kill(pid, syscall.SIGCONT); err != nil {
		t.Fatal(err)
	}
	until(false)
	for tid, fd := range kept {
		if w.fds[tid] != fd {
			t.Errorf("thread %d: stat file %d at the first look, %d later: opened again", tid, fd, w.fds[tid])
		}
	}
}
