package memory

import (
	"errors"
	"fmt"
	"path/filepath"
	"strings"
)

// Mode says how worker memory is limited and watched. The zero Mode is
// ModeNone.
type Mode int

const (
	// ModeNone means there is no memory cgroup to use or read (no memory
	// controller mounted, or its files unreadable): the supervisor watches
	// each worker's private memory itself, and only the kernel log can
	// confirm an OOM kill.
	ModeNone Mode = iota
	// ModeEnclosing means workers cannot have cgroups of their own but
	// share the supervisor's, which it can read: a container, a batch
	// job, a user session. Its oom_kill counter confirms OOM kills
	// ([OOMWitness]); the supervisor watches each worker's private memory
	// and enforces limits itself.
	ModeEnclosing
	// ModeCgroupV1 limits each worker with a cgroup v1 memory controller
	// group of its own (memory.limit_in_bytes).
	ModeCgroupV1
	// ModeCgroupV2 limits each worker with a cgroup v2 group of its own
	// (memory.max), as root or in a subtree delegated to the supervisor's
	// user.
	ModeCgroupV2
)

// String returns the mode's name as the JSON summary and the Python client
// report it: "no-cgroup", "enclosing-cgroup", "cgroup-v1" or "cgroup-v2".
func (m Mode) String() string {
	switch m {
	case ModeNone:
		return "no-cgroup"
	case ModeEnclosing:
		return "enclosing-cgroup"
	case ModeCgroupV1:
		return "cgroup-v1"
	case ModeCgroupV2:
		return "cgroup-v2"
	}
	return fmt.Sprintf("Mode(%d)", int(m))
}

// PerWorker reports whether each worker has a memory cgroup of its own.
func (m Mode) PerWorker() bool { return m == ModeCgroupV1 || m == ModeCgroupV2 }

// Detection is what [NewManager] found around the supervisor, and so what
// it can do: the mode, where the cgroups are, and why a better mode is not
// available. [Manager.Reason] says it in one line.
type Detection struct {
	// Mode is how worker memory is limited and watched.
	Mode Mode
	// Version is the cgroup version of Own, 1 or 2; 0 when Own is "".
	Version int
	// Own is the supervisor's own memory cgroup directory, which encloses
	// the workers; "" when none was found.
	Own string
	// Parent is the directory that holds the per-worker cgroups in
	// ModeCgroupV1 and ModeCgroupV2; "" otherwise.
	Parent string
	// Delegated reports whether Parent is in a cgroup v2 subtree that the
	// supervisor, without root, was given (systemd's Delegate=yes, a
	// rootless container's cgroup namespace).
	Delegated bool
	// Leaf is the cgroup v2 directory the supervisor moved itself into, so
	// that Own, which held it, could give its children the memory
	// controller: v2 lets only cgroups without processes do that. "" when
	// the supervisor did not move.
	Leaf string
	// OOMCounter is the file whose oom_kill counter confirms OOM kills in
	// ModeEnclosing; "" otherwise.
	OOMCounter string
	// NoCgroups says why workers cannot have cgroups of their own; nil in
	// ModeCgroupV1 and ModeCgroupV2.
	NoCgroups error
	// ShimStart says why workers start through a shell shim that readies
	// them and then execs them (two execs per worker) rather than with one
	// exec: in ModeCgroupV1, forked from a supervisor thread placed in
	// their group; in ModeEnclosing and ModeNone, traced to their exec.
	// It is nil when they start with one exec, and in ModeCgroupV2.
	ShimStart error
	// Leftovers says what the cgroups that dead supervisors left could not
	// be cleaned of; nil when nothing was left or all was removed.
	Leftovers error
}

// reason says d in one line: the mode, what it can do and why.
func (d Detection) reason() string {
	var b strings.Builder
	version := fmt.Sprintf("cgroup v%d", d.Version)
	switch d.Mode {
	case ModeCgroupV1, ModeCgroupV2:
		fmt.Fprintf(&b, "%s: a memory cgroup per worker under %s", version, d.Parent)
		if d.Delegated {
			b.WriteString(", in a subtree delegated to this user")
		}
		if d.Leaf != "" {
			fmt.Fprintf(&b, " (the supervisor moved itself into %s so that %s could hold them)", d.Leaf, d.Own)
		}
		if d.Mode == ModeCgroupV1 {
			if d.ShimStart != nil {
				fmt.Fprintf(&b, ", joined through a shell shim (%s)", oneLine(d.ShimStart))
			} else {
				b.WriteString(", started in it from a supervisor thread placed there")
			}
		}
	case ModeEnclosing:
		fmt.Fprintf(&b, "enclosing cgroup: workers share the supervisor's %s %s, whose %s confirms OOM kills; no cgroup per worker (%s); limits enforced by the supervisor",
			version, d.Own, filepath.Base(d.OOMCounter), oneLine(d.NoCgroups))
	default:
		fmt.Fprintf(&b, "no cgroup (%s): limits enforced by the supervisor, OOM kills confirmed from the kernel log only", oneLine(d.NoCgroups))
	}
	if !d.Mode.PerWorker() && d.ShimStart != nil {
		fmt.Fprintf(&b, "; workers started through a shell shim (%s)", oneLine(d.ShimStart))
	}
	if d.Leftovers != nil {
		b.WriteString("; leftovers of dead supervisors remain: " + oneLine(d.Leftovers))
	}
	return b.String()
}

// oneLine flattens a (joined) error into one line.
func oneLine(err error) string {
	if err == nil {
		return "no reason given"
	}
	return strings.Join(strings.Fields(strings.ReplaceAll(err.Error(), "\n", "; ")), " ")
}

var (
	// ErrNoCgroups is returned by [Manager.NewGroup] when workers cannot
	// have cgroups of their own.
	ErrNoCgroups = errors.New("memory: no cgroup per worker")

	// ErrClosed is returned by [Manager.NewGroup] after [Manager.Close].
	ErrClosed = errors.New("memory: manager closed")

	// ErrStillPopulated is returned when processes remain in a cgroup after
	// they were sent SIGKILL and a bounded wait for them to exit ran out.
	ErrStillPopulated = errors.New("memory: processes remain in cgroup after SIGKILL")
)
