package memory

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"

	"golang.org/x/sys/unix"
)

// controller is one cgroup version's file conventions (cgroup_v1_linux.go,
// cgroup_v2_linux.go). Every method takes the directory it works on.
//
// containerd's cgroup1 and cgroup2 packages are not used for this: they
// would add dbus, systemd, eBPF, protobuf and logrus modules for a few
// mkdir, read and write calls, and cgroup2's fallback Kill calls Wait on the
// group's processes, stealing the exit status from the one goroutine that
// must observe a worker's death.
type controller interface {
	mode() Mode
	// delegate readies own, the supervisor's cgroup, to hold limited
	// children, and returns the leaf it moved the supervisor into, if any.
	delegate(own string) (leaf string, err error)
	// enable readies parent, the Manager's directory, to hold limited children.
	enable(parent string) error
	// create makes the directory of a group with the given limit (<= 0: none).
	create(dir string, limit int64) error
	oomKills(dir string) (uint64, error)
	usage(dir string) (int64, error)
	peak(dir string, peakFD *os.File) (int64, error)
	resetPeak(dir string) (peakFD *os.File, err error)
	// prepare makes cmd start inside dir, returning a file to close after Start.
	prepare(dir string, cmd *exec.Cmd) (*os.File, error)
	// killFile names the file whose write of "1" kills the group, or "".
	killFile() string
}

// Group is one worker's cgroup, made by [Manager.NewGroup]. Its methods are
// safe for concurrent use. Remove, or the Manager's Close, must be called
// once the worker is gone.
type Group struct {
	m    *Manager
	ctrl controller
	path string

	mu sync.Mutex
	// cgroupDir is the directory Prepare opened (v2) until Started closes
	// it; guarded by mu.
	cgroupDir *os.File
	// peakFD is memory.peak as opened by ResetPeak (v2); later reads must
	// use it to see the reset. Guarded by mu.
	peakFD *os.File
	// peakBase is, on v2 kernels whose memory.peak cannot be reset (5.19
	// to 6.11), the group's lifetime peak when ResetPeak was last called,
	// and peakRelative says it is set: Peak is then that lifetime peak if
	// it rose above peakBase (so it was reached since), else unknown. A
	// one-shot slot's groups serve job after job: each job used to be
	// reported with the largest peak of the jobs before it. Guarded by mu.
	peakBase     int64
	peakRelative bool
	// cacheBase is the inactive page cache the group held when ResetPeak
	// started a new peak: what earlier processes of the group (a
	// persistent worker's earlier tasks, a one-shot slot's earlier jobs)
	// left of the files they wrote or read, charged to the group until
	// the kernel reclaims it. Peak leaves out what of it is still there
	// as it reads the peak: otherwise each task of a worker that writes
	// files was charged all the cache of the tasks before it, a peak that
	// grew task after task and made the governor run tasks one at a time.
	// Guarded by mu.
	cacheBase int64
	// removed is set once the directory is gone; guarded by mu.
	removed bool
	// v1Peak is v1's memory.max_usage_in_bytes, kept open for reading and
	// resetting it around every task of a persistent worker with pread and
	// pwrite, without an open, a poller registration and a close each time.
	// It holds the descriptor plus one, so that 0 means not open; guarded
	// by mu.
	v1Peak int
	// v1OOM is v1's memory.oom_control, kept open the same way: a one-shot
	// slot reads it twice per job, and a cgroup file's open and close cost
	// more than its read. (Not cgroup.procs, read once per job: v1 builds
	// its list once per open file and serves that list again for a second
	// after each read, so a kept one would list processes already gone.)
	// Guarded by mu.
	v1OOM int
	// v1Dir is the group's directory (O_PATH), kept open under v1 so that
	// the check for processes left after each job opens cgroup.procs
	// without walking the group's long path again. Guarded by mu.
	v1Dir int
	// v1Tasks is v1's tasks file, kept open for writing for the starts
	// from a thread (Start), for the same reason; a write is never
	// served from anything kept. Guarded by mu, which Start holds while
	// the start thread uses it.
	v1Tasks int
}

// Path returns the group's directory, such as
// /sys/fs/cgroup/memory/x/safepool-123/w1.
func (g *Group) Path() string { return g.path }

