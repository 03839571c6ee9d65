package report_test

import (
	"bytes"
	"context"
	"fmt"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chromedp/cdproto/emulation"
	"github.com/chromedp/cdproto/log"
	"github.com/chromedp/cdproto/network"
	cdppage "github.com/chromedp/cdproto/page"
	cdpruntime "github.com/chromedp/cdproto/runtime"
	"github.com/chromedp/chromedp"

	"github.com/safepool/safepool/internal/report"
	"github.com/safepool/safepool/internal/testenv"
)

// chromiumNames are the names Debian's chromium package, and others,
// install the browser under.
var chromiumNames = []string{"chromium", "chromium-browser", "google-chrome", "headless-shell"}

// newBrowser starts a headless Chromium for t, or skips t (fails it in CI)
// where there is none.
func newBrowser(t *testing.T) context.Context {
	t.Helper()
	var path string
	for _, name := range chromiumNames {
		if p, err := exec.LookPath(name); err == nil {
			path = p
			break
		}
	}
	if path == "" {
		testenv.SkipOrFail(t, "no Chromium in PATH (Debian: apt-get install chromium)")
	}
	opts := append(chromedp.DefaultExecAllocatorOptions[:],
		chromedp.ExecPath(path),
		chromedp.WindowSize(1200, 1450),
		chromedp.UserDataDir(t.TempDir()),
		// Chromium leaves a directory of its own (org.chromium.Chromium.*)
		// in $TMPDIR when it is ended; the test's removes it.
		chromedp.Env("TMPDIR="+t.TempDir()),
	)
	if os.Geteuid() == 0 {
		// Chromium refuses to run its sandbox as root.
		opts = append(opts, chromedp.NoSandbox)
	}
	actx, cancelAlloc := chromedp.NewExecAllocator(context.Background(), opts...)
	ctx, cancelCtx := chromedp.NewContext(actx)
	ctx, cancelTimeout := context.WithTimeout(ctx, 90*time.Second)
	t.Cleanup(func() {
		cancelTimeout()
		cancelCtx()
		cancelAlloc() // ends the browser and waits for it
	})
	// Start the browser now, so its start-up does not count against the
	// first action.
	if err := chromedp.Do(ctx); err != nil {
		t.Fatalf("starting %s: %v", path, err)
	}
	return ctx
}

// pageWatch collects what a page does that a report must not: requests
// for anything but the page itself, console errors and warnings, and
// uncaught exceptions.
type pageWatch struct {
	mu       sync.Mutex
	requests []string
	problems []string
}

