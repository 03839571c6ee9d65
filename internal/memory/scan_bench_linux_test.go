package memory

import "testing"

// BenchmarkScanProcs measures one scan of /proc, which the watches of
// workers without a cgroup share (see descendants): it reads every
// process's stat file on the host.
func BenchmarkScanProcs(b *testing.B) {
	for b.Loop() {
		if _, err := scanProcs(nil, nil); err != nil {
			b.Fatal(err)
		}
	}
}