// Prepare makes cmd start inside the group. It must be called before
// cmd.Start, and Started right after Start returns, whether Start
// succeeded or not.
//
// With cgroup v2, Prepare opens the group's directory and sets
// cmd.SysProcAttr.UseCgroupFD and CgroupFD (on a copy of SysProcAttr, other
// fields kept), so the kernel starts the process in the group. With cgroup
// v1, Prepare rewrites cmd.Path and cmd.Args to run the original argv
// through a /bin/sh shim that moves itself into the group, sets its
// oom_score_adj to 1000 and execs the worker under the same pid. If the
// shim cannot do either, it exits with status 125 and a message on stderr,
// and the worker does not run. The shim keeps argv[0] through bash's
// exec -a; on a host without bash, the worker sees its path as argv[0].
// Under cgroup v2, Prepare leaves
// oom_score_adj alone: call [SetOOMScoreAdj] after Start.
func (g *Group) Prepare(cmd *exec.Cmd) error {
	if cmd.Process != nil {
		return errors.New("memory: Prepare after Start")
	}
	if cmd.Err != nil {
		return cmd.Err
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.removed {
		return fmt.Errorf("memory: group %s was removed", g.path)
	}
	if cmd.SysProcAttr != nil {
		attr := *cmd.SysProcAttr
		cmd.SysProcAttr = &attr
	}
	f, err := g.ctrl.prepare(g.path, cmd)
	if err != nil {
		return fmt.Errorf("memory: prepare start in %s: %w", g.path, err)
	}
	if g.cgroupDir != nil {
		g.cgroupDir.Close()
	}
	g.cgroupDir = f
	return nil
}

// Start starts cmd inside the group, in place of Prepare, cmd.Start and
// Started (cmd.Process is set, as by cmd.Start). Under cgroup v1 it forks cmd from a supervisor thread placed in
// the group for the time of the fork, where the host allows it
// ([Detection].ShimStart is nil), and raises its oom_score_adj to 1000
// while it is stopped at its exec (threadstart_linux.go), so that the
// worker runs its own program in the group, with that score, from its
// first instruction, with one exec. Otherwise it starts cmd as Prepare
// readies it, and under cgroup v2 raises the started process's
// oom_score_adj to 1000 (v1's shim raises its own before the worker runs).
func (g *Group) Start(cmd *exec.Cmd) error {
	_, err := g.Spawn(cmd, StartCmd)
	return err
}

// Spawn is Start with the process started by start, which must fork on
// the calling thread (as cmd.Start and syscall.ForkExec do). It returns
// the process's id.
func (g *Group) Spawn(cmd *exec.Cmd, start Spawner) (pid int, err error) {
	if g.ctrl.mode() != ModeCgroupV1 || g.m == nil || !g.m.threadStart.Load() {
		if err := g.Prepare(cmd); err != nil {
			return 0, err
		}
		pid, err := start(cmd)
		g.Started()
		if err == nil && g.ctrl.mode() != ModeCgroupV1 {
			_ = SetOOMScoreAdj(pid, 1000)
		}
		return pid, err
	}
	// Held for the start, so that Remove cannot close the kept tasks file
	// while the start thread writes to it.
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.removed {
		return 0, fmt.Errorf("memory: group %s was removed", g.path)
	}
	tasks, ok := g.v1FD(&g.v1Tasks, "tasks", unix.O_WRONLY)
	if !ok {
		path := filepath.Join(g.path, "tasks")
		fd, err := unix.Open(path, unix.O_WRONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			return 0, fmt.Errorf("memory: start in %s: %w", g.path, &os.PathError{Op: "open", Path: path, Err: err})
		}
		defer unix.Close(fd)
		tasks = fd
	}
	traced(cmd)
	pid, back, err := startFromThread(cmd, start, tasks, g.path, g.m.det.Own)
	if back != nil {
		// Never again: each such thread is held until its child ends.
		g.m.threadStart.Store(false)
	}
	if err != nil {
		return 0, fmt.Errorf("memory: start in %s: %w", g.path, err)
	}
	return pid, nil
}

// Started releases what Prepare opened. Call it after cmd.Start returns.
func (g *Group) Started() {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.cgroupDir != nil {
		g.cgroupDir.Close()
		g.cgroupDir = nil
	}
}

// OOMKills returns how many processes the kernel OOM-killed in the group:
// v1 memory.oom_control oom_kill, v2 memory.events oom_kill. The counter is
// raised before the victim is sent SIGKILL, so it is current by the time
// Wait reports the death. Kernels without the counter (v1 before Linux
// 4.13) give an error matching errors.ErrUnsupported.
func (g *Group) OOMKills() (uint64, error) {
	g.mu.Lock()
	fd, ok := g.v1FD(&g.v1OOM, "memory.oom_control", unix.O_RDONLY)
	if !ok {
		g.mu.Unlock()
		return g.ctrl.oomKills(g.path)
	}
	b, err := preadAll(fd)
	g.mu.Unlock()
	path := filepath.Join(g.path, "memory.oom_control")
	if err != nil {
		return 0, fmt.Errorf("memory: read %s: %w", path, err)
	}
	v, ok, err := parseKey(b, "oom_kill")
	if err != nil {
		return 0, err
	}
	if !ok {
		return 0, fmt.Errorf("memory: no oom_kill in %s: %w", path, errors.ErrUnsupported)
	}
	return v, nil
}

// procs lists the pids in the group, opening its cgroup.procs anew each
// time (see v1OOM), from the kept directory under v1.
func (g *Group) procs() ([]int, error) {
	g.mu.Lock()
	defer g.mu.Unlock()
	dir, ok := g.v1FD(&g.v1Dir, ".", unix.O_PATH|unix.O_DIRECTORY)
	if !ok {
		return readProcs(g.path)
	}
	b, err := readSmallAt(dir, "cgroup.procs", filepath.Join(g.path, "cgroup.procs"))
	if err != nil {
		return nil, err
	}
	return parseProcs(b)
}

// preadAll reads the control file fd whole from offset 0: the kernel
// builds a cgroup file's text again for each read at offset 0. A read
// that leaves room in the buffer has reached the end: the kernel fills a
// control file's read (a seq_file) until the buffer is full or the text
// ends, so that a small file takes one system call, not two.
func preadAll(fd int) ([]byte, error) {
	buf := make([]byte, 0, 512)
	for {
		if len(buf) == cap(buf) {
			buf = append(buf, 0)[:len(buf)]
		}
		room := cap(buf) - len(buf)
		n, err := unix.Pread(fd, buf[len(buf):cap(buf)], int64(len(buf)))
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return nil, err
		}
		buf = buf[:len(buf)+n]
		if n < room {
			return buf, nil
		}
	}
}

