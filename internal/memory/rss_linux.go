package memory

import (
	"os"
	"path/filepath"
	"strconv"

	"github.com/prometheus/procfs"
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
// process; Group.Prepare does it already under cgroup v1.
func SetOOMScoreAdj(pid, score int) error {
	return os.WriteFile(filepath.Join("/proc", strconv.Itoa(pid), "oom_score_adj"), []byte(strconv.Itoa(score)), 0)
}
