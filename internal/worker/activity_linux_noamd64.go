//go:build linux && !amd64

package worker

// archPollCalls are the poll-like system calls that only some
// architectures have; the newer calls in pollCalls cover the others.
var archPollCalls []uint64

// archEpollCalls are the epoll waits that only some architectures have.
var archEpollCalls []uint64
