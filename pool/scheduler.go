package pool

import (
	"container/heap"
	"fmt"
	"time"

	"github.com/safepool/safepool/internal/worker"
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
	// reportAnswered: the worker of a running batch answered a range of its
	// items, answers[0], its answer number running (worker.Host.Answered);
	// att has the worker's pid and the attempt's start.
	reportAnswered
	// reportIdleGone: the last idle runner stopped being idle without a
	// task (runner.setIdle); the loop offers its head to busy ones again.
	reportIdleGone
)

// report is a message from a runner to the loop.
type report struct {
	kind   reportKind
	task   *task
	att    Attempt
	output []byte
	stderr []byte
	// answers are the answered items of a batch's attempt; charge says
	// that the batch's item at position running is charged with att (its
	// worker died running it); pass, that it goes back alone, uncharged,
	// with its one pass spent (blamePass, task.passed).
	answers []worker.Answer
	charge  bool
	pass    bool
	running int
	// lines are the done items of a line batch's attempt, and out their
	// answer lines, each with its newline (worker.Flight.Out).
	lines []Item
	out   []byte
	start *StartError // reportStartupFailure
	// charged says, for reportStartupFailure, that a task was charged for
	// the death, so that it may have been the task's doing.
	charged bool
}

// loop owns every task from Submit to its Result. It is the only goroutine
// that decides a task's fate (through settle), so the scheduler's state
// needs no lock. The loop itself only moves messages between the
// scheduler and its peers.
func (p *Pool) loop() {
	s := newScheduler(p)
	closeC, abortC := p.closeCh, p.abortCh
	var wakeC chan struct{}
	if p.gov != nil {
		wakeC = p.gov.wake
	}
	for !s.finished() {
		var submitC chan *task
		if s.accepting() {
			submitC = p.submitCh
		}
		var dispatchC, pipelineC chan *task
		head := s.head()
		if head != nil {
			dispatchC = p.dispatch
			if p.idle.Load() == 0 && p.cfg.Protocol != OneShot {
				// No worker is free: a busy one may take it behind its own.
				pipelineC = p.pipeline
			}
		}
		var outC chan Result
		var first Result
		if len(s.out) > 0 {
			outC, first = p.results, s.out[0]
		}
		select {
		case t := <-submitC:
			s.submit(t)
		case dispatchC <- head:
			if p.cfg.Protocol != OneShot {
				p.idle.Add(-1) // an idle runner took it (runner.setIdle)
			}
			s.dispatched()
		case pipelineC <- head:
			s.dispatched()
		case outC <- first:
			s.delivered()
		case <-s.timerC():
			s.due(time.Now())
		case rep := <-p.reports:
			if abortC != nil && closed(abortC) {
				// A runner may have seen the abort and reported what
				// it then did (runner.awaitStop) before the loop saw
				// it: the report is judged as aborting.
				abortC = nil
				s.abort()
			}
			s.report(rep)
		case <-wakeC:
			// Memory was sampled while the queue's head waited for it.
		case <-closeC:
			closeC = nil
			s.closed = true
		case <-abortC:
			abortC = nil
			s.abort()
		}
		p.backlog.Store(int64(len(s.queue) + len(s.live)))
	}
	s.stopTimer()
	p.shutdown()
}

// shutdown ends the pool once every task has ended: it waits for the
// runners, removes the cgroups, ends what the workers left behind and
// closes Results.
func (p *Pool) shutdown() {
	close(p.quit)
	p.runners.Wait()
	if p.left != nil {
		<-p.left.done // its sweep, if one is under way
	}
	if err := p.mem.Close(); err != nil {
		p.setErr(fmt.Errorf("pool: removing cgroups: %w", err))
	}
	p.reap()
	if p.oomLog != nil {
		p.oomLog.Close()
	}
	close(p.results)
}

