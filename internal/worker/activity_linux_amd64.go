package worker

import "golang.org/x/sys/unix"

// archPollCalls are the poll-like system calls that only some
// architectures have.
var archPollCalls = []uint64{unix.SYS_POLL, unix.SYS_SELECT, unix.SYS_EPOLL_WAIT}

// archEpollCalls are the epoll waits that only some architectures have.
var archEpollCalls = []uint64{unix.SYS_EPOLL_WAIT}
