package report

import (
	"fmt"
	"maps"
	"slices"
	"time"
)

// Options bound what a report reads and draws. The zero value of each
// field means its default.
type Options struct {
	// RunID is the run to report on. Zero means the last run in the
	// journal.
	RunID int64
	// MaxRows bounds the tasks in the table. When a run has more, the
	// table holds every task that did not end done, up to the bound, then
	// the longest-running and the largest of the rest. Zero means 2000.
	MaxRows int
	// MaxPoints bounds the points of each series drawn: samples are put
	// in that many equal spans of time, and the highest of each span is
	// drawn, so that no peak is lost. Zero means 600.
	MaxPoints int
	// MaxWorkers bounds the worker series drawn in the memory chart: those
	// of the workers with the highest peaks. Zero means 40.
	MaxWorkers int
	// MaxMarks bounds the marks of each kind (oom, preempted, retry,
	// poison) drawn on the time axis: the first ones. Zero means 500.
	MaxMarks int
}

func (o *Options) normalize() {
	if o.MaxRows <= 0 {
		o.MaxRows = 2000
	}
	if o.MaxPoints <= 0 {
		o.MaxPoints = 600
	}
	if o.MaxWorkers <= 0 {
		o.MaxWorkers = 40
	}
	if o.MaxMarks <= 0 {
		o.MaxMarks = 500
	}
}

// Run is what a report shows of one run of a journal.
type Run struct {
	// ID is the run's id in the journal, and Runs the number of runs the
	// journal holds.
	ID   int64
	Runs int
	// Started is when the run started. Ended is when it ended, or, when
	// State is not RunEnded, the last moment the journal recorded anything
	// of it.
	Started, Ended time.Time
	// State says whether the run ended, and if not, whether it goes on.
	State RunState
	// Kind is "run", "map" or "python"; Command the command template or
	// the Python function; Argv the supervisor's arguments.
	Kind, Command string
	Argv          []string
	// Workers is -j; MemoryMode how memory was watched.
	Workers    int
	MemoryMode string
	// Budget is the governor's budget and Limit the per-worker limit, in
	// bytes; zero means none.
	Budget, Limit int64
	// ExitStatus is the process's exit status, or -1 when unknown.
	ExitStatus int
	// Incomplete is, when writing the journal failed during the run (a
	// full disk), the error, and IncompleteAt when it happened: what the
	// run did from then on is not in the journal. Empty when it did not.
	Incomplete   string
	IncompleteAt time.Time

	// Tasks counts the run's tasks, and States counts them by state
	// ("pending", done, failed, poison, cancelled, skipped).
	Tasks  int
	States map[string]int
	// Attempts counts the run's attempts, and Causes counts attempts and
	// tasks by cause, most frequent first.
	Attempts int
	Causes   []CauseCount

	// Rows are the tasks in the table, by id; RowsLeftOut says how many
	// tasks are not in it for want of room, and Unlisted how many are
	// never listed: those a resumed run skipped as done in an earlier
	// run, of which the journal keeps only the number (skip rows).
	Rows        []TaskRow
	RowsLeftOut int
	Unlisted    int

	// Total, Budgets, Limits, Running and Allowed are the whole-pool
	// series: the workers' memory together, the budget and the per-worker
	// limit over time, the attempts running and the concurrency the
	// governor allowed.
	Total, Budgets, Limits, Running, Allowed []Point
	// WorkerSeries are the memory series of single workers, highest peak
	// first; WorkersLeftOut counts the workers not drawn.
	WorkerSeries   []WorkerSeries
	WorkersLeftOut int

	// Marks are the events drawn on the time axis, in time order, and
	// MarkCounts counts every such event of the run by kind, drawn or not.
	Marks      []Mark
	MarkCounts map[string]int

	// Waits counts the times queued tasks began to wait for memory (the
	// pool's admission-wait events), and Waited is how long they waited
	// in all, measured from those events to the ends of the waits (or to
	// the run's end for a wait that did not end).
	Waits  int
	Waited time.Duration
}

// RunState is what is known of a run's end.
type RunState int