// scheduler is the loop's state: the tasks waiting to run, those in
// backoff, the results waiting to be delivered, and the counts that say
// when the pool is finished. Only the loop goroutine touches it.
type scheduler struct {
	p   *Pool
	gov *governor // nil when the memory governor is off

	queue   []*task   // ready to run, oldest first
	delayed delayHeap // retries waiting out their backoff
	timer   *time.Timer
	// live holds the dispatched tasks whose attempts have not ended, to
	// tell whether an attempt ran alone.
	live map[uint64]*task

	out     []Result          // terminal, ready to deliver
	held    map[uint64]Result // KeepOrder: ended but waiting for earlier ids
	nextOut uint64            // KeepOrder: the id to deliver next

	submitted int // ids submitted: a batch's items each count
	ended     int // ids in a terminal state
	// pending counts the Results still to deliver of the tasks submitted:
	// one per task, and one more for each part a batch splits into.
	pending   int
	closed    bool
	aborting  bool
	startFail int       // startup failures in a row
	failSince time.Time // when the first of them was reported
	everOK    bool      // some attempt has succeeded
}

// holder names the count of Stats that holds a task's items while they
// are in no terminal state (task.in).
type holder int

const (
	inQueued   holder = iota // Stats.Queued: waiting to run, or a retry in backoff
	inRunning                // Stats.Running: dispatched
	inSettling               // Stats.Settling: its one-shot process ended, its report still to come
)

// of is h's count in st.
func (h holder) of(st *Stats) *int {
	switch h {
	case inRunning:
		return &st.Running
	case inSettling:
		return &st.Settling
	}
	return &st.Queued
}

// startupPatience is how long startup failures in a row must have lasted,
// as well as numbering Config.StartupFailures, to abort a pool in which an
// attempt has succeeded.
var startupPatience = time.Minute

func newScheduler(p *Pool) *scheduler {
	return &scheduler{p: p, gov: p.gov, live: map[uint64]*task{}, held: map[uint64]Result{}, nextOut: 1}
}

// finished reports whether every task has ended and been delivered, and no
// more will come.
func (s *scheduler) finished() bool {
	return (s.closed || s.aborting) && s.ended == s.submitted && len(s.out) == 0
}

// accepting reports whether the loop takes another task from Submit.
func (s *scheduler) accepting() bool {
	return !s.closed && !s.aborting && s.pending < s.p.cfg.MaxPending
}

// head is the task to dispatch next, or nil when none may run now.
func (s *scheduler) head() *task {
	if s.aborting || len(s.queue) == 0 || (s.gov != nil && !s.gov.admit(s.queue[0])) {
		return nil
	}
	if c := &s.p.cfg; c.OnWorkerDeath == Abort && c.Protocol == OneShot && len(s.live) >= len(s.p.slots) {
		// A one-shot runner whose job has ended takes the next task before
		// it reports the one that ended (runOneShot). Under Abort, that
		// report may stop the pool: only a runner with nothing to report
		// takes a task, so that none starts after a failure.
		return nil
	}
	return s.queue[0]
}

func (s *scheduler) submit(t *task) {
	s.submitted += t.count()
	s.pending++
	s.queue = append(s.queue, t)
	n := t.count()
	s.p.count(func(st *Stats) { st.Submitted += n; st.Queued += n })
}

// dispatched records that a runner took the queue's head.
func (s *scheduler) dispatched() {
	head := s.queue[0]
	s.queue[0] = nil
	s.queue = s.queue[1:]
	running, gone, settling := 0, 0, 0
	for _, o := range s.live {
		if o.ended.Load() {
			// Its process has ended and its runner took head: only its
			// report is still to come. (A one-shot task: never a batch,
			// so none of its items went early.)
			if o.in == inRunning {
				o.in = inSettling
				gone++
				settling += o.count()
			}
			continue
		}
		o.alone = false
		running++
	}
	head.alone = running == 0
	s.live[head.id] = head
	if s.gov != nil {
		s.gov.reserve(head)
	}
	n := head.count()
	head.in = inRunning
	s.p.count(func(st *Stats) {
		st.Queued -= n
		st.Running += n - settling
		st.Settling += settling
		st.RunningAttempts += 1 - gone
	})
}

