package journal

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"
	"modernc.org/sqlite"
)

// SQLite's primary result codes for a failed write or open.
const (
	sqlitePerm     = 3  // SQLITE_PERM
	sqliteReadOnly = 8  // SQLITE_READONLY, extended as SQLITE_READONLY_DIRECTORY (1544) and others
	sqliteIOErr    = 10 // SQLITE_IOERR, extended as SQLITE_IOERR_WRITE (778) and others
	sqliteCorrupt  = 11 // SQLITE_CORRUPT
	sqliteFull     = 13 // SQLITE_FULL
	sqliteCantOpen = 14 // SQLITE_CANTOPEN
	sqliteNotADB   = 26 // SQLITE_NOTADB
)

// explainOpen adds to err, a journal at path that could not be opened or
// made, what SQLite's own message leaves out: that its directory does not
// exist, or that the file or its directory cannot be written (SQLite says
// only "unable to open database file (14)" or "attempt to write a readonly
// database"), or that the file is damaged or no database at all (SQLite
// says "database disk image is malformed" or "file is not a database").
// Other errors are returned as they are.
func explainOpen(err error, path string) error {
	var se *sqlite.Error
	if !errors.As(err, &se) {
		return err
	}
	switch se.Code() & 0xff {
	case sqlitePerm, sqliteReadOnly, sqliteCantOpen:
	case sqliteCorrupt:
		return fmt.Errorf("%w: %s is damaged (cut short, or written over): no run can resume from it or be added to it; name a new journal file", err, path)
	case sqliteNotADB:
		return fmt.Errorf("%w: %s is no SQLite database, so no journal: name a new file", err, path)
	default:
		return err
	}
	if why := openProblem(path); why != "" {
		return fmt.Errorf("%w: %s", err, why)
	}
	return err
}

// openProblem says why the journal at path cannot be opened to write, or
// "" when the file system does not tell.
func openProblem(path string) string {
	dir := filepath.Dir(path)
	fi, err := os.Stat(dir)
	switch {
	case errors.Is(err, os.ErrNotExist):
		return fmt.Sprintf("the directory %s does not exist", dir)
	case err != nil:
		return err.Error()
	case !fi.IsDir():
		return fmt.Sprintf("%s is not a directory", dir)
	}
	if _, err := os.Stat(path); err == nil {
		if err := unix.Access(path, unix.W_OK); err != nil {
			return fmt.Sprintf("%s cannot be written (%v)", path, err)
		}
	}
	// SQLite makes the WAL and its shared memory beside the journal, also
	// to read a journal that exists.
	if err := unix.Access(dir, unix.W_OK); err != nil {
		return fmt.Sprintf("no file can be made in %s (%v), where the journal needs its WAL beside it", dir, err)
	}
	return ""
}

// explainWrite adds to err, a failed write of the journal at path, what
// SQLite's own message leaves out: that the file size limit (ulimit -f) or
// a full file system stopped it. SQLite says only "disk I/O error (778)"
// or "database or disk is full". Other errors are returned as they are.
func explainWrite(err error, path string) error {
	var se *sqlite.Error
	if !errors.As(err, &se) {
		return err
	}
	if code := se.Code() & 0xff; code != sqliteIOErr && code != sqliteFull {
		return err
	}
	if why := writeLimit(path); why != "" {
		return fmt.Errorf("%w: %s", err, why)
	}
	return err
}

// writeLimit says why files of the journal at path may no longer grow, or
// "" when neither the file size limit nor the file system's space is the
// reason.
func writeLimit(path string) string {
	var rl unix.Rlimit
	if unix.Getrlimit(unix.RLIMIT_FSIZE, &rl) == nil && rl.Cur != unix.RLIM_INFINITY {
		for _, f := range []string{path, path + "-wal", path + "-journal"} {
			if st, err := os.Stat(f); err == nil && uint64(st.Size())+64<<10 > rl.Cur {
				return fmt.Sprintf("%s has reached the file size limit (ulimit -f) of %d bytes", filepath.Base(f), rl.Cur)
			}
		}
	}
	var fs unix.Statfs_t
	dir := filepath.Dir(path)
	if unix.Statfs(dir, &fs) == nil && fs.Bavail*uint64(fs.Bsize) < 1<<20 {
		return fmt.Sprintf("no space left on the file system of %s", dir)
	}
	return ""
}
