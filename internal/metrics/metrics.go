// Package metrics exposes a pool's counts and memory as Prometheus
// metrics. A Collector is one consumer of the pool's events (its Observe
// goes in pool.Config.Observer) and reads the pool's own counts (Stats)
// and memory governor (Memory) when scraped; it re-derives nothing the
// pool already counts. Server serves a Collector over HTTP.
//
// The metrics, all named safepool_*:
//
//	tasks{state}                     gauge: tasks queued, running, settling, done, unwritten, failed, cancelled, poison
//	                                 (pool.Stats, with AddUnwritten's tasks moved from done to unwritten);
//	                                 each line of a block of lines counts in each state, and the states add up to tasks_submitted_total
//	tasks_submitted_total            counter: tasks accepted by Submit
//	tasks_skipped_total{state}       counter: inputs not submitted because an earlier run finished them (AddSkipped),
//	                                 by the state it left them in: done, failed or poison
//	attempts_total{cause}            counter: attempts that ended, by cause ("success" when none)
//	task_failures_total{state,cause} counter: tasks that ended failed, poison or cancelled, by their last cause
//	preemptions_total                counter: attempts the memory governor stopped
//	workers                          gauge: workers the pool runs at once (-j)
//	workers_started_total            counter: worker processes started
//	worker_deaths_total              counter: worker processes that died other than by the pool's hand
//	memory_in_use_bytes              gauge: the workers' memory at the governor's last sample
//	memory_budget_bytes              gauge: the memory the workers may use together now
//	memory_predicted_bytes           gauge: the peak the governor expects of the next task
//	memory_allowed_attempts          gauge: attempts the governor allows at once
//	admission_blocked                gauge: 1 while tasks wait for memory, else 0
//	admission_waits_total            counter: times tasks started to wait for memory
//	admission_wait_seconds_total     counter: time tasks waited for memory
//
// The memory_* and admission_* metrics are there only when the memory
// governor is on. The pool does not say when its governor refuses a task,
// so admission is sampled every AdmissionSample from Stats: tasks wait
// for memory when some are queued while fewer attempts run than -j. A
// retry waiting out its backoff while a worker is free counts too.
package metrics

import (
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/safepool/safepool/pool"
)

// AdmissionSample is how often a Collector samples whether tasks wait for
// memory: the memory governor's own sampling interval.
const AdmissionSample = 100 * time.Millisecond

// Collector gathers one pool's metrics. Create it with New before the
// pool, pass its Observe as the pool's Observer, and Attach the pool once
// made. Close must be called when the pool has ended, to stop the
// admission sampler.
type Collector struct {
	reg *prometheus.Registry

	pool atomic.Pointer[pool.Pool] // nil until Attach

	// unwritten counts the tasks the pool has done whose output the
	// consumer of the results could not write out (AddUnwritten).
	unwritten atomic.Int64

	attempts *prometheus.CounterVec // by cause
	failures *prometheus.CounterVec // by state and cause
	skipped  *prometheus.CounterVec // by the state an earlier run left the task in

	// The admission sampler's counts; the sampler writes them under mu,
	// and scrapes read them.
	mu          sync.Mutex
	blocked     bool
	waits       int
	waitSeconds float64

	stop     chan struct{} // closed by Close
	sampling sync.WaitGroup
	once     sync.Once
}

// New returns a Collector with no pool yet: until Attach, it serves the
// event counts alone.
func New() *Collector {
	c := &Collector{
		reg: prometheus.NewRegistry(),
		attempts: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "safepool_attempts_total",
			Help: "Attempts that ended, by cause (\"success\" when the attempt succeeded).",
		}, []string{"cause"}),
		failures: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "safepool_task_failures_total",
			Help: "Tasks that ended failed, poison or cancelled, by terminal state and last cause.",
		}, []string{"state", "cause"}),
		skipped: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "safepool_tasks_skipped_total",
			Help: "Inputs not submitted because an earlier run of the journal finished them (--resume), by the state it left them in.",
		}, []string{"state"}),
		stop: make(chan struct{}),
	}
	// Served from the start, at 0 without --resume, as the summary's
	// and the JSON summary's counts are.
	for _, s := range []pool.State{pool.Done, pool.Failed, pool.Poison} {
		c.skipped.WithLabelValues(string(s))
	}
	c.reg.MustRegister(c.attempts, c.failures, c.skipped, (*poolCollector)(c),
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return c
}

