package pool

import (
	"fmt"
	"io"
	"strings"
	"syscall"
	"time"

	"github.com/safepool/safepool/internal/worker"
)

// Protocol says how the supervisor talks to a worker process.
type Protocol string

const (
	// OneShot starts one process per attempt, like xargs or GNU parallel.
	// The attempt's result is the process's exit status and its captured
	// stdout and stderr.
	OneShot Protocol = "oneshot"
	// Line keeps workers alive: each task is one line written to the
	// worker's stdin, and its result is the next line the worker writes to
	// stdout. Answers come in order, so the oldest unanswered line is the
	// one running, and the one charged when the worker dies. A new worker
	// gets its first line once it is seen waiting for input (at the latest
	// after Config.StartTimeout); a line written before that, a line that
	// comes when no line is unanswered, and a line that comes before the
	// worker has read the line it would answer are protocol errors. A
	// worker that writes one line too many and later one too few is not
	// caught: see docs/protocol.md.
	Line Protocol = "line"
	// Framed keeps workers alive and talks to them over dedicated pipes
	// (fd 3 for tasks, fd 4 for results) in length-prefixed frames, as
	// specified in docs/protocol.md. It supports pipelining with precise
	// blame, because workers announce each task they start.
	Framed Protocol = "framed"
)

// Cause says why an attempt ended without a result. The empty Cause means the
// attempt succeeded. It is decided in internal/worker (see
// docs/architecture.md, "Where a cause is decided").
type Cause = worker.Cause

const (
	// CauseOOM means the kernel OOM killer took the worker, confirmed by the
	// oom_kill counter of the worker's own cgroup, by that of the cgroup it
	// shares with the supervisor (see docs/memory.md for the rule), or by
	// the kernel log.
	CauseOOM = worker.CauseOOM
	// CauseMemoryLimit means the supervisor enforced Config.MemLimit on a
	// worker without a cgroup of its own: its process tree's private memory
	// went over the limit, or the kernel refused it memory past the data
	// size limit that backs it (see Config.NoDataLimit).
	CauseMemoryLimit = worker.CauseMemoryLimit
	// CauseSegfault means the worker died of SIGSEGV or SIGBUS.
	CauseSegfault = worker.CauseSegfault
	// CauseTimeout means the attempt ran longer than Config.Timeout (or its
	// task's own Timeout) and its worker was ended: SIGTERM, then SIGKILL
	// after Config.TimeoutGrace (or its task's own TimeoutGrace), whatever
	// signal or exit ended it.
	CauseTimeout = worker.CauseTimeout
	// CauseProtocol means the worker wrote something the protocol does not
	// allow, or closed its pipes while alive, and was killed.
	CauseProtocol = worker.CauseProtocol
	// CauseTaskError means the worker reported that the task failed and
	// stayed alive (framed protocol error frame).
	CauseTaskError = worker.CauseTaskError
	// CausePreempted means the supervisor stopped the attempt to save memory.
	// It is not the task's fault and is not charged as an attempt.
	CausePreempted = worker.CausePreempted
	// CauseCancelled means the attempt was stopped because the pool aborted.
	CauseCancelled = worker.CauseCancelled
	// CauseOutputLost means a one-shot attempt's stdout or stderr went
	// beyond Config.OutputInMemory and could not be kept in the temporary
	// file (for example, $TMPDIR is full): the worker was stopped.
	CauseOutputLost = worker.CauseOutputLost
)

// SignalCause returns the cause for a worker killed by sig: CauseSegfault for
// SIGSEGV and SIGBUS, otherwise "signal:NAME", for example "signal:SIGKILL".
func SignalCause(sig syscall.Signal) Cause { return worker.SignalCause(sig) }

// SignalName returns the conventional name of sig, such as "SIGKILL".
func SignalName(sig syscall.Signal) string { return worker.SignalName(sig) }

// ExitCause returns the cause "exit:N" for a worker that exited with code.
func ExitCause(code int) Cause { return worker.ExitCause(code) }

// State is a task's terminal state.
type State string

const (
	// Done means an attempt succeeded.
	Done State = "done"
	// Failed means the attempts ran out, or the policy said skip.
	Failed State = "failed"
	// Cancelled means the task never finished because the pool aborted.
	Cancelled State = "cancelled"
	// Poison means the task was killed for memory even when it ran alone
	// with the whole memory budget.
	Poison State = "poison"
)

// Action is what the pool does when a worker dies during an attempt.
type Action string