// Usage returns the group's current memory use in bytes, page cache
// included.
func (g *Group) Usage() (int64, error) { return g.ctrl.usage(g.path) }

// Peak returns the group's highest memory use in bytes since it was made
// or since ResetPeak: v1 memory.max_usage_in_bytes, v2 memory.peak. It is
// 0, nil on v2 kernels without memory.peak (before Linux 5.19).
func (g *Group) Peak() (int64, error) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if fd, ok := g.v1PeakFD(); ok {
		var buf [32]byte
		n, err := unix.Pread(fd, buf[:], 0)
		if err != nil {
			return 0, fmt.Errorf("memory: read %s/memory.max_usage_in_bytes: %w", g.path, err)
		}
		v, err := strconv.ParseInt(strings.TrimSpace(string(buf[:n])), 10, 64)
		if err != nil {
			return 0, fmt.Errorf("memory: parse %s/memory.max_usage_in_bytes: %w", g.path, err)
		}
		return g.lessCache(v), nil
	}
	v, err := g.ctrl.peak(g.path, g.peakFD)
	if err == nil && g.peakRelative && v <= g.peakBase {
		return 0, nil // not above the peak before the reset: unknown
	}
	if err == nil {
		v = g.lessCache(v)
	}
	return v, err
}

// cacheFloor is the least use at ResetPeak for which the group's page
// cache is read (memory.stat): below it, what cache there may be is left
// in the peak, and a one-shot slot whose jobs leave next to nothing pays
// no read of memory.stat per job.
const cacheFloor = 4 << 20

// inactiveCache returns the group's inactive page cache in bytes (memory.stat
// inactive_file, v1 total_inactive_file), or 0 when it cannot be read.
func (g *Group) inactiveCache() int64 {
	key := "inactive_file"
	if g.ctrl.mode() == ModeCgroupV1 {
		key = "total_inactive_file"
	}
	v, ok, err := readKey(filepath.Join(g.path, "memory.stat"), key)
	if err != nil || !ok {
		return 0
	}
	return int64(v)
}

// lessCache returns peak, a reading of the group's peak since ResetPeak,
// less the part of the cache it held then (cacheBase) that it still holds:
// the kernel reclaims that cache before it runs short, so a process that
// needed the room took it back, and it is then no part of the peak to
// leave out. 0 (unknown) when nothing is left. g.mu must be held.
func (g *Group) lessCache(peak int64) int64 {
	if g.cacheBase <= 0 || peak <= 0 {
		return peak
	}
	left := min(g.cacheBase, g.inactiveCache())
	return max(peak-left, 0)
}

