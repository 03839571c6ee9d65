package cli

import (
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/safepool/safepool/pool"
)

// joblogColumns are the columns of --joblog, in order. docs/cli.md
// describes them; scripts depend on the names.
var joblogColumns = []string{
	"task_id", "input", "attempt", "worker_pid", "start", "runtime",
	"exit_status", "signal", "cause", "peak_rss_bytes",
}

// joblogInputMax is how many bytes of an input a joblog row keeps.
const joblogInputMax = 256

// joblog writes one TSV row per attempt, as the attempt ends, with one
// write(2) per row and no buffer: after a crash of safepool, even a SIGKILL,
// the file holds a whole row for every attempt that had ended. Rows are
// added from the feeder and the pool's observer, so every method is safe for
// concurrent use. A nil *joblog does nothing.
type joblog struct {
	mu sync.Mutex // guards all below
	f  *os.File
	// inputs holds the input number and escaped input of each task that
	// has not ended, by pool id, for the rows of its attempts. Only tasks
	// the pool holds are here, so it is bounded like the pool's queue.
	inputs map[uint64]joblogTask
	err    error // the first write error
	// size is how many bytes of whole rows the file holds: a write cut
	// short (a full disk) is cut off there, so that no half row is left.
	size int64
}

// openJoblog creates (or truncates) path and writes the header row, so that
// a path that cannot be written is found before any work starts. With
// resume (--resume, --resume-failed), a job log that an earlier run wrote
// there is kept and added to (joblogToAppend), as GNU parallel's --resume
// does: rerun with the same command line after a kill, the run wrote over
// the rows of the runs before it, which said what they had done.
func openJoblog(path string, resume bool) (*joblog, error) {
	if resume {
		if f, size := joblogToAppend(path); f != nil {
			return &joblog{f: f, inputs: make(map[uint64]joblogTask), size: size}, nil
		}
	}
	f, err := os.Create(path)
	if err != nil {
		return nil, fmt.Errorf("cannot create the job log: %w", err)
	}
	j := &joblog{f: f, inputs: make(map[uint64]joblogTask)}
	if err := j.write(strings.Join(joblogColumns, "\t") + "\n"); err != nil {
		f.Close()
		return nil, fmt.Errorf("cannot write the job log: %w", err)
	}
	return j, nil
}

// joblogToAppend opens path to append to, with its size, when it is a
// regular file that holds a job log of whole rows: the header row first,
// the last row ended by its newline. Else (no such file, an empty one,
// another file named by mistake) it returns nil, and the file is made
// anew.
func joblogToAppend(path string) (*os.File, int64) {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		return nil, 0
	}
	fi, err := f.Stat()
	header := strings.Join(joblogColumns, "\t") + "\n"
	if err != nil || !fi.Mode().IsRegular() || fi.Size() < int64(len(header)) {
		f.Close()
		return nil, 0
	}
	r, err := os.Open(path)
	if err != nil {
		f.Close()
		return nil, 0
	}
	defer r.Close()
	head := make([]byte, len(header))
	last := make([]byte, 1)
	if _, err := r.ReadAt(head, 0); err != nil || string(head) != header {
		f.Close()
		return nil, 0
	}
	if _, err := r.ReadAt(last, fi.Size()-1); err != nil || last[0] != '\n' {
		f.Close()
		return nil, 0
	}
	return f, fi.Size()
}

// write writes rows, whole: when the write is cut short (a full disk),
// the part written is cut off the file, so that a reader of the job log
// (a script, or GNU parallel's --resume habits) never meets half a row. A
// pipe keeps what was written. j.mu is held, or j is not shared yet.
func (j *joblog) write(rows string) error {
	n, err := j.f.WriteString(rows)
	if err != nil {
		if n > 0 {
			j.f.Truncate(j.size)
		}
		return err
	}
	j.size += int64(n)
	return nil
}

// joblogTask is what the job log keeps of a task the pool holds.
type joblogTask struct {
	seq   uint64 // the input's number, the row's task_id
	input string // escaped
	// rowed says that the row of the task's successful attempt is written.
	rowed bool
}

// submit notes the input of pool task id, the seq-th input, before it is
// submitted. Without resume, seq is id.
func (j *joblog) submit(id, seq uint64, input []byte) {
	if j == nil {
		return
	}
	in := escapeInput(input, joblogInputMax)
	j.mu.Lock()
	j.inputs[id] = joblogTask{seq: seq, input: in}
	j.mu.Unlock()
}

