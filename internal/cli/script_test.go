package cli

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/rogpeppe/go-internal/testscript"
	"go.uber.org/goleak"

	"github.com/safepool/safepool/internal/memory"
	"github.com/safepool/safepool/internal/protocol"
	"github.com/safepool/safepool/internal/testenv"
)

// The test binary doubles as the safepool binary and as small test
// programs, which testscript puts on $PATH under these names.
func TestMain(m *testing.M) {
	testscript.Main(leakCheck{m}, map[string]func(){
		"safepool": func() { os.Exit(safepoolMain()) },
		"exitcode": func() { os.Exit(exitcodeMain()) },
		"fixture":  func() { os.Exit(fixtureMain()) },
	})
}

// leakCheck fails the test binary when goroutines are left over after the
// in-process tests.
type leakCheck struct{ m *testing.M }

func (l leakCheck) Run() int {
	code := l.m.Run()
	if code == 0 {
		if err := goleak.Find(); err != nil {
			fmt.Fprintf(os.Stderr, "goleak: %v\n", err)
			return 1
		}
	}
	return code
}

// safepoolMain is cmd/safepool's main.
func safepoolMain() int {
	ctx, stop := NotifyContext(context.Background())
	defer stop()
	return Run(ctx, os.Args[1:], os.Stdin, os.Stdout, os.Stderr)
}

// exitcodeMain runs "exitcode [-max DURATION] [-as SIGNAL] STATUS PROG
// ARGS..." and succeeds when PROG exits with STATUS within DURATION. It
// forwards SIGINT and SIGTERM to PROG, so scripts can interrupt it in the
// background; with -as HUP or TERM it sends that signal instead of a
// SIGINT, since testscript's kill sends only SIGINT and SIGKILL.
func exitcodeMain() int {
	fs := flag.NewFlagSet("exitcode", flag.ContinueOnError)
	maxTime := fs.Duration("max", 0, "fail when PROG runs longer")
	as := fs.String("as", "", "forward SIGINT as this signal: HUP or TERM")
	if err := fs.Parse(os.Args[1:]); err != nil || fs.NArg() < 2 {
		fmt.Fprintln(os.Stderr, "usage: exitcode [-max DURATION] [-as SIGNAL] STATUS PROG ARGS...")
		return 2
	}
	asSignal := map[string]os.Signal{"": os.Interrupt, "HUP": syscall.SIGHUP, "TERM": syscall.SIGTERM}[*as]
	if asSignal == nil {
		fmt.Fprintf(os.Stderr, "exitcode: unknown signal %q\n", *as)
		return 2
	}
	want, err := strconv.Atoi(fs.Arg(0))
	if err != nil {
		fmt.Fprintf(os.Stderr, "exitcode: bad status %q\n", fs.Arg(0))
		return 2
	}
	cmd := exec.Command(fs.Arg(1), fs.Args()[2:]...)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, os.Stdout, os.Stderr
	sigs := make(chan os.Signal, 2)
	signal.Notify(sigs, os.Interrupt, syscall.SIGTERM)
	start := time.Now()
	if err := cmd.Start(); err != nil {
		fmt.Fprintf(os.Stderr, "exitcode: %v\n", err)
		return 1
	}
	done := make(chan struct{})
	go func() {
		for {
			select {
			case s := <-sigs:
				if s == os.Interrupt {
					s = asSignal
				}
				cmd.Process.Signal(s)
			case <-done:
				return
			}
		}
	}()
	err = cmd.Wait()
	close(done)
	elapsed := time.Since(start)
	got := 0
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		got = ee.ExitCode()
	} else if err != nil {
		fmt.Fprintf(os.Stderr, "exitcode: %v\n", err)
		return 1
	}
	if got != want {
		fmt.Fprintf(os.Stderr, "exitcode: %s exited with status %d, want %d\n", fs.Arg(1), got, want)
		return 1
	}
	if *maxTime > 0 && elapsed > *maxTime {
		fmt.Fprintf(os.Stderr, "exitcode: %s took %v, want at most %v\n", fs.Arg(1), elapsed.Round(time.Millisecond), *maxTime)
		return 1
	}
	return 0
}

