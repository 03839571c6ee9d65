package reaper_test

import (
	"bufio"
	"context"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/safepool/safepool/internal/cli"
	"github.com/safepool/safepool/pool"
	"github.com/safepool/safepool/serve"
)

// The test binary doubles as every program the tests run: a supervisor
// (the CLI, the Go API), a framed worker, and the task that leaves
// processes behind. os.Args[1] names the role.
func TestMain(m *testing.M) {
	if len(os.Args) > 1 {
		if run, ok := roles[os.Args[1]]; ok {
			os.Exit(run(os.Args[2:]))
		}
	}
	goleak.VerifyTestMain(m, goleak.Cleanup(func(code int) {
		removePublic()
		os.Exit(code)
	}))
}

var roles = map[string]func(args []string) int{
	"reapertest-cli":       cliMain,
	"reapertest-supervise": superviseMain,
	"reapertest-framed":    framedMain,
	"reapertest-escape":    escapeMain,
	"reapertest-init":      initMain,
}

// cliMain is cmd/safepool's main.
func cliMain(args []string) int {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	return cli.Run(ctx, args, os.Stdin, os.Stdout, os.Stderr)
}

// superviseMain runs "supervise PROTOCOL WORKERS TASK...": a pool built with
// the Go API whose tasks each run escapeMain with the task's words as
// arguments, one-shot (under sh, so that the task's parent is a shell) or
// on framed workers. Once Results is closed it prints "ended", and it
// exits at end of file on stdin.
func superviseMain(args []string) int {
	if len(args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: supervise PROTOCOL WORKERS TASK...")
		return 2
	}
	exe, _ := os.Executable()
	workers, _ := strconv.Atoi(args[1])
	cfg := pool.Config{
		Protocol:      pool.Protocol(args[0]),
		Workers:       workers,
		Pipeline:      1,
		Grace:         500 * time.Millisecond,
		OnWorkerDeath: pool.Skip,
		Stdout:        os.Stderr,
	}
	switch cfg.Protocol {
	case pool.OneShot:
		// exit keeps the shell from exec'ing the task in its place.
		cfg.Command = []string{"sh", "-c", `"$0" reapertest-escape {}; exit $?`, exe}
	default:
		cfg.Command = []string{exe, "reapertest-framed"}
	}
	p, err := pool.New(cfg)
	if err != nil {
		fmt.Fprintln(os.Stderr, "supervise:", err)
		return 1
	}
	go func() {
		defer p.Close()
		for _, task := range args[2:] {
			if _, err := p.Submit(context.Background(), pool.Task{Input: []byte(task)}); err != nil {
				return
			}
		}
	}()
	for r := range p.Results() {
		fmt.Fprintf(os.Stderr, "supervise: task %d %s %v\n", r.ID, r.State, r.Err())
	}
	if err := p.Err(); err != nil {
		fmt.Fprintln(os.Stderr, "supervise:", err)
	}
	fmt.Println("ended")
	bufio.NewReader(os.Stdin).ReadString(0)
	return 0
}

// framedMain is a framed worker that runs escapeMain, in a child process,
// with each task's words as arguments, and answers with its output.
func framedMain(args []string) int {
	exe, _ := os.Executable()
	err := serve.Run(context.Background(), func(ctx context.Context, task []byte) ([]byte, error) {
		cmd := exec.Command(exe, append([]string{"reapertest-escape"}, strings.Fields(string(task))...)...)
		cmd.Stderr = os.Stderr
		return cmd.Output()
	})
	if err != nil {
		fmt.Fprintln(os.Stderr, "framed:", err)
		return 1
	}
	return 0
}

// escapeMain is a task that leaves processes behind. Each one is a
// "sleep 300" whose pid and start time it appends to the file $PIDS once
// the process has left the task's session:
//
//	-setsid N      N children that call setsid
//	-doublefork N  N grandchildren that call setsid, whose parent exits
//	-envcleared N  N children that call setsid, with an empty environment
//
// Then it kills its parent process if -killparent, waits -delay, prints
// "out", and exits or, with -hang, sleeps until killed. Arguments after the
// flags are ignored (the CLI appends the input).
func escapeMain(args []string) int {
	fs := flag.NewFlagSet("escape", flag.ContinueOnError)
	setsid := fs.Int("setsid", 0, "")
	doublefork := fs.Int("doublefork", 0, "")
	envcleared := fs.Int("envcleared", 0, "")
	killparent := fs.Bool("killparent", false, "")
	delay := fs.Duration("delay", 0, "")
	hang := fs.Bool("hang", false, "")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	var pids []int
	fail := func(err error) int {
		fmt.Fprintln(os.Stderr, "escape:", err)
		return 1
	}
	for i := 0; i < *setsid+*envcleared; i++ {
		cmd := exec.Command("/bin/sleep", "300")
		cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
		if i >= *setsid {
			cmd.Env = []string{}
		}
		// Start returns once the child has called setsid and exec'd.
		if err := cmd.Start(); err != nil {
			return fail(err)
		}
		pids = append(pids, cmd.Process.Pid)
		cmd.Process.Release()
	}
	for i := 0; i < *doublefork; i++ {
		out, err := exec.Command("/bin/sh", "-c", `/usr/bin/setsid /bin/sleep 300 </dev/null >/dev/null 2>&1 & echo $!`).Output()
		if err != nil {
			return fail(err)
		}
		pid, err := strconv.Atoi(strings.TrimSpace(string(out)))
		if err != nil {
			return fail(err)
		}
		// Its parent has exited; wait until it has its own session.
		for deadline := time.Now().Add(10 * time.Second); session(pid) != pid; time.Sleep(time.Millisecond) {
			if time.Now().After(deadline) {
				return fail(fmt.Errorf("process %d did not call setsid", pid))
			}
		}
		pids = append(pids, pid)
	}
	if len(pids) > 0 {
		var b strings.Builder
		for _, pid := range pids {
			st, ok := readStat(pid)
			if !ok {
				return fail(fmt.Errorf("process %d ended", pid))
			}
			fmt.Fprintln(&b, pid, st.start)
		}
		// One write with O_APPEND: tasks running side by side do not mix
		// their lines.
		f, err := os.OpenFile(os.Getenv("PIDS"), os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o666)
		if err != nil {
			return fail(err)
		}
		_, err = f.WriteString(b.String())
		f.Close()
		if err != nil {
			return fail(err)
		}
	}
	if *killparent {
		syscall.Kill(os.Getppid(), syscall.SIGKILL)
	}
	time.Sleep(*delay)
	fmt.Println("out")
	if *hang {
		time.Sleep(time.Hour)
	}
	return 0
}

// session returns the session id of process pid, or -1.
func session(pid int) int {
	st, ok := readStat(pid)
	if !ok {
		return -1
	}
	return st.session
}