const (
	// Skip marks the task failed at its first worker death and goes on
	// with the others (Config.Retries must be 0).
	Skip Action = "skip"
	// Retry runs the task again, up to Config.Retries more times, with
	// exponential backoff; then it is failed.
	Retry Action = "retry"
	// Abort stops the whole pool once a task has failed its last attempt
	// (after Config.Retries more, as with Retry): running tasks are killed
	// and queued tasks are cancelled.
	Abort Action = "abort"
)

// ParseAction parses "skip", "retry" or "abort".
func ParseAction(s string) (Action, error) {
	switch a := Action(strings.ToLower(s)); a {
	case Skip, Retry, Abort:
		return a, nil
	}
	return "", fmt.Errorf("pool: unknown action %q (want skip, retry or abort)", s)
}

// Task is one unit of work submitted to a pool.
type Task struct {
	// Input is the task's data: the line for the line protocol (without its
	// newline), the payload for the framed protocol, and the text that
	// replaces "{}" in Config.Command for one-shot workers when Args is nil.
	Input []byte
	// Args, for one-shot workers only, is the whole argument vector of the
	// process to run, overriding Config.Command. Nil means Config.Command
	// with every "{}" replaced by Input.
	Args []string
	// SlotArgs, for one-shot workers only, when not nil, gives the whole
	// argument vector of each attempt from the number of the worker slot
	// that runs it (1 to Config.Workers, as in SlotEnv), in place of Args
	// and Config.Command; a retry may run in another slot. It is called on
	// the slot's goroutine, one call per attempt, and must be safe for
	// concurrent use. Result.Args stays Args.
	SlotArgs func(slot int) []string
	// Stdin, for one-shot workers only, is what the task's process reads
	// on its stdin, such as a block of lines; each attempt reads it from
	// the start. Nil gives the process /dev/null. As the first attempt
	// starts, the pool copies it into a sealed memory file, which the
	// process reads as a regular file, drops its reference to the slice,
	// and keeps the file for the retries until the task ends (a pipe
	// where the system makes no memory files). The caller must not change
	// the slice before StdinDone is called, or, without it, before the
	// task's Result is delivered.
	Stdin []byte
	// StdinDone, if not nil, is called once the pool no longer refers to
	// Stdin, so that the caller may use the slice again: when the first
	// attempt has copied it into its memory file, or when the task ends
	// before any attempt started. Where the system makes no memory files
	// the slice feeds every attempt's pipe, and StdinDone is not called.
	// It is called on one of the pool's goroutines and must not block.
	StdinDone func()
	// Timeout, when positive, bounds this task's attempts in place of
	// Config.Timeout: an attempt that runs longer is ended (SIGTERM, then
	// SIGKILL after TimeoutGrace) with CauseTimeout. Zero means
	// Config.Timeout.
	Timeout time.Duration
	// TimeoutGrace is how long an attempt of this task that ran out of
	// its timeout (its own or Config.Timeout) has between SIGTERM and
	// SIGKILL, in place of Config.TimeoutGrace; it is to a task what
	// Config.TimeoutGrace is to the pool, so that one pool can run tasks
	// that need different graces (a cluster agent runs many runs). Zero
	// means Config.TimeoutGrace; a negative value means SIGKILL at once.
	TimeoutGrace time.Duration
	// MemHint, when positive, is the memory in bytes the caller expects the
	// task to need. The memory governor admits the task only where that
	// much fits, as if the task had learned that need from an earlier
	// attempt (a need it learns later can only be larger). Zero means no
	// hint.
	MemHint int64
	// Items, when positive, makes the task a batch of that many items.
	// With the framed protocol (not with Config.KeepOrder), Input holds
	// them in a format of the worker's own, and the worker answers each
	// item on its own (docs/protocol.md, framed/2). With the line protocol,
	// Input is a block of Items lines, each ended by a newline, written to
	// the worker at once; the worker answers each line with a line, as for
	// lines sent one by one, and the running line is the oldest unanswered
	// one, whose time Config.Timeout bounds. With MaxTasksPerWorker, a
	// worker takes a block while it has answered fewer lines than that.
	// The task takes the ids from its
	// id (Submit's) to its id+Items-1, one per item, and each item keeps
	// its own fate: when the worker dies running item k, the items it
	// answered are done, item k alone is charged and settled as a task of
	// its own (retries, the memory governor's OOM retry, poison), and the
	// items after k go back to the queue as a batch, uncharged. An item
	// that failed (an item-error frame) is settled on its own too. Results
	// of a batch carry Items.
	Items int
}

