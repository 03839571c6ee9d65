package serve_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"go.uber.org/goleak"
	"golang.org/x/sys/unix"

	"github.com/safepool/safepool/internal/protocol"
	"github.com/safepool/safepool/serve"
)

// envWorker switches the test binary into a framed worker; see workerMain.
const envWorker = "SAFEPOOL_SERVE_TEST_WORKER"

func TestMain(m *testing.M) {
	switch os.Getenv(envWorker) {
	case "1":
		os.Exit(workerMain())
	case "child":
		os.Exit(childMain())
	}
	goleak.VerifyTestMain(m)
}

// workerMain is the worker process that TestWorkerProcess* start: the test
// binary re-run with envWorker set, serving workerHandler through serve.Run.
func workerMain() int {
	// The pipes' descriptors, for "cloexec": Pipes takes the variables
	// out of the environment.
	for _, name := range []string{protocol.EnvTaskFD, protocol.EnvResultFD} {
		pipeFDs = append(pipeFDs, os.Getenv(name))
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM)
	defer stop()
	err := serve.Run(ctx, workerHandler)
	switch {
	case err == nil:
		return 0
	case errors.Is(err, context.Canceled):
		return 3
	}
	fmt.Fprintln(os.Stderr, "worker:", err)
	return 1
}

// pipeFDs holds SAFEPOOL_TASK_FD and SAFEPOOL_RESULT_FD as the worker
// process found them.
var pipeFDs []string

// childMain is a program that a worker starts ("child"): built with serve,
// it falls back to another mode when it was not started by a supervisor,
// as ErrNoSupervisor's doc suggests. It says which way Run went.
func childMain() int {
	fmt.Printf("%s=%q: ", protocol.EnvProtocol, os.Getenv(protocol.EnvProtocol))
	err := serve.Run(context.Background(), upper)
	switch {
	case errors.Is(err, serve.ErrNoSupervisor):
		fmt.Print("not a worker")
	case err != nil:
		fmt.Print("Run: ", err)
	default:
		fmt.Print("Run returned nil")
	}
	return 0
}

// workerHandler runs commands of the form "verb argument".
func workerHandler(ctx context.Context, payload []byte) ([]byte, error) {
	verb, arg, _ := strings.Cut(string(payload), " ")
	switch verb {
	case "echo":
		return []byte(arg), nil
	case "print": // the task's own output must not disturb the protocol
		fmt.Println(arg)
		fmt.Fprintln(os.Stderr, arg)
		return []byte("printed"), nil
	case "fail":
		return nil, errors.New(arg)
	case "panic":
		panic(arg)
	case "exit":
		os.Exit(7)
	case "child": // runs childMain, a program the worker starts
		cmd := exec.CommandContext(ctx, os.Args[0], "-test.run=^$")
		cmd.Env = append(os.Environ(), envWorker+"=child")
		out, err := cmd.Output()
		if err != nil {
			return nil, fmt.Errorf("child: %v", err)
		}
		return out, nil
	case "cloexec": // reports whether the protocol's pipes are close-on-exec
		var flags []string
		for i, s := range pipeFDs {
			fd := 3 + i
			if s != "" {
				fmt.Sscan(s, &fd)
			}
			v, err := unix.FcntlInt(uintptr(fd), unix.F_GETFD, 0)
			if err != nil {
				return nil, err
			}
			flags = append(flags, fmt.Sprint(fd, v&unix.FD_CLOEXEC != 0))
		}
		return []byte(strings.Join(flags, ",")), nil
	}
	return nil, fmt.Errorf("unknown verb %q", verb)
}

// session drives RunWith in a goroutine over a pair of os.Pipes, playing
// the supervisor's side with the protocol package.
type session struct {
	t     *testing.T
	taskW *os.File // the supervisor's end of the task pipe
	w     *protocol.Writer
	resR  *os.File // the supervisor's end of the result pipe
	r     *protocol.Reader

	once sync.Once
	errc chan error
	err  error
}

