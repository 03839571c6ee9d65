//go:build !linux

package reaper

import "errors"

// Outside Linux there is no /proc to sweep and no guardian: workers are
// still marked, and Close does nothing.

// Guard marks one pool's processes. Create it with Start; Close must be
// called once the pool's workers have ended.
type Guard struct{ token string }

// Start makes a Guard with a new token. Outside Linux it starts no
// guardian.
func Start(cgroupDir string) *Guard { return &Guard{token: newToken()} }

// Env returns env (the supervisor's environment when nil) with the Guard's
// token added to EnvMarker.
func (g *Guard) Env(env []string) []string { return mark(env, g.token) }

// GuardianErr returns errors.ErrUnsupported outside Linux.
func (g *Guard) GuardianErr() error { return errors.ErrUnsupported }

// Close does nothing outside Linux.
func (g *Guard) Close() error { return nil }

// Sweep returns errors.ErrUnsupported outside Linux.
func Sweep(token string) error { return errors.ErrUnsupported }

// SweepAny returns errors.ErrUnsupported outside Linux.
func SweepAny(tokens []string) error { return errors.ErrUnsupported }

// SweepAnyAmong returns errors.ErrUnsupported outside Linux.
func SweepAnyAmong(tokens []string, among func() ([]int, error)) error {
	return errors.ErrUnsupported
}

// InitShim returns ran false outside Linux: the program goes on as usual.
func InitShim() (code int, ran bool) { return 0, false }

// Suspend returns errors.ErrUnsupported outside Linux.
func (g *Guard) Suspend() error { return errors.ErrUnsupported }

// Resume returns errors.ErrUnsupported outside Linux.
func (g *Guard) Resume() error { return errors.ErrUnsupported }
