package report_test

import (
	"context"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/safepool/safepool/internal/report"
)

// TestWorkerLinesBreak: a worker's memory is drawn only where it was
// sampled. A 100,000-task run of one-shot jobs hands the same pids out
// again and again, and the lines of its busiest pids ran across the whole
// chart, from one job of the pid to another a minute later, as if one
// worker had held that memory all along.
func TestWorkerLinesBreak(t *testing.T) {
	j := newTestJournal(t)
	start := time.Unix(1_700_000_000, 0)
	id := j.addRun(t, runRow{started: start, ended: start.Add(10 * time.Second), kind: "run", command: "work",
		workers: 2, memoryMode: "cgroup-v2", exitStatus: 0})
	sample := func(at time.Duration, pid int, series string, v int64) {
		mustExec(t, j, `INSERT INTO sample (run_id, at, worker_pid, series, value) VALUES (?, ?, ?, ?, ?)`,
			id, start.Add(at).UnixNano(), pid, series, v)
	}
	for at := time.Duration(0); at <= 10*time.Second; at += 100 * time.Millisecond {
		sample(at, 0, "total", 300<<20)
		// pid 100: two jobs, from 1 s to 2 s and from 8 s to 9 s.
		if at >= time.Second && at <= 2*time.Second || at >= 8*time.Second && at <= 9*time.Second {
			sample(at, 100, "worker", 200<<20)
		}
		// pid 200: one worker all along, missed at one tick.
		if at != 5*time.Second {
			sample(at, 200, "worker", 100<<20)
		}
	}
	// pid 300: two short jobs, one sample each.
	sample(3*time.Second, 300, "worker", 50<<20)
	sample(6*time.Second, 300, "worker", 50<<20)

	r, err := report.Load(context.Background(), j.path, report.Options{})
	if err != nil {
		t.Fatal(err)
	}
	want := map[int]int{100: 2, 200: 1, 300: 2} // lines a pid
	for _, w := range r.WorkerSeries {
		if got := len(w.Segments()); got != want[w.PID] {
			t.Errorf("worker %d: %d lines (breaks at %v), want %d", w.PID, got, w.Breaks, want[w.PID])
		}
	}
	var page strings.Builder
	if err := report.Write(&page, r, report.Options{}); err != nil {
		t.Fatal(err)
	}
	re := regexp.MustCompile(`<polyline class="worker w\d" points="([^"]*)"><title>worker (\d+),`)
	lines := map[string]int{}
	for _, m := range re.FindAllStringSubmatch(page.String(), -1) {
		lines[m[2]]++
		if strings.Count(m[1], ",") < 2 {
			t.Errorf("worker %s: a line of one point, which is not drawn: %q", m[2], m[1])
		}
	}
	for pid, n := range map[string]int{"100": 2, "200": 1, "300": 2} {
		if lines[pid] != n {
			t.Errorf("the page draws %d lines of worker %s, want %d", lines[pid], pid, n)
		}
	}
}
