package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"syscall"

	"github.com/spf13/pflag"

	"github.com/safepool/safepool/internal/report"
)

var reportSynopsis = []string{"safepool report [flags] FILE"}

const reportIntro = `safepool report writes one HTML page about a run recorded in the journal
FILE (run or map with --journal FILE): the workers' memory over time, alone
and together, with the budget and the per-worker limit; the OOM kills,
preemptions and retries on the time axis; the attempts running and what the
memory governor allowed; a summary of causes; and a table of the tasks,
sorted by a click on a heading (runtime, peak memory, cause). The page needs
no network: open it in any browser, or send it as a file.
`

const reportOutro = `
A page stays small whatever the run: each line of a chart has at most 600
points (the highest sample of each span of time, so that no peak is lost),
the memory chart draws the 40 workers with the highest peaks one by one,
each kind of mark is drawn at most 500 times, and the table holds at most
2000 tasks: every task that did not end done, then the longest-running and
the largest of the rest. The page says what it left out.

The journal is read only, so a run still going on (or whose supervisor was
killed) can be looked at: the page shows what was recorded so far, and says
whether the run still goes on.

Exit status:
  0  the page was written
  1  the page could not be written
  2  usage error, or FILE is not a journal, or has no such run

Examples:
  safepool run --journal jobs.db -j 8 ./work.sh {} < inputs.txt
  safepool report jobs.db                     # writes jobs.html
  safepool report --run 1 -o first.html jobs.db
`

// reportArgs are the flags and arguments of safepool report.
type reportArgs struct {
	out  string // -o: the page's path, "-" for stdout; "" for the default
	run  int64  // --run; 0 means the last
	file string // the journal
}

func (a *reportArgs) flagSet() *pflag.FlagSet {
	fs := newFlagSet("report")
	// There is no command after the flags to protect: flags may follow
	// FILE, as in "safepool report jobs.db -o jobs.html".
	fs.SetInterspersed(true)
	fs.StringVarP(&a.out, "output", "o", "", "write the page to `OUT` (default: FILE with the extension .html; - for stdout)")
	fs.Int64Var(&a.run, "run", 0, "report on run `N` of the journal (default: the last)")
	registerHelp(fs)
	return fs
}

func (a *reportArgs) parse(e *env, args []string) error {
	fs := a.flagSet()
	if err := parseFlags("report", fs, args); err != nil {
		if err == errHelp {
			writeHelp(e.stdout, reportIntro, reportSynopsis, fs, reportOutro)
		}
		return err
	}
	switch {
	case fs.NArg() == 0:
		return usagef("report", "missing journal FILE")
	case fs.NArg() > 1:
		return usagef("report", "give one journal FILE, not %d", fs.NArg())
	case a.run < 0, a.run == 0 && fs.Changed("run"):
		return usagef("report", "--run must be a run's number, at least 1")
	}
	a.file = fs.Arg(0)
	given := a.out != ""
	if !given {
		a.out = strings.TrimSuffix(a.file, filepath.Ext(a.file)) + ".html"
	}
	if a.out != "-" {
		if what := journalFileAt(a.out, a.file); what != "" {
			if given {
				return usagef("report", "the page would overwrite %s: give -o another file", what)
			}
			return usagef("report", "the page would overwrite %s: give -o OUT", what)
		}
	}
	return nil
}

func runReport(ctx context.Context, e *env, args []string) error {
	var a reportArgs
	if err := a.parse(e, args); err != nil {
		if err == errHelp {
			return nil
		}
		return err
	}
	opt := report.Options{RunID: a.run}
	r, err := report.Load(ctx, a.file, opt)
	if err != nil {
		status := exitFailed
		if errors.Is(err, os.ErrNotExist) || errors.Is(err, report.ErrNotJournal) || errors.Is(err, report.ErrDamaged) || errors.Is(err, report.ErrNewerSchema) || errors.Is(err, report.ErrNoRun) {
			status = exitUsage
		}
		return &statusError{status: status, err: err}
	}
	where := a.out
	if a.out == "-" {
		// The line below goes on stderr all the same: it is not part of
		// the page, and it says whether the run still goes on.
		where = "the page on stdout"
		if err := report.Write(e.stdout, r, opt); err != nil {
			return reportWriteError(err)
		}
	} else if err := writeFileAtomic(a.out, func(w io.Writer) error { return report.Write(w, r, opt) }); err != nil {
		return reportWriteError(err)
	}
	var states []string
	for _, sc := range r.OrderedStates() {
		states = append(states, fmt.Sprintf("%d %s", sc.Count, sc.State))
	}
	note := ""
	if len(states) > 0 {
		note = ": " + strings.Join(states, ", ")
	}
	if n := r.EndNote(); n != "" {
		note += " (" + n + ")"
	}
	fmt.Fprintf(e.stderr, "safepool: wrote %s: run %d of %d, %s%s\n", where, r.ID, r.Runs, plural(r.Tasks, "task"), note)
	return nil
}

// reportWriteError is the status of a page that could not be written. A
// reader that went away (EPIPE, as after | head) wanted no more of it:
// the command stops quietly with status 3, as run and map do then.
func reportWriteError(err error) error {
	if errors.Is(err, syscall.EPIPE) {
		return &statusError{status: exitAborted}
	}
	return &statusError{status: exitFailed, err: err}
}

// writeFileAtomic writes path through write: to a temporary file beside
// it, renamed over path once complete, so that path is never left half
// written. A symbolic link is followed: the page replaces its target,
// and the link stays. A path that is not a regular file (/dev/null, a
// FIFO, /dev/stdout) is written into as it is: renaming over it would
// put a regular file in its place, /dev/null's for every program.
func writeFileAtomic(path string, write func(io.Writer) error) error {
	if fi, err := os.Stat(path); err == nil && !fi.Mode().IsRegular() {
		// Opened by its own path, which the kernel follows: /dev/stdout
		// is a link of /proc to a pipe that has no path.
		return writeInto(path, write)
	}
	target := linkTarget(path)
	perm := os.FileMode(0o644)
	if fi, err := os.Stat(target); err == nil {
		perm = fi.Mode().Perm() // the file's own, as a program writing it would keep
	}
	f, err := os.CreateTemp(filepath.Dir(target), "."+filepath.Base(target)+".*")
	if err != nil {
		return fmt.Errorf("cannot create %s: %w", path, err)
	}
	defer os.Remove(f.Name()) // after a successful rename, there is nothing to remove
	err = write(f)
	if err == nil {
		err = f.Chmod(perm)
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(f.Name(), target)
	}
	if err != nil {
		return fmt.Errorf("writing %s: %w", path, err)
	}
	return nil
}

// linkTarget follows path's symbolic links, to a target that may not
// exist yet.
func linkTarget(path string) string {
	for range 40 { // Linux's limit of links followed
		fi, err := os.Lstat(path)
		if err != nil || fi.Mode()&os.ModeSymlink == 0 {
			return path
		}
		link, err := os.Readlink(path)
		if err != nil {
			return path
		}
		if !filepath.IsAbs(link) {
			link = filepath.Join(filepath.Dir(path), link)
		}
		path = link
	}
	return path
}

// writeInto writes through write into path, which is not a regular file,
// opened as it is.
func writeInto(path string, write func(io.Writer) error) error {
	f, err := os.OpenFile(path, os.O_WRONLY, 0)
	if err != nil {
		return fmt.Errorf("cannot open %s: %w", path, err)
	}
	err = write(f)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("writing %s: %w", path, err)
	}
	return nil
}
