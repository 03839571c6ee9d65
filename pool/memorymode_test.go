package pool_test

import (
	"testing"

	"github.com/safepool/safepool/pool"
)

// TestMemoryPerWorker: MemoryPerWorker answers from the mode itself, as
// MemoryMode names it, so that no caller compares the names.
func TestMemoryPerWorker(t *testing.T) {
	p, err := pool.New(config(pool.Line, 1))
	if err != nil {
		t.Fatalf("New() = %v", err)
	}
	p.Close()
	for range p.Results() {
	}
	mode := p.MemoryMode()
	want := mode == "cgroup-v1" || mode == "cgroup-v2"
	if got := p.MemoryPerWorker(); got != want {
		t.Errorf("MemoryPerWorker() = %v with MemoryMode() %q, want %v", got, mode, want)
	}
}
