// Package report reads one run of a safepool journal (the SQLite database
// that --journal writes, whose schema is internal/journal/schema.sql) and
// renders it as one self-contained HTML page: memory and concurrency over
// time as inline SVG, the OOM kills, preemptions and retries on the time
// axis, a summary of causes and a table of tasks sortable in the page.
//
// The page loads nothing from the network: its style and script are
// inline, and its Content-Security-Policy forbids every fetch. Its size is
// bounded whatever the run's: each series is drawn with at most
// Options.MaxPoints points, at most Options.MaxWorkers worker series and
// Options.MaxMarks marks of each kind, and the table holds at most
// Options.MaxRows tasks. The page says what it left out.
package report

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"golang.org/x/sys/unix"
	"modernc.org/sqlite" // the pure-Go SQLite driver, registered as "sqlite"
	sqlite3 "modernc.org/sqlite/lib"

	"github.com/safepool/safepool/internal/journal"
)

// schemaVersion is the journal's PRAGMA user_version that this package
// reads; it reads version 1, before span rows, and version 2, whose span
// rows held their tasks' runtimes and peaks one by one, too.
const schemaVersion = 3

// ErrNoRun means the journal has no run of the id asked for, or no run at
// all.
var ErrNoRun = errors.New("report: no such run in the journal")

// ErrNotJournal means the file is not a safepool journal.
var ErrNotJournal = errors.New("report: not a safepool journal")

// ErrDamaged means the journal's file is damaged: cut short, or written
// over, so that SQLite finds it malformed.
var ErrDamaged = errors.New("report: damaged journal")

// damaged wraps err, a failure to read the journal at path, in ErrDamaged,
// saying so, when SQLite found the file malformed; other errors are
// returned as they are.
func damaged(err error, path string) error {
	if code(err) != sqlite3.SQLITE_CORRUPT {
		return err
	}
	return fmt.Errorf("%w: %s (cut short, or written over): no page can be made from it: %v", ErrDamaged, path, err)
}

// ErrNewerSchema means the journal was made by a newer safepool, of a
// schema version this package does not read.
var ErrNewerSchema = errors.New("report: journal made by a newer safepool")

// Load reads one run of the journal at path, opened read-only: a journal
// that a running supervisor writes can be read at the same time.
func Load(ctx context.Context, path string, opt Options) (*Run, error) {
	opt.normalize()
	// Before the connection: the driver adds its functions to
	// connections as it opens them.
	if err := registerSamplesFunc(); err != nil {
		return nil, fmt.Errorf("report: %w", err)
	}
	had := besideFiles(path)
	run, err := func() (*Run, error) {
		db, v, err := open(path)
		if err != nil {
			return nil, err
		}
		defer db.Close()
		l := &loader{db: db, path: path, opt: opt, spans: v >= 2, version: v}
		return l.load(ctx)
	}()
	if errors.Is(err, ErrDamaged) {
		// The last connection to close removes the WAL and the shared
		// memory, but not those of a journal SQLite cannot read whole:
		// what this reader made beside a damaged journal (which nothing
		// writes) is removed, an empty WAL and its shared memory.
		for _, name := range []string{"-wal", "-shm"} {
			if fi, serr := os.Lstat(path + name); !had[name] && serr == nil && fi.Mode().IsRegular() &&
				(name == "-shm" || fi.Size() == 0) {
				os.Remove(path + name)
			}
		}
	}
	return run, err
}

// besideFiles reports which of the WAL ("-wal") and shared memory ("-shm")
// of the journal at path are there.
func besideFiles(path string) map[string]bool {
	had := map[string]bool{}
	for _, name := range []string{"-wal", "-shm"} {
		if _, err := os.Lstat(path + name); err == nil {
			had[name] = true
		}
	}
	return had
}

