// Package serve turns a Go program into a safepool worker that speaks the
// framed protocol.
//
// A worker is a Handler and a call to Run:
//
//	func main() {
//		ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM)
//		defer stop()
//		err := serve.Run(ctx, func(ctx context.Context, payload []byte) ([]byte, error) {
//			return bytes.ToUpper(payload), nil
//		})
//		if err != nil {
//			log.Fatal(err)
//		}
//	}
//
// Run talks to the supervisor over the pipes it passes as fd 3 (tasks) and
// fd 4 (results), so the program's stdout and stderr stay free for the
// tasks' own logs. Tasks run one at a time, in the order they arrive. The
// wire format is specified in docs/protocol.md in the safepool repository.
package serve

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"runtime/debug"
	"strconv"
	"strings"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/safepool/safepool/internal/protocol"
)

// Handler runs one task. It gets the task's payload, which it may keep, and
// returns the result payload, or an error whose message the supervisor
// records as the task's failure (cause task-error) while the worker stays
// alive and goes on to the next task.
//
// ctx is the context given to Run. When it is done the worker is stopping:
// an error the Handler returns after that is not reported, since the task
// was interrupted rather than failed.
//
// A Handler that panics fails its task with the panic value and stack, and
// the worker keeps serving. A panic in a goroutine that the Handler started
// still ends the process, as in any Go program; the supervisor then charges
// the task with the worker's death.
type Handler func(ctx context.Context, payload []byte) ([]byte, error)

// Options tunes RunWith. The zero value is what Run uses.
type Options struct {
	// Heartbeat is the interval between heartbeat frames, which tell the
	// supervisor that the worker is alive, idle or busy. Zero means no
	// heartbeats.
	Heartbeat time.Duration
}

// ErrNoSupervisor is returned by Run and Pipes when the program was not
// started by a safepool supervisor as a framed worker: SAFEPOOL_PROTOCOL is
// not set, or the descriptors it implies are not the supervisor's pipes
// (a program started by a worker of another SDK may inherit the variable
// without the pipes). A program can check for it to fall back to another
// mode, such as reading its input from the command line.
//
// Its message names safepool map's --framed, without which map runs the
// program as a line worker, with no protocol variables: the likeliest way
// to meet it.
var ErrNoSupervisor = errors.New("serve: not started by a safepool supervisor (" + protocol.EnvProtocol +
	" is not set): run it as a framed worker, with safepool map --framed")

// Run serves tasks from the supervisor that started this process until the
// supervisor closes the task pipe, and then returns nil. It uses the pipes
// that Pipes returns, closes them before returning, and otherwise behaves
// as RunWith with zero Options.
//
// Run returns an error wrapping ErrNoSupervisor if the process was not
// started by safepool, ctx.Err() if ctx is done first, and another error if
// the pipes fail or the supervisor sends something the protocol does not
// allow. The caller should exit with a non-zero status on any error.
func Run(ctx context.Context, h Handler) error {
	tasks, results, err := Pipes()
	if err != nil {
		return err
	}
	defer tasks.Close()
	defer results.Close()
	return RunWith(ctx, tasks, results, h, Options{})
}

