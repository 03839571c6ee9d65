package report

import (
	"fmt"
	"math"
	"strconv"
	"strings"
	"time"

	"github.com/safepool/safepool/internal/bytesize"
)

// Chart sizes, in SVG user units; the page scales the SVG to its width.
const (
	chartW       = 1000
	chartH       = 260
	marginLeft   = 72
	marginRight  = 16
	marginTop    = 14
	marginBottom = 30
	plotW        = chartW - marginLeft - marginRight
	plotH        = chartH - marginTop - marginBottom
)

// chart is one SVG chart as the template draws it: every coordinate is
// worked out here, so the template only places elements.
type chart struct {
	ID     string
	W, H   int
	Empty  string // when not "", the chart has nothing to draw and says this
	Lines  []line
	Marks  []markView
	XTicks []tick
	YTicks []tick
	// Plot is the plotting area's rectangle.
	PlotX, PlotY, PlotW, PlotH int
	Legend                     []legendItem
}

type line struct {
	Class  string
	Points string
	Title  string
}

type markView struct {
	X     string
	At    clock // when it happened
	Y2    int   // where its line ends: the plot's bottom, or a tick's
	Class string
	Title string
}

// retryTick is how far into the plot a retry's mark reaches: a tick,
// not a line across, as a run may retry hundreds of times and its
// lines would hide what the chart shows.
const retryTick = 12

type tick struct {
	Pos   string // x for the time axis, y for the value axis
	Label string
}

type legendItem struct {
	Class, Label string
}

// scale maps a run's time and one value axis into the plot.
type scale struct {
	span time.Duration
	ymax float64
}

func (s scale) x(at time.Duration) float64 {
	if s.span <= 0 {
		return marginLeft
	}
	f := float64(at) / float64(s.span)
	return marginLeft + plotW*math.Min(math.Max(f, 0), 1)
}

func (s scale) y(v int64) float64 {
	if s.ymax <= 0 {
		return marginTop + plotH
	}
	return marginTop + plotH*(1-math.Min(float64(v)/s.ymax, 1))
}

func num(f float64) string { return strconv.FormatFloat(f, 'f', 1, 64) }

// polyline renders pts as straight segments.
func (s scale) polyline(pts []Point) string {
	var b strings.Builder
	for i, p := range pts {
		if i > 0 {
			b.WriteByte(' ')
		}
		b.WriteString(num(s.x(p.At)))
		b.WriteByte(',')
		b.WriteString(num(s.y(p.Value)))
	}
	return b.String()
}

// steps renders pts as a step function: each value holds until the next,
// and the last until end.
func (s scale) steps(pts []Point, end time.Duration) string {
	var b strings.Builder
	for i, p := range pts {
		next := end
		if i+1 < len(pts) {
			next = pts[i+1].At
		}
		if i > 0 {
			b.WriteByte(' ')
		}
		y := num(s.y(p.Value))
		b.WriteString(num(s.x(p.At)) + "," + y + " " + num(s.x(next)) + "," + y)
	}
	return b.String()
}

// constant is a step series of one value over the whole run.
func constant(v int64, span time.Duration) []Point {
	return []Point{{0, v}, {span, v}}
}

func newChart(id string) *chart {
	return &chart{ID: id, W: chartW, H: chartH,
		PlotX: marginLeft, PlotY: marginTop, PlotW: plotW, PlotH: plotH}
}

// timeTicks puts ticks on the time axis at a round step, at most about 10.
func (c *chart) timeTicks(s scale) {
	steps := []time.Duration{
		10 * time.Millisecond, 20 * time.Millisecond, 50 * time.Millisecond,
		100 * time.Millisecond, 200 * time.Millisecond, 500 * time.Millisecond,
		time.Second, 2 * time.Second, 5 * time.Second, 10 * time.Second, 15 * time.Second,
		30 * time.Second, time.Minute, 2 * time.Minute, 5 * time.Minute, 10 * time.Minute,
		15 * time.Minute, 30 * time.Minute, time.Hour, 2 * time.Hour, 3 * time.Hour,
		6 * time.Hour, 12 * time.Hour, 24 * time.Hour,
	}
	step := steps[len(steps)-1]
	for _, st := range steps {
		if s.span/st <= 10 {
			step = st
			break
		}
	}
	for t := time.Duration(0); t <= s.span; t += step {
		c.XTicks = append(c.XTicks, tick{Pos: num(s.x(t)), Label: shortDuration(t)})
	}
}

// niceMax returns a round top for an axis that must reach v, and a round
// step that cuts it in about four.
func niceMax(v float64) (top, step float64) {
	if v <= 0 {
		return 1, 1
	}
	raw := v / 4
	mag := math.Pow(10, math.Floor(math.Log10(raw)))
	for _, m := range []float64{1, 2, 2.5, 5, 10} {
		if m*mag >= raw {
			step = m * mag
			break
		}
	}
	return math.Ceil(v/step) * step, step
}

