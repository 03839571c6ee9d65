package cli

import (
	"bufio"
	"fmt"
	"io"
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

// joblog writes one TSV row per attempt. Rows are added from the pool's
// observer goroutines, so every method is safe for concurrent use.
type joblog struct {
	mu  sync.Mutex // guards all below
	f   *os.File
	w   *bufio.Writer
	err error // the first write error
}

// openJoblog creates (or truncates) path and writes the header row.
func openJoblog(path string) (*joblog, error) {
	f, err := os.Create(path)
	if err != nil {
		return nil, fmt.Errorf("cannot create joblog: %w", err)
	}
	j := &joblog{f: f, w: bufio.NewWriterSize(f, 64<<10)}
	_, j.err = io.WriteString(j.w, strings.Join(joblogColumns, "\t")+"\n")
	return j, nil
}

// add writes the rows of every attempt of a task that has ended. Rows are
// written when the task ends, because only then is each attempt's row
// complete with the task's input.
func (j *joblog) add(r *pool.Result) {
	if j == nil || len(r.Attempts) == 0 {
		return
	}
	var b strings.Builder
	writeJoblogRows(&b, r)
	j.mu.Lock()
	defer j.mu.Unlock()
	if j.err == nil {
		_, j.err = j.w.WriteString(b.String())
	}
}

// close flushes and closes the file, and returns the first error.
func (j *joblog) close() error {
	if j == nil {
		return nil
	}
	j.mu.Lock()
	defer j.mu.Unlock()
	if err := j.w.Flush(); err != nil && j.err == nil {
		j.err = err
	}
	if err := j.f.Close(); err != nil && j.err == nil {
		j.err = err
	}
	if j.err != nil {
		return fmt.Errorf("writing joblog: %w", j.err)
	}
	return nil
}

// writeJoblogRows writes one row for each attempt of r.
func writeJoblogRows(b *strings.Builder, r *pool.Result) {
	input := escapeInput(r.Input, joblogInputMax)
	for _, a := range r.Attempts {
		exit := "-"
		if a.ExitCode >= 0 {
			exit = strconv.Itoa(a.ExitCode)
		}
		fmt.Fprintf(b, "%d\t%s\t%d\t%d\t%s\t%s\t%s\t%s\t%s\t%s\n",
			r.ID, input, a.Number, a.WorkerPID,
			unixMillis(a.Start), seconds(a.End.Sub(a.Start)), exit,
			orDash(a.Signal), orDash(string(a.Cause)), peakOrDash(a.PeakRSS))
	}
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

func peakOrDash(n int64) string {
	if n <= 0 {
		return "-"
	}
	return strconv.FormatInt(n, 10)
}

// escapeInput renders an input on one line: backslash, tab, newline,
// carriage return, other control bytes and invalid UTF-8 are escaped Go
// style, and inputs longer than max bytes are cut and end in "…".
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