const (
	// RunEnded means that the journal holds the run's end.
	RunEnded RunState = iota
	// RunGoesOn means that the run has not ended: a safepool on this
	// machine still runs it (it holds the journal's lock of the run's
	// command, and the journal has no later run of that command).
	RunGoesOn
	// RunStopped means that the run did not end, and no safepool runs it
	// now: its supervisor was killed, the machine went down, or the journal
	// could not be written to its end.
	RunStopped
	// RunEndUnknown means that the run has no end in the journal, and
	// whether it goes on cannot be told: a journal without its span
	// file, a file system without locks, or a run of another kind than
	// run, map and python (whose calls lock the span file as run and map
	// do since this version).
	RunEndUnknown
)

// StateCount is how many tasks of a run are in State.
type StateCount struct {
	State string
	Count int
}

// stateOrder is the order of the states in OrderedStates; other states
// the journal may hold follow, by name.
var stateOrder = []string{"done", "failed", "poison", "cancelled", "skipped", "pending"}

// OrderedStates are the run's tasks counted by state, done, failed,
// poison, cancelled, skipped and pending first: the states the run's
// tasks are in, and only those.
func (r *Run) OrderedStates() []StateCount {
	var out []StateCount
	seen := map[string]bool{}
	for _, s := range append(slices.Clone(stateOrder), slices.Sorted(maps.Keys(r.States))...) {
		if n, ok := r.States[s]; ok && !seen[s] {
			seen[s] = true
			out = append(out, StateCount{s, n})
		}
	}
	return out
}

// EndNote says, for a run that has no end in the journal, whether it goes
// on, in words, and for a run whose journal could not be written to the
// end, that it is incomplete; it is empty for a run that ended and whose
// journal is whole.
func (r *Run) EndNote() string {
	if r.Incomplete != "" {
		return fmt.Sprintf("the journal is incomplete: writing it failed %s after the start (%s), and what the run did since is not in it",
			shortDuration(r.IncompleteAt.Sub(r.Started)), r.Incomplete)
	}
	switch r.State {
	case RunGoesOn:
		return "still running: the page shows what the journal held when it was written"
	case RunStopped:
		return "did not end: no safepool runs it now; its supervisor was killed, the machine went down, or a full disk kept the journal from recording its end"
	case RunEndUnknown:
		return "did not end: the supervisor died or still runs"
	}
	return ""
}

// EndKnown reports whether the journal holds the run's end.
func (r *Run) EndKnown() bool { return r.State == RunEnded }

// Span is how long the run lasted, as drawn.
func (r *Run) Span() time.Duration { return r.Ended.Sub(r.Started) }

// CauseCount counts the attempts that ended with Cause, and the tasks
// whose last attempt did.
type CauseCount struct {
	Cause           string
	Attempts, Tasks int
}

// TaskRow is one task in the table.
type TaskRow struct {
	ID       int64
	Input    string // at most inputPreview bytes, as text
	State    string
	Attempts int
	Cause    string
	// Runtime is the time its attempts ran, added up.
	Runtime time.Duration
	// Peak is its highest peak memory in bytes; 0 when unknown.
	Peak int64
	// NoInput reports that the journal did not keep its input: a task
	// done at its first attempt keeps only its key.
	NoInput bool
}

// Point is one value of a series at a time since the run's start.
type Point struct {
	At    time.Duration
	Value int64
}

// WorkerSeries is the memory of one worker process over time.
type WorkerSeries struct {
	PID    int
	Peak   int64
	Points []Point
	// Breaks are the indices of Points that start a line anew: between
	// such a point and the one before, the pool sampled its workers at
	// least twice and this pid had no sample. It was no worker of the
	// pool then (one-shot jobs end, and the kernel hands their pids out
	// again to later ones), or ran no task; a line across the gap would
	// show memory held all along.
	Breaks []int
}

// Segments are the worker's points cut at its breaks: each is drawn as
// a line of its own.
func (w WorkerSeries) Segments() [][]Point {
	var segs [][]Point
	from := 0
	for _, b := range w.Breaks {
		if b > from && b < len(w.Points) {
			segs = append(segs, w.Points[from:b])
			from = b
		}
	}
	if from < len(w.Points) {
		segs = append(segs, w.Points[from:])
	}
	return segs
}

// Mark is an event on the time axis.
type Mark struct {
	At     time.Duration
	Kind   string // oom, preempted, retry or poison
	TaskID int64
	PID    int
	Detail string
}

// markKinds are the event kinds drawn on the time axis.
var markKinds = []string{"oom", "preempted", "retry", "poison"}

// inputPreview is how much of a task's input the table shows.
const inputPreview = 120
