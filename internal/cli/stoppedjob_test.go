package cli

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestStoppedJobGetsSIGTERM: a job stopped by a signal (SIGSTOP here; a
// job that reads the terminal gets SIGTTIN) takes the SIGTERM of an
// interrupt or a --timeout at once, and its handler runs: the SIGTERM is
// followed by SIGCONT, as kill(1) does for a stopped job. It used to stay
// pending until the SIGKILL at the end of the grace (30s here), the
// handler never run.
func TestStoppedJobGetsSIGTERM(t *testing.T) {
	bin := buildSafepool(t)
	for _, tc := range []struct {
		name  string
		flags []string
		intr  bool // interrupt the run (else --timeout ends the job)
	}{
		{"interrupt", []string{"--grace", "30s"}, true},
		{"timeout", []string{"--timeout", "1s", "--timeout-grace", "30s"}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			job := filepath.Join(t.TempDir(), "job")
			args := append([]string{"run", "--no-progress"}, tc.flags...)
			args = append(args, "--", "sh", "-c",
				`trap 'touch "$0.clean"; exit 0' TERM; touch "$0.started"; kill -STOP $$; sleep 60`, "{}", ":::", job)
			cmd := exec.Command(bin, args...)
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
			time.Sleep(300 * time.Millisecond) // it stops itself
			start := time.Now()
			if tc.intr {
				if err := cmd.Process.Signal(syscall.SIGINT); err != nil {
					t.Fatal(err)
				}
			}
			err := cmd.Wait()
			if took := time.Since(start); took > 15*time.Second {
				t.Errorf("safepool took %v to end the stopped job, want it to take the SIGTERM at once (the grace is 30s); stderr:\n%s", took, stderr.String())
			}
			if _, err := os.Stat(job + ".clean"); err != nil {
				t.Errorf("the stopped job's SIGTERM handler did not run (%v); stderr:\n%s", err, stderr.String())
			}
			want, status := "1 cancelled of 1 task", exitAborted
			if !tc.intr {
				want, status = ") timeout after 1 attempt", exitFailed
			}
			if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != status || !strings.Contains(stderr.String(), want) {
				t.Errorf("safepool run: %v, want exit status %d and %q; stderr:\n%s", err, status, want, stderr.String())
			}
		})
	}
}