// open opens the journal for reading and checks its schema version, which
// it returns.
//
// SQLite reads a database in WAL mode through a WAL and a shared-memory
// file beside it, which it makes when they are not there; a connection
// opened read-only never removes them, so that reading a finished
// journal (whose writer removed both as it closed) would leave them
// behind: to its owner, clutter; in a directory that others write too
// (/tmp), files of the reader's that the journal's owner can neither
// write nor remove, which keep it from opening the journal again
// (--resume: "attempt to write a readonly database"). So a journal with
// no WAL, or an empty one, which no writer has filled, is read
//   - by a connection that may write, when the reader may write the
//     journal: it writes nothing (query_only), and the last connection
//     to close, which only it can be once no writer has the journal open,
//     removes the WAL and the shared memory as a writer does;
//   - as it is (immutable), when the reader may not write it: what the
//     file holds is all there is, and nothing is made beside it.
//
// A journal whose WAL holds something is opened read-only (mode=ro): a
// writer has it open, or was killed, and SQLite reads its WAL through
// its shared memory.
func open(path string) (*sql.DB, int, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return nil, 0, fmt.Errorf("report: %w", err)
	}
	if !fi.Mode().IsRegular() {
		// SQLite would wait for ever to open a FIFO (no signal stops it
		// there), and fail on a pipe (<(cat jobs.db)) or a directory with
		// an error that does not say why.
		hint := ""
		if fi.Mode()&os.ModeNamedPipe != 0 {
			hint = ": a journal is read here and there, not from start to end; copy it to a file"
		}
		return nil, 0, fmt.Errorf("%w: %s is %s, not a file%s", ErrNotJournal, path, fileKind(fi.Mode()), hint)
	}
	// SQLite says "unable to open database file" of a file it may not
	// read: the reason is told here.
	f, err := os.Open(path)
	if err != nil {
		return nil, 0, fmt.Errorf("report: %w", err)
	}
	f.Close()
	abs, err := filepath.Abs(path)
	if err != nil {
		return nil, 0, fmt.Errorf("report: %w", err)
	}
	var db *sql.DB
	var v int
	err = errNotTried
	// A rollback journal beside it (its writer was killed as it made
	// the file) is left to SQLite's read-only connection: one that may
	// write would roll it back.
	if walEmpty(abs) && !exists(abs+"-journal") {
		if unix.Faccessat(unix.AT_FDCWD, abs, unix.W_OK, unix.AT_EACCESS) == nil {
			db, v, err = openAs(abs, "mode=rw")
		} else {
			db, v, err = openAs(abs, "immutable=1")
		}
	}
	if err != nil {
		// As before, read-only: where the above could not open it (a
		// directory it cannot write) or did not try.
		db, v, err = openAs(abs, "mode=ro")
	}
	if c := code(err); (c == sqlite3.SQLITE_CANTOPEN || c == sqlite3.SQLITE_READONLY) && walEmpty(abs) {
		// SQLite cannot make the shared-memory file it wants in a
		// directory it cannot write, with SQLITE_CANTOPEN on a read-only
		// file system and SQLITE_READONLY_DIRECTORY where permissions
		// forbid it (another user's directory). With nothing in a WAL
		// beside it, no writer has it open (a writer keeps its WAL while
		// connected, and writes in it before it commits) and what the
		// file holds is all there is: it is read as it is, without the
		// shared memory. A WAL left by a writer that was killed comes
		// with its shared memory, which SQLite reads in that case.
		db, v, err = openAs(abs, "immutable=1")
	}
	if err != nil {
		if code(err) == sqlite3.SQLITE_NOTADB {
			return nil, 0, fmt.Errorf("%w: %s: %v", ErrNotJournal, path, err)
		}
		if d := damaged(err, path); d != err {
			return nil, 0, d
		}
		return nil, 0, fmt.Errorf("report: reading %s: %w", path, err)
	}
	if v > schemaVersion {
		db.Close()
		return nil, 0, fmt.Errorf("%w: %s has schema version %d, this safepool reads 1 to %d", ErrNewerSchema, path, v, schemaVersion)
	}
	if v < 1 {
		db.Close()
		return nil, 0, fmt.Errorf("%w: %s has schema version %d, want 1 to %d", ErrNotJournal, path, v, schemaVersion)
	}
	return db, v, nil
}

