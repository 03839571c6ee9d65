// Package journal keeps the journal of safepool runs: a SQLite database in
// WAL mode (schema.sql) that one consumer of a pool's event stream writes,
// with the span file beside it (SpanFile) for the keys and outputs of the
// tasks done at their first attempt, and from which a rerun with --resume
// learns what earlier runs finished.
//
// The writer commits what it is given in one transaction every
// FlushEvery, or sooner when many rows wait (group commit), after
// appending the transaction's span data to the span file: a SIGKILL of the
// supervisor loses at most the events of the last interval, SQLite's WAL
// never leaves the database corrupt, and span data that a crash of the
// system lost are known by their checksum, their tasks run again.
package journal

import (
	"context"
	"database/sql"
	_ "embed"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"net/url"
	"os"
	"path/filepath"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	_ "modernc.org/sqlite" // the pure-Go SQLite driver, registered as "sqlite"
)

//go:embed schema.sql
var schema string

// schemaVersion is the user_version schema.sql sets.
const schemaVersion = 3

// ErrNewerSchema means the journal was made by a newer safepool, whose
// schema this one does not know.
var ErrNewerSchema = errors.New("journal: made by a newer safepool")

// ErrOlderSchema means the journal was made by an older safepool, whose
// keys and span rows this one does not read: a new journal file is needed
// (`safepool report` still reads it).
var ErrOlderSchema = errors.New("journal: made by an older safepool")

// ErrNotJournal means the file is a SQLite database of something else:
// --journal naming a program's own database by mistake must not add
// safepool's tables to it, nor switch it to WAL mode.
var ErrNotJournal = errors.New("journal: not a safepool journal")

// ErrInUse means another supervisor runs the same kind and command in the
// journal: two at once would each run the tasks it does not have as done.
var ErrInUse = errors.New("journal: in use")

// IncompleteEvent is the kind of the event that Writer.Close adds when
// writing the journal failed (a full disk): what the run did from its
// time on is not in the journal. Its detail is the error.
const IncompleteEvent = "journal-incomplete"

// SpanFile returns the path of the span file of the journal at path:
// beside the file that path names, through symbolic links, where SQLite
// keeps the journal's WAL too. Beside a link, a run through it would find
// none of the spans, nor the lock, of runs through the file's own name,
// and run their tasks again, or alongside them.
func SpanFile(path string) string {
	if real, err := filepath.EvalSymlinks(path); err == nil {
		path = real
	}
	return path + "-spans"
}

// ErrLinked means a journal file has more than one name (hard links): its
// span file, beside the name given, would differ by name.
var ErrLinked = errors.New("journal: more than one name")

// oneName returns ErrLinked, wrapped with what to do, when the file fi of
// the journal at path has more than one hard link.
func oneName(path string, fi fs.FileInfo) error {
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok || st.Nlink <= 1 {
		return nil
	}
	return fmt.Errorf("%w: %s has %d names (hard links), and a journal's records of output are in the span file beside the name it is given (%s): a run through another name would find none of them, and run their tasks again; keep one name (remove the other links), or copy the file and its span file",
		ErrLinked, path, st.Nlink, filepath.Base(path)+"-spans")
}

// Journal is an open journal file. Close must be called when done with it.
type Journal struct {
	db   *sql.DB
	path string
	// created reports whether Open made the file (CloseUnused).
	created bool
}

// Open opens the journal at path, creating it with its schema if needed.
func Open(path string) (*Journal, error) {
	// SQLite would take a device or FIFO for an empty database, and
	// make its files beside it (in /dev, for /dev/null) before failing.
	fi, err := os.Stat(path)
	if err == nil && !fi.Mode().IsRegular() {
		return nil, fmt.Errorf("journal: %s is not a regular file but %s: name a file", path, fileKind(fi.Mode()))
	}
	created := errors.Is(err, fs.ErrNotExist)
	if err == nil {
		if err := oneName(path, fi); err != nil {
			return nil, err
		}
		if werr := writable(path); werr != nil {
			// SQLite would open it read-only, and make the WAL and its
			// shared memory beside it, the reader's, before it failed to
			// write: left behind, in a directory that others write too
			// (/tmp), its owner can open the journal no more ("attempt to
			// write a readonly database").
			return nil, fmt.Errorf("journal: %s cannot be written (%v): a run adds its records to its journal", path, werr)
		}
	}
	q := url.Values{}
	// Every connection asks for 64 KiB pages, which only a new file
	// takes; WAL mode, kept in the file, is set by init, after them. (The
	// driver runs _pragma values sorted by name: journal_mode(WAL) here
	// would make a new file's first page, of 4 KiB, before page_size.)
	for _, p := range []string{"page_size(65536)", "synchronous(NORMAL)", "busy_timeout(10000)"} {
		q.Add("_pragma", p)
	}
	name, err := fileURI(path, q.Encode())
	if err != nil {
		return nil, err
	}
	db, err := sql.Open("sqlite", name)
	if err != nil {
		return nil, fmt.Errorf("journal: opening %s: %w", path, err)
	}
	// One connection for the writer and one for resume's look-ups, which
	// WAL lets read while the other writes.
	db.SetMaxOpenConns(2)
	j := &Journal{db: db, path: path, created: created}
	if err := j.init(); err != nil {
		unmade := created && j.unmade()
		db.Close()
		if created {
			removeUnmade(path, unmade)
		}
		return nil, explainOpen(err, path)
	}
	return j, nil
}