// Item is the outcome of one item of a batch task that its Result carries,
// or of a range of its items.
type Item struct {
	// ID is the item's id: its batch's id (Result.ID) plus Index.
	ID uint64
	// Index is the item's index in the batch.
	Index int
	// Span, for a range of items that a worker answered together (an
	// items frame of the framed protocol), is how many items it stands
	// for: Index and those after it, whose results Output holds together
	// in the worker's own format. 0 for one item.
	Span int
	// Output is the item's result, for an item that is done.
	Output []byte
	// Start and End bound the item's last run; zero if it never ran.
	Start, End time.Time
}

// Attempt records one run of a task on one worker.
type Attempt struct {
	// Number counts the task's charged attempts from 1. A preempted attempt
	// shares its number with the attempt that follows it.
	Number int
	// WorkerPID is the process id of the worker that ran the attempt.
	WorkerPID int
	// Start and End bound the attempt.
	Start, End time.Time
	// Cause is empty when the attempt succeeded, and says why it did not
	// otherwise.
	Cause Cause
	// ExitCode is the worker's exit status when the worker process ended
	// during the attempt by exiting, and -1 otherwise.
	ExitCode int
	// Signal names the signal that killed the worker ("SIGKILL"), or is empty.
	Signal string
	// PeakRSS is the highest memory use seen for the attempt in bytes: the
	// cgroup's peak when the worker has its own cgroup, otherwise the
	// highest private memory (anonymous memory and swap of its process
	// tree, never shared or file pages) sampled while the attempt ran, or,
	// when the worker ended and grew after its last sample, what it then
	// held alone if that is higher: its peak resident set size less the
	// shared memory and file pages of its last sample. A worker too
	// short-lived to sample twice has that figure alone. The peak resident
	// set size counts only above the supervisor's own (a process starts
	// its exec with the peak of the memory it was forked with, the
	// supervisor's: below that, its own cannot be told).
	// Zero means unknown. A persistent
	// worker's cgroup peak is read and reset at most every 100 ms, so for
	// tasks shorter than that it is the worker's peak over an interval of
	// about 100 ms: an attempt that ends within 100 ms of the last reading
	// is charged that reading, and a longer attempt is charged the highest
	// reading taken while it ran (on an idle worker, the peak is reset as
	// the attempt starts). For a worker that died during the attempt, it
	// is the peak since the last reading.
	PeakRSS int64
	// Message gives detail: the worker's error text for a task error, what
	// was wrong on the wire for a protocol error, or the tail of a one-shot
	// process's stderr.
	Message string
	// Crowded reports whether the attempt was killed by the OOM killer
	// while it ran alone because processes other than the pool's workers
	// held the memory it lacked: Cause is CauseOOM, the task ends Failed
	// rather than Poison, and Message says who held what. It says nothing
	// of what the task needs, so a caller that runs the task again
	// elsewhere need not give it more memory.
	Crowded bool
}

// Result is the outcome of one task: its terminal state and every attempt.
type Result struct {
	// ID is the task's submission number, counting from 1.
	ID uint64
	// Input and Args are the task as submitted.
	Input []byte
	Args  []string
	// State is the task's terminal state.
	State State
	// Output is the result line (line protocol), the result payload (framed)
	// or the captured stdout (one-shot) of the successful attempt. For a
	// one-shot task that did not succeed it is the stdout of its last
	// attempt, if it had one. A one-shot
	// stdout longer than Config.OutputInMemory is not here (Output is nil)
	// but in a temporary file: read it with OutputReader, which works
	// whatever the size, and free it with Release.
	Output []byte
	// Stderr is the captured stderr of the last one-shot attempt, nil when
	// it went beyond Config.OutputInMemory (read it with StderrReader).
	Stderr []byte
	// Attempts lists every attempt in order, including preempted ones.
	Attempts []Attempt
	// Items, for a batch task (Task.Items), are the items this Result
	// settles, all in its State: a batch's items may end in several
	// Results (the done items of a run in one, an item that was charged or
	// failed in one of its own, later; a range that a framed/3 worker
	// answers while the batch runs in one of its own at once). ID is then
	// the batch's id, and
	// Stderr is unset; an item's Output is in its Item. Output is unset
	// for a framed batch; for a line batch that is done, it holds the
	// items' answer lines in order, each with its newline, in one slice
	// that the Items' Outputs share. With Config.KeepOrder, line batches'
	// Results come in the order of their first items. Nil for other
	// tasks.
	Items []Item

	// out is the one-shot output the result carries, with what went to
	// the pool's temporary file; nil for other protocols.
	out *attemptOutput
}

