package cli

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"time"

	"github.com/safepool/safepool/internal/journal"
	"github.com/safepool/safepool/pool"
)

// journalFlags are --journal, --resume and --resume-failed, which run and
// map share.
type journalFlags struct {
	path         string // --journal FILE, or ""
	resume       bool   // --resume: skip tasks an earlier run finished
	resumeFailed bool   // --resume-failed: skip only tasks an earlier run did
}

// check refuses resume flags without a journal.
func (f *journalFlags) check(cmd string) error {
	if (f.resume || f.resumeFailed) && f.path == "" {
		return usagef(cmd, "--resume and --resume-failed need --journal FILE")
	}
	if f.resume && f.resumeFailed {
		// Given both, --resume won, whatever the order: the failed inputs
		// were skipped, where GNU parallel runs them again.
		return usagef(cmd, "give --resume (skip the failed inputs) or --resume-failed (run them again), not both")
	}
	return nil
}

// resuming reports whether earlier runs' work is skipped.
func (f *journalFlags) resuming() bool { return f.resume || f.resumeFailed }

// jobJournal is a job's journal: the open file, the writer of this run and,
// when resuming, what earlier runs finished. A nil *jobJournal does nothing.
type jobJournal struct {
	kind    string
	command []string // what keys are made of: the command template or the worker's command
	flags   journalFlags
	argv    []string

	j  *journal.Journal
	w  *journal.Writer
	rs *journal.Resumer // nil unless resuming
	// notice is what to say on stderr before the run, or "".
	notice string
	// atEnd reports whether the writer learns of a task's end from the
	// pool's event, as it ends: map with its lines' outputs, which the
	// journal keeps and --resume replays. Else it learns of it once the
	// task's output is flushed out of the supervisor (ended).
	atEnd bool
}

// openJournal opens the journal file before anything runs, so that a path
// that cannot be written costs nothing.
func openJournal(kind string, command []string, f journalFlags, argv []string) (*jobJournal, error) {
	if f.path == "" {
		return nil, nil
	}
	j, err := journal.Open(f.path)
	if err != nil {
		return nil, fmt.Errorf("cannot open the journal: %w", err)
	}
	return &jobJournal{kind: kind, command: command, flags: f, argv: argv, j: j}, nil
}

// start adds this run to the journal, before the pool is made, so that
// the writer sees every event of the pool.
func (jj *jobJournal) start(cfg *pool.Config) error {
	if jj == nil {
		return nil
	}
	w, err := jj.j.Start(journal.Run{
		Kind:        jj.kind,
		Command:     journal.CommandString(jj.command),
		Argv:        jj.argv,
		Workers:     cfg.Workers,
		MemLimit:    cfg.MemLimit,
		Resumed:     jj.flags.resuming(),
		SkipFailed:  jj.flags.resume,
		StoreOutput: jj.kind == "map",
	})
	if err != nil {
		return err
	}
	jj.w = w
	if jj.flags.resuming() {
		if jj.rs, err = w.Resumer(); err != nil {
			return err
		}
		if n, why := jj.rs.Lost(); n > 0 {
			// Not silent: an overnight batch would run them again
			// without a word.
			jj.notice = fmt.Sprintf("--resume: the journal's span file lost the records of %s, which run again (%v)",
				plural(n, "finished task"), why)
		}
		if jj.rs.Runs() == 0 {
			jj.notice, err = noEarlierRun(jj.j, jj.flags.path, jj.kind, journal.CommandString(jj.command))
			if err != nil {
				return err
			}
		}
	}
	return nil
}