// Pipes returns the task and result pipes that the supervisor passed to
// this process: the descriptors named by SAFEPOOL_TASK_FD and
// SAFEPOOL_RESULT_FD, or fd 3 and 4 when those are unset. It is for callers
// of RunWith that want Options with the supervisor's pipes; Run calls it
// itself. Call it at most once, and close both files when done.
//
// Pipes marks both descriptors close-on-exec, so that programs the worker
// starts do not inherit the protocol's pipes, and makes them non-blocking,
// so that RunWith can interrupt a pending read when its context is done.
// It then removes SAFEPOOL_PROTOCOL, SAFEPOOL_TASK_FD and
// SAFEPOOL_RESULT_FD from the process's environment, so that those
// programs do not inherit them either and do not take themselves for
// workers.
//
// It returns an error wrapping ErrNoSupervisor if SAFEPOOL_PROTOCOL is not
// set, or if a descriptor it implies is not an open pipe or socket (the
// process inherited the variables, not the pipes, from a worker that
// started it), and another error if SAFEPOOL_PROTOCOL names a protocol
// other than "framed/1" or a descriptor variable is not a descriptor
// number.
func Pipes() (tasks, results *os.File, err error) {
	switch p := os.Getenv(protocol.EnvProtocol); p {
	case "":
		return nil, nil, ErrNoSupervisor
	case protocol.Framed:
	default:
		return nil, nil, fmt.Errorf("serve: %s=%q, but this worker speaks %q", protocol.EnvProtocol, p, protocol.Framed)
	}
	taskFD, err := envFD(protocol.EnvTaskFD, 3)
	if err != nil {
		return nil, nil, err
	}
	resultFD, err := envFD(protocol.EnvResultFD, 4)
	if err != nil {
		return nil, nil, err
	}
	if taskFD == resultFD {
		return nil, nil, fmt.Errorf("serve: task and result pipes are both fd %d", taskFD)
	}
	// A process that has the variables but not the pipes inherited them
	// from a worker that started it: the descriptors are closed, or are
	// files of its own, which the protocol must not touch.
	for _, fd := range []int{taskFD, resultFD} {
		if err := isPipe(fd); err != nil {
			return nil, nil, &inheritedError{fmt.Sprintf(
				"serve: not started by a safepool supervisor: %s is set, but fd %d %v (the variables were inherited from a worker, not its pipes)",
				protocol.EnvProtocol, fd, err)}
		}
	}
	if tasks, err = openFD(taskFD, "safepool-tasks"); err != nil {
		return nil, nil, err
	}
	if results, err = openFD(resultFD, "safepool-results"); err != nil {
		tasks.Close()
		return nil, nil, err
	}
	// The programs the worker starts do not inherit the pipes, so they
	// must not inherit the variables that name them either.
	for _, name := range []string{protocol.EnvProtocol, protocol.EnvTaskFD, protocol.EnvResultFD} {
		os.Unsetenv(name)
	}
	return tasks, results, nil
}

// inheritedError is ErrNoSupervisor for a process that has the
// supervisor's variables without its pipes; its own text says so, since
// ErrNoSupervisor's says that SAFEPOOL_PROTOCOL is not set.
type inheritedError struct{ msg string }

func (e *inheritedError) Error() string { return e.msg }
func (e *inheritedError) Unwrap() error { return ErrNoSupervisor }

// envFD returns the file descriptor named by the environment variable name,
// or def if it is unset.
func envFD(name string, def int) (int, error) {
	s := os.Getenv(name)
	if s == "" {
		return def, nil
	}
	fd, err := strconv.Atoi(s)
	if err != nil || fd < 0 {
		return 0, fmt.Errorf("serve: %s=%q is not a file descriptor", name, s)
	}
	return fd, nil
}

// RunWith serves tasks read from tasks, writing its frames to results, and
// returns nil when tasks ends at a frame boundary: that is how the
// supervisor says there is no more work, and how a worker sees that the
// supervisor died. It does not close tasks or results.
//
// RunWith first sends the ready frame. Then, for each task frame, it sends
// a start frame and flushes it before calling h, so that the supervisor
// knows which task to blame if the process dies; then it sends h's result,
// or an error frame with h's error message, and flushes again. Tasks the
// supervisor pipelines wait their turn. A result longer than the protocol's
// 1 GiB limit is replaced by an error frame that says so.
//
// When ctx is done RunWith returns ctx.Err(): at once if it is waiting for
// a task, or as soon as h returns. In the second case h's result is still
// sent, but an error is not. If tasks has a SetReadDeadline method, as the
// files from Pipes and os.Pipe do, RunWith uses it to interrupt its pending
// read, and clears it before returning, though a frame may then have been
// partly read. Otherwise the goroutine reading tasks ends only when its
// current read returns.
//
// Any other error means that the streams cannot be used any more: a read
// or write failed, tasks held a malformed frame or a frame that is not a
// task, or h is nil.
func RunWith(ctx context.Context, tasks io.Reader, results io.Writer, h Handler, opts Options) error {
	if h == nil {
		return errors.New("serve: nil Handler")
	}
	out := &sender{w: protocol.NewWriter(results)}
	if err := out.send(protocol.Frame{Kind: protocol.KindReady, Payload: protocol.ReadyPayload()}); err != nil {
		return fmt.Errorf("serve: sending ready: %w", err)
	}

	stop := make(chan struct{})
	in := make(chan readResult)
	readerDone := make(chan struct{})
	go func() {
		defer close(readerDone)
		readTasks(protocol.NewReader(tasks, 0), in, stop)
	}()
	var heartbeats sync.WaitGroup
	if opts.Heartbeat > 0 {
		heartbeats.Go(func() { out.heartbeat(opts.Heartbeat, stop) })
	}
	readerEnded := false // the reader has handed over its final error
	defer func() {
		close(stop)
		// Writes are not interrupted: the supervisor reads results until
		// the worker exits, so a pending heartbeat completes.
		heartbeats.Wait()
		if readerEnded {
			<-readerDone
		} else {
			stopReader(tasks, readerDone)
		}
	}()

	for {
		var next readResult
		select {
		case <-ctx.Done():
			return ctx.Err()
		case next = <-in:
		}
		readerEnded = next.err != nil
		if next.err == io.EOF {
			return nil
		}
		if next.err != nil {
			return fmt.Errorf("serve: reading tasks: %w", next.err)
		}
		if next.f.Kind != protocol.KindTask {
			return fmt.Errorf("serve: the supervisor sent a %s frame (id %d), want task", next.f.Kind, next.f.ID)
		}
		if err := ctx.Err(); err != nil {
			return err // do not start a task when stopping
		}
		id := next.f.ID
		if err := out.send(protocol.Frame{Kind: protocol.KindStart, ID: id}); err != nil {
			return fmt.Errorf("serve: sending start of task %d: %w", id, err)
		}
		result, herr := call(ctx, h, next.f.Payload)
		if herr != nil && ctx.Err() != nil {
			return ctx.Err()
		}
		if err := out.send(answer(id, result, herr)); err != nil {
			return fmt.Errorf("serve: sending the answer to task %d: %w", id, err)
		}
		if err := ctx.Err(); err != nil {
			return err
		}
	}
}