// fileURI returns the SQLite URI of the file at path with the query
// query: its absolute path escaped, so that a name with '?', '#' or '%'
// in it ("night?1.db") names that file, not the file before the '?' with
// a query of its own.
func fileURI(path, query string) (string, error) {
	abs, err := filepath.Abs(path)
	if err != nil {
		return "", fmt.Errorf("journal: %w", err)
	}
	u := url.URL{Scheme: "file", OmitHost: true, Path: abs, RawQuery: query}
	return u.String(), nil
}

// writable returns why this process may not write the file at path, by
// its effective ids, as opening it would be judged (permission denied, a
// read-only file system), or nil when it may.
func writable(path string) error {
	return unix.Faccessat(unix.AT_FDCWD, path, unix.W_OK, unix.AT_EACCESS)
}

// OpenRead opens the journal at path, which exists, to read what earlier
// runs did (Journal.Resumer), for a dry run. A journal this process may
// write is opened as by Open. One it may not (another user's) is opened
// read-only and so that nothing is made beside it: as it is when no WAL
// beside it holds records, else read-only through the WAL (SQLite then
// reads the shared memory that the writer made): SQLite's WAL and shared
// memory, made by a reader beside another user's journal, would be left
// behind, the reader's, and keep the journal's owner from opening it.
func OpenRead(path string) (*Journal, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return nil, fmt.Errorf("journal: %w", err)
	}
	if !fi.Mode().IsRegular() || writable(path) == nil {
		return Open(path)
	}
	if err := oneName(path, fi); err != nil {
		return nil, err
	}
	mode := "immutable=1"
	if wal, err := os.Stat(path + "-wal"); err == nil && wal.Size() > 0 {
		mode = "mode=ro"
	}
	name, err := fileURI(path, mode+"&_pragma=query_only(1)&_pragma=busy_timeout(10000)")
	if err != nil {
		return nil, err
	}
	db, err := sql.Open("sqlite", name)
	if err != nil {
		return nil, fmt.Errorf("journal: opening %s: %w", path, err)
	}
	var v int
	if err := db.QueryRow("PRAGMA user_version").Scan(&v); err != nil {
		db.Close()
		return nil, explainOpen(fmt.Errorf("journal: reading %s: %w", path, err), path)
	}
	switch {
	case v > schemaVersion:
		err = fmt.Errorf("%w: %s has schema version %d, this safepool knows %d", ErrNewerSchema, path, v, schemaVersion)
	case v != 0 && v < schemaVersion:
		err = fmt.Errorf("%w: %s has schema version %d, this safepool writes and resumes %d: use a new journal file",
			ErrOlderSchema, path, v, schemaVersion)
	case v == 0:
		err = fmt.Errorf("%w: %s has no journal's schema version", ErrNotJournal, path)
	}
	if err != nil {
		db.Close()
		return nil, err
	}
	return &Journal{db: db, path: path}, nil
}

// removeUnmade removes the file of a journal that Open made but could not
// set up, when it is still empty (on a full disk, SQLite leaves it so), or
// holds no table (empty, found so before it was closed): it holds nothing,
// and left behind it would pass for a journal, which the report takes for
// another program's database. The WAL and shared memory that SQLite may
// leave beside it go with it. A file that has a table may be another
// run's, made meanwhile, and stays.
func removeUnmade(path string, empty bool) {
	fi, err := os.Stat(path)
	if err != nil || !fi.Mode().IsRegular() || fi.Size() != 0 && !empty {
		return
	}
	os.Remove(path)
	os.Remove(path + "-wal")
	os.Remove(path + "-shm")
}

// fileKind names the kind of file of mode m, which is not a regular one.
func fileKind(m os.FileMode) string {
	switch {
	case m.IsDir():
		return "a directory"
	case m&os.ModeCharDevice != 0, m&os.ModeDevice != 0:
		return "a device"
	case m&os.ModeNamedPipe != 0:
		return "a FIFO"
	case m&os.ModeSocket != 0:
		return "a socket"
	}
	return "something else"
}

