package memory

import (
	"errors"
	"fmt"
	"path/filepath"
	"time"
)

// NewOOMWitness returns a witness of the oom_kill counter of the
// supervisor's own memory cgroup, or an error when there is none it can
// read.
func NewOOMWitness() (*OOMWitness, error) {
	loc, err := locate()
	if err != nil {
		return nil, err
	}
	return witnessAt(loc)
}

// witnessAt returns a witness of the counter of the cgroup at loc: v1
// memory.oom_control; v2 memory.events.local (Linux 5.2+), which counts the
// cgroup's own processes only, else memory.events.
func witnessAt(loc location) (*OOMWitness, error) {
	files := []string{"memory.oom_control"}
	if loc.mode == ModeCgroupV2 {
		files = []string{"memory.events.local", "memory.events"}
	}
	var errs []error
	for _, f := range files {
		p := filepath.Join(loc.dir, f)
		w, err := newOOMWitness(p, func() (uint64, error) { return readOOMKill(p) }, oomSettle, time.Now)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		return w, nil
	}
	return nil, fmt.Errorf("memory: no readable oom_kill counter in %s: %w", loc.dir, errors.Join(errs...))
}