// observe writes the row of an attempt that ended, and forgets the input of
// a task that ended.
func (j *joblog) observe(ev pool.Event) {
	if j == nil {
		return
	}
	switch {
	case ev.Kind == pool.EventAttemptEnded && ev.Attempt != nil:
		j.mu.Lock()
		defer j.mu.Unlock()
		t := j.inputs[ev.TaskID]
		if ev.Attempt.Cause == "" {
			t.rowed = true
			j.inputs[ev.TaskID] = t
		}
		if j.err != nil {
			return
		}
		row := joblogRow(t.seq, t.input, ev.Attempt)
		j.err = j.write(row)
	case ev.Kind == pool.EventTaskEnded && ev.Result.Items != nil:
		j.endItems(ev.Result)
	case ev.Kind == pool.EventTaskEnded:
		j.mu.Lock()
		delete(j.inputs, ev.TaskID)
		j.mu.Unlock()
	}
}

// endItems forgets the items of a batch's result, after it writes the row
// of each item that is done without an attempt of its own: the lines a
// worker answered in a block share the block's attempt, with the item's
// own times.
func (j *joblog) endItems(r *pool.Result) {
	j.mu.Lock()
	defer j.mu.Unlock()
	var b strings.Builder
	for i := range r.Items {
		it := &r.Items[i]
		t := j.inputs[it.ID]
		delete(j.inputs, it.ID)
		if r.State != pool.Done || t.rowed || len(r.Attempts) == 0 {
			continue
		}
		a := r.Attempts[len(r.Attempts)-1]
		a.Start, a.End = it.Start, it.End
		b.WriteString(joblogRow(t.seq, t.input, &a))
	}
	if j.err == nil && b.Len() > 0 {
		j.err = j.write(b.String())
	}
}

// close closes the file, and returns the first error.
func (j *joblog) close() error {
	if j == nil {
		return nil
	}
	j.mu.Lock()
	defer j.mu.Unlock()
	if err := j.f.Close(); err != nil && j.err == nil {
		j.err = err
	}
	if j.err != nil {
		return fmt.Errorf("writing the job log: %w", j.err)
	}
	return nil
}

// joblogRow renders the row of attempt a of task id, whose input is already
// escaped.
func joblogRow(id uint64, input string, a *pool.Attempt) string {
	exit := "-"
	if a.ExitCode >= 0 {
		exit = strconv.Itoa(a.ExitCode)
	}
	return fmt.Sprintf("%d\t%s\t%d\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n",
		id, input, a.Number, pidOrDash(a.WorkerPID),
		unixMillis(a.Start), seconds(a.End.Sub(a.Start)), exit,
		orDash(a.Signal), orDash(string(a.Cause)), peakOrDash(a.PeakRSS))
}

// unixMillis renders t as Unix seconds with milliseconds: 1718000000.123.
func unixMillis(t time.Time) string {
	if t.IsZero() {
		return "-"
	}
	ms := t.UnixMilli()
	return fmt.Sprintf("%d.%03d", ms/1000, ms%1000)
}

// seconds renders d in seconds with milliseconds: 1.250.
func seconds(d time.Duration) string {
	if d < 0 {
		d = 0
	}
	return strconv.FormatFloat(d.Seconds(), 'f', 3, 64)
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// pidOrDash renders a worker's pid, or "-" for an attempt that started no
// process (its command could not start): 0, which kill(1) takes for its own
// process group, is no pid to give a script.
func pidOrDash(pid int) string {
	if pid <= 0 {
		return "-"
	}
	return strconv.Itoa(pid)
}

func peakOrDash(n int64) string {
	if n <= 0 {
		return "-"
	}
	return strconv.FormatInt(n, 10)
}

// escapeInput renders an input on one line: backslash, tab, newline,
// carriage return, other control characters (C0 and C1) and invalid UTF-8
// are escaped Go style, so that no escape sequence reaches a terminal, and
// inputs longer than max bytes are cut and end in "…".
func escapeInput(in []byte, max int) string {
	cut := false
	if len(in) > max {
		in, cut = in[:max], true
		// Do not split a UTF-8 sequence.
		if s := lastRuneStart(in); !utf8.FullRune(in[s:]) {
			in = in[:s]
		}
	}
	var b strings.Builder
	for len(in) > 0 {
		r, size := utf8.DecodeRune(in)
		switch {
		case r == '\\':
			b.WriteString(`\\`)
		case r == '\t':
			b.WriteString(`\t`)
		case r == '\n':
			b.WriteString(`\n`)
		case r == '\r':
			b.WriteString(`\r`)
		case r == utf8.RuneError && size <= 1, r < 0x20, r == 0x7f:
			fmt.Fprintf(&b, `\x%02x`, in[0])
		case r >= 0x80 && r <= 0x9f:
			// C1 controls: a terminal may take U+009B for CSI.
			fmt.Fprintf(&b, `\u%04x`, r)
		default:
			b.Write(in[:size])
		}
		in = in[size:]
	}
	if cut {
		b.WriteString("…")
	}
	return b.String()
}

// lastRuneStart returns the index where the last, possibly partial, UTF-8
// sequence of b starts.
func lastRuneStart(b []byte) int {
	i := len(b) - 1
	for i > 0 && i > len(b)-4 && !utf8.RuneStart(b[i]) {
		i--
	}
	return i
}
