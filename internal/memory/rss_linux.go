package memory

import (
	"os"
	"path/filepath"
	"strconv"

	"github.com/prometheus/procfs"
	"golang.org/x/sys/unix"
)

// ProcessRSS returns the resident memory of one process in bytes.
func ProcessRSS(pid int) (int64, error) {
	p, err := procfs.NewProc(pid)
	if err != nil {
		return 0, err
	}
	st, err := p.Stat()
	if err != nil {
		return 0, err
	}
	return int64(st.ResidentMemory()), nil
}

// ProcessPeakRSS returns the highest resident memory of one process in
// bytes (VmHWM).
func ProcessPeakRSS(pid int) (int64, error) {
	p, err := procfs.NewProc(pid)
	if err != nil {
		return 0, err
	}
	st, err := p.NewStatus()
	if err != nil {
		return 0, err
	}
	return int64(st.VmHWM), nil
}

// SetOOMScoreAdj sets a process's oom_score_adj (-1000 to 1000). Workers
// get 1000, so the kernel kills them before the supervisor or an innocent
// process; Group.Prepare and Group.Start do it already under cgroup v1.
// It writes with plain system calls: a /proc file cannot be polled, and
// os.WriteFile would try to register it with the poller for every worker.
func SetOOMScoreAdj(pid, score int) error {
	path := filepath.Join("/proc", strconv.Itoa(pid), "oom_score_adj")
	fd, err := unix.Open(path, unix.O_WRONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return &os.PathError{Op: "open", Path: path, Err: err}
	}
	defer unix.Close(fd)
	if _, err := unix.Write(fd, []byte(strconv.Itoa(score))); err != nil {
		return &os.PathError{Op: "write", Path: path, Err: err}
	}
	return nil
}
