//go:build !linux

package worker

// growPipe returns the size of a pipe where it cannot be changed: POSIX
// guarantees only PIPE_BUF, and 64 KiB is common.
func growPipe(fd, size int) int { return 64 << 10 }