type readResult struct {
	f   protocol.Frame
	err error
}

// readTasks reads frames from r and hands them to in until a read fails or
// stop is closed. It reads ahead by one frame at most.
func readTasks(r *protocol.Reader, in chan<- readResult, stop <-chan struct{}) {
	for {
		f, err := r.ReadFrame()
		select {
		case in <- readResult{f, err}:
		case <-stop:
			return
		}
		if err != nil {
			return
		}
	}
}

// stopReader waits for the goroutine reading tasks to end, interrupting its
// read with a deadline if tasks supports one. Without deadlines it cannot
// be interrupted, and is left to end when its read returns.
func stopReader(tasks io.Reader, done <-chan struct{}) {
	d, ok := tasks.(interface{ SetReadDeadline(time.Time) error })
	if !ok || d.SetReadDeadline(time.Unix(1, 0)) != nil {
		return
	}
	<-done
	d.SetReadDeadline(time.Time{})
}

// call runs h, turning a panic into an error.
//
// Recovering is a choice against Go's usual crash-on-panic: one bad input
// should fail its own task, not take down the worker and the tasks
// pipelined behind it. The stack goes to the supervisor, so it stays loud.
func call(ctx context.Context, h Handler, payload []byte) (result []byte, err error) {
	defer func() {
		if v := recover(); v != nil {
			result, err = nil, fmt.Errorf("panic: %v\n\n%s", v, debug.Stack())
		}
	}()
	return h(ctx, payload)
}

// answer builds the frame that reports how task id ended.
func answer(id uint64, result []byte, err error) protocol.Frame {
	if err == nil && len(result) > protocol.DefaultMaxPayload {
		err = fmt.Errorf("serve: the result is %d bytes, over the protocol's limit of %d", len(result), protocol.DefaultMaxPayload)
	}
	if err != nil {
		return protocol.Frame{Kind: protocol.KindError, ID: id, Payload: errorText(err)}
	}
	return protocol.Frame{Kind: protocol.KindResult, ID: id, Payload: result}
}

// errorText returns err's message as an error payload: valid UTF-8, as the
// protocol requires, and within the payload limit.
func errorText(err error) []byte {
	msg := strings.ToValidUTF8(err.Error(), "\uFFFD")
	if len(msg) > protocol.DefaultMaxPayload {
		cut := protocol.DefaultMaxPayload
		for !utf8.RuneStart(msg[cut]) {
			cut--
		}
		msg = msg[:cut]
	}
	return []byte(msg)
}

// sender writes whole frames, each followed by a flush, for the goroutine
// serving tasks and the heartbeat goroutine.
type sender struct {
	mu  sync.Mutex       // guards w and err, held for a frame and its flush
	w   *protocol.Writer // guarded by mu
	err error            // first failure; every later send returns it
}

func (s *sender) send(f protocol.Frame) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.err != nil {
		return s.err
	}
	err := s.w.WriteFrame(f)
	if err == nil {
		err = s.w.Flush()
	}
	s.err = err
	return err
}

func (s *sender) heartbeat(every time.Duration, stop <-chan struct{}) {
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-stop:
			return
		case <-t.C:
			if s.send(protocol.Frame{Kind: protocol.KindHeartbeat}) != nil {
				return // the next send of a task's frames reports it
			}
		}
	}
}
