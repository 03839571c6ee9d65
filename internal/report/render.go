package report

import (
	_ "embed"
	"fmt"
	"html/template"
	"io"
	"strings"
	"time"

	"github.com/safepool/safepool/internal/bytesize"
)

//go:embed page.html
var pageHTML string

var page = template.Must(template.New("page").Funcs(template.FuncMap{"plural": plural}).Parse(pageHTML))

// plural is one when n is 1, else many.
func plural(n int, one, many string) string {
	if n == 1 {
		return one
	}
	return many
}

// page is what the template reads: the run, and what is worked out of it
// for the eye.
type pageData struct {
	R           *Run
	Command     string
	Started     clock
	Ended       clock
	Span        string
	ExitMeaning string
	Budget      string
	Limit       string
	States      []count
	MarkCards   []count
	Waited      string
	Memory      *chart
	Concurrency *chart
	Rows        []rowView
	Points      int
	MaxRows     int
}

// clock is a moment as the page gives it: in UTC, named, and in the
// form the page's script reads to give it in the reader's time zone.
type clock struct {
	UTC, ISO string
}

func clockOf(t time.Time) clock {
	t = t.UTC()
	return clock{UTC: t.Format("2006-01-02 15:04:05 UTC"), ISO: t.Format(time.RFC3339Nano)}
}

type count struct {
	// Label and One name Count things, and one thing.
	Name, Label, One string
	Count            int
	Bad              bool
}

type rowView struct {
	TaskRow
	RuntimeNS int64
	PeakBytes int64
	Runtime   string
	Peak      string
}

// Write renders r as one self-contained HTML page. opt bounds the page as
// it bounded Load; only MaxPoints and MaxRows are used, in what the page
// says.
func Write(w io.Writer, r *Run, opt Options) error {
	opt.normalize()
	d := &pageData{
		R:           r,
		Command:     r.Command,
		Started:     clockOf(r.Started),
		Ended:       clockOf(r.Ended),
		Span:        shortDuration(r.Span()),
		Budget:      sizeOrNone(r.Budget),
		Limit:       sizeOrNone(r.Limit),
		Memory:      memoryChart(r),
		Concurrency: concurrencyChart(r),
		Points:      opt.MaxPoints,
		MaxRows:     opt.MaxRows,
	}
	if len(r.Argv) > 0 {
		d.Command = commandLine(r.Argv)
	}
	if r.Kind == "run" || r.Kind == "map" {
		d.ExitMeaning = exitMeanings[r.ExitStatus]
	}
	for _, sc := range r.OrderedStates() {
		s, n := sc.State, sc.Count
		d.States = append(d.States, count{Name: s, Count: n, Bad: n > 0 && (s == "failed" || s == "poison")})
	}
	for _, k := range markKinds {
		n := r.MarkCounts[k]
		d.MarkCards = append(d.MarkCards, count{Name: k, Label: markPlurals[k], One: markOnes[k], Count: n, Bad: n > 0 && k != "retry"})
	}
	d.Waited = shortDuration(r.Waited)
	for _, t := range r.Rows {
		v := rowView{TaskRow: t, RuntimeNS: int64(t.Runtime), PeakBytes: t.Peak,
			Runtime: shortDuration(t.Runtime), Peak: "?"}
		if t.Peak > 0 {
			v.Peak = bytesize.Format(t.Peak)
		}
		d.Rows = append(d.Rows, v)
	}
	if err := page.Execute(w, d); err != nil {
		return fmt.Errorf("report: rendering: %w", err)
	}
	return nil
}

// markOnes name one mark in the summary.
var markOnes = map[string]string{
	"oom":       "OOM kill",
	"preempted": "preemption",
	"retry":     "retry",
	"poison":    "poisoned",
}

// markPlurals name the counts of marks in the summary.
var markPlurals = map[string]string{
	"oom":       "OOM kills",
	"preempted": "preemptions",
	"retry":     "retries",
	"poison":    "poisoned",
}

func sizeOrNone(n int64) string {
	if n <= 0 {
		return "none"
	}
	return bytesize.Format(n)
}

// exitMeanings say what the exit statuses of run and map mean (see
// docs/cli.md, Exit status).
var exitMeanings = map[int]string{
	0: "every task succeeded",
	1: "some tasks failed, a map worker got out of step, or the journal, job log or JSON summary could not be written in full",
	2: "a usage error, or the command could not start",
	3: "stopped before the end",
}

// commandShown is about how many bytes of a command line the page shows:
// a run's inputs may all be on it, after :::.
const commandShown = 1000

// commandLine is argv as a shell reads it, each argument quoted where it
// must be, cut after about commandShown bytes with the number of
// arguments left out.
func commandLine(argv []string) string {
	var b strings.Builder
	for i, a := range argv {
		if i > 0 && b.Len()+len(a) > commandShown {
			fmt.Fprintf(&b, " … and %d more %s", len(argv)-i, plural(len(argv)-i, "argument", "arguments"))
			break
		}
		if i > 0 {
			b.WriteByte(' ')
		}
		b.WriteString(shellQuote(a))
	}
	return b.String()
}

// shellQuote is a as one word for sh: as it is when it holds nothing sh
// reads otherwise ({} and the like included), else in single quotes.
func shellQuote(a string) string {
	safe := a != ""
	for _, c := range a {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || strings.ContainsRune("_@%+=:,./-{}", c)) {
			safe = false
			break
		}
	}
	// A brace with a comma is a brace expansion for bash.
	if safe && !(strings.ContainsRune(a, '{') && strings.ContainsRune(a, ',')) {
		return a
	}
	return "'" + strings.ReplaceAll(a, "'", `'\''`) + "'"
}
