package report

import (
	"cmp"
	"context"
	"database/sql/driver"
	"errors"
	"fmt"
	"math"
	"runtime"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"modernc.org/sqlite"
)

// The samples of a long run are its bulk: a run of 10 hours at -j16 whose
// governor sampled every 100 ms has 7.2 million. They are read in one
// pass, through the aggregate function samplesFunc, which puts each in
// its span of time as it comes and keeps the highest of each span, series
// and worker: no sample is sorted, nor kept in Go but the highest ones.
// (Three queries with GROUP BY in SQL each looked every sample up and
// sorted those they kept: 9 s of a 10 s report of such a run.)

// samplesFunc is the name of the aggregate function, registered with the
// SQLite driver (by Load, before it opens the journal) for every
// connection the process opens after. Its arguments: a handle (of
// bucketers), the sample's series and worker as one key (worker_pid *
// seriesCodes + the series' code), its time and its value. It returns
// nothing worth reading: what it gathered is in the bucketer of the
// handle.
const samplesFunc = "safepool_report_samples"

// The codes of the series the report draws, as samplesQuery gives them:
// the key of a sample is worker_pid * seriesCodes + its code.
const (
	codeWorker = iota
	codeTotal
	codeBudget
	codeLimit
	codeRunning
	codeAllowed
	seriesCodes
)

// samplesQuery reads the run's samples of the series the report draws
// (a worker's memory, and the whole pool's series with worker_pid 0) into
// the bucketer of handle ?1; ?2 the run. %s is the table, or the table
// NOT INDEXED when the run has all its samples; the caller adds which
// part of them.
var samplesQuery = `SELECT ` + samplesFunc + `(?1, worker_pid * ` + strconv.Itoa(seriesCodes) + ` + CASE series
		WHEN 'worker' THEN 0 WHEN 'total' THEN 1 WHEN 'budget' THEN 2
		WHEN 'limit' THEN 3 WHEN 'running' THEN 4 ELSE 5 END, at, value)
	FROM %s WHERE run_id = ?2
	AND (series = 'worker' OR (worker_pid = 0 AND series IN ('total', 'budget', 'limit', 'running', 'allowed')))`

var (
	registerOnce sync.Once
	registerErr  error
	// bucketers are the bucketers of the queries under way, by handle.
	bucketers  sync.Map // int64 → *bucketer
	lastHandle atomic.Int64
)

func registerSamplesFunc() error {
	registerOnce.Do(func() {
		registerErr = sqlite.RegisterFunction(samplesFunc, &sqlite.FunctionImpl{
			NArgs: 4,
			MakeAggregate: func(sqlite.FunctionContext) (sqlite.AggregateFunction, error) {
				return &samplesAgg{}, nil
			},
		})
	})
	return registerErr
}

// samplesAgg is one evaluation of samplesFunc: it hands each sample to
// the bucketer of its handle.
type samplesAgg struct{ b *bucketer }

func (a *samplesAgg) Step(_ *sqlite.FunctionContext, args []driver.Value) error {
	if a.b == nil {
		h, _ := args[0].(int64)
		b, ok := bucketers.Load(h)
		if !ok {
			return fmt.Errorf("%s: no bucketer %d", samplesFunc, h)
		}
		a.b = b.(*bucketer)
	}
	key, ok1 := args[1].(int64)
	at, ok2 := args[2].(int64)
	v, ok3 := args[3].(int64)
	if !ok1 || !ok2 || !ok3 {
		// A value that is not an integer is not one the journal
		// writes: it is left out, as the chart could not draw it.
		return nil
	}
	a.b.add(key, at, v)
	return nil
}

func (a *samplesAgg) WindowInverse(*sqlite.FunctionContext, []driver.Value) error {
	return errors.New(samplesFunc + " is no window function")
}

func (a *samplesAgg) WindowValue(*sqlite.FunctionContext) (driver.Value, error) { return nil, nil }

func (a *samplesAgg) Final(*sqlite.FunctionContext) {}

// bucketer keeps, for each series (a key of samplesQuery), the highest
// sample of each span of time: the run, from t0 for span+1 ns, is cut
// into n spans, as SQL's (at - t0) * n / (span + 1) would cut it. The
// sample kept of a span is the earliest of its highest.
type bucketer struct {
	t0, span, n int64
	series      map[int64]*bucketSeries
	// last is the series of the last sample: a run's samples come a tick
	// at a time, each series' after another's, so it is rarely the same;
	// it saves the look-up when it is.
	lastKey int64
	last    *bucketSeries
}