// count is how many submitted ids r settles: its items, or 1.
func (r *Result) count() int {
	if r.Items != nil {
		n := 0
		for _, it := range r.Items {
			n += max(it.Span, 1)
		}
		return n
	}
	return 1
}

// Cause returns the cause of the task's last attempt: "" when the task is
// done, and for a task that never ran, CauseCancelled if it was cancelled
// and "" otherwise.
func (r *Result) Cause() Cause {
	if len(r.Attempts) == 0 {
		if r.State == Cancelled {
			return CauseCancelled
		}
		return ""
	}
	return r.Attempts[len(r.Attempts)-1].Cause
}

// Err returns nil when the task is done, and a *TaskError otherwise.
func (r *Result) Err() error {
	if r.State == Done {
		return nil
	}
	return &TaskError{Result: r}
}

// Event is something that happened in the pool. Observers receive every event
// in the order the pool saw it.
type Event struct {
	// Kind says what happened.
	Kind EventKind
	// Time is when it happened.
	Time time.Time
	// TaskID is the task concerned, or 0.
	TaskID uint64
	// WorkerPID is the worker concerned, or 0.
	WorkerPID int
	// Attempt is set for EventAttemptEnded.
	Attempt *Attempt
	// Result is set for EventTaskEnded.
	Result *Result
	// Memory is set for EventMemory and EventMemorySample.
	Memory *MemoryState
	// Usage is set for EventMemorySample: the memory of each worker that
	// runs a task, by one of the tasks it runs.
	Usage []TaskUsage
	// Message says in words what went wrong and how to fix it, for
	// EventWorkerStalled and EventWorkerOutOfStep.
	Message string
}

// MemoryState is what the memory governor plans with.
type MemoryState struct {
	// Budget is the memory in bytes the workers may use together now: the
	// budget less what processes outside the pool use within the same
	// limit.
	Budget int64
	// InUse is the workers' memory in bytes at the last sample.
	InUse int64
	// Predicted is the peak in bytes the governor expects of the next task.
	Predicted int64
	// Allows is how many attempts of the predicted peak fit Budget, from 1
	// to Config.Workers.
	Allows int
	// Basis says where Predicted comes from.
	Basis Basis
}

// Basis says where the governor's predicted peak of a task comes from.
type Basis string

const (
	// BasisColdStart: no attempt has ended yet and no hint was given; the
	// prediction is three times the most a running attempt uses so far
	// (at least 1/64 of the budget).
	BasisColdStart Basis = "cold start"
	// BasisHint: Config.MemPerTask.
	BasisHint Basis = "hint"
	// BasisPeaks: a high percentile of the peaks of finished attempts.
	BasisPeaks Basis = "peaks"
)

// TaskUsage is a worker's memory at a sample, named by a task the worker
// runs (EventAttemptStarted says which worker that is).
type TaskUsage struct {
	// TaskID is a task the worker runs.
	TaskID uint64
	// Bytes is the worker's memory, measured as for MemoryState.InUse.
	Bytes int64
}

// EventKind names a kind of Event.
type EventKind string

