package cli

import (
	"bufio"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestStoppedByTerminalAtStart: started in the background of a terminal
// set to stop the processes that write to it from the background (stty
// tostop), safepool is stopped (SIGTTOU) by its first write there, and the
// shell sees it stopped, so that fg can continue it. The SIGTTOU goes to
// safepool's whole process group, and the first process that Go starts
// is a child that tests the kernel's pidfd calls, which used to be in the
// group with the stop signal not blocked: it stopped, before it could end,
// and the thread that started it waited for it for ever, so safepool
// never stopped as a whole, the shell never heard of a stop, and fg left
// it stuck. The script starts safepool 30 times, since the stop lands in
// that moment only sometimes.
func TestStoppedByTerminalAtStart(t *testing.T) {
	bash, err := exec.LookPath("bash")
	if err != nil {
		t.Skipf("no bash for job control: %v", err)
	}
	bin := buildSafepool(t)
	master, slave := openPTY(t)
	const runs = 30
	script := `set -m; stty tostop
for i in $(seq ` + strconv.Itoa(runs) + `); do
	"$0" run --progress -- true ::: 1 &
	p=$!
	echo "started $p"
	wait $p
	echo "stopped $?"
	kill -KILL $p
	wait $p 2>/dev/null
done
echo end`
	cmd := exec.Command(bash, "-c", script, bin)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = slave, slave, slave
	// A session of its own whose terminal is the pseudo-terminal, as a
	// login shell's.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true, Setctty: true, Ctty: 0}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	lines := make(chan string)
	go func() { // ends when master is closed (the test's cleanup)
		defer close(lines)
		sc := bufio.NewScanner(master)
		for sc.Scan() {
			lines <- strings.TrimRight(sc.Text(), "\r")
		}
	}()
	last, stopped := 0, 0
	deadline := time.After(60 * time.Second)
	for done := false; !done; {
		select {
		case l, ok := <-lines:
			switch {
			case !ok || l == "end":
				done = true
			case strings.HasPrefix(l, "started "):
				last, _ = strconv.Atoi(strings.TrimPrefix(l, "started "))
			case strings.HasPrefix(l, "stopped "):
				if l != "stopped 150" { // 128 + SIGTTOU
					t.Errorf("safepool in the background: %q, want stopped 150 (SIGTTOU)", l)
				}
				stopped++
			}
		case <-deadline:
			t.Errorf("safepool %d, started in the background, not seen stopped within 60s (state %q); %d of %d runs were", last, procState(last), stopped, runs)
			if last > 0 {
				_ = syscall.Kill(last, syscall.SIGKILL)
			}
			_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
			done = true
		}
	}
	_ = cmd.Wait()
	if stopped != runs && !t.Failed() {
		t.Errorf("%d of %d runs seen stopped", stopped, runs)
	}
}
