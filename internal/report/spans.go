package report

import (
	"cmp"
	"context"
	"encoding/binary"
	"fmt"
	"slices"
	"time"

	"github.com/safepool/safepool/internal/journal"
)

// spanCounts adds the tasks of the run's span rows (tasks done at their
// first attempt, many to a row) to the counts: each is a task done, and
// an attempt that succeeded; and those of its skip rows, tasks skipped.
// Skipped tasks of skip rows are not listed in the table.
func (l *loader) spanCounts(ctx context.Context) error {
	if !l.spans {
		return nil
	}
	var n int
	err := l.db.QueryRowContext(ctx, "SELECT COALESCE(SUM(count), 0) FROM span WHERE run_id = ?", l.r.ID).Scan(&n)
	if err != nil {
		return l.fail("counting tasks", err)
	}
	if n > 0 {
		l.r.States["done"] += n
		l.r.Tasks += n
		l.r.Attempts += n
	}
	if l.version < 3 {
		return nil
	}
	// Tasks skipped as done in an earlier run, many to a row of skip.
	err = l.db.QueryRowContext(ctx, "SELECT COALESCE(SUM(count), 0) FROM skip WHERE run_id = ?", l.r.ID).Scan(&n)
	if err != nil {
		return l.fail("counting tasks", err)
	}
	if n > 0 {
		l.r.States["skipped"] += n
		l.r.Tasks += n
		l.r.Unlisted = n
	}
	return nil
}

// spanRows reads the tasks of the run's span rows as table rows, and
// returns those to show with room rows for them: all when they fit, else
// the longest-running half and the largest other half. Their inputs are
// not in the journal.
func (l *loader) spanRows(ctx context.Context, room int) ([]TaskRow, error) {
	if !l.spans || room <= 0 {
		return nil, nil
	}
	q := "SELECT first, count, ids, parts, NULL FROM span WHERE run_id = ? ORDER BY rowid"
	if l.version == 2 {
		q = "SELECT first, count, ids, runtimes, peaks FROM span WHERE run_id = ? ORDER BY rowid"
	}
	rows, err := l.db.QueryContext(ctx, q, l.r.ID)
	if err != nil {
		return nil, l.fail("reading tasks", err)
	}
	defer rows.Close()
	// byTime and bySize keep the room longest and the room largest,
	// trimmed now and then, so that memory is bounded by room.
	var byTime, bySize []TaskRow
	trim := func(s []TaskRow, by func(a, b TaskRow) int) []TaskRow {
		slices.SortFunc(s, by)
		return s[:min(len(s), room)]
	}
	longer := func(a, b TaskRow) int { return cmp.Or(cmp.Compare(b.Runtime, a.Runtime), cmp.Compare(a.ID, b.ID)) }
	larger := func(a, b TaskRow) int { return cmp.Or(cmp.Compare(b.Peak, a.Peak), cmp.Compare(a.ID, b.ID)) }
	for rows.Next() {
		var first uint64
		var n int
		var ids, parts, peaks []byte
		if err := rows.Scan(&first, &n, &ids, &parts, &peaks); err != nil {
			return nil, l.fail("reading tasks", err)
		}
		var tasks []TaskRow
		var err error
		if l.version == 2 {
			tasks, err = spanTasksV2(first, n, ids, parts, peaks)
		} else {
			tasks, err = spanTasks(first, n, ids, parts)
		}
		if err != nil {
			return nil, l.fail("reading tasks", err)
		}
		byTime = append(byTime, tasks...)
		bySize = append(bySize, tasks...)
		if len(byTime) > 4*room+maxSpanTasks {
			byTime, bySize = trim(byTime, longer), trim(bySize, larger)
		}
	}
	if err := closeRows(rows); err != nil {
		return nil, l.fail("reading tasks", err)
	}
	if len(byTime) <= room {
		return byTime, nil
	}
	byTime, bySize = trim(byTime, longer), trim(bySize, larger)
	seen := map[int64]bool{}
	var out []TaskRow
	for i, s := range [][]TaskRow{byTime, bySize} {
		want := room
		if i == 0 {
			want = (room + 1) / 2
		}
		for _, t := range s {
			if len(out) >= want {
				break
			}
			if !seen[t.ID] {
				seen[t.ID] = true
				out = append(out, t)
			}
		}
	}
	return out, nil
}

