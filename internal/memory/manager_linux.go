package memory

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
)

// Manager owns this supervisor's cgroups: a parent directory named
// safepool-<pid> under the supervisor's own memory cgroup, and one [Group]
// per worker inside it. Its methods are safe for concurrent use. Close must
// be called when the supervisor stops using it.
//
// The zero Manager is in ModeRSSPolling.
type Manager struct {
	mode   Mode
	reason string
	ctrl   controller // nil in ModeRSSPolling
	dir    string     // the parent directory; "" in ModeRSSPolling
	rmdir  func(string) error
	// witness confirms OOM kills from the supervisor's own cgroup where
	// workers have no cgroups of their own; nil otherwise.
	witness *OOMWitness

	mu     sync.Mutex
	groups map[*Group]struct{} // groups not yet removed; guarded by mu
	closed bool                // guarded by mu
}

// NewManager finds this process's memory cgroup (v2 when the unified
// hierarchy holds the memory controller, else v1), removes what dead
// supervisors left there (sibling directories safepool-<pid> whose pid is
// not alive: their processes are killed, their groups removed), and makes
// this supervisor's parent directory.
//
// When cgroups cannot be used (not root, read-only, no memory controller,
// or a v2 cgroup that shares the supervisor's cgroup with processes and so
// cannot enable the memory controller for children), NewManager returns a
// Manager in ModeRSSPolling and a nil error, and Reason says why. The
// error is reserved for failures that leave no usable Manager; there are
// none today.
func NewManager() (*Manager, error) {
	loc, err := locate()
	if err != nil {
		return pollingManager(err), nil
	}
	var c controller = cgroupV2{}
	if loc.mode == ModeCgroupV1 {
		c = cgroupV1{bash: bashPath()}
	}
	m := newManager(c, loc.dir, rmdirCgroup)
	if m.ctrl == nil {
		// Workers share the supervisor's cgroup: its counter can still
		// confirm their OOM kills.
		if w, err := witnessAt(loc); err == nil {
			m.witness = w
			m.reason += "; OOM kills confirmed from " + w.File()
		}
	}
	return m, nil
}

// newManager makes a Manager under own, the supervisor's cgroup directory
// in the hierarchy c works on. rmdir removes a cgroup directory.
func newManager(c controller, own string, rmdir func(string) error) *Manager {
	leftoverErr := cleanLeftovers(c, own, rmdir)
	if err := c.delegate(own); err != nil {
		return pollingManager(err)
	}
	dir, err := makeParent(own)
	if err != nil {
		return pollingManager(err)
	}
	if err := c.enable(dir); err != nil {
		err = errors.Join(err, rmdirRetry(dir, rmdir))
		releaseParent(dir)
		return pollingManager(err)
	}
	name := "cgroup v1"
	if c.mode() == ModeCgroupV2 {
		name = "cgroup v2"
	}
	reason := fmt.Sprintf("%s memory at %s", name, dir)
	if leftoverErr != nil {
		reason += "; leftovers of dead supervisors remain: " + oneLine(leftoverErr)
	}
	return &Manager{
		mode:   c.mode(),
		reason: reason,
		ctrl:   c,
		dir:    dir,
		rmdir:  rmdir,
		groups: make(map[*Group]struct{}),
	}
}

func pollingManager(err error) *Manager {
	return &Manager{
		mode:   ModeRSSPolling,
		reason: "cgroups unavailable: " + oneLine(err) + "; polling RSS",
	}
}

// oneLine flattens a (joined) error into one line.
func oneLine(err error) string {
	return strings.Join(strings.Fields(strings.ReplaceAll(err.Error(), "\n", "; ")), " ")
}

// Mode reports how worker memory is limited.
func (m *Manager) Mode() Mode {
	if m.mode == "" {
		return ModeRSSPolling
	}
	return m.mode
}

// Reason says in one line where the cgroups are, or why they cannot be
// used, such as "cgroup v1 memory at /sys/fs/cgroup/memory/x/safepool-123"
// or "cgroups unavailable: open ...: permission denied; polling RSS".
func (m *Manager) Reason() string {
	if m.reason == "" {
		return "cgroups unavailable: no Manager made by NewManager; polling RSS"
	}
	return m.reason
}

// OOMWitness returns the witness of the supervisor's own cgroup's OOM
// kills where workers have no cgroups of their own and that cgroup's
// counter is readable, and nil otherwise.
func (m *Manager) OOMWitness() *OOMWitness { return m.witness }

// NewGroup makes the cgroup of one worker, named name (a single path
// element, unique among the Manager's live groups), limited to limit bytes
// of memory. A limit <= 0 means no limit: the group still counts usage,
// peak and OOM kills. In ModeRSSPolling it returns ErrNoCgroups, and after
// Close ErrClosed.
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
	path := filepath.Join(m.dir, name)
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
	errs = append(errs, removeTree(m.ctrl, m.dir, m.rmdir))
	releaseParent(m.dir)
	return errors.Join(errs...)
}

// parents holds the parent directories of this process's live Managers.
// Several Managers in one process get safepool-<pid>, safepool-<pid>-2, ...
var parents = struct {
	sync.Mutex
	inUse map[string]bool
}{inUse: make(map[string]bool)}

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
