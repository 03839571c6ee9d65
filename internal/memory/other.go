//go:build !linux

package memory

import (
	"errors"
	"os/exec"
)

// Cgroups, /proc and /dev/kmsg are Linux's: elsewhere the package builds,
// its Manager polls and its sensors report errors.ErrUnsupported.

// Manager owns this supervisor's cgroups. Outside Linux it is always in
// ModeRSSPolling.
type Manager struct{}

// NewManager returns a Manager in ModeRSSPolling outside Linux.
func NewManager() (*Manager, error) { return &Manager{}, nil }

// Mode reports how worker memory is limited.
func (m *Manager) Mode() Mode { return ModeRSSPolling }

// Reason says why cgroups cannot be used.
func (m *Manager) Reason() string { return "cgroups unavailable: not Linux; polling RSS" }

// NewGroup returns ErrNoCgroups outside Linux.
func (m *Manager) NewGroup(name string, limit int64) (*Group, error) { return nil, ErrNoCgroups }

// Close does nothing outside Linux.
func (m *Manager) Close() error { return nil }

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

// TreeRSS returns errors.ErrUnsupported outside Linux.
func TreeRSS(pid int) (int64, error) { return 0, errors.ErrUnsupported }

// ProcessRSS returns errors.ErrUnsupported outside Linux.
func ProcessRSS(pid int) (int64, error) { return 0, errors.ErrUnsupported }

// ProcessPeakRSS returns errors.ErrUnsupported outside Linux.
func ProcessPeakRSS(pid int) (int64, error) { return 0, errors.ErrUnsupported }

// SetOOMScoreAdj returns errors.ErrUnsupported outside Linux.
func SetOOMScoreAdj(pid, score int) error { return errors.ErrUnsupported }

// WatchOOMKills returns errors.ErrUnsupported outside Linux.
func WatchOOMKills() (*OOMLog, error) { return nil, errors.ErrUnsupported }

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