// Observe counts what ev says. It is meant for pool.Config.Observer, and
// returns at once.
func (c *Collector) Observe(ev pool.Event) {
	switch ev.Kind {
	case pool.EventAttemptEnded:
		// A successful attempt is counted with its task's end, below.
		if cause := ev.Attempt.Cause; cause != "" {
			c.attempts.WithLabelValues(string(cause)).Inc()
		}
	case pool.EventTaskEnded:
		n := float64(tasks(ev.Result))
		if ev.Result.State == pool.Done {
			// A task done ended with one successful attempt. The items of
			// a line batch that were answered end together, with no event
			// of their own per attempt, and the pool counts an attempt for
			// each (Stats.Attempts): so does this.
			c.attempts.WithLabelValues("success").Add(n)
			return
		}
		c.failures.WithLabelValues(string(ev.Result.State), string(ev.Result.Cause())).Add(n)
	}
}

// tasks is how many tasks r settles: each item of a batch is one, and an
// item that stands for a range of them (Item.Span) is as many.
func tasks(r *pool.Result) int {
	if r.Items == nil {
		return 1
	}
	n := 0
	for _, it := range r.Items {
		n += max(it.Span, 1)
	}
	return n
}

// AddUnwritten says that n more of the tasks the pool counts done are not
// done after all: their output was not written out (a full disk, a reader
// gone). They are served as state "unwritten", not "done". Call it only
// for tasks whose end the pool has delivered.
func (c *Collector) AddUnwritten(n int) {
	c.unwritten.Add(int64(n))
}

// AddSkipped counts an input that was not submitted because an earlier
// run finished it, leaving it in state (done, failed or poison).
func (c *Collector) AddSkipped(state pool.State) {
	c.skipped.WithLabelValues(string(state)).Inc()
}

// Attach makes the Collector read p's counts and memory, and starts
// sampling admission. Call it once, with the pool whose Observer is
// Observe.
func (c *Collector) Attach(p *pool.Pool) {
	c.pool.Store(p)
	c.sampling.Add(1)
	go c.sample(p)
}

// Close stops the admission sampler and waits for it. The Collector still
// serves what it has counted.
func (c *Collector) Close() {
	c.once.Do(func() { close(c.stop) })
	c.sampling.Wait()
}

// Handler serves the metrics in Prometheus's text format.
func (c *Collector) Handler() http.Handler {
	return promhttp.HandlerFor(c.reg, promhttp.HandlerOpts{})
}

// sample updates the admission counts every AdmissionSample until Close.
func (c *Collector) sample(p *pool.Pool) {
	defer c.sampling.Done()
	t := time.NewTicker(AdmissionSample)
	defer t.Stop()
	last := time.Now()
	for {
		select {
		case <-c.stop:
			return
		case now := <-t.C:
			st := p.Stats()
			_, governed := p.Memory()
			c.mu.Lock()
			if c.blocked {
				c.waitSeconds += now.Sub(last).Seconds()
			}
			was := c.blocked
			c.blocked = governed && waitsForMemory(st, p.Workers())
			if c.blocked && !was {
				c.waits++
			}
			c.mu.Unlock()
			last = now
		}
	}
}

// waitsForMemory reports whether queued tasks wait for the memory
// governor: some are queued, and a worker is free. The loop hands a task
// to a free worker at once unless the governor holds it back, so over a
// sampling interval nothing else keeps both true (but a retry's backoff).
// RunningAttempts counts the tasks sent ahead to persistent workers too,
// so a pipelined pool is never counted as waiting while its workers are
// busy; it counts a block of lines as one attempt, where Running counts
// its lines: one block would fill every worker.
func waitsForMemory(st pool.Stats, workers int) bool {
	return st.Queued > 0 && st.RunningAttempts < workers
}

// poolCollector reads the pool's Stats and Memory when scraped, so that
// what it serves is the pool's own count at that moment.
type poolCollector Collector