func startSession(t *testing.T, ctx context.Context, h serve.Handler, opts serve.Options) *session {
	t.Helper()
	taskR, taskW, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	resR, resW, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	// A broken worker fails the test instead of hanging it.
	resR.SetReadDeadline(time.Now().Add(20 * time.Second))
	s := &session{
		t: t, taskW: taskW, w: protocol.NewWriter(taskW),
		resR: resR, r: protocol.NewReader(resR, 0),
		errc: make(chan error, 1),
	}
	go func() {
		err := serve.RunWith(ctx, taskR, resW, h, opts)
		resW.Close()
		taskR.Close()
		s.errc <- err
	}()
	t.Cleanup(func() {
		taskW.Close() // EOF: the worker's cue to return
		resR.Close()  // and if it is writing, its writes fail
		s.wait()
	})
	if f := s.next(); f.Kind != protocol.KindReady || f.ID != 0 {
		t.Fatalf("first frame = %v, want ready", f)
	} else if v, err := protocol.ParseReady(f.Payload); v != protocol.Version || err != nil {
		t.Fatalf("ParseReady(%q) = %d, %v, want %d, nil", f.Payload, v, err, protocol.Version)
	}
	return s
}

// wait returns RunWith's error, waiting for it.
func (s *session) wait() error {
	s.once.Do(func() { s.err = <-s.errc })
	return s.err
}

func (s *session) send(frames ...protocol.Frame) {
	s.t.Helper()
	for _, f := range frames {
		if err := s.w.WriteFrame(f); err != nil {
			s.t.Fatalf("WriteFrame(%v) = %v", f, err)
		}
	}
	if err := s.w.Flush(); err != nil {
		s.t.Fatalf("Flush() = %v", err)
	}
}

func (s *session) next() protocol.Frame {
	s.t.Helper()
	f, err := s.r.ReadFrame()
	if err != nil {
		s.t.Fatalf("ReadFrame() = %v, want a frame", err)
	}
	return f
}

// expect reads frames and compares them with want, skipping heartbeats.
func (s *session) expect(want ...protocol.Frame) {
	s.t.Helper()
	for _, w := range want {
		f := s.next()
		for f.Kind == protocol.KindHeartbeat && w.Kind != protocol.KindHeartbeat {
			f = s.next()
		}
		if !sameFrame(f, w) {
			s.t.Fatalf("ReadFrame() = %s, want %s", show(f), show(w))
		}
	}
}

// expectEOF checks that the worker wrote nothing more before its result
// pipe closed.
func (s *session) expectEOF() {
	s.t.Helper()
	if f, err := s.r.ReadFrame(); err != io.EOF {
		s.t.Fatalf("ReadFrame() = %s, %v, want io.EOF", show(f), err)
	}
}

func sameFrame(a, b protocol.Frame) bool {
	return a.Kind == b.Kind && a.ID == b.ID && bytes.Equal(a.Payload, b.Payload)
}

func show(f protocol.Frame) string {
	return fmt.Sprintf("{%s %d %q}", f.Kind, f.ID, f.Payload)
}

func task(id uint64, payload string) protocol.Frame {
	return protocol.Frame{Kind: protocol.KindTask, ID: id, Payload: []byte(payload)}
}

func start(id uint64) protocol.Frame {
	return protocol.Frame{Kind: protocol.KindStart, ID: id}
}

func result(id uint64, payload string) protocol.Frame {
	return protocol.Frame{Kind: protocol.KindResult, ID: id, Payload: []byte(payload)}
}

func failure(id uint64, msg string) protocol.Frame {
	return protocol.Frame{Kind: protocol.KindError, ID: id, Payload: []byte(msg)}
}

func upper(ctx context.Context, p []byte) ([]byte, error) {
	if string(p) == "bad" {
		return nil, errors.New("bad input")
	}
	return bytes.ToUpper(p), nil
}

