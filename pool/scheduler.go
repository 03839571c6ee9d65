package pool

import (
	"container/heap"
	"fmt"
	"time"
)

// reportKind says what a runner tells the loop.
type reportKind int

const (
	// reportAttempt: an attempt of task ended; att says how.
	reportAttempt reportKind = iota
	// reportRequeue: task was handed to a worker but never started; it goes
	// back to the queue with no attempt charged (or, with att.Cause set to
	// CausePreempted, with a preempted attempt recorded).
	reportRequeue
	// reportWorkerUp: a worker became ready or produced its first result.
	reportWorkerUp
	// reportStartupFailure: a worker died before doing any work.
	reportStartupFailure
)

// report is a message from a runner to the loop.
type report struct {
	kind   reportKind
	task   *task
	att    Attempt
	output []byte
	stderr []byte
	start  *StartError // reportStartupFailure
	// charged says, for reportStartupFailure, that a task was charged for
	// the death, so that it may have been the task's doing.
	charged bool
}

// loop owns every task from Submit to its Result. It is the only goroutine
// that decides a task's fate, so the state below needs no lock.
func (p *Pool) loop() {
	var (
		queue     []*task   // ready to run, oldest first
		delayed   delayHeap // retries waiting out their backoff
		timer     *time.Timer
		timerC    <-chan time.Time
		out       []Result              // terminal, ready to deliver
		held      = map[uint64]Result{} // KeepOrder: ended but waiting for earlier ids
		nextOut   = uint64(1)           // KeepOrder: the id to deliver next
		submitted int
		ended     int
		pending   int // submitted but not yet delivered
		running   int
		closed    bool
		aborting  bool
		startFail int  // startup failures in a row
		everOK    bool // some attempt has succeeded
		// live holds the dispatched tasks whose attempts have not ended,
		// to tell whether an attempt ran alone.
		live = map[uint64]*task{}
	)
	closeC, abortC := p.closeCh, p.abortCh
	gov := p.gov
	var wakeC chan struct{}
	if gov != nil {
		wakeC = gov.wake
	}
	// ended0 forgets a task whose attempt ended or that went back to the
	// queue.
	ended0 := func(t *task) {
		delete(live, t.id)
		if gov != nil {
			gov.release(t.id)
		}
	}

	finish := func(t *task, st State, output, stderr []byte) {
		r := Result{ID: t.id, Input: t.t.Input, Args: t.t.Args, State: st, Output: output, Stderr: stderr, Attempts: t.attempts}
		t.putOutput(&r) // one-shot output, in memory or spilled
		ended++
		p.count(func(s *Stats) {
			switch st {
			case Done:
				s.Done++
			case Failed:
				s.Failed++
			case Cancelled:
				s.Cancelled++
			case Poison:
				s.Poison++
			}
		})
		if st == Failed || st == Poison {
			f := r
			f.Output, f.Stderr, f.out = nil, nil, nil
			p.mu.Lock()
			p.failed = append(p.failed, f)
			p.mu.Unlock()
		}
		p.emit(Event{Kind: EventTaskEnded, TaskID: t.id, Result: &r})
		if !p.cfg.KeepOrder {
			out = append(out, r)
			return
		}
		held[r.ID] = r
		for {
			r, ok := held[nextOut]
			if !ok {
				break
			}
			delete(held, nextOut)
			out = append(out, r)
			nextOut++
		}
	}
	cancelQueued := func() {
		for _, t := range queue {
			finish(t, Cancelled, nil, nil)
		}
		queue = nil
		for _, t := range delayed {
			finish(t, Cancelled, nil, nil)
		}
		delayed = nil
		p.count(func(s *Stats) { s.Queued = 0 })
	}
	retryLater := func(t *task, n int) {
		d := p.cfg.Backoff << (n - 1)
		if d > p.cfg.MaxBackoff || d <= 0 {
			d = p.cfg.MaxBackoff
		}
		t.notBefore = time.Now().Add(d)
		heap.Push(&delayed, t)
		p.count(func(s *Stats) { s.Queued++ })
	}
	ended1 := func(rep report) {
		t, a := rep.task, rep.att
		running--
		if a.Cause == "" && gov != nil {
			gov.observe(t.id, a) // before ended0, which drops the attempt's trace
		}
		ended0(t)
		p.count(func(s *Stats) { s.Running--; s.Attempts++ })
		// An OOM kill under the governor is a matter of memory, not of the
		// retry policy: the task runs again once what it needs fits, and
		// is poison when it was killed while running alone.
		memOOM := a.Cause == CauseOOM && gov.ownsOOM(p.cfg.MemLimit) && !aborting
		poison := false
		switch {
		case memOOM:
			t.ooms++
			if t.alone {
				poison = true
				a.Message = gov.poisonMessage(a)
			} else {
				t.need = gov.needAfter(t, a.PeakRSS)
			}
		case a.Cause.IsWorkerDeath():
			t.deaths++
		case a.Cause == CauseTaskError:
			t.errors++
		case a.Cause == CausePreempted:
			p.count(func(s *Stats) { s.Preempted++ })
			if gov != nil {
				// It was stopped before its peak: wait for more room.
				t.need = gov.needAfter(t, a.PeakRSS)
			}
		}
		a.Number = t.charged()
		if a.Cause == "" || a.Cause == CauseCancelled || a.Cause == CausePreempted {
			a.Number = t.charged() + 1
		}
		t.attempts = append(t.attempts, a)
		p.emit(Event{Kind: EventAttemptEnded, TaskID: t.id, WorkerPID: a.WorkerPID, Attempt: &t.attempts[len(t.attempts)-1]})
		switch {
		case a.Cause == "":
			startFail, everOK = 0, true
			finish(t, Done, rep.output, rep.stderr)
		case aborting || a.Cause == CauseCancelled:
			finish(t, Cancelled, rep.output, rep.stderr)
		case a.Cause == CausePreempted:
			queue = append([]*task{t}, queue...)
			p.count(func(s *Stats) { s.Queued++ })
		case poison:
			finish(t, Poison, rep.output, rep.stderr)
			if p.cfg.OnWorkerDeath == Abort {
				r := Result{ID: t.id, State: Poison, Attempts: t.attempts}
				p.abortFor(t.id, &TaskError{Result: &r})
			}
		case memOOM:
			retryLater(t, t.ooms)
		case a.Cause == CauseTaskError:
			if t.errors <= p.cfg.TaskErrorRetries {
				retryLater(t, t.errors)
			} else {
				finish(t, Failed, rep.output, rep.stderr)
			}
		default: // the worker died
			switch p.cfg.OnWorkerDeath {
			case Retry:
				if t.deaths <= p.cfg.Retries {
					retryLater(t, t.deaths)
					return
				}
				finish(t, Failed, rep.output, rep.stderr)
			case Abort:
				r := Result{ID: t.id, State: Failed, Attempts: t.attempts}
				finish(t, Failed, rep.output, rep.stderr)
				p.abortFor(t.id, &TaskError{Result: &r})
			default:
				finish(t, Failed, rep.output, rep.stderr)
			}
		}
	}

	for {
		if (closed || aborting) && ended == submitted && len(out) == 0 {
			break
		}
		var submitC chan *task
		if !closed && !aborting && pending < p.cfg.MaxPending {
			submitC = p.submitCh
		}
		var dispatchC chan *task
		var head *task
		if !aborting && len(queue) > 0 && (gov == nil || gov.admit(queue[0])) {
			dispatchC, head = p.dispatch, queue[0]
		}
		var outC chan Result
		var first Result
		if len(out) > 0 {
			outC, first = p.results, out[0]
		}
		if timer == nil && len(delayed) > 0 {
			timer = time.NewTimer(time.Until(delayed[0].notBefore))
			timerC = timer.C
		}

		select {
		case t := <-submitC:
			submitted++
			pending++
			queue = append(queue, t)
			p.count(func(s *Stats) { s.Submitted++; s.Queued++ })

		case dispatchC <- head:
			queue[0] = nil
			queue = queue[1:]
			running++
			for _, o := range live {
				o.alone = false
			}
			head.alone = len(live) == 0
			live[head.id] = head
			if gov != nil {
				gov.reserve(head)
			}
			p.count(func(s *Stats) { s.Queued--; s.Running++ })

		case outC <- first:
			out[0] = Result{}
			out = out[1:]
			pending--

		case <-timerC:
			timer, timerC = nil, nil
			now := time.Now()
			// Retries that are due go first: they are the oldest work, and
			// with KeepOrder every result behind them waits for them.
			var due []*task
			for len(delayed) > 0 && !delayed[0].notBefore.After(now) {
				due = append(due, heap.Pop(&delayed).(*task))
			}
			queue = append(due, queue...)

		case rep := <-p.reports:
			switch rep.kind {
			case reportAttempt:
				ended1(rep)
				if timer != nil && len(delayed) > 0 {
					// A new retry may be due before the armed timer.
					timer.Stop()
					timer, timerC = nil, nil
				}
			case reportRequeue:
				running--
				ended0(rep.task)
				p.count(func(s *Stats) { s.Running--; s.Queued++ })
				if aborting {
					p.count(func(s *Stats) { s.Queued-- })
					finish(rep.task, Cancelled, nil, nil)
				} else {
					queue = append([]*task{rep.task}, queue...)
				}
			case reportWorkerUp:
				startFail = 0
			case reportStartupFailure:
				if rep.charged && everOK {
					break // the command works: the task made it fail
				}
				startFail++
				if startFail >= p.cfg.StartupFailures {
					p.abortFor(0, rep.start)
				}
			}

		case <-wakeC:
			// Memory was sampled while the queue's head waited for it.

		case <-closeC:
			closeC = nil
			closed = true

		case <-abortC:
			abortC = nil
			aborting = true
			cancelQueued()
		}
	}
	if timer != nil {
		timer.Stop()
	}
	close(p.quit)
	p.runners.Wait()
	if err := p.mem.Close(); err != nil {
		p.setErr(fmt.Errorf("pool: removing cgroups: %w", err))
	}
	p.reap()
	if p.oomLog != nil {
		p.oomLog.Close()
	}
	close(p.results)
}

// send delivers rep to the loop. Once every task has ended (quit), nothing a
// runner could report matters any more, and the loop no longer listens.
func (p *Pool) send(rep report) {
	select {
	case p.reports <- rep:
	case <-p.quit:
	}
}

// delayHeap orders tasks waiting out a backoff by when they may run.
type delayHeap []*task

func (h delayHeap) Len() int           { return len(h) }
func (h delayHeap) Less(i, j int) bool { return h[i].notBefore.Before(h[j].notBefore) }
func (h delayHeap) Swap(i, j int)      { h[i], h[j] = h[j], h[i] }
func (h *delayHeap) Push(x any)        { *h = append(*h, x.(*task)) }
func (h *delayHeap) Pop() any {
	old := *h
	t := old[len(old)-1]
	*h = old[:len(old)-1]
	return t
}