// openAs opens the database at the absolute path abs with the URI
// parameter mode, read only, and reads its schema version.
func openAs(abs, mode string) (*sql.DB, int, error) {
	u := url.URL{Scheme: "file", OmitHost: true, Path: abs,
		RawQuery: mode + "&_pragma=query_only(1)&_pragma=busy_timeout(5000)"}
	db, err := sql.Open("sqlite", u.String())
	if err != nil {
		return nil, 0, err
	}
	var v int
	if err := db.QueryRow("PRAGMA user_version").Scan(&v); err != nil {
		db.Close()
		return nil, 0, err
	}
	return db, v, nil
}

// code is the primary SQLite result code of err, or 0.
func code(err error) int {
	var e *sqlite.Error
	if errors.As(err, &e) {
		return e.Code() & 0xff
	}
	return 0
}

// fileKind names the kind of file of mode m, which is not a regular one.
func fileKind(m os.FileMode) string {
	switch {
	case m.IsDir():
		return "a directory"
	case m&os.ModeNamedPipe != 0:
		return "a FIFO or pipe"
	case m&os.ModeDevice != 0:
		return "a device"
	case m&os.ModeSocket != 0:
		return "a socket"
	}
	return "something else"
}

func exists(path string) bool {
	_, err := os.Lstat(path)
	return err == nil
}

// errNotTried stands for an open not tried.
var errNotTried = errors.New("not tried")

// walEmpty reports whether the journal at abs has no WAL beside it, or an
// empty one: no record is in a WAL, and what the file holds is all there
// is.
func walEmpty(abs string) bool {
	fi, err := os.Lstat(abs + "-wal")
	return os.IsNotExist(err) || err == nil && fi.Mode().IsRegular() && fi.Size() == 0
}

// loader reads one run; its queries bound what they return by opt.
type loader struct {
	db   *sql.DB
	path string // the journal's
	opt  Options
	r    *Run
	t0   int64 // the run's start, Unix ns
	end  int64 // the end of the time axis, Unix ns
	// spans reports whether the journal has span rows (schema version 2
	// on); version is the journal's schema version.
	spans   bool
	version int
}

func (l *loader) load(ctx context.Context) (*Run, error) {
	l.r = &Run{States: map[string]int{}, MarkCounts: map[string]int{}, ExitStatus: -1}
	steps := []func(context.Context) error{
		l.loadRun, l.loadCounts, l.loadRows, l.loadSamples, l.loadMarks, l.loadWaits,
	}
	for _, step := range steps {
		if err := step(ctx); err != nil {
			return nil, err
		}
	}
	return l.r, nil
}