type ctxKey struct{}

func TestRunWith(t *testing.T) {
	tests := []struct {
		name  string
		h     serve.Handler
		tasks []protocol.Frame
		want  []protocol.Frame
	}{
		{
			name:  "one task",
			h:     upper,
			tasks: []protocol.Frame{task(1, "abc")},
			want:  []protocol.Frame{start(1), result(1, "ABC")},
		},
		{
			name:  "pipelined tasks run in order",
			h:     upper,
			tasks: []protocol.Frame{task(10, "a"), task(11, "bad"), task(12, "c")},
			want:  []protocol.Frame{start(10), result(10, "A"), start(11), failure(11, "bad input"), start(12), result(12, "C")},
		},
		{
			name:  "empty payload and nil result",
			h:     func(context.Context, []byte) ([]byte, error) { return nil, nil },
			tasks: []protocol.Frame{task(1, "")},
			want:  []protocol.Frame{start(1), result(1, "")},
		},
		{
			name: "error text is made valid UTF-8",
			h: func(context.Context, []byte) ([]byte, error) {
				return nil, errors.New("bad byte \xff here")
			},
			tasks: []protocol.Frame{task(1, "x")},
			want:  []protocol.Frame{start(1), failure(1, "bad byte \uFFFD here")},
		},
		{
			name: "the handler gets Run's context",
			h: func(ctx context.Context, p []byte) ([]byte, error) {
				return []byte(fmt.Sprint(ctx.Value(ctxKey{}))), nil
			},
			tasks: []protocol.Frame{task(1, "")},
			want:  []protocol.Frame{start(1), result(1, "marked")},
		},
		{
			name: "the handler may keep the payload",
			h: func() serve.Handler {
				var kept [][]byte
				return func(ctx context.Context, p []byte) ([]byte, error) {
					kept = append(kept, p)
					return bytes.Join(kept, []byte("+")), nil
				}
			}(),
			tasks: []protocol.Frame{task(1, "a"), task(2, "b"), task(3, "c")},
			want:  []protocol.Frame{start(1), result(1, "a"), start(2), result(2, "a+b"), start(3), result(3, "a+b+c")},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx := context.WithValue(context.Background(), ctxKey{}, "marked")
			s := startSession(t, ctx, tt.h, serve.Options{})
			s.send(tt.tasks...)
			s.expect(tt.want...)
			s.taskW.Close()
			if err := s.wait(); err != nil {
				t.Errorf("RunWith() = %v at the end of the tasks, want nil", err)
			}
			s.expectEOF()
		})
	}
}

func TestRunWithPanic(t *testing.T) {
	h := func(ctx context.Context, p []byte) ([]byte, error) {
		if string(p) == "boom" {
			panic("kaboom")
		}
		return p, nil
	}
	s := startSession(t, context.Background(), h, serve.Options{})
	s.send(task(1, "boom"), task(2, "fine"))
	s.expect(start(1))
	f := s.next()
	if f.Kind != protocol.KindError || f.ID != 1 {
		t.Fatalf("ReadFrame() = %s, want an error frame for task 1", show(f))
	}
	msg := string(f.Payload)
	if !strings.HasPrefix(msg, "panic: kaboom\n\ngoroutine ") || !strings.Contains(msg, "TestRunWithPanic") {
		t.Errorf("error payload = %q, want the panic value and a stack through the handler", msg)
	}
	s.expect(start(2), result(2, "fine")) // the worker is still serving
}

func TestRunWithEOFAtOnce(t *testing.T) {
	s := startSession(t, context.Background(), upper, serve.Options{})
	s.taskW.Close()
	if err := s.wait(); err != nil {
		t.Errorf("RunWith() = %v with no tasks, want nil", err)
	}
	s.expectEOF()
}