const (
	// EventWorkerStarted: a worker process was started.
	EventWorkerStarted EventKind = "worker-started"
	// EventWorkerExited: a worker process ended and was reaped.
	EventWorkerExited EventKind = "worker-exited"
	// EventAttemptStarted: a worker began an attempt.
	EventAttemptStarted EventKind = "attempt-started"
	// EventAttemptEnded: an attempt ended; Attempt says how.
	EventAttemptEnded EventKind = "attempt-ended"
	// EventTaskEnded: a task reached its terminal state; Result says which.
	EventTaskEnded EventKind = "task-ended"
	// EventMemory: the concurrency that memory allows changed; Memory says
	// what the governor plans with.
	EventMemory EventKind = "memory"
	// EventMemorySample: the memory governor sampled the workers' memory,
	// as it does every 100 ms while it is on. Memory is its plan after the
	// sample and Usage each busy worker's memory. Only the governor
	// samples: with it off, no such event is sent.
	EventMemorySample EventKind = "memory-sample"
	// EventWorkerStalled: a line worker has read the line of TaskID (a
	// framed worker, the frame of TaskID) and waits for more input without
	// answering, most likely because it holds its answer in an output
	// buffer. It is sent once per worker process, a
	// few seconds into the stall; Config.StallTimeout later the attempt
	// fails. Message names the fix.
	EventWorkerStalled EventKind = "worker-stalled"
	// EventWorkerOutOfStep: a line worker wrote a line that cannot be the
	// answer to the line it was given (Message says what it wrote and
	// when). The worker is killed; the line it was running fails with
	// CauseProtocol if the worker had read it, and goes back to the queue
	// uncharged if not. When the worker had answered other lines, those
	// answers may belong to other lines: Stats.OutOfStep counts such
	// workers. It is also sent for a framed worker killed for a protocol
	// error while it ran no task (a second answer, a frame whose length
	// was short, bytes that are not a frame): no attempt carries that
	// error, and results the worker sent before may be wrong.
	EventWorkerOutOfStep EventKind = "worker-out-of-step"
	// EventWorkerOverMaxRSS: a persistent worker held more than
	// Config.MaxRSS after its first task (for a line worker, its first
	// line or block of lines), so that it was replaced at once; Message
	// says how much it held. Most likely every worker holds that much once
	// started, and each task then waits for a new worker's start. It is
	// sent once per pool.
	EventWorkerOverMaxRSS EventKind = "worker-over-max-rss"
	// EventAdmissionWait: the memory governor did not admit TaskID, the
	// task at the head of the queue: queued tasks wait for memory from now.
	// EventAdmissionWaitEnded follows when it admits a task again.
	EventAdmissionWait EventKind = "admission-wait"
	// EventAdmissionWaitEnded: the memory governor admitted TaskID after
	// an EventAdmissionWait: the wait lasted from that event to this one.
	EventAdmissionWaitEnded EventKind = "admission-wait-ended"
)

// SlotEnv is the environment variable the pool sets in every worker process
// it starts: the number of the worker slot the process runs in, from 1 to
// Pool.Workers, in decimal. A process that replaces another (after a death,
// Config.MaxTasksPerWorker or Config.MaxRSS) runs in the slot of the one it
// replaces, so that a resource given to each slot (a GPU, a scratch
// directory) has one worker process at a time. A value inherited from the
// supervisor's environment is replaced.
const SlotEnv = "SAFEPOOL_SLOT"