// delivered records that the first result was read from Results.
func (s *scheduler) delivered() {
	s.pending--
	s.out[0] = Result{}
	s.out = s.out[1:]
}

// timerC is the channel of the timer for the earliest retry, armed if
// there is one; nil otherwise.
func (s *scheduler) timerC() <-chan time.Time {
	if s.timer == nil && len(s.delayed) > 0 {
		s.timer = time.NewTimer(time.Until(s.delayed[0].notBefore))
	}
	if s.timer == nil {
		return nil
	}
	return s.timer.C
}

func (s *scheduler) stopTimer() {
	if s.timer != nil {
		s.timer.Stop()
		s.timer = nil
	}
}

// due moves the retries due at now to the head of the queue. They go
// first: they are the oldest work, and with KeepOrder every result behind
// them waits for them.
func (s *scheduler) due(now time.Time) {
	s.timer = nil
	var due []*task
	for len(s.delayed) > 0 && !s.delayed[0].notBefore.After(now) {
		due = append(due, heap.Pop(&s.delayed).(*task))
	}
	s.queue = append(due, s.queue...)
}

// report handles a message from a runner.
func (s *scheduler) report(rep report) {
	switch rep.kind {
	case reportAttempt:
		if len(rep.task.items) > 1 || rep.charge || rep.pass {
			s.batchEnded(rep)
		} else {
			s.attemptEnded(rep)
		}
		if s.timer != nil && len(s.delayed) > 0 {
			// A new retry may be due before the armed timer.
			s.stopTimer()
		}
	case reportRequeue:
		s.givenBack(rep.task)
	case reportWorkerUp:
		s.startFail = 0
	case reportAnswered:
		s.answered(rep)
	case reportIdleGone:
		// Nothing to do: the loop reads Pool.idle again before it waits.
	case reportStartupFailure:
		if rep.charged && s.everOK {
			break // the command works: the task made it fail
		}
		now := time.Now()
		if s.startFail == 0 {
			s.failSince = now
		}
		s.startFail++
		// A command that has worked may fail for a while for want of
		// something passing (memory, a file system, a license server):
		// an overnight run is not given up for a few failures in a row.
		if s.startFail >= s.p.cfg.StartupFailures && (!s.everOK || now.Sub(s.failSince) >= startupPatience) {
			s.p.abortFor(0, rep.start)
		}
	}
}

// abort cancels every task that waits to run.
func (s *scheduler) abort() {
	s.aborting = true
	for _, t := range s.queue {
		s.finish(t, Cancelled, nil, nil) // out of Queued as it is counted cancelled
	}
	s.queue = nil
	for _, t := range s.delayed {
		s.finish(t, Cancelled, nil, nil)
	}
	s.delayed = nil
}

// forget drops a task whose attempt ended, or that came back unrun, from
// the running tasks. Its items stay in Running (or Settling) until move
// counts them in their next state.
func (s *scheduler) forget(t *task) {
	delete(s.live, t.id)
	if s.gov != nil {
		t.others = s.gov.release(t.id)
	}
	if t.in == inRunning {
		// In Settling, it left RunningAttempts as dispatched moved it.
		s.p.count(func(st *Stats) { st.RunningAttempts-- })
	}
	t.ended.Store(false)
}

// move counts n of t's items in their next state, with to, and takes them
// out of the count that holds them (t.in) in the same update of Stats: a
// Stats (a scrape of the metrics) between the two would find them in no
// state, or in two, and the states' sum would not be Submitted. The parts
// a batch splits into move each with its own items (batchEnded).
func (s *scheduler) move(t *task, n int, to func(st *Stats)) {
	from := t.in
	s.p.count(func(st *Stats) {
		*from.of(st) -= n
		to(st)
	})
}

// policy is the pool's policy and state, for settle.
func (s *scheduler) policy() policy {
	c := &s.p.cfg
	return policy{onDeath: c.OnWorkerDeath, retries: c.Retries, taskErrorRetries: c.TaskErrorRetries,
		backoff: c.Backoff, maxDelay: c.MaxBackoff, aborting: s.aborting}
}

