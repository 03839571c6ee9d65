package cli

import (
	"bufio"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestProgressOnlyInForeground runs safepool with its progress bar in the
// background of a shell with job control (safepool run ... &), then brings
// it to the foreground (fg): no bar is drawn while it is in the
// background, over the shell's lines, and the bar is drawn after fg, as
// pv does. The bar used to be drawn from the background too.
func TestProgressOnlyInForeground(t *testing.T) {
	bash, err := exec.LookPath("bash")
	if err != nil {
		t.Skipf("no bash for job control: %v", err)
	}
	bin := buildSafepool(t)
	master, slave := openPTY(t)
	script := `set -m
"$0" run --progress -- sleep 8 ::: 1 &
sleep 3
echo MARK-FG
fg %1 >/dev/null
echo MARK-END`
	cmd := exec.Command(bash, "-c", script, bin)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = slave, slave, slave
	// A session of its own whose terminal is the pseudo-terminal, as a
	// login shell's.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true, Setctty: true, Ctty: 0}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	chunks := make(chan string)
	go func() { // ends when master is closed (the test's cleanup)
		defer close(chunks)
		r := bufio.NewReader(master)
		buf := make([]byte, 4096)
		for {
			n, err := r.Read(buf)
			if n > 0 {
				chunks <- string(buf[:n])
			}
			if err != nil {
				return
			}
		}
	}()
	var all strings.Builder
	deadline := time.After(90 * time.Second)
	for !strings.Contains(all.String(), "MARK-END") {
		select {
		case c, ok := <-chunks:
			if !ok {
				t.Fatalf("the terminal closed before the end; it shows:\n%q", all.String())
			}
			all.WriteString(c)
		case <-deadline:
			_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
			t.Fatalf("the script did not end within 90s; the terminal shows:\n%q", all.String())
		}
	}
	_ = cmd.Wait()
	before, after, _ := strings.Cut(all.String(), "MARK-FG")
	const bar = "running 1"
	if strings.Contains(before, bar) {
		t.Errorf("the bar was drawn while safepool was in the background; before fg the terminal shows:\n%q", before)
	}
	if !strings.Contains(after, bar) {
		t.Errorf("no bar drawn after fg; the terminal shows after fg:\n%q", after)
	}
	if !strings.Contains(after, "safepool: 1 task done in ") {
		t.Errorf("no summary after fg; the terminal shows after fg:\n%q", after)
	}
}