// Config configures a Pool. The zero value of each field is a usable default,
// except Command, which is required.
type Config struct {
	// Command is the worker's argument vector; Command[0] is looked up in
	// PATH. For one-shot workers every "{}" is replaced by the task's Input
	// unless the task has its own Args. A one-shot process whose program
	// is named Command[0] runs the file New found there, looked up once for
	// the pool; a Command[0] that holds "{}", and a task's own Args naming
	// another program, are looked up for each process.
	Command []string
	// Protocol is how tasks reach workers. Empty means OneShot.
	Protocol Protocol
	// Workers is the number of workers running at once. Zero means the
	// number of CPUs. New lowers it when the open-file limit cannot hold
	// that many workers' pipes; Pool.Workers and Pool.Notices say so.
	Workers int
	// Env is the workers' environment. Nil means the supervisor's own, as
	// it is when New is called. The pool adds SAFEPOOL_RUN, the marker by
	// which it finds and ends every process the workers leave behind
	// (docs/processes.md), and SlotEnv, the worker's slot number. A name
	// given twice keeps its last value, as with exec.Cmd; an entry that
	// holds a NUL byte makes New fail.
	Env []string
	// Dir is the workers' working directory. Empty means the supervisor's.
	Dir string

	// OnWorkerDeath is what happens when a worker dies during an attempt
	// (any cause but a task error). Empty means Retry when Retries > 0 and
	// Skip otherwise.
	OnWorkerDeath Action
	// Retries is how many extra attempts a task gets after worker deaths
	// under Retry and Abort (Abort stops the pool once a task has used
	// them all). With Skip it must be 0.
	Retries int
	// TaskErrorRetries is how many extra attempts a task gets after task
	// errors (the worker reported failure and stayed alive). It is a budget
	// separate from Retries. Zero means a task error fails the task.
	TaskErrorRetries int
	// Backoff is the delay before the first retry of a task; it doubles on
	// each further retry up to MaxBackoff. Zero means 50ms.
	Backoff time.Duration
	// MaxBackoff caps Backoff. Zero means 5s.
	MaxBackoff time.Duration

	// Timeout bounds each attempt; the worker is killed when it runs out and
	// the attempt's cause is CauseTimeout. An attempt's time runs from its
	// start frame (framed), or from when its line was written to an idle
	// worker or the line before it was answered (line). A framed task that
	// the worker never starts is timed from when it was handed to an idle
	// worker. Zero means no limit. An attempt that runs out of time gets
	// SIGTERM (to its worker's process group) and TimeoutGrace to end
	// before SIGKILL.
	Timeout time.Duration
	// TimeoutGrace is how long an attempt that ran out of Timeout (a
	// task's own or the pool's) has between SIGTERM and SIGKILL, to clean
	// up: remove temporary files, write a checkpoint. Its cause is
	// CauseTimeout however it then ends (it exits by itself, SIGTERM kills
	// it, SIGKILL does), unless memory ends it first during the grace: an
	// OOM kill (CauseOOM) or MemLimit (CauseMemoryLimit), named as at any
	// other time. A persistent worker is ended so too, with the task it
	// runs: what it writes after the SIGTERM is not taken as an answer,
	// and the tasks sent behind it go back to the queue. Zero means
	// DefaultTimeoutGrace; a negative value means SIGKILL at once.
	TimeoutGrace time.Duration
	// StartTimeout is how long a framed worker has to send its ready frame.
	// A worker that has not sent it by then is killed, as one that failed
	// to start, unless it is still working (its processes ran or used CPU
	// time since the deadline was set: a slow import or model load), which
	// moves the deadline on by StartTimeout, up to ten StartTimeouts in
	// all. It is also the longest a new line worker's first line waits for
	// the worker to be seen reading its stdin (see Line). Zero means 30s.
	StartTimeout time.Duration
	// StallTimeout is how long a line worker may hold lines it has read
	// without answering while it does nothing but wait for more input
	// (blocked reading its stdin, its task pipe empty, no CPU used): the
	// mark of a worker that does not flush its output. The same holds for
	// a framed worker that holds tasks and waits reading its task pipe. After a few seconds
	// of it the pool sends EventWorkerStalled; after StallTimeout the
	// attempt fails with CauseProtocol. A worker that uses CPU, sleeps, or
	// waits on anything but its stdin is never stalled. Zero means 10s; a
	// negative value turns the check off.
	StallTimeout time.Duration
	// MaxLine is the longest answer line, in bytes without its newline, a
	// line worker may write. A longer one fails the attempt with
	// CauseProtocol as soon as it passes the bound, and is never buffered
	// whole. Zero means 64 MiB.
	MaxLine int64
	// MaxTasksPerWorker replaces a persistent worker after it has finished
	// this many tasks. Zero means no limit.
	MaxTasksPerWorker int
	// MaxRSS replaces a persistent worker whose memory exceeds this many
	// bytes after a task: its cgroup's usage less its inactive page cache
	// (files read once), or without a cgroup of its own, what its process
	// tree alone holds (anonymous memory and swap).
	// Zero means no limit.
	MaxRSS int64
	// MemLimit caps each worker's memory in bytes: the worker runs in a
	// memory cgroup of its own with this limit, so the kernel kills only that
	// worker; where cgroups cannot be created, the supervisor samples what
	// the worker's process tree alone holds (anonymous memory and swap,
	// not shared or file pages) and kills it over the limit. Zero means no
	// limit; a limit below MinMemory is refused. See docs/memory.md.
	MemLimit int64
	// NoDataLimit reports whether to enforce MemLimit on workers without a
	// cgroup of their own by sampling alone. By default they also get a
	// data size limit (RLIMIT_DATA) a little above MemLimit, so that an
	// allocation past it fails inside the worker however fast it grows,
	// which sampling cannot promise; a worker that fails so is reported
	// with CauseMemoryLimit. Runtimes that map far more writable memory
	// than they touch (Go built with -race, sanitizers, OpenBLAS with many
	// threads, a JVM given a large heap) may fail under it: set
	// NoDataLimit for them. See docs/memory.md.
	NoDataLimit bool

	// NoGovernor reports whether to turn the memory governor off. The
	// governor, on by default, measures each worker by its cgroup or,
	// without one, by the private memory of its process tree; it starts an
	// attempt only when its predicted peak fits the memory budget, retries
	// tasks the OOM killer took when they fit, marks Poison a task killed
	// while running alone with the whole budget, and preempts the youngest
	// attempt when memory runs short. Without it, Workers attempts run at
	// once whatever they need. See docs/memory.md.
	NoGovernor bool
	// MemBudget caps the memory the workers may use together, in bytes.
	// The governor plans with the smallest of MemBudget, the host's
	// MemTotal (without a cgroup per worker, its MemAvailable at start)
	// and the supervisor's own cgroup limit, the last two less
	// MemReserve. Zero means no cap of the pool's own; a cap below
	// MinMemory is refused. Where each worker has a cgroup of its own, its
	// limit is at most the budget, and New refuses a budget (a reserve as
	// large as the host's memory, say) below MinMemory.
	MemBudget int64
	// MemReserve is held back from the host's MemTotal and from the
	// supervisor's cgroup limit for the supervisor, the kernel and other
	// processes. Zero means a tenth of each, at least 64 MiB and at most
	// 2 GiB.
	MemReserve int64
	// MemPerTask is the expected peak memory of one task in bytes. The
	// governor uses it until tasks have finished and their peaks are
	// known, and with it sets each task's predicted peak aside for the
	// task's whole life, never counting on one task's growth to overlap
	// another's end. Zero means no hint: the governor starts cautiously
	// and learns both the peaks and how tasks grow over their lives. A
	// hint below MinMemory is refused: it is a size given in bytes by
	// mistake.
	MemPerTask int64
	// PreemptAbove is the fraction of the host's memory, or of the
	// supervisor's cgroup limit, in use above which the governor stops the
	// youngest attempt. Zero means 0.95; a negative value turns this
	// trigger off; a value above 1 (a percentage), or below 0.01 (a
	// percentage divided by a hundred twice), is refused, and so is NaN.
	PreemptAbove float64
	// PreemptPSI is the memory pressure, PSI "full avg10" in percent,
	// above which the governor stops the youngest attempt. Zero means 40;
	// a negative value turns this trigger off; one above 100, or NaN, is
	// refused.
	PreemptPSI float64

	// OutputInMemory is how many bytes of each one-shot attempt's stdout,
	// and of its stderr, are kept in memory. A stream that grows beyond it
	// goes to a temporary file in $TMPDIR that has no name (nothing is left
	// behind, even if the supervisor is killed), and the Result gives it
	// through OutputReader and StderrReader instead of Output and Stderr.
	// Zero means 64 MiB shared by the MaxPending results the pool may
	// hold: 64 MiB / (2 × MaxPending), at least 4 KiB and at most 1 MiB.
	// When $TMPDIR is full, the attempt fails with CauseOutputLost.
	OutputInMemory int64
	// LargeOutput says that one-shot attempts may write megabytes of
	// stdout each, as a block's transform does: past its first 64 KiB,
	// the pool reads each attempt's stdout in large pieces, a few hundred
	// times a second, rather than at every write its process makes. That
	// saves the supervisor most of its CPU on such outputs; a small output
	// is read as without it. The pipes of the running attempts take up to
	// 16 MiB in all.
	LargeOutput bool

	// KeepOrder delivers results in submission order. Otherwise they come as
	// they complete.
	KeepOrder bool
	// Pipeline is how many tasks may be sent to one persistent worker
	// before it answers the first. Zero means 8 for Framed and 1 for Line;
	// it is always 1 for OneShot. A line worker answers in order, so the
	// oldest line in flight is the one it is running: when it dies, only
	// that line is charged, and the lines sent behind it, still in its
	// stdin, go back to the queue uncharged. Line tasks sent ahead of time
	// need a worker that flushes each answer. A task that has been charged
	// before runs with nothing sent behind it. A line batch (Task.Items) is
	// one task in flight, written at once; a line worker takes another
	// while the lines it has not answered are less than about 10 ms of
	// work, by its recent time per line. A task goes to an idle worker
	// whenever one is ready; a persistent worker with tasks in flight is sent
	// another only while no worker is idle, its items are known to be short
	// (it has answered, and holds less than about 10 ms of work by its recent
	// time per item) and the one it runs has not run 10 ms. A framed worker
	// also holds no more than its share of the tasks waiting or running
	// (their number over Workers, rounded up), so that a few long tasks
	// spread over all workers, even those still starting.
	// A Pipeline above MaxPipeline is refused.
	Pipeline int
	// MaxPending bounds the tasks submitted but not yet delivered on
	// Results; Submit blocks while it is reached. This, not the input size,
	// bounds the pool's memory. Zero means 64 + 4×Workers×Pipeline.
	MaxPending int
	// Grace is how long a worker has between SIGTERM and SIGKILL when the
	// pool stops it. A persistent worker that the pool retires (at Close,
	// or after MaxTasksPerWorker or MaxRSS) first has Grace to exit by
	// itself once its task pipe or stdin is closed, and only then gets
	// SIGTERM. Zero means 3s.
	Grace time.Duration
	// StartupFailures is how many workers in a row may fail before they
	// take any task before the pool aborts with a *StartError. A worker
	// fails so when it dies, or is killed for a protocol error or its
	// start-up deadline, before it takes a task (a framed task it starts, a
	// line it reads), or when it holds its first line unanswered until
	// StallTimeout while no worker has answered yet. A death during a task
	// is the task's, never a start-up failure. Once an attempt has
	// succeeded, the command works, and what fails it may pass (memory
	// short for a moment, a file system away): the failures in a row must
	// then also have lasted a minute. Between them a persistent slot waits 100 ms,
	// twice as long after each further failure, up to MaxBackoff. Zero
	// means 3.
	StartupFailures int

	// Stdout and Stderr receive persistent workers' own stdout (framed
	// protocol only) and stderr. Nil means the supervisor's stderr for both.
	// A file is handed to the workers as it is. Any other writer gets
	// what they write as it arrives, one Write at a time across both
	// fields, so they may be one writer, such as a bytes.Buffer; a line
	// that a worker writes in pieces, or longer than a pipe holds, may be
	// cut by another worker's output.
	Stdout, Stderr io.Writer
	// Observer, if not nil, is called for every Event, from the pool's
	// goroutines. It must return quickly and must not call the pool.
	Observer func(Event)
}