// givenBack settles a task a runner gave back without running it.
func (s *scheduler) givenBack(t *task) {
	s.forget(t)
	v := settle(taskView{}, ending{givenBack: true}, s.policy(), memVerdict{})
	s.apply(t, v, nil, nil)
}

// attemptEnded settles a task whose attempt ended, and records the attempt.
func (s *scheduler) attemptEnded(rep report) {
	t, a := rep.task, rep.att
	if len(rep.lines) == 1 {
		// A line batch of one item: its answer is the attempt's.
		it := rep.lines[0]
		a.Start, a.End, rep.output = it.Start, it.End, it.Output
	}
	if len(rep.answers) == 1 && rep.answers[0].Span <= 1 {
		// A batch task of one item: its answer is the attempt's.
		an := rep.answers[0]
		a.Start, a.End = an.Start, an.End
		if an.Failed {
			a.Cause, a.Message = CauseTaskError, an.Message
		} else {
			rep.output = an.Output
		}
	}
	if a.Cause == "" && s.gov != nil {
		s.gov.observe(t.id, a) // before forget, which drops the attempt's trace
	}
	s.forget(t)
	s.settleAttempt(t, a, rep.output, rep.stderr)
}

// answered delivers, done, the items of a range that the worker of a
// running batch answered before the batch's end, so that its caller gets
// them while the worker runs the rest. Only answers that follow those
// delivered so far (t.early, a prefix of the attempt's answers) go early;
// batchEnded settles the others, as it does every answer of a batch of
// which none went early.
func (s *scheduler) answered(rep report) {
	t, an := rep.task, rep.answers[0]
	if rep.running != t.early || an.Failed || an.Span < 1 || s.live[t.id] != t {
		return
	}
	t.early++
	s.p.count(func(st *Stats) { st.Attempts += an.Span }) // an attempt per item that ran
	ok := Attempt{Number: 1, WorkerPID: rep.att.WorkerPID, Start: rep.att.Start, End: an.End, ExitCode: -1}
	s.startFail, s.everOK = 0, true
	s.pending++ // a part of its own
	s.finishItems(t, Done, []Item{{ID: t.base + uint64(an.Index), Index: int(an.Index), Span: an.Span,
		Output: an.Output, Start: an.Start, End: an.End}}, []Attempt{ok}, nil)
}

// batchEnded settles a batch whose attempt ended: with every item
// answered, or with its worker's death while it ran. The items answered
// are done, in one Result; an item that failed, and the item the death is
// charged to, are settled each as a task of its own; the items the worker
// ran but whose answers it had not sent, and the items after the charged
// one, go back to the queue uncharged, as two batches. A line block's
// running item given a pass instead (report.pass) goes back alone between
// them, marked passed, so that its next such death is charged.
func (s *scheduler) batchEnded(rep report) {
	t, a := rep.task, rep.att
	if a.Cause == "" && s.gov != nil {
		s.gov.observe(t.id, a)
	}
	s.forget(t)
	done, answered := rep.lines, len(rep.lines)
	var failed []worker.Answer
	early := t.early // answers delivered already (answered)
	t.early = 0
	for k, an := range rep.answers {
		answered += max(an.Span, 1)
		if k < early {
			continue
		}
		if an.Failed {
			failed = append(failed, an)
			continue
		}
		done = append(done, Item{ID: t.base + uint64(an.Index), Index: int(an.Index), Span: an.Span,
			Output: an.Output, Start: an.Start, End: an.End})
	}
	if len(done) > 0 {
		ran := 0
		for _, it := range done {
			ran += max(it.Span, 1)
		}
		s.p.count(func(st *Stats) { st.Attempts += ran }) // an attempt per item that ran
		ok := a
		ok.Cause, ok.Message, ok.ExitCode, ok.Signal, ok.Number = "", "", -1, "", 1
		s.startFail, s.everOK = 0, true
		s.finishItems(t, Done, done, []Attempt{ok}, rep.out)
	}
	for _, an := range failed {
		fa := a
		fa.Cause, fa.Message, fa.ExitCode, fa.Signal, fa.Start, fa.End = CauseTaskError, an.Message, -1, "", an.Start, an.End
		s.settleAttempt(t.split([]uint32{an.Index}), fa, nil, nil)
	}
	parts := len(failed)
	if len(done) > 0 {
		parts++
	}
	rest := t.items[answered:]
	var unsent []uint32
	var passed *task // the running item, given back alone with its pass spent
	if len(rest) > 0 && (rep.charge || rep.pass) {
		run := min(max(rep.running, answered), len(t.items)-1)
		unsent, rest = t.items[answered:run], t.items[run:]
		u := t // a batch of one item keeps its charges
		if len(t.items) > 1 {
			u = t.split(rest[:1])
		}
		parts++
		if rep.charge {
			s.settleAttempt(u, a, nil, nil)
		} else {
			u.passed, passed = true, u
		}
		rest = rest[1:]
	}
	// The queue takes each at its head: the later items first.
	givenBack := settle(taskView{}, ending{givenBack: true}, s.policy(), memVerdict{})
	if len(rest) > 0 {
		parts++
		s.apply(t.split(rest), givenBack, nil, nil)
	}
	if passed != nil {
		s.apply(passed, givenBack, nil, nil)
	}
	if len(unsent) > 0 {
		parts++
		s.apply(t.split(unsent), givenBack, nil, nil)
	}
	s.pending += parts - 1
}