func TestRunWithBadInput(t *testing.T) {
	tests := []struct {
		name  string
		input []byte
		eof   bool // close the task pipe after input
		check func(error) bool
		want  string
	}{
		{
			name:  "truncated frame",
			input: encode(t, task(1, "abc"))[:protocol.HeaderSize+1],
			eof:   true,
			check: func(err error) bool { return errors.Is(err, io.ErrUnexpectedEOF) },
			want:  "io.ErrUnexpectedEOF",
		},
		{
			name:  "garbage",
			input: []byte("hello, this is not a frame\n"),
			check: func(err error) bool { var fe *protocol.FormatError; return errors.As(err, &fe) },
			want:  "a *protocol.FormatError",
		},
		{
			name:  "oversized frame",
			input: []byte{0xff, 0xff, 0xff, 0xff, byte(protocol.KindTask), 0, 0, 0, 0, 0, 0, 0, 1},
			check: func(err error) bool { return errors.Is(err, protocol.ErrFrameTooLarge) },
			want:  "protocol.ErrFrameTooLarge",
		},
		{
			name:  "a frame that is not a task",
			input: encode(t, result(1, "x")),
			check: func(err error) bool { return err != nil && strings.Contains(err.Error(), "result frame") },
			want:  "an error about the result frame",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := startSession(t, context.Background(), upper, serve.Options{})
			if _, err := s.taskW.Write(tt.input); err != nil {
				t.Fatal(err)
			}
			if tt.eof {
				s.taskW.Close()
			}
			if err := s.wait(); !tt.check(err) {
				t.Errorf("RunWith() = %v, want %s", err, tt.want)
			}
			s.expectEOF()
		})
	}
}