func (l *loader) loadRun(ctx context.Context) error {
	r := l.r
	if err := l.db.QueryRowContext(ctx, "SELECT COUNT(*) FROM run").Scan(&r.Runs); err != nil {
		return l.fail("counting runs", err)
	}
	id := l.opt.RunID
	if id == 0 {
		var last sql.NullInt64
		if err := l.db.QueryRowContext(ctx, "SELECT MAX(id) FROM run").Scan(&last); err != nil {
			return l.fail("finding the last run", err)
		}
		if !last.Valid {
			return fmt.Errorf("%w: the journal holds no run", ErrNoRun)
		}
		id = last.Int64
	}
	var (
		ended, budget, limit, exit sql.NullInt64
		argv                       string
	)
	err := l.db.QueryRowContext(ctx, `SELECT id, started, ended, kind, command, argv, workers,
		memory_mode, mem_budget, mem_limit, exit_status FROM run WHERE id = ?`, id).Scan(
		&r.ID, &l.t0, &ended, &r.Kind, &r.Command, &argv, &r.Workers,
		&r.MemoryMode, &budget, &limit, &exit)
	if errors.Is(err, sql.ErrNoRows) {
		return fmt.Errorf("%w: run %d (the journal has %d)", ErrNoRun, id, r.Runs)
	}
	if err != nil {
		return l.fail("reading the run", err)
	}
	// A malformed argv is shown as it is rather than refused: the rest of
	// the run is still worth a look.
	if json.Unmarshal([]byte(argv), &r.Argv) != nil {
		r.Argv = []string{argv}
	}
	r.Budget, r.Limit = budget.Int64, limit.Int64
	if exit.Valid {
		r.ExitStatus = int(exit.Int64)
	}
	r.Started = time.Unix(0, l.t0)
	var incompleteAt sql.NullInt64
	err = l.db.QueryRowContext(ctx, `SELECT at, detail FROM event WHERE run_id = ? AND kind = ? ORDER BY at LIMIT 1`,
		id, journal.IncompleteEvent).Scan(&incompleteAt, &r.Incomplete)
	if err != nil && !errors.Is(err, sql.ErrNoRows) {
		return l.fail("reading the run's events", err)
	}
	if incompleteAt.Valid {
		r.IncompleteAt = time.Unix(0, incompleteAt.Int64)
	}
	l.end = ended.Int64
	if !ended.Valid {
		if r.State, err = l.goesOn(ctx); err != nil {
			return err
		}
		// The supervisor died or still runs: the axis ends at the last
		// thing the journal recorded.
		var last sql.NullInt64
		spanEnd := ""
		if l.spans {
			spanEnd = " UNION ALL SELECT MAX(ended) FROM span WHERE run_id = ?1"
		}
		if l.version >= 3 {
			spanEnd += " UNION ALL SELECT MAX(ended) FROM skip WHERE run_id = ?1"
		}
		err := l.db.QueryRowContext(ctx, `SELECT MAX(m) FROM (
			SELECT MAX(at) m FROM sample WHERE run_id = ?1
			UNION ALL SELECT MAX(at) FROM event WHERE run_id = ?1
			UNION ALL SELECT MAX(ended) FROM attempt WHERE run_id = ?1
			UNION ALL SELECT MAX(ended) FROM task WHERE run_id = ?1`+spanEnd+`)`, id).Scan(&last)
		if err != nil {
			return l.fail("finding the run's last record", err)
		}
		l.end = max(last.Int64, l.t0)
	}
	l.end = max(l.end, l.t0) // a clock that stepped back draws nothing rather than a negative axis
	r.Ended = time.Unix(0, l.end)
	return nil
}

// goesOn tells whether the run, which has no end in the journal, goes
// on: a safepool that runs it holds the lock of its command (a Python
// call, of its function), and a later run of its command shows that it
// had let the lock go.
func (l *loader) goesOn(ctx context.Context) (RunState, error) {
	r := l.r
	if r.Kind != "run" && r.Kind != "map" && r.Kind != "python" {
		return RunEndUnknown, nil
	}
	runs, ok := journal.CommandRuns(l.path, r.Kind, r.Command)
	if !ok {
		return RunEndUnknown, nil
	}
	var later bool
	err := l.db.QueryRowContext(ctx, `SELECT EXISTS (SELECT 1 FROM run WHERE id > ? AND kind = ? AND command = ?)`,
		r.ID, r.Kind, r.Command).Scan(&later)
	if err != nil {
		return 0, l.fail("looking for later runs", err)
	}
	if runs && !later {
		return RunGoesOn, nil
	}
	return RunStopped, nil
}