// noEarlierRun is the notice of a --resume that finds no earlier run of
// its kind and command in the journal at path, but one of another command
// of that kind, or runs of another kind only (map's where run resumes):
// every input runs. A command changed by mistake (another path to the
// script, a flag of its own) or the other subcommand would otherwise run a
// whole batch again without a word. An empty journal, as on a first run
// with --resume, is no mistake: "" then.
func noEarlierRun(j *journal.Journal, path, kind, command string) (string, error) {
	other, err := j.LastCommand(kind, command)
	if err != nil {
		return "", err
	}
	if other != "" {
		return fmt.Sprintf("--resume: the journal %s has no earlier run of this command, so every input runs (its last safepool %s ran %s: the command must be the same, word for word)",
			path, kind, commandText(other)), nil
	}
	otherKind, other, err := j.LastOfOtherKind(kind)
	if err != nil || otherKind == "" {
		return "", err
	}
	what := "a Python program's calls"
	if otherKind != "python" {
		what = fmt.Sprintf("runs of safepool %s, the last of them of %s", otherKind, commandText(other))
	}
	return fmt.Sprintf("--resume: the journal %s has no earlier run of safepool %s, so every input runs (it holds %s: --resume skips only what runs of the same subcommand and command did)",
		path, kind, what), nil
}

// commandText is a command as the journal records it (a JSON list of
// words) in shell words, or as recorded when it is not such a list.
func commandText(recorded string) string {
	var words []string
	if json.Unmarshal([]byte(recorded), &words) != nil {
		return recorded
	}
	for i, w := range words {
		words[i] = shellQuote(w)
	}
	return strings.Join(words, " ")
}

// describe records what the pool made of the configuration.
func (jj *jobJournal) describe(p *pool.Pool) {
	if jj == nil {
		return
	}
	var budget int64
	if st, ok := p.Memory(); ok {
		budget = st.Budget
	}
	jj.w.Describe(p.Workers(), p.MemoryMode(), budget)
	jj.w.Watch(func() int { return p.Stats().RunningAttempts }) // a block of lines is one
	for _, n := range p.Notices() {
		jj.w.Notice(n)
	}
}

// observe gives the writer an event of the pool; the ends of tasks only
// with atEnd, else ended gives them.
func (jj *jobJournal) observe(ev pool.Event) {
	if jj != nil && (ev.Kind != pool.EventTaskEnded || jj.atEnd) {
		jj.w.Observe(ev)
	}
}

// ended gives the writer the end of r's task, whose output was written
// out of the supervisor at at (outputLedger.flushed). Without atEnd, that
// is when the journal learns that the task ended: a task the journal has
// as done never loses its output to a SIGKILL, and is never run again by
// --resume. With atEnd, the journal keeps the output itself, and learnt
// of the task as it ended: a line done behind one that still runs, which
// map -k holds to write in order, is not lost to a kill.
func (jj *jobJournal) ended(r *pool.Result, at time.Time) {
	if jj != nil && !jj.atEnd {
		jj.w.Observe(pool.Event{Kind: pool.EventTaskEnded, Time: at, TaskID: r.ID, Result: r})
	}
}

// key returns the key of an input, or the zero Key without a journal.
func (jj *jobJournal) key(input []byte) journal.Key {
	if jj == nil {
		return journal.Key{}
	}
	return journal.KeyOf(input)
}

// resuming reports whether earlier runs' work is looked up and skipped.
func (jj *jobJournal) resuming() bool { return jj != nil && jj.rs != nil }

// finished says whether an earlier run finished the input of key, and how.
func (jj *jobJournal) finished(key journal.Key) (journal.Finished, bool, error) {
	if jj == nil || jj.rs == nil {
		return journal.Finished{}, false, nil
	}
	return jj.rs.Lookup(key)
}

// submit records the seq-th input before it goes to the pool as task id.
func (jj *jobJournal) submit(id, seq uint64, key journal.Key, input []byte) {
	if jj != nil {
		jj.w.Submit(id, seq, key, input)
	}
}

// withdraw takes back the task of id id that submit, submitBatch or
// submitLines recorded, which the pool refused as it stopped.
func (jj *jobJournal) withdraw(id uint64) {
	if jj != nil {
		jj.w.Withdraw(id)
	}
}

// submitBatch records the inputs numbered seqs, with keys, before they go
// to the pool as one batch task (Task.Items) of id id.
func (jj *jobJournal) submitBatch(id uint64, seqs []uint64, keys []journal.Key, inputs [][]byte) {
	if jj != nil {
		jj.w.SubmitBatch(id, seqs, keys, inputs)
	}
}