func encode(t *testing.T, frames ...protocol.Frame) []byte {
	t.Helper()
	var buf bytes.Buffer
	w := protocol.NewWriter(&buf)
	for _, f := range frames {
		if err := w.WriteFrame(f); err != nil {
			t.Fatal(err)
		}
	}
	if err := w.Flush(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func TestRunWithNilHandler(t *testing.T) {
	if err := serve.RunWith(context.Background(), strings.NewReader(""), io.Discard, nil, serve.Options{}); err == nil {
		t.Error("RunWith(nil Handler) = nil, want an error")
	}
}

func TestRunWithCancelWhileIdle(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	s := startSession(t, ctx, upper, serve.Options{})
	s.send(task(1, "a"))
	s.expect(start(1), result(1, "A"))
	cancel()
	if err := s.wait(); !errors.Is(err, context.Canceled) {
		t.Fatalf("RunWith() = %v after cancel, want context.Canceled", err)
	}
	s.expectEOF()
}

// TestRunWithCancelInterruptsRead checks that RunWith interrupts its pending
// read when its context is done, and leaves the stream without a deadline.
func TestRunWithCancelInterruptsRead(t *testing.T) {
	taskR, taskW, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer taskR.Close()
	defer taskW.Close()
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() { errc <- serve.RunWith(ctx, taskR, io.Discard, upper, serve.Options{}) }()
	time.Sleep(10 * time.Millisecond) // let the reader block; correctness does not depend on it
	cancel()
	if err := <-errc; !errors.Is(err, context.Canceled) {
		t.Fatalf("RunWith() = %v, want context.Canceled", err)
	}
	// goleak, in TestMain, finds the reading goroutine if it is still there.
	if _, err := taskW.Write([]byte("x")); err != nil {
		t.Fatal(err)
	}
	var b [1]byte
	if _, err := taskR.Read(b[:]); err != nil {
		t.Errorf("Read() after RunWith returned = %v, want the deadline cleared", err)
	}
}

func TestRunWithCancelDuringTask(t *testing.T) {
	tests := []struct {
		name   string
		result []byte
		err    error
		want   []protocol.Frame
	}{
		{"an error after cancel is not reported", nil, errors.New("interrupted"), nil},
		{"a result after cancel is reported", []byte("done anyway"), nil, []protocol.Frame{result(1, "done anyway")}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			h := func(ctx context.Context, p []byte) ([]byte, error) {
				<-ctx.Done()
				return tt.result, tt.err
			}
			s := startSession(t, ctx, h, serve.Options{})
			s.send(task(1, "x"), task(2, "y"))
			s.expect(start(1))
			cancel()
			s.expect(tt.want...)
			if err := s.wait(); !errors.Is(err, context.Canceled) {
				t.Fatalf("RunWith() = %v, want context.Canceled", err)
			}
			s.expectEOF() // task 2 never started
		})
	}
}

func TestRunWithHeartbeat(t *testing.T) {
	release := make(chan struct{})
	h := func(ctx context.Context, p []byte) ([]byte, error) {
		<-release
		return p, nil
	}
	s := startSession(t, context.Background(), h, serve.Options{Heartbeat: time.Millisecond})
	heartbeat := protocol.Frame{Kind: protocol.KindHeartbeat}
	s.expect(heartbeat, heartbeat) // while idle
	s.send(task(5, "p"))
	s.expect(start(5))
	s.expect(heartbeat, heartbeat) // while busy
	close(release)
	s.expect(result(5, "p"))
	s.taskW.Close()
	if err := s.wait(); err != nil {
		t.Fatalf("RunWith() = %v, want nil", err)
	}
	for {
		f, err := s.r.ReadFrame()
		if err == io.EOF {
			break
		}
		if err != nil || f.Kind != protocol.KindHeartbeat {
			t.Fatalf("ReadFrame() after the last result = %s, %v, want heartbeats then io.EOF", show(f), err)
		}
	}
}

func TestPipesEnvironment(t *testing.T) {
	tests := []struct {
		name           string
		proto, tfd, rf string
		noSupervisor   bool
		// files puts regular files at the descriptors named, or at 3 and
		// 4 with defaultFDs.
		files, defaultFDs bool
	}{
		{name: "not started by safepool", noSupervisor: true},
		{name: "line protocol", proto: "line"},
		{name: "future version", proto: "framed/2"},
		{name: "task fd not a number", proto: protocol.Framed, tfd: "three"},
		{name: "negative fd", proto: protocol.Framed, rf: "-4"},
		{name: "same fd twice", proto: protocol.Framed, tfd: "5", rf: "5"},
		// The variables without the pipes: inherited from a worker by a
		// program it started, which has other files there, or none.
		{name: "fd not open", proto: protocol.Framed, tfd: "1000", rf: "1001", noSupervisor: true},
		{name: "fds not pipes", proto: protocol.Framed, files: true, noSupervisor: true},
		{name: "default fds not pipes", proto: protocol.Framed, files: true, defaultFDs: true, noSupervisor: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if tt.files {
				tt.tfd, tt.rf = regularFiles(t, tt.defaultFDs)
			}
			t.Setenv(protocol.EnvProtocol, tt.proto)
			t.Setenv(protocol.EnvTaskFD, tt.tfd)
			t.Setenv(protocol.EnvResultFD, tt.rf)
			if tt.defaultFDs {
				os.Unsetenv(protocol.EnvTaskFD)
				os.Unsetenv(protocol.EnvResultFD)
			}
			tasks, results, err := serve.Pipes()
			if err == nil {
				tasks.Close()
				results.Close()
				t.Fatalf("Pipes() = nil error, want one")
			}
			if got := errors.Is(err, serve.ErrNoSupervisor); got != tt.noSupervisor {
				t.Errorf("errors.Is(Pipes() error %q, ErrNoSupervisor) = %t, want %t", err, got, tt.noSupervisor)
			}
			if err := serve.Run(context.Background(), upper); err == nil || errors.Is(err, serve.ErrNoSupervisor) != tt.noSupervisor {
				t.Errorf("Run() = %v, want an error (ErrNoSupervisor: %t)", err, tt.noSupervisor)
			}
		})
	}
}