// niceBytes is niceMax for sizes: round steps in binary units.
func niceBytes(v float64) (top, step float64) {
	if v <= 0 {
		return 1 << 20, 1 << 18
	}
	unit := 1.0
	for unit*1024 <= v/4 {
		unit *= 1024
	}
	top, step = niceMax(v / unit)
	return top * unit, step * unit
}

// valueTicks puts ticks on the value axis every step; label formats a
// value.
func (c *chart) valueTicks(s scale, step float64, label func(v int64) string) {
	for v := 0.0; v <= s.ymax+step/2; v += step {
		c.YTicks = append(c.YTicks, tick{Pos: num(s.y(int64(v))), Label: label(int64(v))})
	}
}

// marks draws the run's marks as vertical lines.
func (c *chart) marks(s scale, start time.Time, ms []Mark) {
	for _, m := range ms {
		at := clockOf(start.Add(m.At))
		// The page's script gives the clock in the reader's time zone.
		title := fmt.Sprintf("%s at %s (%s)", markNames[m.Kind], shortDuration(m.At), at.UTC)
		if m.TaskID != 0 {
			title += fmt.Sprintf(", task %d", m.TaskID)
		}
		if m.PID != 0 {
			title += fmt.Sprintf(", worker %d", m.PID)
		}
		if m.Detail != "" {
			title += ": " + m.Detail
		}
		y2 := c.Bottom()
		if m.Kind == "retry" {
			y2 = c.PlotY + retryTick
		}
		c.Marks = append(c.Marks, markView{X: num(s.x(m.At)), At: at, Y2: y2, Class: "mark mark-" + m.Kind, Title: title})
	}
}

// markNames are what the page calls each kind of mark.
var markNames = map[string]string{
	"oom":       "OOM kill",
	"preempted": "preemption",
	"retry":     "retry",
	"poison":    "poison",
}

func (c *chart) markLegend(r *Run) {
	for _, k := range markKinds {
		if r.MarkCounts[k] > 0 {
			c.Legend = append(c.Legend, legendItem{"mark-" + k, fmt.Sprintf("%s (%d)", markNames[k], r.MarkCounts[k])})
		}
	}
}

// aboveChart is how many times the workers' highest memory the budget or
// the per-worker limit may be and still set the memory chart's scale.
const aboveChart = 4

// memoryChart draws the workers' memory together and one by one, the
// budget and the per-worker limit.
func memoryChart(r *Run) *chart {
	span := r.Span()
	budgets, limits := r.Budgets, r.Limits
	if len(budgets) == 0 && r.Budget > 0 {
		budgets = constant(r.Budget, span)
	}
	if len(limits) == 0 && r.Limit > 0 {
		limits = constant(r.Limit, span)
	}
	// The scale is the workers' memory. The budget and the limit are on
	// it when they are within reach; far above it (the budget is the
	// host's memory by default), they would flatten the workers' lines
	// on the axis, and the legend names them instead.
	var top int64
	for _, p := range r.Total {
		top = max(top, p.Value)
	}
	for _, w := range r.WorkerSeries {
		top = max(top, w.Peak)
	}
	var above []legendItem
	workers := top
	for _, ref := range []struct {
		pts          *[]Point
		class, label string
	}{{&budgets, "budget", "budget"}, {&limits, "limit", "per-worker limit"}} {
		var m int64
		for _, p := range *ref.pts {
			m = max(m, p.Value)
		}
		if workers > 0 && m > aboveChart*workers {
			*ref.pts = nil
			above = append(above, legendItem{ref.class, fmt.Sprintf("%s %s, above the chart", ref.label, bytesize.Format(m))})
			continue
		}
		top = max(top, m)
	}
	ymax, step := niceBytes(float64(top) * 1.05)
	s := scale{span: span, ymax: ymax}
	c := newChart("memory")
	if len(r.Total) == 0 && len(r.WorkerSeries) == 0 {
		c.Empty = "No memory samples were recorded for this run."
	}
	c.timeTicks(s)
	c.valueTicks(s, step, func(v int64) string { return bytesize.Format(v) })
	for i, w := range r.WorkerSeries {
		title := fmt.Sprintf("worker %d, peak %s", w.PID, bytesize.Format(w.Peak))
		for _, seg := range w.Segments() {
			pts := s.polyline(seg)
			if len(seg) == 1 {
				// One sample between two gaps: a stub, as a line of
				// one point is not drawn.
				pts += " " + num(s.x(seg[0].At)+2) + "," + num(s.y(seg[0].Value))
			}
			c.Lines = append(c.Lines, line{Class: fmt.Sprintf("worker w%d", i%8), Points: pts, Title: title})
		}
	}
	if len(r.WorkerSeries) > 0 {
		label := "one worker each"
		if r.WorkersLeftOut > 0 {
			label = fmt.Sprintf("the %d workers with the highest peaks (of %d)", len(r.WorkerSeries), len(r.WorkerSeries)+r.WorkersLeftOut)
		}
		c.Legend = append(c.Legend, legendItem{"worker w0", label})
	}
	if len(r.Total) > 0 {
		c.Lines = append(c.Lines, line{Class: "total", Points: s.polyline(r.Total), Title: "all workers"})
		c.Legend = append(c.Legend, legendItem{"total", "all workers"})
	}
	if len(budgets) > 0 {
		c.Lines = append(c.Lines, line{Class: "budget", Points: s.steps(budgets, span), Title: "memory budget"})
		c.Legend = append(c.Legend, legendItem{"budget", "budget"})
	}
	if len(limits) > 0 {
		c.Lines = append(c.Lines, line{Class: "limit", Points: s.steps(limits, span), Title: "per-worker limit"})
		c.Legend = append(c.Legend, legendItem{"limit", "per-worker limit"})
	}
	c.Legend = append(c.Legend, above...)
	c.marks(s, r.Started, r.Marks)
	c.markLegend(r)
	return c
}

