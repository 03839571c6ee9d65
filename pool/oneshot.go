package pool

import (
	"bytes"
	"strings"
	"time"

	"github.com/safepool/safepool/internal/worker"
)

// runOneShot runs each task it is given in a process of its own.
func (r *runner) runOneShot() {
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
	var stdout, stderr bytes.Buffer // written by the process's copiers until CloseIO returns
	spec := worker.Spec{Args: args, Env: cfg.Env, Dir: cfg.Dir, IO: worker.IONone, Stdout: &stdout, Stderr: &stderr}
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
		// Like a shell, call a command that cannot be run exit status 127.
		a := Attempt{Cause: ExitCause(127), ExitCode: 127, Start: start, End: time.Now(), Message: err.Error()}
		r.p.send(report{kind: reportAttempt, task: t, att: a, stderr: []byte(err.Error() + "\n")})
		r.p.send(report{kind: reportStartupFailure, charged: true, start: &StartError{Command: args, Err: err}})
		return
	}
	r.proc = proc
	r.startWatch(proc)
	defer func() { r.proc, r.watch = nil, nil }()
	r.p.count(func(s *Stats) { s.WorkersStarted++ })
	r.p.emit(Event{Kind: EventWorkerStarted, WorkerPID: proc.Pid, Time: start})
	r.p.emit(Event{Kind: EventAttemptStarted, TaskID: t.id, WorkerPID: proc.Pid, Time: start})

	var timeout <-chan time.Time
	if cfg.Timeout > 0 {
		tm := time.NewTimer(cfg.Timeout)
		defer tm.Stop()
		timeout = tm.C
	}
	abortC, killC, over := r.p.abortCh, r.p.killCh, r.overLimit()
	var killed Cause
wait:
	for {
		select {
		case <-proc.Done():
			break wait
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
		}
	}
	proc.CloseIO(linger)
	if r.watch != nil {
		r.watch.Stop()
	}
	exit := proc.Exit()
	cause := killed
	if cause == "" && (exit.Code != 0 || exit.Signal != 0) {
		cause = r.classify(exit, start)
	}
	a := Attempt{Cause: cause, WorkerPID: proc.Pid, Start: start, End: exit.Time, ExitCode: exit.Code, PeakRSS: exit.MaxRSS}
	if exit.Signal != 0 {
		a.Signal = SignalName(exit.Signal)
	}
	if r.group != nil {
		if peak, err := r.group.Peak(); err == nil && peak > 0 {
			a.PeakRSS = peak
		}
	} else if r.watch != nil && r.watch.Peak() > 0 {
		a.PeakRSS = r.watch.Peak()
	}
	if cause != "" {
		a.Message = r.deathMessage(cause, proc, a.PeakRSS)
		if cause.IsWorkerDeath() && killed == "" {
			r.p.count(func(s *Stats) { s.WorkerDeaths++ })
		}
	}
	r.p.emit(Event{Kind: EventWorkerExited, WorkerPID: proc.Pid, Time: exit.Time})
	r.p.send(report{kind: reportAttempt, task: t, att: a, output: stdout.Bytes(), stderr: stderr.Bytes()})
}