// fixtureMain runs "fixture BEHAVIOUR ARGS...", the misbehaving programs the
// scripts need:
//
//	fixture gen-line N FILE   write one line of N bytes, every byte value but '\n', to FILE
//	fixture hog               allocate and touch memory until killed (at most 8 GiB)
//	fixture wait-file FILE    wait until FILE exists (at most 10 s)
//	fixture framed            a framed worker: answers each task with its payload upper-cased,
//	                         "fail" with an error frame, "kill" by SIGKILLing itself; it also
//	                         prints to stdout, which must not reach the data
//	fixture lines             a line worker: echo each line; "kill" SIGKILLs the worker,
//	                         "hog" allocates until killed
//	fixture kill-self         SIGKILL itself
//	fixture traceback         a line worker that dies on its first line with exit status 1,
//	                         after writing a Python traceback to stderr
//	fixture echo ARGS...      write each argument and a newline to stdout, and the same to stderr
//	fixture hostile FILE      write lines of hostile bytes to FILE: NUL, invalid UTF-8, CR,
//	                         terminal escape sequences, a line of 100 KB; and an empty line
//
// Deaths by other signals use sh -c 'kill -SEGV $$': a Go program cannot
// die of a SIGSEGV sent to it.
func fixtureMain() int {
	args := os.Args[1:]
	if len(args) == 0 {
		fmt.Fprintln(os.Stderr, "usage: fixture BEHAVIOUR ARGS...")
		return 2
	}
	switch args[0] {
	case "gen-line":
		n, _ := strconv.Atoi(args[1])
		f, err := os.Create(args[2])
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		w := bufio.NewWriter(f)
		for i := 0; i < n; i++ {
			b := byte(i % 255)
			if b >= '\n' {
				b++ // skip '\n', cover every other value
			}
			w.WriteByte(b)
		}
		w.WriteByte('\n')
		if err := w.Flush(); err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		return closeOK(f)
	case "wait-file":
		for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
			if _, err := os.Stat(args[1]); err == nil {
				return 0
			}
		}
		fmt.Fprintf(os.Stderr, "fixture: %s did not appear\n", args[1])
		return 1
	case "hog":
		hogMemory(context.Background(), os.Stderr, 8<<30)
		return 1
	case "framed":
		return framedWorker()
	case "line-reads":
		return lineReadsWorker(args[1], args[2], args[3])
	case "pipe-block":
		return pipeBlockWorker(args[1], args[2], args[3], args[4])
	case "kill-self":
		syscall.Kill(os.Getpid(), syscall.SIGKILL)
		time.Sleep(time.Minute)
		return 1
	case "traceback":
		bufio.NewReader(os.Stdin).ReadString('\n')
		os.Stderr.WriteString(pythonTraceback)
		return 1
	case "echo":
		for _, a := range args[1:] {
			os.Stdout.WriteString(a + "\n")
			os.Stderr.WriteString(a + "\n")
		}
		return 0
	case "hostile":
		return writeHostile(args[1])
	case "lines":
		in := bufio.NewReaderSize(os.Stdin, 1<<20)
		for {
			line, err := in.ReadBytes('\n')
			if err != nil {
				return 0
			}
			switch string(line) {
			case "kill\n":
				syscall.Kill(os.Getpid(), syscall.SIGKILL)
			case "hog\n":
				hogMemory(context.Background(), os.Stderr, 8<<30)
			}
			if _, err := os.Stdout.Write(line); err != nil {
				return 1
			}
		}
	}
	fmt.Fprintf(os.Stderr, "fixture: unknown behaviour %q\n", args[0])
	return 2
}