// bucketSeries are the spans of one series that have samples, in order of
// span, and its highest value.
type bucketSeries struct {
	buckets []bucket
	peak    int64
}

type bucket struct {
	i, at, value int64
}

func newBucketer(t0, span, n int64) *bucketer {
	return &bucketer{t0: t0, span: span, n: n, series: map[int64]*bucketSeries{}, lastKey: -1}
}

func (b *bucketer) add(key, at, v int64) {
	s := b.last
	if key != b.lastKey {
		s = b.series[key]
		if s == nil {
			s = &bucketSeries{peak: v}
			b.series[key] = s
		}
		b.lastKey, b.last = key, s
	}
	s.peak = max(s.peak, v)
	// As SQLite reckons it: the product fits in 64 bits for any run
	// shorter than 400 years at the default n.
	i := (at - b.t0) * b.n / (b.span + 1)
	k := len(s.buckets)
	if k > 0 && s.buckets[k-1].i == i {
		// The same span as the sample before: the common case.
		s.buckets[k-1].keep(at, v)
		return
	}
	if k == 0 || s.buckets[k-1].i < i {
		s.buckets = append(s.buckets, bucket{i: i, at: at, value: v})
		return
	}
	// A sample out of time order (samples are read in the order they
	// were written): its span is found, or made, in place.
	j, found := slices.BinarySearchFunc(s.buckets, i, func(x bucket, i int64) int { return cmp.Compare(x.i, i) })
	if found {
		s.buckets[j].keep(at, v)
		return
	}
	s.buckets = slices.Insert(s.buckets, j, bucket{i: i, at: at, value: v})
}

// keep makes the sample at, v the bucket's if it is higher, or as high
// and earlier.
func (k *bucket) keep(at, v int64) {
	if v > k.value || v == k.value && at < k.at {
		k.at, k.value = at, v
	}
}

// merge adds the spans of o, which read other samples, to b's.
func (b *bucketer) merge(o *bucketer) {
	for key, os := range o.series {
		s := b.series[key]
		if s == nil {
			b.series[key] = os
			continue
		}
		s.peak = max(s.peak, os.peak)
		merged := make([]bucket, 0, len(s.buckets)+len(os.buckets))
		i, j := 0, 0
		for i < len(s.buckets) || j < len(os.buckets) {
			switch {
			case j == len(os.buckets) || i < len(s.buckets) && s.buckets[i].i < os.buckets[j].i:
				merged = append(merged, s.buckets[i])
				i++
			case i == len(s.buckets) || os.buckets[j].i < s.buckets[i].i:
				merged = append(merged, os.buckets[j])
				j++
			default:
				k := s.buckets[i]
				k.keep(os.buckets[j].at, os.buckets[j].value)
				merged = append(merged, k)
				i++
				j++
			}
		}
		s.buckets = merged
	}
}

// points are the series' highest samples, one a span, in time order,
// with times from t0.
func (s *bucketSeries) points(t0 int64) []Point {
	if s == nil || len(s.buckets) == 0 {
		return nil
	}
	pts := make([]Point, len(s.buckets))
	for i, k := range s.buckets {
		pts[i] = Point{At: time.Duration(k.at - t0), Value: k.value}
	}
	return pts
}

// breaks are the indices of the series' points (its spans) after which
// the pool's series had at least two spans with samples before the
// series' next: see WorkerSeries.Breaks. Two, so that one sample missed
// (a worker that could not be measured at a tick, or was between two
// tasks) does not cut a line.
func (s *bucketSeries) breaks(pool *bucketSeries) []int {
	if s == nil || pool == nil {
		return nil
	}
	var out []int
	for k := 1; k < len(s.buckets); k++ {
		a, b := s.buckets[k-1].i, s.buckets[k].i
		if b-a < 3 {
			continue
		}
		j, _ := slices.BinarySearchFunc(pool.buckets, a+1, func(x bucket, i int64) int { return cmp.Compare(x.i, i) })
		if j+1 < len(pool.buckets) && pool.buckets[j+1].i < b {
			out = append(out, k)
		}
	}
	return out
}