// settleAttempt settles t, whose attempt a ended, and records a.
func (s *scheduler) settleAttempt(t *task, a Attempt, output, stderr []byte) {
	s.p.count(func(st *Stats) { st.Attempts++ })
	var mem memVerdict
	if s.gov != nil {
		mem = memVerdict{governed: true, ownsOOM: s.gov.ownsOOM(s.p.cfg.MemLimit), need: s.gov.needAfter(t, a.PeakRSS)}
		mem.whole, mem.crowded = s.gov.judgeAlone(t, a.PeakRSS)
	}
	v := settle(taskView{deaths: t.deaths, errors: t.errors, ooms: t.ooms, alone: t.alone},
		ending{cause: a.Cause}, s.policy(), mem)
	v.charge.addTo(&t.deaths, &t.errors, &t.ooms)
	if a.Cause == CausePreempted {
		s.p.count(func(st *Stats) { st.Preempted++ })
	}
	switch {
	case v.fate == fatePoison:
		a.Message = s.gov.poisonMessage(a)
	case v.crowded:
		a.Message, a.Crowded = s.gov.crowdedMessage(a, t.others), true
	}
	a.Number = v.number
	t.attempts = append(t.attempts, a)
	s.p.emit(Event{Kind: EventAttemptEnded, TaskID: t.id, WorkerPID: a.WorkerPID, Attempt: &t.attempts[len(t.attempts)-1]})
	if v.fate == fateDone {
		s.startFail, s.everOK = 0, true
	}
	s.apply(t, v, output, stderr)
}

// apply carries out verdict v on task t.
func (s *scheduler) apply(t *task, v verdict, output, stderr []byte) {
	if v.need > 0 {
		t.need = v.need
	}
	switch v.fate {
	case fateDone:
		s.finish(t, Done, output, stderr)
	case fateFailed:
		s.finish(t, Failed, output, stderr)
	case fatePoison:
		s.finish(t, Poison, output, stderr)
	case fateCancelled:
		s.finish(t, Cancelled, output, stderr)
	case fateRequeue:
		s.queue = append([]*task{t}, s.queue...)
		s.requeued(t)
	case fateRetry:
		t.notBefore = time.Now().Add(v.delay)
		heap.Push(&s.delayed, t)
		s.requeued(t)
	}
	if v.abort {
		st := Failed
		if v.fate == fatePoison {
			st = Poison
		}
		r := Result{ID: t.id, State: st, Attempts: t.attempts}
		s.p.abortFor(t.id, &TaskError{Result: &r})
		// At once, not when the loop next sees abortCh: a runner waiting
		// for a task may be offered one in between.
		s.abort()
	}
}