// pythonTraceback is what Python 3.11 writes when a worker dies of an
// exception: the lines under the code only point at it.
const pythonTraceback = `Traceback (most recent call last):
  File "/srv/app/worker.py", line 5, in <module>
    print(f({"a": {"b": {}}}, l.strip()), flush=True)
          ^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^
  File "/srv/app/worker.py", line 3, in f
    return d["a"]["b"][k]
           ~~~~~~~~~~~^^^
KeyError: 'a'

`

// hostileLines are inputs and outputs that tools often get wrong. None
// holds a NUL byte, which cannot be a command-line argument; the scripts
// add that case themselves.
var hostileLines = []string{
	"plain",
	"invalid UTF-8 \xff\xfe\xc3(",
	"carriage\rreturn\r",
	"colour \x1b[31mred\x1b[0m and title \x1b]0;pwned\x07 and clear \x1b[2J",
	"C1 control \u009b31m",
	"tab\there, backslash \\ and quote ' \"",
	"",
	strings.Repeat("long ", 20000),
}

// writeHostile writes hostileLines to path, one per line.
func writeHostile(path string) int {
	if err := os.WriteFile(path, []byte(strings.Join(hostileLines, "\n")+"\n"), 0o644); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	return 0
}

// framedWorker speaks the framed protocol of docs/protocol.md on fds 3
// and 4.
func framedWorker() int {
	in := protocol.NewReader(os.NewFile(3, "tasks"), 0)
	out := protocol.NewWriter(os.NewFile(4, "results"))
	send := func(f protocol.Frame) error {
		if err := out.WriteFrame(f); err != nil {
			return err
		}
		return out.Flush()
	}
	if err := send(protocol.Frame{Kind: protocol.KindReady, Payload: protocol.ReadyPayload()}); err != nil {
		return 1
	}
	for {
		f, err := in.ReadFrame()
		if err == io.EOF {
			return 0
		}
		if err != nil || f.Kind != protocol.KindTask {
			fmt.Fprintf(os.Stderr, "fixture framed: %v %v\n", f.Kind, err)
			return 1
		}
		if err := send(protocol.Frame{Kind: protocol.KindStart, ID: f.ID}); err != nil {
			return 1
		}
		fmt.Printf("noise on stdout for task %d\n", f.ID)
		answer := protocol.Frame{Kind: protocol.KindResult, ID: f.ID, Payload: bytes.ToUpper(f.Payload)}
		switch string(f.Payload) {
		case "fail":
			answer = protocol.Frame{Kind: protocol.KindError, ID: f.ID, Payload: []byte("cannot do 'fail'")}
		case "kill":
			syscall.Kill(os.Getpid(), syscall.SIGKILL)
		case "twice":
			// A stray second answer, once the task is done.
			if err := send(answer); err != nil {
				return 1
			}
		}
		if err := send(answer); err != nil {
			return 1
		}
	}
}

func closeOK(f *os.File) int {
	if err := f.Close(); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	return 0
}

// TestScripts runs the end-to-end tests in testdata/script against the real
// binary. UPDATE_GOLDEN=1 rewrites the expected output in the scripts.
func TestScripts(t *testing.T) {
	testscript.Run(t, testscript.Params{
		Dir:                 "testdata/script",
		UpdateScripts:       os.Getenv("UPDATE_GOLDEN") == "1",
		RequireExplicitExec: true,
		RequireUniqueNames:  true,
		Condition:           scriptCondition,
	})
}

// scriptCondition answers the conditions testscript does not know:
// [cgroups] holds where memory cgroups are writable, and always under
// CI=true, where a script that needs them must run and fail.
func scriptCondition(cond string) (bool, error) {
	if cond != "cgroups" {
		return false, fmt.Errorf("unknown condition %q", cond)
	}
	if testenv.InCI() {
		return true, nil
	}
	m, err := memory.NewManager()
	if err != nil {
		return false, nil
	}
	defer m.Close()
	return m.Mode().PerWorker(), nil
}
