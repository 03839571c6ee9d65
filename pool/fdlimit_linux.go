package pool

import (
	"os"

	"golang.org/x/sys/unix"
)

// openFiles returns the process's open-file limit and how many files it
// has open.
func openFiles() (limit, inUse int64, err error) {
	var rl unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_NOFILE, &rl); err != nil {
		return 0, 0, err
	}
	d, err := os.Open("/proc/self/fd")
	if err != nil {
		return 0, 0, err
	}
	defer d.Close()
	names, err := d.Readdirnames(-1)
	if err != nil {
		return 0, 0, err
	}
	// The directory itself is one of them.
	return int64(min(rl.Cur, 1<<40)), int64(len(names)) - 1, nil
}