// concurrencyChart draws the attempts running and the concurrency the
// governor allowed, under -j; the dashed line of what was allowed goes
// over the line of what ran, where they meet.
func concurrencyChart(r *Run) *chart {
	span := r.Span()
	top := int64(r.Workers)
	for _, pts := range [][]Point{r.Running, r.Allowed} {
		for _, p := range pts {
			top = max(top, p.Value)
		}
	}
	ymax, step := niceMax(float64(max(top, 1)))
	step = math.Max(1, math.Round(step))
	ymax = math.Ceil(ymax/step) * step
	s := scale{span: span, ymax: ymax}
	c := newChart("concurrency")
	if len(r.Running) == 0 && len(r.Allowed) == 0 {
		c.Empty = "No concurrency samples were recorded for this run."
	}
	c.timeTicks(s)
	c.valueTicks(s, step, func(v int64) string { return strconv.FormatInt(v, 10) })
	if r.Workers > 0 {
		c.Lines = append(c.Lines, line{Class: "jobs", Points: s.steps(constant(int64(r.Workers), span), span), Title: "-j"})
		c.Legend = append(c.Legend, legendItem{"jobs", fmt.Sprintf("-j %d", r.Workers)})
	}
	if len(r.Running) > 0 {
		c.Lines = append(c.Lines, line{Class: "running", Points: s.steps(r.Running, span), Title: "attempts running"})
		c.Legend = append(c.Legend, legendItem{"running", "running"})
	}
	if len(r.Allowed) > 0 {
		c.Lines = append(c.Lines, line{Class: "allowed", Points: s.steps(r.Allowed, span), Title: "allowed by the memory governor"})
		c.Legend = append(c.Legend, legendItem{"allowed", "allowed by the memory governor"})
	}
	c.marks(s, r.Started, r.Marks)
	c.markLegend(r)
	return c
}

// shortDuration renders d for an axis or a table: "0s", "850ms", "2.5s",
// "1m30s", "2h5m".
func shortDuration(d time.Duration) string {
	switch {
	case d <= 0:
		return "0s"
	case d < time.Second:
		return d.Round(time.Millisecond).String()
	case d < time.Minute:
		return strconv.FormatFloat(math.Round(d.Seconds()*10)/10, 'f', -1, 64) + "s"
	case d < time.Hour:
		return trimZeroSeconds(d.Round(time.Second).String())
	}
	return trimZeroSeconds(d.Round(time.Minute).String())
}

// trimZeroSeconds turns "2m0s" into "2m" and "3h0m0s" into "3h", and
// leaves "1m10s" as it is.
func trimZeroSeconds(s string) string {
	if strings.HasSuffix(s, "m0s") {
		s = strings.TrimSuffix(s, "0s")
	}
	if strings.HasSuffix(s, "h0m") {
		s = strings.TrimSuffix(s, "0m")
	}
	return s
}

// Right is the plot's right edge.
func (c *chart) Right() int { return c.PlotX + c.PlotW }

// Bottom is the plot's bottom edge.
func (c *chart) Bottom() int { return c.PlotY + c.PlotH }

// LabelX is where the value axis's labels end.
func (c *chart) LabelX() int { return c.PlotX - 6 }

// TimeLabelY is the baseline of the time axis's labels.
func (c *chart) TimeLabelY() int { return c.Bottom() + 16 }

// MidX and MidY are the plot's centre.
func (c *chart) MidX() int { return c.PlotX + c.PlotW/2 }

// MidY is the plot's vertical centre.
func (c *chart) MidY() int { return c.PlotY + c.PlotH/2 }