// Stats counts what a pool has done so far. Tasks are counted in one unit
// throughout: each item of a batch (Task.Items), such as a line of a block
// of lines, counts as one task in every count of tasks. Queued, Running,
// Settling and the terminal states (Done, Failed, Cancelled, Poison) add
// up to Submitted in every Stats: each task is counted in exactly one of
// them, and a task (or a batch's part) leaves one in the same update as it
// enters the next.
type Stats struct {
	// Submitted counts tasks accepted by Submit.
	Submitted int
	// Done, Failed, Cancelled and Poison count tasks in each terminal state.
	Done, Failed, Cancelled, Poison int
	// Running counts tasks dispatched to a worker whose attempt has not
	// ended: those a worker runs now and, with Config.Pipeline above 1,
	// those sent ahead to it. A batch's items are all there until its
	// attempt ends (but for a range that a framed worker answers before
	// the end, which is Done at once); they then go each to its next state
	// (Done, charged, or back to the queue).
	Running int
	// RunningAttempts counts the attempts of the tasks in Running: a
	// batch's attempt is one, whatever the number of its items. It is the
	// count to compare with the number of workers. It is never above
	// Running, and for tasks without Items equals it, but for a moment as
	// an attempt ends: the attempt leaves RunningAttempts before its task
	// (or each part of its batch) is counted in its next state.
	RunningAttempts int
	// Settling counts one-shot attempts whose job has ended, and whose
	// runner has taken its next task, while the pool has yet to settle
	// them (a retry, or a terminal state): they no longer run, but their
	// tasks are in no other count yet.
	Settling int
	// Queued counts tasks waiting for a worker, including retries in
	// backoff: every item of a batch that waits, whole or as the part of
	// one that was sent back.
	Queued int
	// Attempts counts attempts that ended, of every cause; the items of a
	// batch that a worker answered in one run count one attempt each.
	Attempts int
	// Preempted counts attempts the memory governor stopped.
	Preempted int
	// WorkersStarted counts worker processes started.
	WorkersStarted int
	// WorkerDeaths counts worker processes that ended other than by the pool
	// stopping or retiring them.
	WorkerDeaths int
	// OutOfStep counts line workers caught out of step, and framed
	// workers that broke the protocol while they ran no task
	// (EventWorkerOutOfStep), after they had answered other tasks. When it
	// is not zero, some answers delivered as Done may belong to other
	// inputs: a caller should treat the run as failed.
	OutOfStep int
	// Started is when the pool was created.
	Started time.Time
}

// CountEnded adds r's terminal state to Done, Failed, Cancelled or Poison:
// one for a task, one for each item of a batch. A pool counts its own
// results so; a program that collects results from pools elsewhere (the
// cluster's submitter) counts them with it, not with rules of its own.
func (s *Stats) CountEnded(r *Result) {
	n := r.count()
	switch r.State {
	case Done:
		s.Done += n
	case Failed:
		s.Failed += n
	case Cancelled:
		s.Cancelled += n
	case Poison:
		s.Poison += n
	}
}