// spanTasks are the tasks of a span row of schema version 3: a task of a
// part of several, which ran as one attempt, is given the part's time
// shared out evenly, and its peak.
func spanTasks(first uint64, n int, ids, parts []byte) ([]TaskRow, error) {
	seqs, err := journal.SpanIDs(first, n, ids)
	if err != nil {
		return nil, err
	}
	tasks := make([]TaskRow, 0, n)
	err = journal.SpanParts(n, parts, func(count int, runtime, peak int64) {
		each := time.Duration(runtime / int64(count))
		for range count {
			tasks = append(tasks, TaskRow{ID: int64(seqs[len(tasks)]), State: "done", Attempts: 1, Runtime: each, Peak: peak, NoInput: true})
		}
	})
	return tasks, err
}

// spanTasksV2 are the tasks of a span row of schema version 2: ids as
// zigzag varint deltas, a runtime and a peak for each task.
func spanTasksV2(first uint64, n int, ids, runtimes, peaks []byte) ([]TaskRow, error) {
	tasks := make([]TaskRow, 0, n)
	prev := first
	for len(ids) > 0 {
		d, k := binary.Varint(ids)
		if k <= 0 {
			return nil, fmt.Errorf("bad span ids")
		}
		ids = ids[k:]
		prev += uint64(d)
		t := TaskRow{ID: int64(prev), State: "done", Attempts: 1, NoInput: true}
		if v, k := binary.Uvarint(runtimes); k > 0 {
			t.Runtime, runtimes = time.Duration(v)*time.Microsecond, runtimes[k:]
		}
		if v, k := binary.Uvarint(peaks); k > 0 {
			t.Peak, peaks = int64(v)<<10, peaks[k:]
		}
		tasks = append(tasks, t)
	}
	if len(tasks) != n {
		return nil, fmt.Errorf("a span of %d tasks has %d ids", n, len(tasks))
	}
	return tasks, nil
}

// maxSpanTasks is the most tasks one span row holds (internal/journal).
const maxSpanTasks = 4096

// addSpanRows adds the tasks of span rows to the table's rows, which the
// task rows filled: when all do not fit, every task that did not end done
// first, then the longest-running half and the largest other half of all
// the rest.
func (l *loader) addSpanRows(ctx context.Context) error {
	r := l.r
	defer func() { r.RowsLeftOut = r.Tasks - r.Unlisted - len(r.Rows) }()
	limit := l.opt.MaxRows
	spans, err := l.spanRows(ctx, limit)
	if err != nil || len(spans) == 0 {
		return err
	}
	byID := func(a, b TaskRow) int { return cmp.Compare(a.ID, b.ID) }
	if len(r.Rows)+len(spans) <= limit {
		r.Rows = slices.SortedFunc(slices.Values(append(r.Rows, spans...)), byID)
		return nil
	}
	var keep, rest []TaskRow
	for _, t := range r.Rows {
		if t.State != "done" && t.State != "skipped" && len(keep) < limit {
			keep = append(keep, t)
		} else {
			rest = append(rest, t)
		}
	}
	rest = append(rest, spans...)
	// The rows not done, then the longest half of the room, then the
	// largest up to the limit.
	notDone := len(keep)
	room := limit - notDone
	seen := map[int64]bool{}
	for i, by := range []func(a, b TaskRow) int{
		func(a, b TaskRow) int { return cmp.Or(cmp.Compare(b.Runtime, a.Runtime), byID(a, b)) },
		func(a, b TaskRow) int { return cmp.Or(cmp.Compare(b.Peak, a.Peak), byID(a, b)) },
	} {
		want := limit
		if i == 0 {
			want = notDone + (room+1)/2
		}
		slices.SortFunc(rest, by)
		for _, t := range rest {
			if len(keep) >= want {
				break
			}
			if !seen[t.ID] {
				seen[t.ID] = true
				keep = append(keep, t)
			}
		}
	}
	slices.SortFunc(keep, byID)
	r.Rows = keep
	return nil
}
