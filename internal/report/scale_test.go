package report_test

import (
	"bytes"
	"context"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/safepool/safepool/internal/report"
)

// memorySVG renders the run of j and returns the memory chart's SVG and
// its legend.
func memorySVG(t *testing.T, j *testJournal) string {
	t.Helper()
	r, err := report.Load(context.Background(), j.path, report.Options{})
	if err != nil {
		t.Fatal(err)
	}
	var b bytes.Buffer
	if err := report.Write(&b, r, report.Options{}); err != nil {
		t.Fatal(err)
	}
	page := b.String()
	i := strings.Index(page, `<svg id="chart-memory"`)
	if i < 0 {
		t.Fatal("no memory chart in the page")
	}
	end := strings.Index(page[i:], `<svg id="chart-concurrency"`)
	if end < 0 {
		t.Fatal("no concurrency chart in the page")
	}
	return page[i : i+end]
}

// workersRun writes a run of 60 s whose two workers hold 40 and 60 MiB,
// with a budget and a per-worker limit given in bytes.
func workersRun(t *testing.T, j *testJournal, budget, limit int64) {
	t.Helper()
	start := time.Unix(1_700_000_000, 0)
	id := j.addRun(t, runRow{started: start, ended: start.Add(time.Minute), kind: "run", command: "work",
		workers: 2, memoryMode: "cgroup-v2", budget: budget, limit: limit, exitStatus: 0})
	for at := start; at.Before(start.Add(time.Minute)); at = at.Add(time.Second) {
		for _, s := range []struct {
			pid    int
			series string
			v      int64
		}{{101, "worker", 40 << 20}, {102, "worker", 60 << 20}, {0, "total", 100 << 20}, {0, "budget", budget}} {
			mustExec(t, j, `INSERT INTO sample (run_id, at, worker_pid, series, value) VALUES (?, ?, ?, ?, ?)`,
				id, at.UnixNano(), s.pid, s.series, s.v)
		}
	}
}

var yLabels = regexp.MustCompile(`text-anchor="end" dominant-baseline="middle">([^<]+)<`)

// TestMemoryChartScale: the memory chart's scale is the workers' memory.
// A budget or limit far above it (the budget is the host's memory by
// default: 22 GiB for workers of 100 MiB) is named in the legend, not
// drawn: the scale went up to the budget, and the workers' lines lay
// flat on the axis, their memory unreadable. A budget within reach of
// the workers' memory is drawn, as before.
func TestMemoryChartScale(t *testing.T) {
	j := newTestJournal(t)
	workersRun(t, j, 22<<30, 8<<30)
	svg := memorySVG(t, j)
	labels := yLabels.FindAllStringSubmatch(svg, -1)
	if len(labels) == 0 {
		t.Fatal("no value axis labels")
	}
	if top := labels[len(labels)-1][1]; !strings.HasSuffix(top, "MiB") {
		t.Errorf("the value axis goes up to %s, want a scale of the workers' 100 MiB", top)
	}
	if strings.Contains(svg, `polyline class="budget"`) || strings.Contains(svg, `polyline class="limit"`) {
		t.Errorf("the budget or limit is drawn, far above the workers' memory")
	}
	for _, want := range []string{"budget 22 GiB, above the chart", "per-worker limit 8 GiB, above the chart"} {
		if !strings.Contains(svg, want) {
			t.Errorf("the legend does not say %q", want)
		}
	}

	j = newTestJournal(t)
	workersRun(t, j, 300<<20, 80<<20)
	svg = memorySVG(t, j)
	if !strings.Contains(svg, `polyline class="budget"`) || !strings.Contains(svg, `polyline class="limit"`) {
		t.Errorf("a budget of 300 MiB and a limit of 80 MiB, for workers of 100 MiB, are not drawn")
	}
}