func (l *loader) loadCounts(ctx context.Context) error {
	r := l.r
	rows, err := l.db.QueryContext(ctx, "SELECT state, COUNT(*) FROM task WHERE run_id = ? GROUP BY state", r.ID)
	if err != nil {
		return l.fail("counting tasks", err)
	}
	for rows.Next() {
		var s string
		var n int
		if err := rows.Scan(&s, &n); err != nil {
			rows.Close()
			return l.fail("counting tasks", err)
		}
		r.States[s] = n
		r.Tasks += n
	}
	if err := closeRows(rows); err != nil {
		return l.fail("counting tasks", err)
	}
	if err := l.spanCounts(ctx); err != nil {
		return err
	}

	causes := map[string]*CauseCount{}
	get := func(c string) *CauseCount {
		if causes[c] == nil {
			causes[c] = &CauseCount{Cause: c}
		}
		return causes[c]
	}
	rows, err = l.db.QueryContext(ctx, "SELECT cause, COUNT(*) FROM attempt WHERE run_id = ? GROUP BY cause", r.ID)
	if err != nil {
		return l.fail("counting causes", err)
	}
	for rows.Next() {
		var c string
		var n int
		if err := rows.Scan(&c, &n); err != nil {
			rows.Close()
			return l.fail("counting causes", err)
		}
		r.Attempts += n
		if c != "" {
			get(c).Attempts = n
		}
	}
	if err := closeRows(rows); err != nil {
		return l.fail("counting causes", err)
	}
	// A task row that has no attempt rows counts its attempts itself, the
	// last of them with its cause: the Python client writes attempt rows
	// only for a task whose worker died, and none for a task done, or
	// failed by its function's exception.
	rows, err = l.db.QueryContext(ctx, `SELECT COALESCE(cause, ''), SUM(attempts), COUNT(*) FROM task t
		WHERE run_id = ?1 AND attempts > 0 AND state NOT IN ('skipped', 'pending')
		AND NOT EXISTS (SELECT 1 FROM attempt a WHERE a.run_id = t.run_id AND a.task_id = t.id)
		GROUP BY 1`, r.ID)
	if err != nil {
		return l.fail("counting attempts", err)
	}
	for rows.Next() {
		var c string
		var attempts, tasks int
		if err := rows.Scan(&c, &attempts, &tasks); err != nil {
			rows.Close()
			return l.fail("counting attempts", err)
		}
		r.Attempts += attempts
		if c != "" {
			get(c).Attempts += tasks
		}
	}
	if err := closeRows(rows); err != nil {
		return l.fail("counting attempts", err)
	}
	// A task a resumed run skipped because it had failed keeps the cause
	// of its last attempt, in an earlier run: it is not counted here, as
	// that attempt is not; nor is a task cancelled before it ran, which
	// had no attempt.
	rows, err = l.db.QueryContext(ctx, `SELECT cause, COUNT(*) FROM task
		WHERE run_id = ? AND cause IS NOT NULL AND cause != '' AND state != 'skipped' AND attempts > 0
		GROUP BY cause`, r.ID)
	if err != nil {
		return l.fail("counting causes", err)
	}
	for rows.Next() {
		var c string
		var n int
		if err := rows.Scan(&c, &n); err != nil {
			rows.Close()
			return l.fail("counting causes", err)
		}
		get(c).Tasks = n
	}
	if err := closeRows(rows); err != nil {
		return l.fail("counting causes", err)
	}
	for _, c := range causes {
		r.Causes = append(r.Causes, *c)
	}
	slices.SortFunc(r.Causes, func(a, b CauseCount) int {
		if a.Attempts != b.Attempts {
			return b.Attempts - a.Attempts
		}
		if a.Tasks != b.Tasks {
			return b.Tasks - a.Tasks
		}
		if a.Cause < b.Cause {
			return -1
		}
		return 1
	})
	return nil
}

// taskSelect reads TaskRow columns: a task with the time its attempts ran.
// One byte more than the preview is read, to know that it cut the input.
var taskSelect = `SELECT t.id, substr(t.input, 1, ` + strconv.Itoa(inputPreview+1) + `), t.state, t.attempts, t.cause, t.peak,
	COALESCE((SELECT SUM(a.ended - a.started) FROM attempt a WHERE a.run_id = t.run_id AND a.task_id = t.id), 0) AS runtime
	FROM task t WHERE t.run_id = ?1`

// rowPicks choose the tasks of a run too large for the table, by id
// alone (?1 the run, ?2 how many): every task that did not end done, then
// the longest-running, then the largest. Only the rows picked are read
// whole.
var rowPicks = []string{
	`SELECT id FROM task WHERE run_id = ?1 AND state NOT IN ('done', 'skipped') ORDER BY id LIMIT ?2`,
	`SELECT task_id FROM attempt WHERE run_id = ?1 GROUP BY task_id ORDER BY SUM(ended - started) DESC, task_id LIMIT ?2`,
	`SELECT id FROM task WHERE run_id = ?1 ORDER BY peak DESC, id LIMIT ?2`,
}

