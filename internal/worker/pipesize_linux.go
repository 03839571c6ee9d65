package worker

import "golang.org/x/sys/unix"

// growPipe asks for a pipe of size bytes and returns the size it has: the
// system may refuse (an unprivileged user over
// /proc/sys/fs/pipe-user-pages-soft, or size over pipe-max-size), and the
// pipe then keeps its size.
func growPipe(fd, size int) int {
	if got, err := unix.FcntlInt(uintptr(fd), unix.F_SETPIPE_SZ, size); err == nil {
		return got
	}
	if got, err := unix.FcntlInt(uintptr(fd), unix.F_GETPIPE_SZ, 0); err == nil {
		return got
	}
	return 64 << 10
}
