package memory

import (
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// cleanLeftovers removes the parent directories that dead supervisors left
// in own: safepool-<pid>[-n] whose pid is not alive, or is this process
// but belongs to none of its Managers (an earlier process with the same
// pid, as happens in containers). Processes still inside are killed.
//
// A live process that reused a dead supervisor's pid keeps its leftovers
// in place; they are empty in practice, as workers die with their
// supervisor.
func cleanLeftovers(c controller, own string, rmdir func(string) error) error {
	entries, err := os.ReadDir(own)
	if err != nil {
		return err
	}
	self := os.Getpid()
	var errs []error
	for _, e := range entries {
		pid, ok := parseParentName(e.Name())
		if !ok || !e.IsDir() {
			continue
		}
		dir := filepath.Join(own, e.Name())
		if pid == self {
			parents.Lock()
			mine := parents.inUse[dir]
			parents.Unlock()
			if mine {
				continue
			}
		} else if alive(pid) {
			continue
		}
		errs = append(errs, removeTree(c, dir, rmdir))
	}
	return errors.Join(errs...)
}

// parseParentName returns the pid in a parent directory's name,
// safepool-<pid> or safepool-<pid>-<n>.
func parseParentName(name string) (pid int, ok bool) {
	rest, ok := strings.CutPrefix(name, "safepool-")
	if !ok {
		return 0, false
	}
	p, n, hasN := strings.Cut(rest, "-")
	if hasN {
		if _, err := strconv.ParseUint(n, 10, 31); err != nil {
			return 0, false
		}
	}
	v, err := strconv.ParseUint(p, 10, 31)
	if err != nil || v == 0 {
		return 0, false
	}
	return int(v), true
}

// alive reports whether a process with this pid exists.
func alive(pid int) bool {
	err := unix.Kill(pid, 0)
	return err == nil || errors.Is(err, unix.EPERM)
}
