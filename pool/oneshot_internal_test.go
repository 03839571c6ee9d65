package pool

import "testing"

// TestLargeOutputPipe checks that the paced stdout pipes of a pool's
// running attempts ask for at most largeOutputPipes in all, and 1 MiB
// each while that allows.
func TestLargeOutputPipe(t *testing.T) {
	for _, c := range []struct{ workers, want int }{
		{0, 1 << 20}, {1, 1 << 20}, {2, 1 << 20}, {16, 1 << 20}, {32, 512 << 10}, {64, 256 << 10}, {1000, 16 << 20 / 1000},
	} {
		if got := largeOutputPipe(c.workers); got != c.want {
			t.Errorf("largeOutputPipe(%d) = %d, want %d", c.workers, got, c.want)
		}
		if c.workers > 0 && c.workers*largeOutputPipe(c.workers) > largeOutputPipes {
			t.Errorf("%d workers ask for %d bytes of pipes in all, over %d", c.workers, c.workers*largeOutputPipe(c.workers), largeOutputPipes)
		}
	}
}