// regularFiles opens two empty regular files and returns their
// descriptors, or with at3and4 puts them at 3 and 4, what those held
// before being put back when the test ends. It fails the test if
// anything was written to them.
func regularFiles(t *testing.T, at3and4 bool) (tfd, rfd string) {
	t.Helper()
	var fds [2]int
	for i := range fds {
		f, err := os.CreateTemp(t.TempDir(), "notapipe")
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			if b, err := os.ReadFile(f.Name()); err != nil || len(b) > 0 {
				t.Errorf("a file at a descriptor the variables name holds %q (%v), want nothing", b, err)
			}
		})
		fds[i] = int(f.Fd())
		if at3and4 {
			target := 3 + i
			saved, err := unix.FcntlInt(uintptr(target), unix.F_DUPFD_CLOEXEC, 100)
			if err == nil {
				t.Cleanup(func() { unix.Dup2(saved, target); unix.CloseOnExec(target); unix.Close(saved) })
			} else {
				t.Cleanup(func() { unix.Close(target) })
			}
			if err := unix.Dup2(fds[i], target); err != nil {
				t.Fatal(err)
			}
			unix.CloseOnExec(target)
			fds[i] = target
		}
		t.Cleanup(func() { f.Close() })
	}
	return fmt.Sprint(fds[0]), fmt.Sprint(fds[1])
}

// worker is the test binary running workerMain, with the supervisor's ends
// of its pipes.
type worker struct {
	cmd    *exec.Cmd
	taskW  *os.File
	w      *protocol.Writer
	r      *protocol.Reader
	stdout bytes.Buffer
	stderr bytes.Buffer
}

// startWorker starts the test binary as a framed worker. When fds is not
// nil, the task and result pipes become those descriptors in the child,
// announced through the environment; otherwise they are 3 and 4, and the
// environment names no descriptors.
func startWorker(t *testing.T, fds []int) *worker {
	t.Helper()
	taskR, taskW, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	resR, resW, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	t.Cleanup(cancel)
	w := &worker{cmd: exec.CommandContext(ctx, os.Args[0], "-test.run=^$"), taskW: taskW}
	w.cmd.Env = append(os.Environ(), envWorker+"=1", protocol.EnvProtocol+"="+protocol.Framed,
		// Under -race, do not linger a second at exit.
		"GORACE="+strings.TrimSpace(os.Getenv("GORACE")+" atexit_sleep_ms=0"))
	w.cmd.ExtraFiles = []*os.File{taskR, resW}
	if fds != nil {
		devnull, err := os.Open(os.DevNull)
		if err != nil {
			t.Fatal(err)
		}
		defer devnull.Close()
		w.cmd.ExtraFiles = make([]*os.File, max(fds[0], fds[1])-2)
		for i := range w.cmd.ExtraFiles {
			w.cmd.ExtraFiles[i] = devnull
		}
		w.cmd.ExtraFiles[fds[0]-3] = taskR
		w.cmd.ExtraFiles[fds[1]-3] = resW
		w.cmd.Env = append(w.cmd.Env,
			fmt.Sprintf("%s=%d", protocol.EnvTaskFD, fds[0]),
			fmt.Sprintf("%s=%d", protocol.EnvResultFD, fds[1]))
	}
	w.cmd.Stdout = &w.stdout
	w.cmd.Stderr = &w.stderr
	w.cmd.WaitDelay = 5 * time.Second
	if err := w.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	// Only the child may hold these ends, or EOF would never come.
	taskR.Close()
	resW.Close()
	resR.SetReadDeadline(time.Now().Add(60 * time.Second))
	w.w = protocol.NewWriter(taskW)
	w.r = protocol.NewReader(resR, 0)
	t.Cleanup(func() {
		taskW.Close()
		resR.Close()
		if w.cmd.ProcessState == nil {
			w.cmd.Process.Kill()
			w.cmd.Wait()
		}
		if t.Failed() {
			t.Logf("worker stderr:\n%s", &w.stderr)
		}
	})
	return w
}