// scans is how many scans of the samples may run at once, each on a
// connection of its own over a part of them: one a CPU, up to 4.
// minScanRows is the fewest rows of the table worth a scan of their own.
// Tests change them.
var (
	scans             = func() int { return min(runtime.GOMAXPROCS(0), 4) }
	minScanRows int64 = 1 << 18
)

// loadSamples reads the run's series and its workers' in one pass over
// its samples: in parts read at once, up to a part a CPU, when they are
// many.
func (l *loader) loadSamples(ctx context.Context) error {
	r := l.r
	// When no other run of the journal has samples (a journal of one
	// run, or of runs without any), the table is read from end to end,
	// in the order it is stored, in parts by rowid: twice as fast as
	// through the index of samples by run, which then reads every row of
	// the table too, out of the index's order. Otherwise the run's
	// samples are read through the index, in parts by time.
	var others bool
	var rows int64
	err := l.db.QueryRowContext(ctx, `SELECT EXISTS (SELECT 1 FROM sample WHERE run_id < ?1)
		OR EXISTS (SELECT 1 FROM sample WHERE run_id > ?1), COALESCE((SELECT MAX(rowid) FROM sample), 0)`,
		r.ID).Scan(&others, &rows)
	if err != nil {
		return l.fail("reading samples", err)
	}
	n := int64(scans())
	n = max(min(n, rows/minScanRows), 1)
	// Part k of n reads the samples from bounds[k] (included) to
	// bounds[k+1]; the first and last are open, so that every sample is
	// read, whatever its time or rowid, even one written since.
	q, bounds := samplesQuery+" AND rowid >= ?3 AND rowid < ?4", make([]int64, n+1)
	q = fmt.Sprintf(q, "sample NOT INDEXED")
	from, length := int64(0), rows+1
	if others {
		q = fmt.Sprintf(samplesQuery+" AND at >= ?3 AND at < ?4", "sample")
		from, length = l.t0, max(l.end-l.t0, 1)
	}
	for k := int64(1); k < n; k++ {
		bounds[k] = from + length/n*k
	}
	bounds[0], bounds[n] = math.MinInt64, math.MaxInt64

	// The parts are read on connections of their own: of a run that
	// goes on, a part read later may see samples written since the end
	// of the axis was found, as a query after another did before. Those
	// fall in spans past the last, which the chart draws at its edge.
	span := max(l.end-l.t0, 1)
	parts := make([]*bucketer, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	for k := range parts {
		b := newBucketer(l.t0, span, int64(l.opt.MaxPoints))
		parts[k] = b
		h := lastHandle.Add(1)
		bucketers.Store(h, b)
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer bucketers.Delete(h)
			var ignored any
			errs[k] = l.db.QueryRowContext(ctx, q, h, r.ID, bounds[k], bounds[k+1]).Scan(&ignored)
		}()
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return l.fail("reading samples", err)
	}
	b := parts[0]
	for _, p := range parts[1:] {
		b.merge(p)
	}

	whole := func(code int64) []Point { return b.series[code].points(l.t0) }
	r.Total, r.Budgets, r.Limits = whole(codeTotal), whole(codeBudget), whole(codeLimit)
	r.Running, r.Allowed = whole(codeRunning), whole(codeAllowed)

	// The workers with the highest peaks, and of equal peaks the lowest
	// pid, are drawn.
	var workers []WorkerSeries
	for key, s := range b.series {
		if key%seriesCodes == codeWorker {
			workers = append(workers, WorkerSeries{PID: int(key / seriesCodes), Peak: s.peak})
		}
	}
	slices.SortFunc(workers, func(a, b WorkerSeries) int {
		return cmp.Or(cmp.Compare(b.Peak, a.Peak), cmp.Compare(a.PID, b.PID))
	})
	if len(workers) > l.opt.MaxWorkers {
		r.WorkersLeftOut = len(workers) - l.opt.MaxWorkers
		workers = workers[:l.opt.MaxWorkers]
	}
	for i := range workers {
		s := b.series[int64(workers[i].PID)*seriesCodes+codeWorker]
		workers[i].Points = s.points(l.t0)
		workers[i].Breaks = s.breaks(b.series[codeTotal])
	}
	r.WorkerSeries = workers
	return nil
}