// v1PeakFD returns the open memory.max_usage_in_bytes of a v1 group,
// opening it on first use; ok is false for v2, after Remove, or when it
// cannot be opened (the callers then use the path). g.mu must be held.
func (g *Group) v1PeakFD() (fd int, ok bool) {
	return g.v1FD(&g.v1Peak, "memory.max_usage_in_bytes", unix.O_RDWR)
}

// v1FD returns the control file name of a v1 group, kept open in *slot
// (the descriptor plus one) and opened with mode on first use; ok is false
// for v2, after Remove, or when it cannot be opened (the callers then use
// the path). g.mu must be held.
func (g *Group) v1FD(slot *int, name string, mode int) (fd int, ok bool) {
	if g.ctrl.mode() != ModeCgroupV1 || g.removed {
		return 0, false
	}
	if *slot == 0 {
		fd, err := unix.Open(filepath.Join(g.path, name), mode|unix.O_CLOEXEC, 0)
		if err != nil {
			return 0, false
		}
		// Only a control file is read and rewritten whole at offset 0;
		// elsewhere (tests on a plain directory) the path is used.
		var st unix.Statfs_t
		if unix.Fstatfs(fd, &st) != nil || st.Type != unix.CGROUP_SUPER_MAGIC {
			unix.Close(fd)
			return 0, false
		}
		*slot = fd + 1
	}
	return *slot - 1, true
}

// closeV1Files closes what v1FD opened. g.mu must be held.
func (g *Group) closeV1Files() {
	for _, slot := range []*int{&g.v1Peak, &g.v1OOM, &g.v1Tasks, &g.v1Dir} {
		if *slot != 0 {
			unix.Close(*slot - 1)
			*slot = 0
		}
	}
}

// ResetPeak starts a new peak from the current use, such as between two
// tasks on one persistent worker. On v2 kernels before 6.12 it returns an
// error matching errors.ErrUnsupported, and Peak keeps the group's
// lifetime peak.
func (g *Group) ResetPeak() error {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.cacheBase = 0
	if fd, ok := g.v1PeakFD(); ok {
		if _, err := unix.Pwrite(fd, []byte("0"), 0); err != nil {
			return fmt.Errorf("memory: reset %s/memory.max_usage_in_bytes: %w", g.path, err)
		}
		// The new peak starts at the use now.
		var buf [32]byte
		if n, err := unix.Pread(fd, buf[:], 0); err == nil {
			if use, err := strconv.ParseInt(strings.TrimSpace(string(buf[:n])), 10, 64); err == nil && use >= cacheFloor {
				g.cacheBase = g.inactiveCache()
			}
		}
		return nil
	}
	f, err := g.ctrl.resetPeak(g.path)
	if errors.Is(err, errors.ErrUnsupported) {
		// memory.peak that cannot be reset (v2 before Linux 6.12): peaks
		// from here count only when they rise above the one so far.
		if v, perr := g.ctrl.peak(g.path, nil); perr == nil && v > 0 {
			g.peakBase, g.peakRelative = v, true
			return nil
		}
	}
	if err != nil {
		return err
	}
	if f != nil {
		if g.peakFD != nil {
			g.peakFD.Close()
		}
		g.peakFD = f
	}
	if use, err := g.ctrl.usage(g.path); err == nil && use >= cacheFloor {
		g.cacheBase = g.inactiveCache()
	}
	return nil
}

// Kill sends SIGKILL to every process in the group (v2: through
// cgroup.kill when the kernel has it) and waits, for a few seconds at
// most, until none is left. It does not reap them: the worker's parent
// still calls Wait. It returns an error matching ErrStillPopulated if
// processes remain.
func (g *Group) Kill() error { return killAllFrom(g.ctrl, g.path, g.procs) }

// Remove kills what is left in the group, then removes its directory,
// retrying briefly while the kernel reports it busy. After Remove, the
// Group must not be used. Removing a removed group does nothing.
func (g *Group) Remove() error {
	g.mu.Lock()
	if g.removed {
		g.mu.Unlock()
		return nil
	}
	g.closeV1Files()
	kerr := killAll(g.ctrl, g.path)
	if err := rmdirRetry(g.path, g.m.rmdir); err != nil {
		g.mu.Unlock()
		return errors.Join(kerr, err)
	}
	g.removed = true
	for _, f := range []*os.File{g.cgroupDir, g.peakFD} {
		if f != nil {
			f.Close()
		}
	}
	g.cgroupDir, g.peakFD = nil, nil
	g.mu.Unlock()
	g.m.forget(g)
	return nil
}
