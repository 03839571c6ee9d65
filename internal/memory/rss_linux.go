package memory

import (
	"fmt"
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

// TreeRSS returns the resident memory of pid and all its descendants in
// bytes: the RSS polling fallback's measure of one worker. It reads every
// process in /proc once. Memory shared between the processes counts once
// per process, so TreeRSS errs on the high side.
func TreeRSS(pid int) (int64, error) {
	procs, err := procfs.AllProcs()
	if err != nil {
		return 0, err
	}
	children := make(map[int][]int)
	rss := make(map[int]int64, len(procs))
	for _, p := range procs {
		st, err := p.Stat()
		if err != nil {
			continue // exited since the listing
		}
		children[st.PPID] = append(children[st.PPID], p.PID)
		rss[p.PID] = int64(st.ResidentMemory())
	}
	if _, ok := rss[pid]; !ok {
		return 0, fmt.Errorf("memory: process %d: %w", pid, os.ErrNotExist)
	}
	var total int64
	for queue := []int{pid}; len(queue) > 0; queue = queue[1:] {
		p := queue[0]
		total += rss[p]
		queue = append(queue, children[p]...)
	}
	return total, nil
}

// SetOOMScoreAdj sets a process's oom_score_adj (-1000 to 1000). Workers
// get 1000, so the kernel kills them before the supervisor or an innocent
// process; Group.Prepare does it already under cgroup v1.
func SetOOMScoreAdj(pid, score int) error {
	return os.WriteFile(filepath.Join("/proc", strconv.Itoa(pid), "oom_score_adj"), []byte(strconv.Itoa(score)), 0)
}
