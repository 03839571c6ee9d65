package pool

import (
	"errors"
	"fmt"
	"strings"
	"syscall"
	"time"

	"github.com/safepool/safepool/internal/memory"
	"github.com/safepool/safepool/internal/worker"
)

// fileWait is how long a runner waits before it gives back a task whose
// process could not start for want of file descriptors or processes.
const fileWait = 50 * time.Millisecond

// shot is one one-shot attempt under way: its task, its session, where
// its output goes and the cgroup its process runs in.
type shot struct {
	t     *task
	ses   *worker.Session
	out   *attemptOutput
	group *memory.Group // nil without cgroup enforcement
	// token marks the attempt's processes apart from the pool's others,
	// where no cgroup of its own holds them (leftovers); "" otherwise.
	token string
}

// runOneShot runs each task it is given in a process of its own.
//
// A slot with two cgroups (spare set) starts the next job as soon as one
// job's process has ended and been reaped, if the loop has a task ready at
// that moment, in the group the ended job did not use; the ended job's own
// bookkeeping (its pipes closed, its group's peak and OOM counter read, the
// check that its group is empty, its report) follows while the next job
// runs. That bookkeeping and the hand-off through the loop were the
// supervisor's part of the time from one job's end to the next job's
// program (docs/benchmarks.md, one-shot start). Each job still has a group
// of its own for its whole life: its counters, its peak and what it leaves
// behind are its own. When no task is ready at once, the ended job is
// settled first and the runner then waits for the loop, as with one group.
func (r *runner) runOneShot() {
	defer r.p.spool.leave()
	var cur *shot
	for {
		if cur == nil {
			var dispatch chan *task
			if !r.paused && !r.p.holdWant.Load() {
				dispatch = r.p.dispatch
			}
			select {
			case t := <-dispatch:
				cur = r.startShot(t)
			case <-r.holdKick:
				r.syncHold(nil)
			case <-r.p.quit:
				return
			case <-r.p.abortCh:
				return
			}
			continue
		}
		r.waitOneShot(cur.ses, cur.out)
		// Its process is gone: the task no longer runs beside the next one
		// (scheduler.dispatched), though its report is still to come.
		cur.t.ended.Store(true)
		var next *shot
		if r.spare != nil && !r.stopping() && !r.paused && !r.p.holdWant.Load() {
			select {
			case t := <-r.p.dispatch:
				next = r.startShot(t)
			default:
			}
		}
		r.endShot(cur)
		cur = next
	}
}

// expand returns command with every "{}" replaced by input.
func expand(command []string, input []byte) []string {
	args := make([]string, len(command))
	for i, a := range command {
		args[i] = strings.ReplaceAll(a, "{}", string(input))
	}
	return args
}

// startShot starts an attempt of t in the slot's group, which then hands
// over to the spare for the next start. It returns nil when the process
// could not start (t is reported then).
func (r *runner) startShot(t *task) *shot {
	if r.p.gov != nil {
		r.p.gov.bindAlone(t.id, r.slot)
	}
	cfg := &r.p.cfg
	args := t.t.Args
	if t.t.SlotArgs != nil {
		args = t.t.SlotArgs(r.slot + 1)
	} else if args == nil {
		args = expand(cfg.Command, t.t.Input)
	}
	path := ""
	if len(args) > 0 && args[0] == cfg.Command[0] {
		path = r.p.commandPath // the same name, found once
	}
	// The previous attempt's output is no use any more.
	t.out.release()
	t.out = nil
	out := r.p.spool.newOutput() // written by the process's copiers until CloseIO returns
	// r.env names no variable twice (slotEnv), and the leftovers' mark
	// keeps it so.
	spec := worker.Spec{Args: args, Path: path, Env: r.env, EnvUnique: true, Dir: cfg.Dir, IO: worker.IONone, Stdout: out.stdout, LargeStdout: cfg.LargeOutput, StdoutPipe: largeOutputPipe(cfg.Workers), Stderr: out.stderr}
	var token string
	if r.p.left != nil && r.group == nil {
		spec.Env, token = r.p.left.mark(r.env)
	}
	// From here the attempt holds files: its stdin's, its cgroup's, then
	// its process's.
	r.p.procs.Add(1)
	err := t.keepStdin()
	var ses *worker.Session
	if err == nil {
		spec.Stdin = t.stdin
		ses, err = worker.StartSession(r.sessionConfig(spec), (*sessionHost)(r))
	}
	if err != nil {
		r.startFailed(t, args, out, err)
		return nil
	}
	sh := &shot{t: t, ses: ses, out: out, group: r.group, token: token}
	if r.spare != nil {
		r.group, r.spare = r.spare, r.group
		if r.p.gov != nil {
			r.p.gov.setGroup(r.slot, sh.group) // the group the governor measures the slot by
		}
	}
	r.started(ses)
	ses.Send(&worker.Flight{ID: t.id, Input: t.t.Input, Timeout: t.timeout(cfg), TimeoutGrace: t.timeoutGrace(cfg), Task: t})
	return sh
}