var (
	tasksDesc       = prometheus.NewDesc("safepool_tasks", "Tasks by state: queued (including retries in backoff), running (including attempts that ended and are being settled), the terminal state, or unwritten (succeeded, but the output was not written out).", []string{"state"}, nil)
	submittedDesc   = prometheus.NewDesc("safepool_tasks_submitted_total", "Tasks accepted by the pool.", nil, nil)
	preemptedDesc   = prometheus.NewDesc("safepool_preemptions_total", "Attempts the memory governor stopped to save memory.", nil, nil)
	workersDesc     = prometheus.NewDesc("safepool_workers", "Workers the pool runs at once (-j).", nil, nil)
	startedDesc     = prometheus.NewDesc("safepool_workers_started_total", "Worker processes started.", nil, nil)
	deathsDesc      = prometheus.NewDesc("safepool_worker_deaths_total", "Worker processes that ended other than by the pool stopping or retiring them.", nil, nil)
	inUseDesc       = prometheus.NewDesc("safepool_memory_in_use_bytes", "The workers' memory at the memory governor's last sample.", nil, nil)
	budgetDesc      = prometheus.NewDesc("safepool_memory_budget_bytes", "The memory the workers may use together now.", nil, nil)
	predictedDesc   = prometheus.NewDesc("safepool_memory_predicted_bytes", "The peak the memory governor expects of the next task.", nil, nil)
	allowsDesc      = prometheus.NewDesc("safepool_memory_allowed_attempts", "Attempts the memory governor allows at once.", nil, nil)
	blockedDesc     = prometheus.NewDesc("safepool_admission_blocked", "1 while queued tasks wait for memory, else 0 (sampled every 100 ms).", nil, nil)
	waitsDesc       = prometheus.NewDesc("safepool_admission_waits_total", "Times queued tasks started to wait for memory.", nil, nil)
	waitSecondsDesc = prometheus.NewDesc("safepool_admission_wait_seconds_total", "Time queued tasks waited for memory.", nil, nil)
)

func (pc *poolCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{tasksDesc, submittedDesc, preemptedDesc, workersDesc, startedDesc, deathsDesc,
		inUseDesc, budgetDesc, predictedDesc, allowsDesc, blockedDesc, waitsDesc, waitSecondsDesc} {
		ch <- d
	}
}

func (pc *poolCollector) Collect(ch chan<- prometheus.Metric) {
	c := (*Collector)(pc)
	p := c.pool.Load()
	if p == nil {
		return
	}
	// Read before Stats: a task is unwritten only after the pool has
	// counted it done, so that done never goes below zero.
	unwritten := int(c.unwritten.Load())
	st := p.Stats()
	gauge := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, labels...)
	}
	counter := func(d *prometheus.Desc, v float64) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, v)
	}
	for _, s := range []struct {
		state string
		n     int
	}{
		// A task whose one-shot job ended and that the pool has yet to
		// settle is in none of the others for that instant: settling,
		// so that one-shot tasks running are at most the workers.
		{"queued", st.Queued}, {"running", st.Running}, {"settling", st.Settling}, {"done", st.Done - unwritten},
		{"unwritten", unwritten}, {"failed", st.Failed}, {"cancelled", st.Cancelled}, {"poison", st.Poison},
	} {
		gauge(tasksDesc, float64(s.n), s.state)
	}
	counter(submittedDesc, float64(st.Submitted))
	counter(preemptedDesc, float64(st.Preempted))
	gauge(workersDesc, float64(p.Workers()))
	counter(startedDesc, float64(st.WorkersStarted))
	counter(deathsDesc, float64(st.WorkerDeaths))
	mem, governed := p.Memory()
	if !governed {
		return
	}
	gauge(inUseDesc, float64(mem.InUse))
	gauge(budgetDesc, float64(mem.Budget))
	gauge(predictedDesc, float64(mem.Predicted))
	gauge(allowsDesc, float64(mem.Allows))
	c.mu.Lock()
	blocked, waits, seconds := c.blocked, c.waits, c.waitSeconds
	c.mu.Unlock()
	b := 0.0
	if blocked {
		b = 1
	}
	gauge(blockedDesc, b)
	counter(waitsDesc, float64(waits))
	counter(waitSecondsDesc, seconds)
}
