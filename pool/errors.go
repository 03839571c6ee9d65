package pool

import (
	"errors"
	"fmt"
	"strings"
	"unicode/utf8"

	"github.com/safepool/safepool/internal/worker"
)

// LineTooLongError is the protocol error of a line worker whose answer line
// is longer than Config.MaxLine.
type LineTooLongError = worker.LineTooLongError

var (
	// ErrClosed is returned by Submit after Close or Abort.
	ErrClosed = errors.New("pool: closed")
	// ErrAborted is wrapped by the error Err returns after the pool aborted.
	ErrAborted = errors.New("pool: aborted")
	// ErrTooLarge is wrapped by the error Submit returns for a framed task
	// whose frame would be over the protocol's payload limit of 1 GiB,
	// which a worker refuses (docs/protocol.md).
	ErrTooLarge = errors.New("pool: task too large for the framed protocol")
)

// TaskError describes a task that did not finish: its terminal state, and the
// cause of its last attempt.
type TaskError struct {
	// Result is the task's whole record.
	Result *Result
}

// Error says which task ended how, after how many attempts, with the
// first line of the last attempt's message.
func (e *TaskError) Error() string {
	r := e.Result
	var b strings.Builder
	fmt.Fprintf(&b, "task %d %s", r.ID, r.State)
	if c := r.Cause(); c != "" {
		fmt.Fprintf(&b, ": %s", c)
	}
	if n := len(r.Attempts); n > 0 {
		fmt.Fprintf(&b, " after %d attempt", r.Attempts[n-1].Number)
		if r.Attempts[n-1].Number != 1 {
			b.WriteString("s")
		}
		if m := r.Attempts[n-1].Message; m != "" {
			fmt.Fprintf(&b, ": %s", firstLine(m))
		}
	}
	return b.String()
}

// StartError reports that workers cannot start, or keep failing before they
// take any task (see Config.StartupFailures). The pool aborts with it rather
// than retrying forever.
type StartError struct {
	// Command is the worker command.
	Command []string
	// Cause is how the last worker ended (for example "exit:1"), or empty
	// when it could not be started at all.
	Cause Cause
	// Stderr is the tail of the last worker's stderr, if it was captured.
	Stderr string
	// Err is the underlying error, for example from exec.
	Err error
}

// Error describes the failure without the "pool: " prefix of the package's
// sentinel errors: it is most often read as the reason of an *AbortError,
// which carries that prefix already.
func (e *StartError) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "worker %s ", quoteCommand(e.Command))
	switch {
	case e.Cause == "":
		b.WriteString("cannot start")
	case e.Cause == CauseProtocol || e.Cause == CauseTimeout:
		fmt.Fprintf(&b, "fails at start-up (%s)", e.Cause) // killed by the pool
	default:
		fmt.Fprintf(&b, "dies at start-up (%s)", e.Cause)
	}
	if e.Err != nil {
		fmt.Fprintf(&b, ": %v", e.Err)
	}
	if s := strings.TrimSpace(e.Stderr); s != "" {
		fmt.Fprintf(&b, "; its stderr ends: %s", worker.LastLines(s, 3))
	}
	return b.String()
}

// Unwrap returns Err, so that errors.Is matches, for example,
// fs.ErrNotExist for a command that is not there.
func (e *StartError) Unwrap() error { return e.Err }

// maxQuotedCommand is how much of a command line quoteCommand quotes, in
// bytes.
const maxQuotedCommand = 256

// quoteCommand quotes the command line args for a message, as %q does,
// cut to its first maxQuotedCommand bytes with a note of how many were
// left out. A one-shot command line holds its input, up to 1 MiB, and a
// start failure quoted it whole: a message of a megabyte.
func quoteCommand(args []string) string {
	line := strings.Join(args, " ")
	if len(line) <= maxQuotedCommand {
		return fmt.Sprintf("%q", line)
	}
	cut := maxQuotedCommand
	for cut > 0 && !utf8.RuneStart(line[cut]) {
		cut-- // not within a character
	}
	return fmt.Sprintf("%q (%d more bytes left out)", line[:cut]+"…", len(line)-cut)
}

// AbortError is the error Err returns after the pool aborted. It wraps
// ErrAborted and, where the abort had one, its reason.
type AbortError struct {
	// TaskID is the task whose failure triggered the abort under the Abort
	// policy, or 0.
	TaskID uint64
	// Reason is why the pool aborted.
	Reason error
}

// Error reads "pool: aborted", followed by the reason if there is one.
func (e *AbortError) Error() string {
	if e.Reason == nil {
		return ErrAborted.Error()
	}
	return fmt.Sprintf("%v: %v", ErrAborted, e.Reason)
}

// Unwrap returns ErrAborted and the reason, so errors.Is matches both.
func (e *AbortError) Unwrap() []error { return []error{ErrAborted, e.Reason} }

func firstLine(s string) string {
	s = strings.TrimSpace(s)
	if i := strings.IndexByte(s, '\n'); i >= 0 {
		return s[:i] + " …"
	}
	return s
}
