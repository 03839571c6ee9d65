package cli

import (
	"bufio"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestRelayedInterruptIsOne: a Ctrl-C that reaches safepool twice in a
// moment, from the terminal and again from a program in between that passes
// it on (timeout(1) sends it to its whole process group), stops the run as
// one Ctrl-C does: the jobs get SIGTERM and the grace to clean up. The copy
// used to count as a second Ctrl-C, which kills the workers at once: under
// `timeout 1h safepool run ...`, Ctrl-C in a terminal did so three times
// in five, and the jobs' SIGTERM handlers never finished.
func TestRelayedInterruptIsOne(t *testing.T) {
	bin := buildSafepool(t)
	job := filepath.Join(t.TempDir(), "job")
	cmd := exec.Command(bin, "run", "--no-progress", "-j", "1", "--grace", "20s", "--", "sh", "-c",
		`trap 'sleep 0.5; touch "$0.clean"; exit 0' TERM; touch "$0.started"; sleep 30 & wait`, "{}", ":::", job)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	stderrR, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Process.Kill()
	for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		if _, err := os.Stat(job + ".started"); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the job did not start within 20s")
		}
	}
	if err := cmd.Process.Signal(syscall.SIGINT); err != nil {
		t.Fatal(err)
	}
	first := time.Now()
	// Once safepool says it is stopping, it listens for a second signal:
	// the copy comes now, as timeout's comes within a moment of the first.
	lines := make(chan string, 100)
	go func() { // ends at safepool's exit
		defer close(lines)
		sc := bufio.NewScanner(stderrR)
		for sc.Scan() {
			lines <- sc.Text()
		}
	}()
	var stderr strings.Builder
	for l := range lines {
		stderr.WriteString(l + "\n")
		if strings.Contains(l, "stopping workers") {
			break
		}
	}
	if err := cmd.Process.Signal(syscall.SIGINT); err != nil {
		t.Fatal(err)
	}
	gap := time.Since(first)
	for l := range lines {
		stderr.WriteString(l + "\n")
	}
	err = cmd.Wait()
	if gap > relayWindow*4/5 {
		t.Skipf("the second SIGINT came %v after the first, too late to stand for a copy of it on this machine now", gap)
	}
	if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != exitAborted {
		t.Errorf("safepool run: %v, want exit status %d; stderr:\n%s", err, exitAborted, stderr.String())
	}
	if strings.Contains(stderr.String(), "killing workers") {
		t.Errorf("a SIGINT %v after the first was taken for a second one: the workers were killed at once; stderr:\n%s", gap, stderr.String())
	}
	if _, err := os.Stat(job + ".clean"); err != nil {
		t.Errorf("the job's SIGTERM handler did not finish (%v); stderr:\n%s", err, stderr.String())
	}
	if !strings.Contains(stderr.String(), "1 cancelled of 1 task") {
		t.Errorf("stderr does not count the job cancelled:\n%s", stderr.String())
	}
}

// TestSecondInterruptKills: a second SIGINT that comes after relayWindow
// is a second Ctrl-C, which kills the workers at once, as documented.
func TestSecondInterruptKills(t *testing.T) {
	bin := buildSafepool(t)
	job := filepath.Join(t.TempDir(), "job")
	cmd := exec.Command(bin, "run", "--no-progress", "-j", "1", "--grace", "60s", "--", "sh", "-c",
		`trap '' TERM; touch "$0.started"; sleep 60`, "{}", ":::", job)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	var stderr syncBuffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Process.Kill()
	for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		if _, err := os.Stat(job + ".started"); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the job did not start within 20s")
		}
	}
	if err := cmd.Process.Signal(syscall.SIGINT); err != nil {
		t.Fatal(err)
	}
	time.Sleep(relayWindow + time.Second)
	start := time.Now()
	if err := cmd.Process.Signal(syscall.SIGINT); err != nil {
		t.Fatal(err)
	}
	err := cmd.Wait()
	if took := time.Since(start); took > 30*time.Second {
		t.Errorf("safepool took %v after the second SIGINT, want the workers killed at once (--grace is 60s)", took)
	}
	if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != exitAborted {
		t.Errorf("safepool run: %v, want exit status %d; stderr:\n%s", err, exitAborted, stderr.String())
	}
	if !strings.Contains(stderr.String(), "killing workers") {
		t.Errorf("stderr does not say the workers are killed:\n%s", stderr.String())
	}
}
