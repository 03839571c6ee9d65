package memory

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
)

// Manager owns this supervisor's cgroups: a parent directory named
// safepool-<pid> under the supervisor's own memory cgroup, and one [Group]
// per worker inside it. Where workers cannot have cgroups of their own, it
// says so and why (its Mode, Detection and Reason) and offers what the
// supervisor's own cgroup still gives (OOMWitness). Its methods are safe
// for concurrent use. Close must be called when the supervisor stops using
// it.
//
// The zero Manager is in ModeNone.
type Manager struct {
	det   Detection
	ctrl  controller // nil unless det.Mode.PerWorker()
	rmdir func(string) error
	// witness confirms OOM kills from the supervisor's own cgroup in
	// ModeEnclosing; nil otherwise.
	witness *OOMWitness
	// threadStart reports whether cgroup v1 workers start from a thread
	// placed in their group (threadstart_linux.go) rather than through the
	// shim. It is set once by detect and cleared for good when a thread
	// could not leave a group.
	threadStart atomic.Bool
	// tracedStart reports whether workers without a cgroup of their own
	// start traced to their exec (tracedstart_linux.go) rather than through
	// the shim. It is set once by NewManager.
	tracedStart atomic.Bool

	mu     sync.Mutex
	groups map[*Group]struct{} // groups not yet removed; guarded by mu
	closed bool                // guarded by mu
}

// system is what NewManager looks at and changes: the real one, or in tests
// a fake cgroupfs tree and a fake /proc.
type system struct {
	proc  string                         // where procfs is mounted
	euid  int                            // the supervisor's effective user id
	pid   int                            // the supervisor's pid
	write func(path, value string) error // writes a cgroup control file
	rmdir func(string) error             // removes a cgroup directory
}

// NewManager finds this process's memory cgroup (v2 when the unified
// hierarchy holds the memory controller, else v1) and picks the best mode
// it allows:
//
//   - A cgroup per worker (ModeCgroupV1, ModeCgroupV2) where the supervisor
//     may make cgroups there: as root, or in a cgroup v2 subtree delegated
//     to its user. It removes what dead supervisors left (sibling
//     directories safepool-<pid> whose pid is not alive: their processes
//     are killed, their groups removed) and makes this supervisor's
//     parent directory. Under cgroup v2, a cgroup that holds processes
//     cannot give its children the memory controller: when the supervisor
//     is the only process in its cgroup, it moves itself into a leaf,
//     safepool-<pid>-0, first.
//   - ModeEnclosing where it cannot, but can read its own cgroup's
//     oom_kill counter: a container, a batch job, a user session.
//   - ModeNone otherwise.
//
// The error is reserved for failures that leave no usable Manager; there
// are none today: Reason says why a better mode was not available.
func NewManager() (*Manager, error) {
	m := detect(system{proc: "/proc", euid: os.Geteuid(), pid: os.Getpid(), write: writeCgroupFile, rmdir: rmdirCgroup})
	if m.det.Mode == ModeEnclosing {
		// The workers and what they start stay in the supervisor's cgroup:
		// look for their descendants there, not among all of the host's
		// processes (see scanWithin).
		procScans.within(m.det.Own)
	}
	if !m.det.Mode.PerWorker() {
		if err := probeTracedStart(); err != nil {
			m.det.ShimStart = fmt.Errorf("a worker cannot be started traced to its exec: %w", err)
		} else {
			m.tracedStart.Store(true)
		}
	}
	return m, nil
}

// Shim returns what readies each worker that has no cgroup of its own, with
// dataLimit as its RLIMIT_DATA in bytes (0: none): started with one exec
// where NewManager found that workers can start traced to their exec, else
// through the shell shim.
func (m *Manager) Shim(dataLimit int64) Shim {
	return Shim{DataLimit: dataLimit, traced: m.tracedStart.Load()}
}

// detect is NewManager on sys.
func detect(sys system) *Manager {
	loc, err := locateAt(sys.proc)
	if err != nil {
		return &Manager{det: Detection{Mode: ModeNone, NoCgroups: err}}
	}
	var c controller = cgroupV2{write: sys.write, pid: sys.pid}
	if loc.mode == ModeCgroupV1 {
		c = cgroupV1{bash: bashPath()}
	}
	m, err := newManager(c, loc.dir, sys.rmdir)
	if err == nil {
		m.det.Delegated = loc.mode == ModeCgroupV2 && sys.euid != 0
		if loc.mode == ModeCgroupV1 {
			if err := probeThreadStart(m.det.Parent, loc.dir); err != nil {
				m.det.ShimStart = fmt.Errorf("a thread cannot move into a worker's group and back: %w", err)
			} else {
				m.threadStart.Store(true)
			}
		}
		return m
	}
	det := Detection{Mode: ModeEnclosing, Version: loc.version(), Own: loc.dir, NoCgroups: err}
	w, werr := witnessAt(loc)
	if werr != nil {
		det.Mode, det.NoCgroups = ModeNone, errors.Join(err, werr)
		return &Manager{det: det}
	}
	det.OOMCounter = w.File()
	return &Manager{det: det, witness: w}
}