// init applies the schema to a new file and checks an old one's version.
func (j *Journal) init() error {
	var v int
	if err := j.db.QueryRow("PRAGMA user_version").Scan(&v); err != nil {
		return fmt.Errorf("journal: reading %s: %w", j.path, err)
	}
	if v > schemaVersion {
		return fmt.Errorf("%w: %s has schema version %d, this safepool knows %d", ErrNewerSchema, j.path, v, schemaVersion)
	}
	if v != 0 && v < schemaVersion {
		return fmt.Errorf("%w: %s has schema version %d, this safepool writes and resumes %d: use a new journal file",
			ErrOlderSchema, j.path, v, schemaVersion)
	}
	if v == 0 {
		// Every journal's schema sets user_version first, before its
		// tables: a version 0 file that has any is another program's.
		var objects int
		if err := j.db.QueryRow("SELECT count(*) FROM sqlite_master").Scan(&objects); err != nil {
			return fmt.Errorf("journal: reading %s: %w", j.path, err)
		}
		if objects > 0 {
			return fmt.Errorf("%w: %s is a SQLite database of something else (it has tables, and no journal's schema version): name a new file",
				ErrNotJournal, j.path)
		}
	}
	// Before the schema, which is then written to the WAL unsynced, not
	// through a rollback journal synced at every step: on a new file,
	// that cost about 40 fsyncs, a tenth of map's time on 1M lines.
	if _, err := j.db.Exec("PRAGMA journal_mode=WAL"); err != nil {
		return fmt.Errorf("journal: setting WAL mode in %s: %w", j.path, err)
	}
	// In one transaction, on one connection (the rollback must reach the
	// one that began it): a disk that fills part of the way through
	// leaves no half-made schema, which would pass for a journal.
	ctx := context.Background()
	conn, err := j.db.Conn(ctx)
	if err != nil {
		return fmt.Errorf("journal: opening %s: %w", j.path, err)
	}
	defer conn.Close()
	if _, err := conn.ExecContext(ctx, "BEGIN;\n"+schema+"\nCOMMIT;"); err != nil {
		_, _ = conn.ExecContext(ctx, "ROLLBACK")
		return fmt.Errorf("journal: creating the schema in %s: %w", j.path, explainWrite(err, j.path))
	}
	return nil
}

// unmade reports whether the journal's file holds no table: a file that
// Open made, and could not set up, holds nothing of a journal.
func (j *Journal) unmade() bool {
	var objects int
	err := j.db.QueryRow("SELECT count(*) FROM sqlite_master").Scan(&objects)
	return err == nil && objects == 0
}

// CloseUnused closes the journal, as Close does, when no run could be
// added to it (Start failed: a full disk, a span file that cannot be
// opened). A file that Open made and that holds no run is removed then,
// with its WAL, its shared memory and the span file that Start made: no
// file is left that would pass for a journal.
func (j *Journal) CloseUnused() error {
	var runs int
	unused := j.created && j.db.QueryRow("SELECT count(*) FROM run").Scan(&runs) == nil && runs == 0
	err := j.Close()
	if unused {
		for _, p := range []string{j.path, j.path + "-wal", j.path + "-shm"} {
			os.Remove(p)
		}
		if fi, serr := os.Lstat(SpanFile(j.path)); serr == nil && fi.Mode().IsRegular() && fi.Size() == 0 {
			os.Remove(SpanFile(j.path))
		}
	}
	return err
}

// DB returns the journal's database, for readers such as the report.
func (j *Journal) DB() *sql.DB { return j.db }

// Close closes the database.
func (j *Journal) Close() error {
	if err := j.db.Close(); err != nil {
		return fmt.Errorf("journal: closing %s: %w", j.path, err)
	}
	return nil
}

// Run describes one run for its row in the run table.
type Run struct {
	// Kind is "run", "map" or "python".
	Kind string
	// Command is the command template (run), the worker's command (map) or
	// the Python function's qualified name. Resume looks only at runs of
	// the same Kind and Command.
	Command string
	// Argv is the supervisor's argument vector.
	Argv []string
	// Workers is the pool's number of workers.
	Workers int
	// MemoryMode is the pool's memory mode (pool.Pool.MemoryMode).
	MemoryMode string
	// MemBudget is the governor's budget in bytes, 0 when it is off.
	MemBudget int64
	// MemLimit is the per-worker limit in bytes, 0 when none.
	MemLimit int64
	// Resumed reports whether the run skips what earlier runs finished.
	Resumed bool
	// SkipFailed, with Resumed, says that tasks that failed or were poison
	// in an earlier run count as finished: they are skipped, as GNU
	// parallel's --resume does; without it, only done ones
	// (--resume-failed).
	SkipFailed bool
	// StoreOutput reports whether done tasks' outputs go into the journal,
	// for a resumed map to replay.
	StoreOutput bool
}

// CommandString renders a command's words as one string for Run.Command.
func CommandString(command []string) string {
	b, _ := json.Marshal(command)
	return string(b)
}

// insertRun adds the run's row and returns its id.
func (j *Journal) insertRun(r Run, started time.Time) (int64, error) {
	argv, _ := json.Marshal(r.Argv)
	if r.Argv == nil {
		argv = []byte("[]")
	}
	res, err := j.db.Exec(`INSERT INTO run (started, kind, command, argv, workers, memory_mode, mem_budget, mem_limit, resumed)
		VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)`,
		started.UnixNano(), r.Kind, r.Command, string(argv), r.Workers, r.MemoryMode,
		nullInt(r.MemBudget), nullInt(r.MemLimit), boolInt(r.Resumed))
	if err != nil {
		return 0, fmt.Errorf("journal: adding the run to %s: %w", j.path, err)
	}
	return res.LastInsertId()
}

func nullInt(n int64) any {
	if n <= 0 {
		return nil
	}
	return n
}

func boolInt(b bool) int {
	if b {
		return 1
	}
	return 0
}
