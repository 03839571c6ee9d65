package memory

import "testing"

// BenchmarkScanProcs measures one scan of /proc, which the watches of
// workers without a cgroup share (see descendants): it reads every
// process's stat file on the host.
func BenchmarkScanProcs(b *testing.B) {
	for b.Loop() {
		if _, err := scanProcs(); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkScanProcsKept is BenchmarkScanProcs as the shared scan makes
// it: /proc and each process's stat file kept open from one scan to the
// next (kept_linux.go).
func BenchmarkScanProcsKept(b *testing.B) {
	var s sharedScan
	defer s.within("") // closes nothing kept for stats; they end with the test binary
	for b.Loop() {
		s.mu.Lock()
		s.last = nil
		s.mu.Unlock()
		if _, err := s.get(1); err != nil {
			b.Fatal(err)
		}
	}
}