func watchPage(t *testing.T, ctx context.Context) *pageWatch {
	t.Helper()
	w := &pageWatch{}
	err := chromedp.Listen(ctx, func(ev any) {
		w.mu.Lock()
		defer w.mu.Unlock()
		switch ev := ev.(type) {
		case *network.EventRequestWillBeSent:
			w.requests = append(w.requests, ev.Request.URL)
		case *cdpruntime.EventConsoleAPICalled:
			if ev.Type == cdpruntime.ConsoleAPICalledTypeError || ev.Type == cdpruntime.ConsoleAPICalledTypeWarning || ev.Type == cdpruntime.ConsoleAPICalledTypeAssert {
				var args []string
				for _, a := range ev.Args {
					args = append(args, string(a.Value)+a.Description)
				}
				w.problems = append(w.problems, fmt.Sprintf("console.%s: %s", ev.Type, strings.Join(args, " ")))
			}
		case *cdpruntime.EventExceptionThrown:
			w.problems = append(w.problems, "exception: "+ev.ExceptionDetails.Text+" "+exceptionText(ev.ExceptionDetails))
		case *log.EventEntryAdded:
			if ev.Entry.Level == log.EntryLevelError || ev.Entry.Level == log.EntryLevelWarning {
				w.problems = append(w.problems, fmt.Sprintf("log %s (%s): %s %s", ev.Entry.Level, ev.Entry.Source, ev.Entry.Text, ev.Entry.URL))
			}
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	return w
}

func exceptionText(d *cdpruntime.ExceptionDetails) string {
	if d.Exception != nil {
		return d.Exception.Description
	}
	return ""
}

// check fails t for a request to anything but page, and for any problem.
func (w *pageWatch) check(t *testing.T, page string) {
	t.Helper()
	w.mu.Lock()
	defer w.mu.Unlock()
	for _, u := range w.requests {
		if u != page {
			t.Errorf("the page requested %s", u)
		}
	}
	for _, p := range w.problems {
		t.Errorf("the page reported %s", p)
	}
}

// openPage writes html to a file and loads it in the browser.
func openPage(t *testing.T, ctx context.Context, html []byte) (pageURL string, w *pageWatch) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "report.html")
	if err := os.WriteFile(path, html, 0o644); err != nil {
		t.Fatal(err)
	}
	pageURL = (&url.URL{Scheme: "file", Path: path}).String()
	w = watchPage(t, ctx)
	if err := chromedp.Do(ctx, chromedp.Navigate(pageURL), chromedp.WaitReady(chromedp.CSS("body"))); err != nil {
		t.Fatal(err)
	}
	return pageURL, w
}

// eval evaluates a JavaScript expression in the page.
func eval[T any](t *testing.T, ctx context.Context, js string) T {
	t.Helper()
	v, err := chromedp.Run(ctx, chromedp.Evaluate[T](js))
	if err != nil {
		t.Fatalf("%s: %v", js, err)
	}
	return v
}

// column returns a column's sort keys (data-v) in the table's row order.
func column(t *testing.T, ctx context.Context, col int) []string {
	t.Helper()
	return eval[[]string](t, ctx, fmt.Sprintf(
		`Array.from(document.querySelectorAll("#tasks tbody tr")).map(r => r.cells[%d].getAttribute("data-v"))`, col))
}

// clickHeader clicks the table's heading of column col (counting from 0).
func clickHeader(t *testing.T, ctx context.Context, col int) {
	t.Helper()
	if err := chromedp.Do(ctx, chromedp.Click(chromedp.CSS(fmt.Sprintf("#tasks thead th:nth-child(%d)", col+1)))); err != nil {
		t.Fatal(err)
	}
}

// numbersSorted reports whether vs, read as numbers, are in order: rising
// when up, else falling.
func numbersSorted(vs []string, up bool) bool {
	var ns []float64
	for _, v := range vs {
		var f float64
		fmt.Sscan(v, &f)
		ns = append(ns, f)
	}
	if !up {
		slices.Reverse(ns)
	}
	return slices.IsSorted(ns)
}

// Column numbers of the task table.
const (
	colID      = 0
	colCause   = 4
	colRuntime = 5
	colPeak    = 6
)

// TestPageInChromium renders the journal of a real run (OOM kills and
// retries included), loads the page in headless Chromium and checks what
// it shows: drawn charts with the budget, limit and marks, every task in
// the table, sorting by a click on a heading, and no console error or
// network request. With UPDATE_SCREENSHOT=1 it also saves the picture of
// the page in docs/img/report.png.
func TestPageInChromium(t *testing.T) {
	j, _ := recordRun(t)
	ctx := newBrowser(t)
	r, err := report.Load(context.Background(), j.path, report.Options{})
	if err != nil {
		t.Fatal(err)
	}
	var b bytes.Buffer
	if err := report.Write(&b, r, report.Options{}); err != nil {
		t.Fatal(err)
	}
	t.Logf("page: %d bytes", b.Len())
	page, w := openPage(t, ctx, b.Bytes())

	counts := map[string]int{
		"#chart-memory polyline.total":        1,
		"#chart-memory polyline.budget":       1,
		"#chart-memory polyline.limit":        1,
		"#chart-memory line.mark-oom":         3,
		"#chart-memory line.mark-retry":       3,
		"#chart-concurrency polyline.running": 1,
		"#chart-concurrency polyline.allowed": 1,
		"#chart-concurrency line.mark-oom":    3,
		"#tasks tbody tr":                     30,
	}
	for sel, want := range counts {
		if got := eval[int](t, ctx, fmt.Sprintf("document.querySelectorAll(%q).length", sel)); got != want {
			t.Errorf("%s: %d elements, want %d", sel, got, want)
		}
	}
	if n := eval[int](t, ctx, `document.querySelectorAll("#chart-memory polyline.worker").length`); n < 4 {
		t.Errorf("%d worker lines in the memory chart, want at least the 4 workers", n)
	}
	// Drawn: the lines span the chart, not a point in a corner.
	for _, sel := range []string{"#chart-memory polyline.total", "#chart-concurrency polyline.running"} {
		width := eval[float64](t, ctx, fmt.Sprintf("document.querySelector(%q).getBoundingClientRect().width", sel))
		if width < 500 {
			t.Errorf("%s is %.0f px wide, want it across the chart", sel, width)
		}
	}
	if got := eval[string](t, ctx, `document.querySelector('#summary [data-mark="oom"] b').textContent`); got != "3" {
		t.Errorf("OOM kills in the summary = %q, want 3", got)
	}
	if got := eval[string](t, ctx, `document.querySelector("#causes tbody tr td").textContent`); got != "oom" {
		t.Errorf("first cause = %q, want oom", got)
	}

	// Sorting: by peak memory, largest first, then smallest first; by
	// runtime; by cause, where the failed task comes first.
	before := column(t, ctx, colID)
	if !numbersSorted(before, true) {
		t.Errorf("rows before sorting = %v, want in task order", before)
	}
	clickHeader(t, ctx, colPeak)
	if peaks := column(t, ctx, colPeak); !numbersSorted(peaks, false) {
		t.Errorf("after one click on peak memory, peaks = %v, want largest first", peaks)
	}
	if ids := column(t, ctx, colID); slices.Equal(ids, before) {
		t.Errorf("a click on peak memory left the rows in task order")
	}
	clickHeader(t, ctx, colPeak)
	if peaks := column(t, ctx, colPeak); !numbersSorted(peaks, true) {
		t.Errorf("after two clicks on peak memory, peaks = %v, want smallest first", peaks)
	}
	clickHeader(t, ctx, colRuntime)
	if rts := column(t, ctx, colRuntime); !numbersSorted(rts, false) {
		t.Errorf("after a click on runtime, runtimes = %v, want longest first", rts)
	}
	clickHeader(t, ctx, colCause)
	if ids := column(t, ctx, colID); ids[0] != "17" {
		t.Errorf("after a click on cause, first task = %s, want 17 (the only task with a cause)", ids[0])
	}
	if got := eval[string](t, ctx, `document.querySelector("#tasks thead th:nth-child(5)").getAttribute("aria-sort")`); got != "descending" {
		t.Errorf("cause heading aria-sort = %q, want descending", got)
	}
	w.check(t, page)

	if os.Getenv("UPDATE_SCREENSHOT") == "1" {
		clickHeader(t, ctx, colID)
		png, err := chromedp.Run(ctx, chromedp.CaptureScreenshot())
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join("..", "..", "docs", "img", "report.png"), png, 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

// TestPageBoundsInChromium loads the pages of a run of 3000 tasks and
// many samples, and of a run with no samples at all: both render, the
// first with the table bounded, the second saying there is nothing to draw.
func TestPageBoundsInChromium(t *testing.T) {
	j := newTestJournal(t)
	big := syntheticRun(t, j, 3000, 10, 2*time.Minute, 500*time.Millisecond)
	start := time.Unix(1_700_000_000, 0)
	bare := j.addRun(t, runRow{started: start, kind: "run", command: "true", argv: []string{"safepool", "run", "true"},
		workers: 2, memoryMode: "no-cgroup", exitStatus: -1})
	j.exec(t, `INSERT INTO task (run_id, id, key, input, state) VALUES (?, 1, 'k', 'x', 'pending')`, bare)
	ctx := newBrowser(t)

	tests := []struct {
		name  string
		run   int64
		rows  int
		empty int // charts that say they have nothing to draw
	}{
		{"3000 tasks", big, 2000, 0},
		{"no samples", bare, 1, 2},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r, err := report.Load(context.Background(), j.path, report.Options{RunID: tt.run})
			if err != nil {
				t.Fatal(err)
			}
			var b bytes.Buffer
			if err := report.Write(&b, r, report.Options{}); err != nil {
				t.Fatal(err)
			}
			t.Logf("page: %d bytes", b.Len())
			page, w := openPage(t, ctx, b.Bytes())
			if got := eval[int](t, ctx, `document.querySelectorAll("#tasks tbody tr").length`); got != tt.rows {
				t.Errorf("%d rows, want %d", got, tt.rows)
			}
			if got := eval[int](t, ctx, `document.querySelectorAll("svg text.empty").length`); got != tt.empty {
				t.Errorf("%d charts say they are empty, want %d", got, tt.empty)
			}
			clickHeader(t, ctx, colPeak)
			if peaks := column(t, ctx, colPeak); !numbersSorted(peaks, false) {
				t.Errorf("after a click on peak memory, the rows are not largest first")
			}
			w.check(t, page)
		})
	}
}

// TestPageWatchCatches checks the checker: a page that requests an image
// and writes a console error is caught.
func TestPageWatchCatches(t *testing.T) {
	ctx := newBrowser(t)
	bad := `<!DOCTYPE html><html><body><img src="http://127.0.0.1:1/x.png"><script>console.error("boom")</script></body></html>`
	_, w := openPage(t, ctx, []byte(bad))
	// Let the image's request go out.
	time.Sleep(200 * time.Millisecond)
	w.mu.Lock()
	defer w.mu.Unlock()
	if !slices.Contains(w.requests, "http://127.0.0.1:1/x.png") {
		t.Errorf("requests = %v, want the image's", w.requests)
	}
	if !slices.ContainsFunc(w.problems, func(p string) bool { return strings.Contains(p, "boom") }) {
		t.Errorf("problems = %v, want the console error", w.problems)
	}
}

// TestPageEscapesInChromium loads the page of a run whose command line,
// inputs, causes and event details hold HTML and script, as inputs and
// workers' messages may: the page runs none of it (no dialog opens, the
// page's own script is its only one, no element of theirs is made) and
// shows it as text.
func TestPageEscapesInChromium(t *testing.T) {
	j := newTestJournal(t)
	start := time.Unix(1_700_000_000, 0)
	const attack = `</td></title></svg><script>alert("x")</script><img src=x onerror=alert(1)>'"`
	id := j.addRun(t, runRow{started: start, ended: start.Add(time.Minute), kind: "run", command: "work " + attack,
		argv: []string{"safepool", "run", "work", attack}, workers: 2, memoryMode: "cgroup-v2", budget: 1 << 30, exitStatus: 1})
	inputs := []string{attack, `"><svg onload=alert(2)>`, `<em id="made">em</em>`}
	for i, in := range inputs {
		j.exec(t, `INSERT INTO task (run_id, id, key, input, state, attempts, cause, peak, ended)
			VALUES (?, ?, x'00', ?, 'failed', 1, ?, 1048576, ?)`, id, i+1, []byte(in), "exit:1"+attack, start.Add(time.Second).UnixNano())
		j.exec(t, `INSERT INTO attempt (run_id, task_id, number, worker_pid, started, ended, cause, peak, message)
			VALUES (?, ?, 1, 100, ?, ?, 'oom', 1048576, ?)`, id, i+1, start.UnixNano(), start.Add(time.Second).UnixNano(), attack)
		j.exec(t, `INSERT INTO event (run_id, at, kind, task_id, worker_pid, detail) VALUES (?, ?, 'oom', ?, 100, ?)`,
			id, start.Add(time.Second).UnixNano(), i+1, attack)
	}
	for k := range 10 {
		j.exec(t, `INSERT INTO sample (run_id, at, worker_pid, series, value) VALUES (?, ?, 0, 'total', ?)`,
			id, start.Add(time.Duration(k)*time.Second).UnixNano(), int64(k)<<20)
	}
	r, err := report.Load(context.Background(), j.path, report.Options{})
	if err != nil {
		t.Fatal(err)
	}
	var b bytes.Buffer
	if err := report.Write(&b, r, report.Options{}); err != nil {
		t.Fatal(err)
	}
	ctx := newBrowser(t)
	var dialogs sync.Map
	err = chromedp.Listen(ctx, func(ev any) {
		if d, ok := ev.(*cdppage.EventJavascriptDialogOpening); ok {
			dialogs.Store(d.Message, true)
			go chromedp.Call(ctx, cdppage.HandleJavaScriptDialog, cdppage.HandleJavaScriptDialogParams{Accept: false})
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	page, w := openPage(t, ctx, b.Bytes())
	dialogs.Range(func(k, _ any) bool {
		t.Errorf("the page opened a dialog: %v", k)
		return true
	})
	for sel, want := range map[string]int{"script": 1, "img": 0, "#made": 0, "[onerror], [onload]": 0, "#tasks tbody tr": 3} {
		if got := eval[int](t, ctx, fmt.Sprintf("document.querySelectorAll(%q).length", sel)); got != want {
			t.Errorf("%s: %d elements, want %d", sel, got, want)
		}
	}
	if got := eval[string](t, ctx, `document.querySelector(".command").textContent`); got != "safepool run work '"+strings.ReplaceAll(attack, "'", `'\''`)+"'" {
		t.Errorf("command = %q, want the argv as text", got)
	}
	got := eval[[]string](t, ctx, `Array.from(document.querySelectorAll("#tasks tbody td.input")).map(td => td.textContent)`)
	if !slices.Equal(got, inputs) {
		t.Errorf("inputs shown as %q, want %q as text", got, inputs)
	}
	titles := eval[[]string](t, ctx, `Array.from(document.querySelectorAll("#chart-memory g title")).map(e => e.textContent)`)
	if len(titles) != 3 || !strings.HasSuffix(titles[0], ": "+attack) {
		t.Errorf("OOM marks' titles = %q, want 3 ending in the detail as text", titles)
	}
	w.check(t, page)
}

// TestPageTimesInChromium: the page says when the run started and ended
// in the reader's time zone, naming it, with UTC in the title; a page
// without script (a text browser) shows UTC, named. It gave the start
// in UTC only, as "13:48:08Z", and no end: a reader in New York had to
// work out when an overnight run ended.
func TestPageTimesInChromium(t *testing.T) {
	j := newTestJournal(t)
	start := time.Unix(1_700_000_000, 0) // 2023-11-14 22:13:20 UTC
	ended := j.addRun(t, runRow{started: start, ended: start.Add(7*time.Hour + 30*time.Second), kind: "run", command: "work {}",
		argv: []string{"safepool", "run", "work", "{}"}, workers: 2, memoryMode: "cgroup-v2", exitStatus: 0})
	live := j.addRun(t, runRow{started: start, kind: "run", command: "work {}",
		argv: []string{"safepool", "run", "work", "{}"}, workers: 2, memoryMode: "cgroup-v2", exitStatus: -1})
	j.exec(t, `INSERT INTO sample (run_id, at, worker_pid, series, value) VALUES (?, ?, 0, 'total', 1)`,
		live, start.Add(time.Hour).UnixNano())
	// An OOM kill 3h20m into the run that ended: its mark says when, by
	// the clock too.
	j.exec(t, `INSERT INTO event (run_id, at, kind, task_id, worker_pid) VALUES (?, ?, 'oom', 5, 100)`,
		ended, start.Add(3*time.Hour+20*time.Minute).UnixNano())
	ctx := newBrowser(t)
	if _, err := chromedp.Call(ctx, emulation.SetTimezoneOverride, emulation.SetTimezoneOverrideParams{TimezoneID: "America/New_York"}); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		run                 int64
		started, end, label string
		endUTC              string
	}{
		{ended, "2023-11-14 17:13:20 EST", "2023-11-15 00:13:50 EST", "ended", "2023-11-15 05:13:50 UTC"},
		{live, "2023-11-14 17:13:20 EST", "2023-11-14 18:13:20 EST", "last record", "2023-11-14 23:13:20 UTC"},
	}
	for _, tt := range tests {
		r, err := report.Load(context.Background(), j.path, report.Options{RunID: tt.run})
		if err != nil {
			t.Fatal(err)
		}
		var b bytes.Buffer
		if err := report.Write(&b, r, report.Options{}); err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(b.String(), ">"+tt.endUTC+"</time>") || !strings.Contains(b.String(), ">2023-11-14 22:13:20 UTC</time>") {
			t.Errorf("run %d: the page without script does not give the times in UTC, named", tt.run)
		}
		page, w := openPage(t, ctx, b.Bytes())
		got := eval[[]string](t, ctx, `Array.from(document.querySelectorAll(".meta time")).map(e => e.parentNode.firstElementChild.textContent + ": " + e.textContent + " (" + e.title + ")")`)
		want := []string{
			"started: " + tt.started + " (2023-11-14 22:13:20 UTC)",
			tt.label + ": " + tt.end + " (" + tt.endUTC + ")",
		}
		if !slices.Equal(got, want) {
			t.Errorf("run %d: times = %q, want %q", tt.run, got, want)
		}
		if tt.run == ended {
			if utc := "<title>OOM kill at 3h20m (2023-11-15 01:33:20 UTC), task 5, worker 100</title>"; !strings.Contains(b.String(), utc) {
				t.Errorf("the page without script does not say %q", utc)
			}
			mark := eval[string](t, ctx, `document.querySelector("#chart-memory g title").textContent`)
			if want := "OOM kill at 3h20m (2023-11-14 20:33:20 EST), task 5, worker 100"; mark != want {
				t.Errorf("the OOM kill's mark says %q, want %q", mark, want)
			}
		}
		w.check(t, page)
	}
}

// TestRetryMarksLeaveChartsReadable: a run of many retries keeps its
// charts readable: a retry is a tick at the top of the plot, not a line
// across it, so that 500 of them do not cover the memory and the
// attempts running (a resumed run of 497 retries drew a wall of lines
// over them). OOM kills are still lines across.
func TestRetryMarksLeaveChartsReadable(t *testing.T) {
	j := newTestJournal(t)
	start := time.Unix(1_700_000_000, 0)
	id := j.addRun(t, runRow{started: start, ended: start.Add(500 * time.Second), kind: "run", command: "work {}",
		argv: []string{"safepool", "run", "work", "{}"}, workers: 2, memoryMode: "cgroup-v2", exitStatus: 0})
	for k := range 500 {
		at := start.Add(time.Duration(k) * time.Second)
		j.exec(t, `INSERT INTO sample (run_id, at, worker_pid, series, value) VALUES (?, ?, 0, 'total', ?)`, id, at.UnixNano(), int64(100+k%7)<<20)
		j.exec(t, `INSERT INTO sample (run_id, at, worker_pid, series, value) VALUES (?, ?, 0, 'running', 2)`, id, at.UnixNano())
		j.exec(t, `INSERT INTO event (run_id, at, kind, task_id, worker_pid) VALUES (?, ?, 'retry', ?, 100)`, id, at.Add(time.Second/2).UnixNano(), k+1)
	}
	j.exec(t, `INSERT INTO event (run_id, at, kind, task_id, worker_pid) VALUES (?, ?, 'oom', 7, 100)`, id, start.Add(250*time.Second).UnixNano())
	r, err := report.Load(context.Background(), j.path, report.Options{})
	if err != nil {
		t.Fatal(err)
	}
	var b bytes.Buffer
	if err := report.Write(&b, r, report.Options{}); err != nil {
		t.Fatal(err)
	}
	ctx := newBrowser(t)
	page, w := openPage(t, ctx, b.Bytes())
	if got := eval[int](t, ctx, `document.querySelectorAll("#chart-memory line.mark-retry").length`); got != 500 {
		t.Fatalf("%d retry marks, want 500", got)
	}
	// What is seen across the middle of each plot: not retry marks.
	for _, chart := range []string{"memory", "concurrency"} {
		hits := eval[int](t, ctx, fmt.Sprintf(`(function () {
			var r = document.querySelector("#chart-%s rect.frame").getBoundingClientRect(), n = 0;
			window.scrollTo(0, r.top + window.scrollY - 100);
			r = document.querySelector("#chart-%s rect.frame").getBoundingClientRect();
			for (var x = r.left + 2; x < r.right - 2; x += 1) {
				var e = document.elementFromPoint(x, r.top + r.height / 2);
				if (e && e.classList.contains("mark-retry")) n++;
			}
			return n;
		})()`, chart, chart))
		if hits > 0 {
			t.Errorf("%s chart: retry marks cover %d points of its middle line", chart, hits)
		}
	}
	oom := eval[float64](t, ctx, `(function () {
		var f = document.querySelector("#chart-memory rect.frame").getBoundingClientRect();
		return document.querySelector("#chart-memory line.mark-oom").getBoundingClientRect().height / f.height;
	})()`)
	if oom < 0.99 {
		t.Errorf("the OOM kill's mark is %.0f%% of the plot's height, want a line across it", 100*oom)
	}
	w.check(t, page)
}