func (l *loader) loadRows(ctx context.Context) error {
	r := l.r
	limit := l.opt.MaxRows
	if r.Tasks-r.Unlisted <= limit {
		if err := l.readRows(ctx, taskSelect+" ORDER BY t.id", r.ID); err != nil {
			return err
		}
		return l.addSpanRows(ctx)
	}
	var ids []int64
	seen := map[int64]bool{}
	for i, q := range rowPicks {
		room := limit - len(ids)
		if i == 1 {
			room = (room + 1) / 2 // the longest half, the largest the other half
		}
		if room <= 0 {
			break
		}
		// Ask for room more than are seen already: those come again.
		rows, err := l.db.QueryContext(ctx, q, r.ID, room+len(seen))
		if err != nil {
			return l.fail("choosing tasks", err)
		}
		for added := 0; added < room && rows.Next(); {
			var id int64
			if err := rows.Scan(&id); err != nil {
				rows.Close()
				return l.fail("choosing tasks", err)
			}
			if !seen[id] {
				seen[id] = true
				ids = append(ids, id)
				added++
			}
		}
		if err := closeRows(rows); err != nil {
			return l.fail("choosing tasks", err)
		}
	}
	list := make([]string, len(ids))
	for i, id := range ids {
		list[i] = strconv.FormatInt(id, 10)
	}
	// The ids are integers read from the journal, safe to write into the
	// query; a read-only connection cannot fill a temporary table.
	q := taskSelect + " AND t.id IN (" + strings.Join(list, ",") + ") ORDER BY t.id"
	if err := l.readRows(ctx, q, r.ID); err != nil {
		return err
	}
	return l.addSpanRows(ctx)
}

// readRows appends the tasks that q reads.
func (l *loader) readRows(ctx context.Context, q string, args ...any) error {
	rows, err := l.db.QueryContext(ctx, q, args...)
	if err != nil {
		return l.fail("reading tasks", err)
	}
	for rows.Next() {
		var (
			t       TaskRow
			input   []byte
			cause   sql.NullString
			peak    sql.NullInt64
			runtime int64
		)
		if err := rows.Scan(&t.ID, &input, &t.State, &t.Attempts, &cause, &peak, &runtime); err != nil {
			rows.Close()
			return l.fail("reading tasks", err)
		}
		t.Input = preview(input)
		t.Cause = cause.String
		t.Peak = peak.Int64
		t.Runtime = time.Duration(runtime)
		l.r.Rows = append(l.r.Rows, t)
	}
	if err := closeRows(rows); err != nil {
		return l.fail("reading tasks", err)
	}
	return nil
}

// preview is the input as the table shows it: valid UTF-8, without
// control characters, its first inputPreview bytes at most, cut between
// two characters and ended with "…" when there is more.
func preview(b []byte) string {
	cut := len(b) > inputPreview
	if cut {
		b = b[:inputPreview]
		// Back to the start of a character the cut split, if it did; an
		// input that is not UTF-8 there is shown as it is.
		for i := len(b) - 1; i >= 0 && i > len(b)-utf8.UTFMax; i-- {
			if utf8.RuneStart(b[i]) {
				if !utf8.FullRune(b[i:]) {
					b = b[:i]
				}
				break
			}
		}
	}
	out := make([]rune, 0, len(b)+1)
	for _, c := range string(b) {
		if c < 0x20 || c == 0x7f {
			c = '·'
		}
		out = append(out, c)
	}
	if cut {
		out = append(out, '…')
	}
	return string(out)
}