// newManager makes a Manager with a cgroup per worker under own, the
// supervisor's cgroup in the hierarchy c works on, or says why it cannot.
// rmdir removes a cgroup directory.
func newManager(c controller, own string, rmdir func(string) error) (*Manager, error) {
	leftoverErr := cleanLeftovers(c, own, rmdir)
	leaf, err := c.delegate(own)
	if err != nil {
		return nil, err
	}
	dir, err := makeParent(own)
	if err != nil {
		return nil, err
	}
	if err := c.enable(dir); err != nil {
		err = errors.Join(err, rmdirRetry(dir, rmdir))
		releaseParent(dir)
		return nil, err
	}
	version := 1
	if c.mode() == ModeCgroupV2 {
		version = 2
	}
	return &Manager{
		det: Detection{
			Mode:      c.mode(),
			Version:   version,
			Own:       own,
			Parent:    dir,
			Leaf:      leaf,
			Leftovers: leftoverErr,
		},
		ctrl:   c,
		rmdir:  rmdir,
		groups: make(map[*Group]struct{}),
	}, nil
}

// Mode reports how worker memory is limited and watched.
func (m *Manager) Mode() Mode { return m.det.Mode }

// Detection returns what NewManager found.
func (m *Manager) Detection() Detection { return m.det }

// Reason says in one line which mode the Manager is in and why, such as
// "cgroup v1: a memory cgroup per worker under
// /sys/fs/cgroup/memory/x/safepool-123" or "enclosing cgroup: workers
// share the supervisor's cgroup v1 /sys/fs/cgroup/memory/job, whose
// memory.oom_control confirms OOM kills; no cgroup per worker (mkdir ...:
// permission denied); limits enforced by the supervisor". It is the one
// place that words the mode.
func (m *Manager) Reason() string {
	if m.det == (Detection{}) {
		return "no cgroup (no Manager made by NewManager): limits enforced by the supervisor, OOM kills confirmed from the kernel log only"
	}
	return m.det.reason()
}

// OOMWitness returns the witness of the OOM kills in the supervisor's own
// cgroup in ModeEnclosing, and nil otherwise.
func (m *Manager) OOMWitness() *OOMWitness { return m.witness }

// NewGroup makes the cgroup of one worker, named name (a single path
// element, unique among the Manager's live groups), limited to limit bytes
// of memory. A limit <= 0 means no limit: the group still counts usage,
// peak and OOM kills. Without a cgroup per worker it returns ErrNoCgroups,
// and after Close ErrClosed.
func (m *Manager) NewGroup(name string, limit int64) (*Group, error) {
	if m.ctrl == nil {
		return nil, ErrNoCgroups
	}
	if name == "" || name == "." || name == ".." || strings.ContainsAny(name, "/\x00") {
		return nil, fmt.Errorf("memory: invalid group name %q", name)
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return nil, ErrClosed
	}
	path := filepath.Join(m.det.Parent, name)
	if err := m.ctrl.create(path, limit); err != nil {
		return nil, fmt.Errorf("memory: new group: %w", err)
	}
	g := &Group{m: m, ctrl: m.ctrl, path: path}
	m.groups[g] = struct{}{}
	return g, nil
}

// forget drops a removed group.
func (m *Manager) forget(g *Group) {
	m.mu.Lock()
	delete(m.groups, g)
	m.mu.Unlock()
}

// Close kills the processes left in the Manager's groups, removes the
// groups and the parent directory. Later calls do nothing.
func (m *Manager) Close() error {
	m.mu.Lock()
	if m.closed || m.ctrl == nil {
		m.closed = true
		m.mu.Unlock()
		return nil
	}
	m.closed = true
	groups := make([]*Group, 0, len(m.groups))
	for g := range m.groups {
		groups = append(groups, g)
	}
	m.mu.Unlock()

	var errs []error
	for _, g := range groups {
		errs = append(errs, g.Remove())
	}
	errs = append(errs, removeTree(m.ctrl, m.det.Parent, m.rmdir))
	releaseParent(m.det.Parent)
	return errors.Join(errs...)
}

// parents holds the parent directories of this process's live Managers.
// Several Managers in one process get safepool-<pid>, safepool-<pid>-2, ...
var parents = struct {
	sync.Mutex
	inUse map[string]bool
	// leaf is the cgroup v2 leaf this process moved itself into, or "".
	// It stays in inUse for the life of the process, which cannot leave it.
	leaf string
}{inUse: make(map[string]bool)}

// takeLeaf records that this process moved itself into leaf.
func takeLeaf(leaf string) {
	parents.Lock()
	parents.leaf = leaf
	parents.inUse[leaf] = true
	parents.Unlock()
}

// isSelfLeaf reports whether dir is the leaf this process moved itself into.
func isSelfLeaf(dir string) bool {
	parents.Lock()
	defer parents.Unlock()
	return parents.leaf != "" && parents.leaf == dir
}

// makeParent makes a new parent directory under own.
func makeParent(own string) (string, error) {
	parents.Lock()
	defer parents.Unlock()
	pid := os.Getpid()
	for i := 1; i <= 100; i++ {
		name := fmt.Sprintf("safepool-%d", pid)
		if i > 1 {
			name = fmt.Sprintf("safepool-%d-%d", pid, i)
		}
		dir := filepath.Join(own, name)
		if parents.inUse[dir] {
			continue
		}
		err := os.Mkdir(dir, 0o755)
		if err == nil {
			parents.inUse[dir] = true
			return dir, nil
		}
		if !errors.Is(err, os.ErrExist) {
			return "", err
		}
		// A leftover that could not be removed: take the next name.
	}
	return "", fmt.Errorf("memory: no free name for safepool-%d in %s", pid, own)
}

func releaseParent(dir string) {
	parents.Lock()
	delete(parents.inUse, dir)
	parents.Unlock()
}
