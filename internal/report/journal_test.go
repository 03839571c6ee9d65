package report_test

import (
	"crypto/sha256"
	"database/sql"
	"encoding/hex"
	"encoding/json"
	"os"
	"path/filepath"
	"testing"
	"time"

	_ "modernc.org/sqlite"
)

// testJournal is a journal database made for a test with the journal's own
// schema (internal/journal/schema.sql), written row by row as the schema
// says. It stands in for the journal writer, so that the report can be
// tested against what a run really does.
type testJournal struct {
	path string
	db   *sql.DB
}

func newTestJournal(t *testing.T) *testJournal {
	t.Helper()
	schema, err := os.ReadFile(filepath.Join("..", "journal", "schema.sql"))
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "journal.db")
	db, err := sql.Open("sqlite", path+"?_pragma=journal_mode(WAL)")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	if _, err := db.Exec(string(schema)); err != nil {
		t.Fatalf("schema: %v", err)
	}
	return &testJournal{path: path, db: db}
}

// runRow is a row of the run table.
type runRow struct {
	started, ended time.Time // ended zero: NULL
	kind, command  string
	argv           []string
	workers        int
	memoryMode     string
	budget, limit  int64 // 0: NULL
	exitStatus     int   // -1: NULL
}

func nullTime(t time.Time) any {
	if t.IsZero() {
		return nil
	}
	return t.UnixNano()
}

func nullInt(n int64) any {
	if n == 0 {
		return nil
	}
	return n
}

func (j *testJournal) exec(t *testing.T, q string, args ...any) sql.Result {
	t.Helper()
	res, err := j.db.Exec(q, args...)
	if err != nil {
		t.Fatalf("%s: %v", q, err)
	}
	return res
}

func (j *testJournal) addRun(t *testing.T, r runRow) int64 {
	t.Helper()
	argv, _ := json.Marshal(r.argv)
	var exit any
	if r.exitStatus >= 0 {
		exit = r.exitStatus
	}
	res := j.exec(t, `INSERT INTO run (started, ended, kind, command, argv, workers, memory_mode, mem_budget, mem_limit, exit_status)
		VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`,
		r.started.UnixNano(), nullTime(r.ended), r.kind, r.command, string(argv), r.workers, r.memoryMode,
		nullInt(r.budget), nullInt(r.limit), exit)
	id, err := res.LastInsertId()
	if err != nil {
		t.Fatal(err)
	}
	return id
}

// taskKey is the task's content key as the schema describes it.
func taskKey(command string, input []byte) string {
	h := sha256.New()
	h.Write([]byte(command))
	h.Write([]byte{0})
	h.Write(input)
	return hex.EncodeToString(h.Sum(nil))
}
