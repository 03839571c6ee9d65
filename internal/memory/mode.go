package memory

import "errors"

// Mode says how worker memory is limited.
type Mode string

const (
	// ModeCgroupV1 limits each worker with a cgroup v1 memory controller
	// group (memory.limit_in_bytes).
	ModeCgroupV1 Mode = "cgroup-v1"
	// ModeCgroupV2 limits each worker with a cgroup v2 group (memory.max).
	ModeCgroupV2 Mode = "cgroup-v2"
	// ModeRSSPolling means cgroups cannot be used: the supervisor polls
	// resident memory ([TreeRSS]) and enforces limits itself.
	ModeRSSPolling Mode = "rss-polling"
)

var (
	// ErrNoCgroups is returned by [Manager.NewGroup] when the Manager is in
	// ModeRSSPolling.
	ErrNoCgroups = errors.New("memory: cgroups unavailable")

	// ErrClosed is returned by [Manager.NewGroup] after [Manager.Close].
	ErrClosed = errors.New("memory: manager closed")

	// ErrStillPopulated is returned when processes remain in a cgroup after
	// they were sent SIGKILL and a bounded wait for them to exit ran out.
	ErrStillPopulated = errors.New("memory: processes remain in cgroup after SIGKILL")
)
