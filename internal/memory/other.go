//go:build !linux

package memory

import (
	"errors"
	"os/exec"
)

// Cgroups, /proc and /dev/kmsg are Linux's: elsewhere the package builds,
// its Manager polls and its sensors report errors.ErrUnsupported.

// Manager owns this supervisor's cgroups. Outside Linux it is always in
// ModeNone.
type Manager struct{}

// NewManager returns a Manager in ModeNone outside Linux.
func NewManager() (*Manager, error) { return &Manager{}, nil }

// Mode reports how worker memory is limited and watched.
func (m *Manager) Mode() Mode { return ModeNone }

// Detection returns what NewManager found: nothing outside Linux.
func (m *Manager) Detection() Detection {
	return Detection{Mode: ModeNone, NoCgroups: errors.ErrUnsupported}
}

// Reason says why cgroups cannot be used.
func (m *Manager) Reason() string { return m.Detection().reason() }

// OOMWitness returns nil outside Linux.
func (m *Manager) OOMWitness() *OOMWitness { return nil }

// NewOOMWitness returns errors.ErrUnsupported outside Linux.
func NewOOMWitness() (*OOMWitness, error) { return nil, errors.ErrUnsupported }

// NewGroup returns ErrNoCgroups outside Linux.
func (m *Manager) NewGroup(name string, limit int64) (*Group, error) { return nil, ErrNoCgroups }

// Close does nothing outside Linux.
func (m *Manager) Close() error { return nil }

// Shim returns a Shim with dataLimit, which is ignored outside Linux.
func (m *Manager) Shim(dataLimit int64) Shim { return Shim{DataLimit: dataLimit} }

// Shim readies a worker without a cgroup of its own; outside Linux it does
// nothing.
type Shim struct {
	// DataLimit is ignored outside Linux.
	DataLimit int64
}

// Prepare does nothing outside Linux.
func (Shim) Prepare(cmd *exec.Cmd) error { return nil }

// Started does nothing.
func (Shim) Started() {}

// Group is one worker's cgroup; there are none outside Linux.
type Group struct{}

// Path returns "".
func (g *Group) Path() string { return "" }

// Prepare returns ErrNoCgroups.
func (g *Group) Prepare(cmd *exec.Cmd) error { return ErrNoCgroups }

// Started does nothing.
func (g *Group) Started() {}

// OOMKills returns ErrNoCgroups.
func (g *Group) OOMKills() (uint64, error) { return 0, ErrNoCgroups }

// Usage returns ErrNoCgroups.
func (g *Group) Usage() (int64, error) { return 0, ErrNoCgroups }

// Peak returns ErrNoCgroups.
func (g *Group) Peak() (int64, error) { return 0, ErrNoCgroups }

// ResetPeak returns ErrNoCgroups.
func (g *Group) ResetPeak() error { return ErrNoCgroups }

// Kill returns ErrNoCgroups.
func (g *Group) Kill() error { return ErrNoCgroups }

// Remove does nothing.
func (g *Group) Remove() error { return nil }

// TreePrivateMemory returns errors.ErrUnsupported outside Linux.
func TreePrivateMemory(pid int) (int64, error) { return 0, errors.ErrUnsupported }

// Watch samples a worker's memory; outside Linux it never samples.
type Watch struct{}

// StartWatch returns a Watch that never samples outside Linux.
func StartWatch(pid int, limit int64) *Watch { return &Watch{} }

// Over returns a channel that is never closed.
func (w *Watch) Over() <-chan struct{} { return nil }

// Peak returns 0.
func (w *Watch) Peak() int64 { return 0 }

// Samples returns 0 outside Linux.
func (w *Watch) Samples() int { return 0 }

// LastResident returns the zero Resident.
func (w *Watch) LastResident() Resident { return Resident{} }

// LastData returns 0.
func (w *Watch) LastData() int64 { return 0 }

// Current returns 0.
func (w *Watch) Current() int64 { return 0 }

// ResetPeak does nothing.
func (w *Watch) ResetPeak() {}

// Stop does nothing.
func (w *Watch) Stop() {}

// Tree returns the empty Tree: nothing is watched outside Linux.
func (w *Watch) Tree() Tree { return Tree{} }

// ProcessRSS returns errors.ErrUnsupported outside Linux.
func ProcessRSS(pid int) (int64, error) { return 0, errors.ErrUnsupported }

// ProcessPeakRSS returns errors.ErrUnsupported outside Linux.
func ProcessPeakRSS(pid int) (int64, error) { return 0, errors.ErrUnsupported }

// SetOOMScoreAdj returns errors.ErrUnsupported outside Linux.
func SetOOMScoreAdj(pid, score int) error { return errors.ErrUnsupported }

// WatchOOMKills returns errors.ErrUnsupported outside Linux.
func WatchOOMKills() (*OOMLog, error) { return nil, errors.ErrUnsupported }

// memReserve holds no memory outside Linux.
type memReserve struct{}

func (r *memReserve) release() {}
func (r *memReserve) free()    {}

// KeepReserve does nothing outside Linux.
func (l *OOMLog) KeepReserve() {}

// HostMemTotal returns errors.ErrUnsupported outside Linux.
func HostMemTotal() (int64, error) { return 0, errors.ErrUnsupported }

// HostMemAvailable returns errors.ErrUnsupported outside Linux.
func HostMemAvailable() (int64, error) { return 0, errors.ErrUnsupported }

// OwnCgroupLimit reports no limit outside Linux.
func OwnCgroupLimit() (int64, bool, error) { return 0, false, nil }

// PressureFull returns errors.ErrUnsupported outside Linux.
func PressureFull() (avg10 float64, err error) { return 0, errors.ErrUnsupported }

// Sensor reads the host's memory; outside Linux it reports errors.
type Sensor struct{}

// NewSensor returns a Sensor that reports errors.ErrUnsupported.
func NewSensor() *Sensor { return &Sensor{} }

// HostTotal returns errors.ErrUnsupported outside Linux.
func (s *Sensor) HostTotal() (int64, error) { return 0, errors.ErrUnsupported }

// HostUsed returns errors.ErrUnsupported outside Linux.
func (s *Sensor) HostUsed() (int64, error) { return 0, errors.ErrUnsupported }

// CgroupLimit reports no limit outside Linux.
func (s *Sensor) CgroupLimit() (int64, bool, error) { return 0, false, nil }

// CgroupUsed returns errors.ErrUnsupported outside Linux.
func (s *Sensor) CgroupUsed() (int64, error) { return 0, errors.ErrUnsupported }

// Pressure returns errors.ErrUnsupported outside Linux.
func (s *Sensor) Pressure() (float64, error) { return 0, errors.ErrUnsupported }

// WorkingSet returns ErrNoCgroups.
func (g *Group) WorkingSet() (int64, error) { return 0, ErrNoCgroups }

// Dir returns "" outside Linux.
func (m *Manager) Dir() string { return "" }

// RemoveAbandoned does nothing outside Linux, where there are no cgroups.
func RemoveAbandoned(dir string) error { return nil }

// WithStopsBlocked calls f: outside Linux, Go does not start children
// with vfork.
func WithStopsBlocked(f func()) { f() }

// EnclosedPIDs fails outside Linux: there is no enclosing cgroup.
func (m *Manager) EnclosedPIDs() ([]int, error) { return nil, ErrNoCgroups }
