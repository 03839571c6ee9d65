package pool

import (
	"bytes"
	"errors"
	"strings"
	"syscall"
	"time"

	"github.com/safepool/safepool/internal/worker"
)

// fileWait is how long a runner waits before it gives back a task whose
// process could not start for want of file descriptors.
const fileWait = 50 * time.Millisecond

// runOneShot runs each task it is given in a process of its own.
func (r *runner) runOneShot() {
	defer r.p.spool.leave()
	for {
		select {
		case t := <-r.p.dispatch:
			if r.p.gov != nil {
				r.p.gov.bind(t.id, r.slot)
			}
			r.oneShot(t)
		case <-r.p.quit:
			return
		case <-r.p.abortCh:
			return
		}
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

// oneShot runs one attempt of t and reports it.
func (r *runner) oneShot(t *task) {
	cfg := &r.p.cfg
	args := t.t.Args
	if args == nil {
		args = expand(cfg.Command, t.t.Input)
	}
	// The previous attempt's output is no use any more.
	t.out.release()
	t.out = nil
	out := r.p.spool.newOutput() // written by the process's copiers until CloseIO returns
	spec := worker.Spec{Args: args, Env: cfg.Env, Dir: cfg.Dir, IO: worker.IONone, Stdout: out.stdout, Stderr: out.stderr}
	if t.t.Stdin != nil {
		spec.Stdin = bytes.NewReader(t.t.Stdin)
	}
	// From here the attempt holds files: its cgroup's, then its process's.
	r.p.procs.Add(1)
	if r.group != nil {
		spec.Cgroup = r.group
		r.oomBase, _ = r.group.OOMKills()
		_ = r.group.ResetPeak()
	} else {
		spec.Cgroup = r.shim()
	}
	r.markOOM()
	start := time.Now()
	proc, err := worker.Start(spec)
	if err != nil {
		others := r.p.procs.Add(-1) > 0
		if outOfFiles(err, t, others) {
			// Not the task's doing: it runs again, uncharged, once running
			// processes have given their files back.
			select {
			case <-time.After(fileWait):
			case <-r.p.abortCh:
			case <-r.p.quit:
			}
			r.p.send(report{kind: reportRequeue, task: t})
			return
		}
		// Like a shell, call a command that cannot be run exit status 127.
		a := Attempt{Cause: ExitCause(127), ExitCode: 127, Start: start, End: time.Now(), Message: err.Error()}
		out.stderr.Write([]byte(err.Error() + "\n"))
		t.out = out
		r.p.send(report{kind: reportAttempt, task: t, att: a})
		r.p.send(report{kind: reportStartupFailure, charged: true, start: &StartError{Command: args, Err: err}})
		return
	}
	r.proc = proc
	r.startWatch(proc)
	defer func() { r.proc, r.watch = nil, nil }()
	r.p.count(func(s *Stats) { s.WorkersStarted++ })
	r.p.emit(Event{Kind: EventWorkerStarted, WorkerPID: proc.Pid, Time: start})
	r.p.emit(Event{Kind: EventAttemptStarted, TaskID: t.id, WorkerPID: proc.Pid, Time: start})

	killed := r.waitOneShot(proc, t, out)
	proc.CloseIO(linger)
	if r.watch != nil {
		r.watch.Stop()
	}
	r.p.procs.Add(-1)
	exit := proc.Exit()
	cause := killed
	if cause == "" && (exit.Code != 0 || exit.Signal != 0) {
		cause = r.classify(exit, start)
	}
	a := r.exitAttempt(proc, exit, cause, start, 0)
	if cause == CauseTimeout && killed == CauseTimeout {
		a.Message = "killed after " + t.timeout(&r.p.cfg).String() // the task's own limit
	}
	if cause == CauseOutputLost {
		// What was kept is not the job's output: give none.
		a.Message = out.lostMessage()
		out.release()
		out = nil
	} else if cause.IsWorkerDeath() && killed == "" {
		r.p.count(func(s *Stats) { s.WorkerDeaths++ })
	}
	r.p.emit(Event{Kind: EventWorkerExited, WorkerPID: proc.Pid, Time: exit.Time})
	t.out = out
	r.p.send(report{kind: reportAttempt, task: t, att: a})
}

// waitOneShot waits for t's process proc to end, and ends it early on a
// timeout, preemption, memory over the limit, lost output or abort. It
// returns why the runner ended it, or "".
func (r *runner) waitOneShot(proc *worker.Process, t *task, out *attemptOutput) Cause {
	cfg := &r.p.cfg
	var timeout <-chan time.Time
	if limit := t.timeout(cfg); limit > 0 {
		tm := time.NewTimer(limit)
		defer tm.Stop()
		timeout = tm.C
	}
	abortC, killC, lostC, over := r.p.abortCh, r.p.killCh, out.lost, r.overLimit()
	var killed Cause
	for {
		select {
		case <-proc.Done():
			return killed
		case <-timeout:
			killed = CauseTimeout
			proc.Kill()
		case id := <-r.preempt:
			if id == t.id && killed == "" {
				killed = CausePreempted
				proc.Kill()
			}
		case <-over:
			over = nil
			if killed == "" {
				killed = CauseMemoryLimit
				proc.Kill()
			}
		case <-abortC:
			abortC = nil
			if killed == "" {
				killed = CauseCancelled
			}
			proc.Stop(cfg.Grace)
		case <-killC:
			killC = nil
			proc.Kill()
		case <-lostC:
			lostC = nil
			if killed == "" {
				killed = CauseOutputLost
			}
			proc.Kill()
		}
	}
}

// maxFileWaits is how many times a task waits for file descriptors while
// no other process of the pool runs or starts, before it fails.
const maxFileWaits = 3

// outOfFiles reports whether err says that t's process could not start for
// want of file descriptors, and t should wait and run again uncharged: while
// others of the pool's processes run or start (they will give theirs back),
// and a few times when none does (a file the supervisor held for a moment).
//
// EBADF from fork/exec is counted with them, but only a few times: with the
// file table full, starting a process was seen to fail with it now and then
// (1 start in some thousands); it is the supervisor's trouble, not the task's.
func outOfFiles(err error, t *task, others bool) bool {
	switch {
	case errors.Is(err, syscall.EMFILE), errors.Is(err, syscall.ENFILE):
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