// endShot settles sh, whose process has ended: it reaps its session,
// empties its group and reports the attempt.
func (r *runner) endShot(sh *shot) {
	t, out := sh.t, sh.out
	d := sh.ses.Reap()
	if r.s == sh.ses {
		r.s = nil
	}
	if sh.group != nil {
		// The group serves a later attempt of the slot too: what this one
		// left there out of reach of its process group (a setsid
		// descendant) must not weigh on that one's memory, peak or OOM
		// count. Kill waits a few seconds at most; a process SIGKILL
		// cannot end by then is stuck in the kernel, and nothing more can
		// be done.
		_ = sh.group.Kill()
	}
	if sh.token != "" {
		r.p.left.ended(sh.token)
	}
	r.p.procs.Add(-1)
	a := attemptOf(d.Flights[0].Outcome)
	if d.Cause == CauseOutputLost {
		// What was kept is not the job's output: give none.
		a.Message = out.lostMessage()
		out.release()
		out = nil
	} else if d.Cause.IsWorkerDeath() && d.Killed == "" {
		r.p.count(func(s *Stats) { s.WorkerDeaths++ })
	}
	r.p.emit(Event{Kind: EventWorkerExited, WorkerPID: d.PID, Time: d.Exit.Time})
	r.awaitStop(d.Cause, d.Killed)
	t.out = out
	r.p.send(report{kind: reportAttempt, task: t, att: a})
}

// startFailed reports t's process, which could not start with err: as a
// requeue when it was for want of files or processes, else as an attempt
// that exited 127.
func (r *runner) startFailed(t *task, args []string, out *attemptOutput, err error) {
	start := time.Now()
	others := r.p.procs.Add(-1) > 0
	short := waitToStart(err, t, others)
	if short || shortOf(err) {
		// Not the task's doing: it runs again, uncharged, once running
		// processes have given their files or process slots back. With
		// none of the pool's running, after a few waits, what holds them
		// is not the pool's: the start counts as a failure of the
		// command, uncharged, so that a shortage that lasts aborts the run
		// (Config.StartupFailures) instead of failing every task in turn
		// with a cause (exit:127) that blames the task.
		select {
		case <-time.After(fileWait):
		case <-r.p.abortCh:
		case <-r.p.quit:
		}
		r.p.send(report{kind: reportRequeue, task: t})
		if !short {
			r.p.send(report{kind: reportStartupFailure, start: &StartError{Command: args, Err: err}})
		}
		return
	}
	// Like a shell, call a command that cannot be run exit status 127.
	a := Attempt{Cause: ExitCause(127), ExitCode: 127, Start: start, End: time.Now(), Message: err.Error()}
	out.stderr.Write([]byte(err.Error() + "\n"))
	t.out = out
	r.p.send(report{kind: reportAttempt, task: t, att: a})
	if inputsFault(err, args, t.t.Input) {
		// The task's own failure: it says nothing of whether the command
		// can start, and three such inputs at the start of a run aborted
		// it (exit 2) before the inputs after them ran.
		return
	}
	r.p.send(report{kind: reportStartupFailure, charged: true, start: &StartError{Command: args, Err: err}})
}

// maxArgStrlen is the longest argument Linux passes to a program
// (MAX_ARG_STRLEN), its terminating NUL included.
const maxArgStrlen = 32 * 4096

