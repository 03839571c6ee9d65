package report_test

import (
	"cmp"
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/safepool/safepool/internal/report"
)

// TestSpikeKept: a single sample far above the rest, of one worker at one
// tick of a long run whose samples are many to a point of the chart, is
// drawn: in its worker's line, at its time, and in the total's. A point
// that was the mean, the first or the last of its span would lose it,
// and the chart would say that the run never came near the memory it
// took.
func TestSpikeKept(t *testing.T) {
	j := newTestJournal(t)
	start := time.Unix(1_700_000_000, 0)
	const (
		length  = 2 * time.Hour
		tick    = 100 * time.Millisecond
		workers = 4
		spike   = 7 << 30
	)
	id := j.addRun(t, runRow{started: start, ended: start.Add(length), kind: "run", command: "work {}",
		argv: []string{"safepool", "run", "work", "{}"}, workers: workers, memoryMode: "cgroup-v2", budget: 16 << 30, exitStatus: 0})
	spikeAt := start.Add(30862 * tick) // within a span of 120 ticks, not at its start
	tx, err := j.db.Begin()
	if err != nil {
		t.Fatal(err)
	}
	insert, err := tx.Prepare(`INSERT INTO sample (run_id, at, worker_pid, series, value) VALUES (?, ?, ?, ?, ?)`)
	if err != nil {
		t.Fatal(err)
	}
	for at := start; at.Before(start.Add(length)); at = at.Add(tick) {
		var total int64
		for w := range workers {
			v := int64(100+w*10) << 20
			if w == 2 && at.Equal(spikeAt) {
				v = spike
			}
			total += v
			if _, err := insert.Exec(id, at.UnixNano(), 2000+w, "worker", v); err != nil {
				t.Fatal(err)
			}
		}
		if _, err := insert.Exec(id, at.UnixNano(), 0, "total", total); err != nil {
			t.Fatal(err)
		}
	}
	if err := tx.Commit(); err != nil {
		t.Fatal(err)
	}

	r, err := report.Load(context.Background(), j.path, report.Options{})
	if err != nil {
		t.Fatal(err)
	}
	if n := len(r.Total); n < 500 || n > 600 {
		t.Fatalf("the total has %d points, want 500 to 600 (72,000 samples in 600 spans)", n)
	}
	at := spikeAt.Sub(start)
	if !slices.Contains(r.Total, report.Point{At: at, Value: spike + (100+110+130)<<20}) {
		t.Errorf("the total has no point at %v of the spike's value: highest %d", at, highest(r.Total))
	}
	if len(r.WorkerSeries) != workers || r.WorkerSeries[0].PID != 2002 || r.WorkerSeries[0].Peak != spike {
		t.Fatalf("worker series: %d, the first of pid %d with a peak of %d; want %d, worker 2002 first, with a peak of %d",
			len(r.WorkerSeries), r.WorkerSeries[0].PID, r.WorkerSeries[0].Peak, workers, int64(spike))
	}
	if !slices.Contains(r.WorkerSeries[0].Points, report.Point{At: at, Value: spike}) {
		t.Errorf("worker 2002's line has no point at %v of the spike's value: highest %d", at, highest(r.WorkerSeries[0].Points))
	}
	// And the page draws it: the memory chart's scale goes up to it.
	svg := memorySVG(t, j)
	if !strings.Contains(svg, "GiB") {
		t.Errorf("the memory chart's scale does not reach the spike of 7 GiB")
	}
}

func highest(pts []report.Point) int64 {
	var m int64
	for _, p := range pts {
		m = max(m, p.Value)
	}
	return m
}

// bucketedSQL is how the report read its series before it read them in
// one pass: the highest sample of each span in SQL, each series apart.
const bucketedSQL = `SELECT series, worker_pid, at, MAX(value) FROM sample WHERE run_id = ?1 AND %s
	GROUP BY series, worker_pid, (at - ?2) * ?3 / ?4 ORDER BY series, worker_pid, at`

