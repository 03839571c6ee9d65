//go:build !linux

package worker

import (
	"errors"
	"os"
	"syscall"
)

// Observe returns ErrNoActivity: only Linux says what a process is doing.
func (p *Process) Observe() (Activity, error) { return Activity{}, ErrNoActivity }

func pipeStat(f *os.File) *syscall.Stat_t { return nil }

func backlog(f *os.File) (int, error) { return 0, errors.ErrUnsupported }

func readerGone(f *os.File) bool { return false }

func writersGone(f *os.File) bool { return false }