// requeued counts t's items queued again.
func (s *scheduler) requeued(t *task) {
	n := t.count()
	s.move(t, n, func(st *Stats) { st.Queued += n })
	t.in = inQueued
}

// finish gives t its terminal state st: it counts it, records a failure,
// tells the observer, and queues its Result for delivery (with KeepOrder,
// once every earlier one is delivered).
func (s *scheduler) finish(t *task, st State, output, stderr []byte) {
	if t.stdin != nil {
		t.stdin.Close()
		t.stdin = nil
	} else if done := t.t.StdinDone; done != nil {
		t.t.StdinDone = nil
		done() // no attempt started
	}
	if t.items != nil {
		items := make([]Item, len(t.items))
		for i, k := range t.items {
			items[i] = Item{ID: t.base + uint64(k), Index: int(k)}
		}
		if len(items) == 1 {
			items[0].Output = output
			if n := len(t.attempts); n > 0 {
				items[0].Start, items[0].End = t.attempts[n-1].Start, t.attempts[n-1].End
			}
		}
		var out []byte
		if len(items) == 1 && st == Done && s.p.cfg.Protocol == Line {
			out = append(output[:len(output):len(output)], '\n') // a line batch's output is its lines
		}
		s.finishItems(t, st, items, t.attempts, out)
		return
	}
	r := Result{ID: t.id, Input: t.t.Input, Args: t.t.Args, State: st, Output: output, Stderr: stderr, Attempts: t.attempts}
	t.putOutput(&r) // one-shot output, in memory or spilled
	s.deliver(t, r)
}

// finishItems gives items of batch t the terminal state st, in one Result,
// with out, a line batch's answer lines.
func (s *scheduler) finishItems(t *task, st State, items []Item, attempts []Attempt, out []byte) {
	s.deliver(t, Result{ID: t.base, Input: t.t.Input, State: st, Attempts: attempts, Items: items, Output: out})
}

// deliver counts r, the end of t or of items of it, tells the observer,
// and queues r for delivery (with KeepOrder, once every earlier one is
// delivered).
func (s *scheduler) deliver(t *task, r Result) {
	n := r.count()
	s.ended += n
	s.move(t, n, func(st *Stats) { st.CountEnded(&r) })
	s.p.ended(r)
	if !s.p.cfg.KeepOrder {
		s.out = append(s.out, r)
		return
	}
	// A Result of a line batch settles a range of ids, named by its
	// first (KeepOrder takes no framed batches, whose Results may not).
	first := r.ID
	if r.Items != nil {
		first = r.Items[0].ID
	}
	s.held[first] = r
	for {
		r, ok := s.held[s.nextOut]
		if !ok {
			break
		}
		delete(s.held, s.nextOut)
		s.out = append(s.out, r)
		s.nextOut += uint64(r.count())
	}
}

// maxFailed is how many failed or poison results Failed keeps: the last
// ones, so that a long run that fails often does not grow without bound.
var maxFailed = 1000

// ended keeps r among the last failures if it failed, and tells the
// observer; its terminal state is counted already (scheduler.deliver).
func (p *Pool) ended(r Result) {
	if r.State == Failed || r.State == Poison {
		f := r
		f.Output, f.Stderr, f.out = nil, nil, nil
		p.mu.Lock()
		if len(p.failed) >= maxFailed {
			// Drop the oldest: the events carry every failure as it happens.
			p.failed = append(p.failed[:0], p.failed[len(p.failed)-maxFailed+1:]...)
		}
		p.failed = append(p.failed, f)
		p.mu.Unlock()
	}
	p.emit(Event{Kind: EventTaskEnded, TaskID: r.ID, Result: &r})
}

// closed reports whether c is closed.
func closed(c <-chan struct{}) bool {
	select {
	case <-c:
		return true
	default:
		return false
	}
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