// derivedMarks read a kind of mark from the attempts and tasks, for a
// journal whose event table has none of that kind: each query reads at,
// task_id, worker_pid and detail.
var derivedMarks = map[string]string{
	"oom": `SELECT ended, task_id, worker_pid, message FROM attempt
		WHERE run_id = ?1 AND cause = 'oom'`,
	"preempted": `SELECT ended, task_id, worker_pid, message FROM attempt
		WHERE run_id = ?1 AND cause = 'preempted'`,
	// A retry is the first attempt of each number after the first: an
	// attempt after a preemption shares its number, and is no retry.
	"retry": `SELECT a.started, a.task_id, a.worker_pid, 'attempt ' || a.number FROM attempt a
		WHERE a.run_id = ?1 AND a.number > 1 AND NOT EXISTS (SELECT 1 FROM attempt b
			WHERE b.run_id = a.run_id AND b.task_id = a.task_id AND b.number = a.number AND b.started < a.started)`,
	"poison": `SELECT ended, id, NULL, cause FROM task WHERE run_id = ?1 AND state = 'poison' AND ended IS NOT NULL`,
}

func (l *loader) loadMarks(ctx context.Context) error {
	r := l.r
	for _, kind := range markKinds {
		q := `SELECT at, task_id, worker_pid, detail FROM event WHERE run_id = ?1 AND kind = ?2`
		args := []any{r.ID, kind}
		var n int
		if err := l.db.QueryRowContext(ctx, "SELECT COUNT(*) FROM ("+q+")", args...).Scan(&n); err != nil {
			return l.fail("counting events", err)
		}
		if n == 0 {
			q, args = derivedMarks[kind], args[:1]
			if err := l.db.QueryRowContext(ctx, "SELECT COUNT(*) FROM ("+q+")", args...).Scan(&n); err != nil {
				return l.fail("counting events", err)
			}
		}
		r.MarkCounts[kind] = n
		q = "SELECT * FROM (" + q + ") ORDER BY 1 LIMIT " + strconv.Itoa(l.opt.MaxMarks)
		rows, err := l.db.QueryContext(ctx, q, args...)
		if err != nil {
			return l.fail("reading events", err)
		}
		for rows.Next() {
			var (
				at        int64
				task, pid sql.NullInt64
				detail    sql.NullString
			)
			if err := rows.Scan(&at, &task, &pid, &detail); err != nil {
				rows.Close()
				return l.fail("reading events", err)
			}
			r.Marks = append(r.Marks, Mark{At: time.Duration(at - l.t0), Kind: kind,
				TaskID: task.Int64, PID: int(pid.Int64), Detail: detail.String})
		}
		if err := closeRows(rows); err != nil {
			return l.fail("reading events", err)
		}
	}
	slices.SortStableFunc(r.Marks, func(a, b Mark) int {
		switch {
		case a.At < b.At:
			return -1
		case a.At > b.At:
			return 1
		}
		return 0
	})
	return nil
}

func (l *loader) fail(what string, err error) error {
	if d := damaged(err, l.path); d != err {
		return d
	}
	return fmt.Errorf("report: %s: %w", what, err)
}

func closeRows(rows *sql.Rows) error {
	err := rows.Err()
	if cerr := rows.Close(); err == nil {
		err = cerr
	}
	return err
}

// loadWaits measures the admission waits from the pool's events: each
// admission-wait to the admission-wait-ended after it.
func (l *loader) loadWaits(ctx context.Context) error {
	r := l.r
	rows, err := l.db.QueryContext(ctx, `SELECT at, kind FROM event WHERE run_id = ?1
		AND kind IN ('admission-wait', 'admission-wait-ended') ORDER BY at`, r.ID)
	if err != nil {
		return l.fail("reading admission waits", err)
	}
	var began int64 = -1
	for rows.Next() {
		var at int64
		var kind string
		if err := rows.Scan(&at, &kind); err != nil {
			rows.Close()
			return l.fail("reading admission waits", err)
		}
		switch {
		case kind == "admission-wait" && began < 0:
			began = at
			r.Waits++
		case kind == "admission-wait-ended" && began >= 0:
			r.Waited += time.Duration(max(at-began, 0))
			began = -1
		}
	}
	if err := closeRows(rows); err != nil {
		return l.fail("reading admission waits", err)
	}
	if began >= 0 {
		r.Waited += time.Duration(max(l.end-began, 0))
	}
	return nil
}