// submitLines records the lines of block, numbered seqs, with keys, before
// they go to the pool as one batch task of id id.
func (jj *jobJournal) submitLines(id uint64, seqs []uint64, keys []journal.Key, block []byte) {
	if jj != nil {
		jj.w.SubmitLines(id, seqs, keys, block)
	}
}

// skip records the seq-th input as skipped.
func (jj *jobJournal) skip(seq uint64, key journal.Key, input []byte, f journal.Finished) {
	if jj != nil {
		cause := ""
		if f.State != string(pool.Done) {
			cause = f.Cause
			if cause == "" {
				cause = f.State
			}
		}
		jj.w.Skip(seq, key, input, cause)
	}
}

// close writes what is left and closes the file.
func (jj *jobJournal) close(status int) error {
	if jj == nil {
		return nil
	}
	var err error
	if jj.rs != nil {
		jj.rs.Close()
	}
	closeJournal := jj.j.Close
	if jj.w != nil {
		err = jj.w.Close(status)
	} else {
		// No run was added (Start failed, or the job stopped before
		// it): a journal file made for it is removed.
		closeJournal = jj.j.CloseUnused
	}
	if cerr := closeJournal(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("writing the journal: %w", err)
	}
	return nil
}

// replay is the output of a task an earlier run did, for map to write
// again: after the pool's task after (0: before any), in --keep-order.
type replay struct {
	after  uint64
	output []byte
}

// replayAhead is how many replayed outputs may wait between the feeder and the
// results loop; the feeder waits beyond it.
const replayAhead = 256

// feedBack is what the feeder gives the rest of a job: why it failed,
// the inputs it skipped, and the outputs of map's skipped inputs, to write
// in their place.
type feedBack struct {
	// fail stops the run with err: the pool aborts.
	fail func(error)
	// stop ends the input with err, such as an input that cannot be read:
	// what was read runs to its end, and the run then exits as stopped
	// before the end, with err as the reason.
	stop    func(error)
	replays chan<- replay
	// skipped counts the inputs skipped (the progress bar's count, which
	// the summary reads too); skippedFailed those of them that had failed.
	skipped       *atomic.Int64
	skippedFailed atomic.Int64
	metrics       *jobMetrics // counts the skipped inputs too
}

// skip records the seq-th input, with key, as skipped because an earlier
// run finished it as f, and sends map's output of it to be written after
// the pool's task after.
func (fb *feedBack) skip(mode string, jj *jobJournal, seq uint64, key journal.Key, input []byte, f journal.Finished, after uint64) {
	jj.skip(seq, key, input, f)
	fb.skipped.Add(1)
	fb.metrics.skipped(f.State)
	if f.State != string(pool.Done) {
		fb.skippedFailed.Add(1)
	} else if mode == "map" {
		fb.replays <- replay{after: after, output: f.Output}
	}
}

// feedStopped reports whether the feeder should stop skipping inputs: the
// run was interrupted or the pool has stopped.
func feedStopped(ctx context.Context, p *pool.Pool) bool {
	return ctx.Err() != nil || p.Err() != nil
}

// journalFileAt names the file of the journal at file that path is,
// however spelt (./jobs.db, a symbolic link to it), or returns "" when it
// is none of them: the journal, its span file, WAL or shared memory.
func journalFileAt(path, file string) string {
	abs := func(p string) string {
		a, err := filepath.Abs(p)
		if err != nil {
			return filepath.Clean(p)
		}
		return a
	}
	target, targetErr := os.Stat(path)
	for _, f := range []struct{ path, what string }{
		{file, "the journal"},
		{journal.SpanFile(file), "the journal's span file"},
		{file + "-wal", "the journal's WAL"},
		{file + "-shm", "the journal's shared memory"},
	} {
		if abs(path) == abs(f.path) {
			return f.what
		}
		if fi, err := os.Stat(f.path); err == nil && targetErr == nil && os.SameFile(fi, target) {
			return f.what
		}
	}
	return ""
}