// TestSamplesAsSQL: the series read in one pass are those that SQL's
// GROUP BY gives, span by span: in a journal of two runs (the samples of
// the other are not this one's), with samples out of time order, before
// the run's start and after its end, of series the report does not draw,
// and many workers of which the highest peaks are drawn; read in one
// part, or in parts at once.
func TestSamplesAsSQL(t *testing.T) {
	for _, c := range []struct {
		alone bool
		scans int
	}{{true, 1}, {false, 1}, {true, 3}, {false, 3}} {
		alone := c.alone
		t.Run(fmt.Sprintf("alone=%v,scans=%d", c.alone, c.scans), func(t *testing.T) {
			// Parts of a few thousand samples each: the table has about
			// 100,000.
			defer report.SetScans(c.scans, 1000)()
			j := newTestJournal(t)
			start := time.Unix(1_700_000_000, 0)
			length := 10 * time.Minute
			other := int64(0)
			if !alone {
				other = j.addRun(t, runRow{started: start.Add(-time.Hour), ended: start.Add(-time.Minute), kind: "run", command: "other",
					workers: 2, memoryMode: "cgroup-v2", exitStatus: 0})
			}
			id := j.addRun(t, runRow{started: start, ended: start.Add(length), kind: "run", command: "work {}",
				workers: 8, memoryMode: "cgroup-v2", budget: 8 << 30, limit: 1 << 30, exitStatus: 0})
			rnd := rand.New(rand.NewPCG(3, 4))
			tx, err := j.db.Begin()
			if err != nil {
				t.Fatal(err)
			}
			insert, err := tx.Prepare(`INSERT INTO sample (run_id, at, worker_pid, series, value) VALUES (?, ?, ?, ?, ?)`)
			if err != nil {
				t.Fatal(err)
			}
			add := func(run int64, at time.Time, pid int, series string, v int64) {
				if _, err := insert.Exec(run, at.UnixNano(), pid, series, v); err != nil {
					t.Fatal(err)
				}
			}
			for at := start.Add(-3 * time.Second); at.Before(start.Add(length + 5*time.Second)); at = at.Add(100 * time.Millisecond) {
				// Values of 40 random bits: no two alike, so that the
				// sample of a span is the same whichever of the
				// highest each way would pick.
				val := func() int64 { return rnd.Int64N(1 << 40) }
				for w := range 8 {
					pid := 3000 + w + 8*int(at.Sub(start)/(time.Minute)) // workers replaced every minute: 88 in all
					add(id, at, pid, "worker", val())
				}
				for _, s := range []string{"total", "budget", "limit", "running", "allowed", "other"} {
					add(id, at, 0, s, val())
				}
				add(id, at, 7, "total", val()) // not the whole pool's: not drawn
				if rnd.IntN(10) == 0 {
					// Written late, out of time order.
					add(id, at.Add(-time.Duration(rnd.IntN(20))*time.Second), 3001, "worker", val())
					add(id, at.Add(-time.Duration(rnd.IntN(20))*time.Second), 0, "total", val())
				}
				if other != 0 {
					add(other, at, 3000, "worker", 1<<45) // higher than any of this run's
					add(other, at, 0, "total", 1<<45)
				}
			}
			insert.Close()
			if err := tx.Commit(); err != nil {
				t.Fatal(err)
			}

			opt := report.Options{MaxPoints: 100, MaxWorkers: 10}
			r, err := report.Load(context.Background(), j.path, opt)
			if err != nil {
				t.Fatal(err)
			}
			t0, span := start.UnixNano(), int64(length)
			want := func(where string) map[string]map[int][]report.Point {
				rows, err := j.db.Query(fmt.Sprintf(bucketedSQL, where), id, t0, opt.MaxPoints, span+1)
				if err != nil {
					t.Fatal(err)
				}
				defer rows.Close()
				got := map[string]map[int][]report.Point{}
				for rows.Next() {
					var s string
					var pid int
					var at, v int64
					if err := rows.Scan(&s, &pid, &at, &v); err != nil {
						t.Fatal(err)
					}
					if got[s] == nil {
						got[s] = map[int][]report.Point{}
					}
					got[s][pid] = append(got[s][pid], report.Point{At: time.Duration(at - t0), Value: v})
				}
				if err := rows.Err(); err != nil {
					t.Fatal(err)
				}
				return got
			}
			whole := want("worker_pid = 0")
			for name, pts := range map[string][]report.Point{"total": r.Total, "budget": r.Budgets, "limit": r.Limits,
				"running": r.Running, "allowed": r.Allowed} {
				if len(pts) < 100 {
					t.Errorf("%s: %d points, want over 100 (100 spans and samples beyond them)", name, len(pts))
				}
				if !slices.Equal(pts, whole[name][0]) {
					t.Errorf("%s: %d points differ from SQL's %d", name, len(pts), len(whole[name][0]))
				}
			}
			workers := want("series = 'worker'")["worker"]
			if len(r.WorkerSeries) != 10 || r.WorkersLeftOut != len(workers)-10 {
				t.Fatalf("%d worker series, %d left out; want 10 of %d", len(r.WorkerSeries), r.WorkersLeftOut, len(workers))
			}
			var peaks []report.WorkerSeries
			for pid, pts := range workers {
				peaks = append(peaks, report.WorkerSeries{PID: pid, Peak: highest(pts)})
			}
			slices.SortFunc(peaks, func(a, b report.WorkerSeries) int {
				return cmp.Or(cmp.Compare(b.Peak, a.Peak), cmp.Compare(a.PID, b.PID))
			})
			for i, w := range r.WorkerSeries {
				if w.PID != peaks[i].PID || w.Peak != peaks[i].Peak {
					t.Errorf("worker series %d: pid %d peak %d; want pid %d peak %d", i, w.PID, w.Peak, peaks[i].PID, peaks[i].Peak)
				}
				if !slices.Equal(w.Points, workers[w.PID]) {
					t.Errorf("worker %d: %d points differ from SQL's %d", w.PID, len(w.Points), len(workers[w.PID]))
				}
			}
		})
	}
}

// BenchmarkReportLongRun loads and writes the report of the journal
// named by $SAFEPOOL_REPORT_JOURNAL, such as the synthetic run of 10
// hours at -j16 that bench/cmd/longjournal writes:
//
//	go run ./bench/cmd/longjournal -o /tmp/long.db
//	SAFEPOOL_REPORT_JOURNAL=/tmp/long.db go test -run '^$' -bench LongRun -benchtime 3x ./internal/report
func BenchmarkReportLongRun(b *testing.B) {
	path := os.Getenv("SAFEPOOL_REPORT_JOURNAL")
	if path == "" {
		b.Skip("SAFEPOOL_REPORT_JOURNAL names no journal")
	}
	for b.Loop() {
		r, err := report.Load(context.Background(), path, report.Options{})
		if err != nil {
			b.Fatal(err)
		}
		var w strings.Builder
		if err := report.Write(&w, r, report.Options{}); err != nil {
			b.Fatal(err)
		}
	}
}