// inputsFault reports whether err, which a process of args could not
// start with, is the doing of the task's input rather than the command's:
// an argument holding a NUL byte (exec refuses it with EINVAL, and only an
// input brings one), or an argument too long (E2BIG) that the input made
// so, being longer without it than the limit by less than the input's
// length.
func inputsFault(err error, args []string, input []byte) bool {
	switch {
	case errors.Is(err, syscall.EINVAL):
		for _, a := range args {
			if strings.IndexByte(a, 0) >= 0 {
				return true
			}
		}
	case errors.Is(err, syscall.E2BIG) && len(input) > 0:
		longest := 0
		for _, a := range args {
			longest = max(longest, len(a))
		}
		return longest >= maxArgStrlen && longest-len(input) < maxArgStrlen
	}
	return false
}

// waitOneShot waits for the one-shot session s to end, and ends its
// process early on a timeout, preemption, memory over the limit, lost
// output or abort.
func (r *runner) waitOneShot(s *worker.Session, out *attemptOutput) {
	abortC, killC, lostC, over := r.p.abortCh, r.p.killCh, out.lost, s.OverLimit()
	for {
		select {
		case <-s.Done():
			return
		case <-s.Deadline():
			s.CheckDeadlines()
		case id := <-r.preempt:
			s.Preempt(id)
		case <-r.holdKick:
			r.syncHold(s)
		case <-over:
			over = nil
			s.Kill(CauseMemoryLimit)
		case <-abortC:
			abortC = nil
			s.Continue() // to act on its SIGTERM
			s.Cancel(false)
		case <-killC:
			killC = nil
			s.Cancel(true)
		case <-lostC:
			lostC = nil
			s.Kill(CauseOutputLost)
		}
	}
}

// maxFileWaits is how many times a task waits for file descriptors or
// processes while no other process of the pool runs or starts, before its
// start counts as a failure of the command (EBADF: of the task).
const maxFileWaits = 3

// waitToStart reports whether err says that t's process could not start for
// want of file descriptors or of processes, and t should wait and run again
// uncharged: while others of the pool's processes run or start (they will
// give theirs back), and a few times when none does (a file the supervisor
// held for a moment).
//
// EBADF from fork/exec is counted with them, but only a few times: with the
// file table full, starting a process was seen to fail with it now and then
// (1 start in some thousands); it is the supervisor's trouble, not the task's.
func waitToStart(err error, t *task, others bool) bool {
	switch {
	case shortOf(err):
		if others {
			return true
		}
	case errors.Is(err, syscall.EBADF):
	default:
		return false
	}
	t.fileWaits++
	return t.fileWaits <= maxFileWaits
}

// shortOf reports whether err, from starting a worker process, says that
// the supervisor or the system ran out of something that ending processes
// give back: file descriptors (worker.ShortOfFiles) or processes (EAGAIN
// from fork: a pids cgroup's pids.max, ulimit -u, the system's
// threads-max). The command is not at fault.
func shortOf(err error) bool {
	return worker.ShortOfFiles(err) || errors.Is(err, syscall.EAGAIN)
}

// keepStdin makes t.stdin from Task.Stdin before t's first attempt
// starts, and drops the task's own copy of the bytes: a block of map
// --pipe is then held once, in the memory file its processes read,
// rather than twice. It fails only for want of file descriptors, an
// error shortOf knows: the attempt waits and runs again, uncharged.
func (t *task) keepStdin() error {
	if t.t.Stdin == nil || t.stdin != nil {
		return nil
	}
	in, err := worker.NewStdin(t.t.Stdin)
	if err != nil {
		return fmt.Errorf("%w: stdin: %w", worker.ErrStart, err)
	}
	done := t.t.StdinDone
	t.stdin, t.t.Stdin, t.t.StdinDone = in, nil, nil
	if done != nil && in.Copied() {
		done()
	}
	return nil
}

// largeOutputPipes is the pipe memory that the paced stdouts of a pool's
// running attempts (Config.LargeOutput) ask for in all: a quarter of the
// 64 MiB an unprivileged user's pipes may hold before the system gives
// the user's new pipes a page each (pipe-user-pages-soft), whatever
// program makes them.
const largeOutputPipes = 16 << 20

// largeOutputPipe is the size of pipe each of workers running attempts
// asks for: 1 MiB up to 16 workers, less beyond (a pipe under 256 KiB is
// not paced).
func largeOutputPipe(workers int) int {
	return min(1<<20, largeOutputPipes/max(workers, 1))
}