func TestWorkerProcess(t *testing.T) {
	tests := []struct {
		name string
		fds  []int
		want string // the answer to "cloexec"
	}{
		{"default fds", nil, "3 true,4 true"},
		{"fds from the environment", []int{6, 5}, "6 true,5 true"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			w := startWorker(t, tt.fds)
			s := &session{t: t, w: w.w, r: w.r}
			f := s.next()
			if v, err := protocol.ParseReady(f.Payload); f.Kind != protocol.KindReady || v != protocol.Version || err != nil {
				t.Fatalf("first frame = %s, want ready with version %d", show(f), protocol.Version)
			}
			// All at once: the worker must take them one by one.
			s.send(task(1, "echo a"), task(2, "print hello"), task(3, "fail nope"),
				task(4, "panic boom"), task(5, "echo b"), task(6, "cloexec"), task(7, "child"))
			s.expect(start(1), result(1, "a"), start(2), result(2, "printed"),
				start(3), failure(3, "nope"), start(4))
			if f := s.next(); f.Kind != protocol.KindError || !strings.HasPrefix(string(f.Payload), "panic: boom") {
				t.Fatalf("ReadFrame() = %s, want an error frame with the panic", show(f))
			}
			s.expect(start(5), result(5, "b"), start(6), result(6, tt.want))
			// A program the worker starts inherits neither the pipes nor
			// the variables that name them: it is no worker.
			s.expect(start(7), result(7, protocol.EnvProtocol+`="": not a worker`))

			// Closing the task pipe, as the supervisor does when it is done
			// or as the kernel does when it dies, makes the worker exit 0.
			w.taskW.Close()
			s.expectEOF()
			if err := w.cmd.Wait(); err != nil {
				t.Fatalf("worker Wait() = %v, want exit status 0", err)
			}
			if got := w.stdout.String(); got != "hello\n" {
				t.Errorf("worker stdout = %q, want %q", got, "hello\n")
			}
		})
	}
}

// TestWorkerProcessDies checks what blame rests on: a worker that dies in
// a task has sent that task's start, and no start for the tasks behind it.
func TestWorkerProcessDies(t *testing.T) {
	w := startWorker(t, nil)
	s := &session{t: t, w: w.w, r: w.r}
	s.expect(protocol.Frame{Kind: protocol.KindReady, Payload: protocol.ReadyPayload()})
	s.send(task(1, "echo a"), task(2, "exit"), task(3, "echo never"))
	s.expect(start(1), result(1, "a"), start(2))
	s.expectEOF()
	var ee *exec.ExitError
	if err := w.cmd.Wait(); !errors.As(err, &ee) || ee.ExitCode() != 7 {
		t.Errorf("worker Wait() = %v, want exit status 7", err)
	}
}

func TestWorkerProcessSIGTERM(t *testing.T) {
	w := startWorker(t, nil)
	s := &session{t: t, w: w.w, r: w.r}
	s.expect(protocol.Frame{Kind: protocol.KindReady, Payload: protocol.ReadyPayload()})
	if err := w.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	s.expectEOF()
	var ee *exec.ExitError
	if err := w.cmd.Wait(); !errors.As(err, &ee) || ee.ExitCode() != 3 {
		t.Errorf("worker Wait() = %v, want exit status 3 (Run returned context.Canceled)", err)
	}
}

// TestNoSupervisorNamesFramed: a serve worker given to safepool map
// without --framed runs as a line worker, with no protocol variables; its
// error, which map quotes, says how to run it.
func TestNoSupervisorNamesFramed(t *testing.T) {
	t.Setenv(protocol.EnvProtocol, "")
	err := serve.Run(context.Background(), upper)
	if !errors.Is(err, serve.ErrNoSupervisor) || !strings.Contains(err.Error(), "safepool map --framed") {
		t.Errorf("Run() = %v, want ErrNoSupervisor naming safepool map --framed", err)
	}
}
