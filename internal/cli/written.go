package cli

import (
	"sync/atomic"
	"time"

	"github.com/safepool/safepool/pool"
)

// outputLedger decides, once for every consumer, whether a task's output
// was written out of safepool: the summary, the JSON summary and the
// metrics count a task done only when it was, as the journal records it
// done only then (docs/cli.md, "Journal and resume"). A result's output
// goes into the output's buffer (written), and is out once a flush of that
// buffer succeeds (flushed); when the flush fails, or the output never
// went into the buffer because writing had failed already (lost), the
// task's output was not written. A done task whose output was not written,
// to a full disk, a closed pipe, or a reader given up after an interrupt,
// counts as unwritten, not done: --resume runs it again.
//
// A failed, poison or cancelled task keeps its state whatever became of
// its output.
type outputLedger struct {
	jj *jobJournal
	jm *jobMetrics
	// pending holds the results written to the output's buffer since it
	// was last flushed; only the results loop uses it.
	pending []pendingOutput
	// unwritten counts the tasks done whose output was not written; the
	// results loop adds to it, the summary reads it at the end.
	unwritten atomic.Int64
}

// pendingOutput is a result whose output is in the output's buffer.
type pendingOutput struct {
	r *pool.Result
	// journal reports whether the journal learns of its end once it is
	// written (job.journaled).
	journal bool
}

// written notes a result whose output went into the output's buffer; the
// journal learns of its end, when journal is set, once flushed says that
// the buffer is out.
func (l *outputLedger) written(r *pool.Result, journal bool) {
	l.pending = append(l.pending, pendingOutput{r: r, journal: journal})
}

// lost notes a result whose output was not written at all: writing had
// failed before it came. A task done stays unfinished in the journal
// (--resume runs it again); one that ended otherwise keeps its state, and
// the journal learns of its end, when journal is set, as it would have
// once written: a run stopped by a closed stdout left its cancelled tasks
// pending in the journal, and its report disagreed with its summary.
func (l *outputLedger) lost(r *pool.Result, journal bool) {
	if n := doneTasks(r); n > 0 {
		l.unwritten.Add(int64(n))
		l.jm.unwritten(n)
	} else if journal {
		l.jj.ended(r, time.Now())
	}
}

// flushed says whether the output's buffer, with the outputs of the
// results written since the last flush, was written out (ok).
func (l *outputLedger) flushed(ok bool) {
	now := time.Now()
	for i, p := range l.pending {
		switch {
		case !ok:
			l.lost(p.r, p.journal)
		case p.journal:
			l.jj.ended(p.r, now)
		}
		l.pending[i] = pendingOutput{}
	}
	l.pending = l.pending[:0]
}

// count returns how many tasks done had their output not written; 0 for a
// nil *outputLedger.
func (l *outputLedger) count() int {
	if l == nil {
		return 0
	}
	return int(l.unwritten.Load())
}

// doneTasks is how many tasks r counts done, as the pool counts them (a
// batch's items, each line of a block of lines).
func doneTasks(r *pool.Result) int {
	var st pool.Stats
	st.CountEnded(r)
	return st.Done
}
